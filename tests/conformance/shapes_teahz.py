"""Jiangsu HIS of TeaHZ/185, `Hos185/OnlineBusHos185_GJYB/`.

Sources: `BusinessCSB/Models/InputRoot.cs` and `CSBHelper.cs` (envelope with
`fixmedins_soft_fcty`, `signtype "SM2"`), `Plat/Models/MZJS/T2201.cs` … `T2208.cs`,
`Plat/Models/ZYJS/T2301.cs` … `T2305.cs`, `Plat/Models/ZYDJ/T2401.cs` … `T2405.cs`,
`Plat/Models/YDJS/T2102.cs`, `T2103.cs`, `Plat/Models/T1101.cs`, `T2601.cs`, `T3201.cs`.
Shapes: amounts C# decimals (JSON numbers), the split `decimal?`; every data node carries
`expContent` as a string; 2303/2304 without med_type but with `dscgTime`. Answers parsed into
`decimal?` (setlinfo, setldetail) and, for 2103, strings with `psn_pay` and `cash_payamt`.
"""

from tests.conformance.shapes import (
    DEC_NULL,
    LINE_READS,
    SETLDETAIL_READS,
    TEXT,
    Shape,
    decimal_ordinal,
    number,
    setlinfo_reads,
)

_2103 = {
    name: TEXT
    for name in (
        "mdtrt_id", "setl_id", "clr_optins", "medfee_sumamt", "setl_time", "fulamt_ownpay_amt",
        "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc", "hifp_pay",
        "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay",
        "oth_pay", "fund_pay_sumamt", "psn_pay", "acct_pay", "cash_payamt", "balc",
        "acct_mulaid_pay", "medins_setl_id",
    )
}  # fmt: skip

SHAPE = Shape(
    name="teahz",
    sources=(
        "TeaHZ/185 Hos185/OnlineBusHos185_GJYB/Plat/Models/ZYJS/T2304.cs",
        "TeaHZ/185 Hos185/OnlineBusHos185_GJYB/Plat/Models/ZYJS/T2303.cs",
        "TeaHZ/185 Hos185/OnlineBusHos185_GJYB/Plat/Models/YDJS/T2103.cs",
        "TeaHZ/185 Hos185/OnlineBusHos185_GJYB/BusinessCSB/CSBHelper.cs",
        "TeaHZ/185 Hos185/OnlineBusHos185_GJYB/Plat/Models/ZYDJ/T2402.cs",
    ),
    hospital="H44180000002",
    pharmacy="P44180000001",
    region="441800",
    psn_no="441800000000000001",
    certno="441802199001011234",
    insutype="310",
    envelope={
        "recer_sys_code": "YBXT",
        "infver": "V1.0",
        "signtype": "SM2",
        "cainfo": "",
        "fixmedins_soft_fcty": "某软件有限公司",
    },
    amount=number,
    line_amount=number,
    ordinal=decimal_ordinal,
    split_amount=number,
    extras={
        "settle": {"dscgTime": "", "expContent": ""},
        "data": {"expContent": ""},
        "druginfo": {"expContent": ""},
        "mdtrtinfo": {"expContent": ""},
    },
    reads={
        "2207": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2303": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2304": {
            "setlinfo": setlinfo_reads(DEC_NULL, "hifdm_pay"),
            "setldetail[]": SETLDETAIL_READS,
        },
        "2102": {
            # The pharmacy setlinfo has no hospital share (protocol.md §2.5).
            "setlinfo": {k: v for k, v in setlinfo_reads(DEC_NULL).items() if k != "hosp_part_amt"},
            "setldetail[]": SETLDETAIL_READS,
            "detlcutinfo[]": LINE_READS,
        },
        "2103": {"setlinfo": _2103, "setldetail[]": {k: TEXT for k in SETLDETAIL_READS}},
    },
    flows=frozenset({"signin", "outpatient", "inpatient", "pharmacy", "reversal", "dayend"}),
)
