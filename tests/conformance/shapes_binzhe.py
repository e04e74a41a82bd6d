"""Shenzhen clinic SaaS of binzhe12123/Medical.

Sources: `SZSI_Smart/Model/SYB/SYBCommon.cs` (envelope), `SZSI_Smart/Model/SYB/YBJS/GH2201.cs`,
`GH2202.cs`, `ZJ2203.cs`, `ZJ2204.cs`, `ZJ2205.cs`, `YJS2206.cs`, `JS2207.cs`, `ZJCX2208.cs`,
`CZ2601.cs`, `SZSI_Smart/Model/SYB/QD9001.cs`, `JBXX/RY1101.cs`, `XXCX/JS5203.cs`;
`SY.Com.Medical.WebApi/Controllers/Clinic/SYBController.cs` (9001 `signIn{mac, ip, opter_no}`,
1101 with `card_sn`, 2206/2207 with `mdtrt_cert_type "03"`). Shapes: amounts as strings,
no split in 2207, `infver "V1.0"`; the 2208 answer read as `pdn_cash_pay`.
"""

from tests.conformance.shapes import (
    DEC_NULL,
    LINE_READS,
    SETLDETAIL_READS,
    Shape,
    setlinfo_reads,
    string,
)

SHAPE = Shape(
    name="binzhe",
    sources=(
        "binzhe12123/Medical SZSI_Smart/Model/SYB/YBJS/JS2207.cs",
        "binzhe12123/Medical SZSI_Smart/Model/SYB/YBJS/ZJCX2208.cs",
        "binzhe12123/Medical SZSI_Smart/Model/SYB/SYBCommon.cs",
        "binzhe12123/Medical SY.Com.Medical.WebApi/Controllers/Clinic/SYBController.cs",
    ),
    hospital="H44180000003",
    pharmacy=None,
    region="441800",
    psn_no="441800000000000002",
    certno="441802195505052345",
    insutype="310",
    envelope={"recer_sys_code": "YBXT", "infver": "V1.0", "signtype": "", "cainfo": ""},
    amount=string,
    line_amount=string,
    split_amount=None,
    reads={
        "2206": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2207": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2208": {
            "setlinfo": setlinfo_reads(DEC_NULL, "pdn_cash_pay"),
            "setldetail[]": SETLDETAIL_READS,
        },
        "2204": {"result[]": LINE_READS},
    },
    card_no="QY0000000002",
    # SYBController fills 2206/2207 with certificate 03, the social-security card read at 1101.
    extras={"settle": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "QY0000000002"}},
    flows=frozenset({"signin", "person", "outpatient", "reversal", "query", "dayend"}),
)
