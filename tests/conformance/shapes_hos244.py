"""Pharmacy models of the OnlineBusHos244_GJYB code base (index id 19590226871; the TeaHZ/185
vendor's family, so not an independent lineage: it is replayed because it writes every amount
and quantity as a string where TeaHZ writes C# decimals, and reads every answer field into a
string).

Sources: `T2102` (`druginfo` with `invono`, `expContent` as a string, `drugdetail[]` with
`det_item_fee_sumamt`, `cnt`, `pric`, `prd_days` as strings) and `RT2102` (setlinfo, setldetail,
detlcutinfo, all string properties).
"""

from tests.conformance.shapes import TEXT, Shape, setlinfo_reads, string

_SETLINFO = {k: TEXT for k in setlinfo_reads(TEXT) if k != "hosp_part_amt"}

SHAPE = Shape(
    name="hos244",
    sources=("OnlineBusHos244_GJYB Models/T2102 (index id 19590226871)",),
    hospital="P52050000001",
    pharmacy="P52050000001",
    region="520500",
    psn_no="520500000000000001",
    certno="520502198806061111",
    insutype="310",
    envelope={"recer_sys_code": "YBXT", "infver": "V1.0", "signtype": "SM2", "cainfo": ""},
    amount=string,
    line_amount=string,
    split_amount=None,
    extras={"druginfo": {"expContent": ""}, "data": {"expContent": ""}},
    reads={
        "2101": {"setlinfo": _SETLINFO, "setldetail[]": {"fund_pay_type": TEXT}},
        "2102": {
            "setlinfo": {**_SETLINFO, "setl_id": TEXT},
            "setldetail[]": {k: TEXT for k in ("fund_pay_type", "fund_payamt", "inscp_scp_amt")},
            "detlcutinfo[]": {k: TEXT for k in ("feedetl_sn", "det_item_fee_sumamt", "memo")},
        },
    },
    flows=frozenset({"pharmacy"}),
)
