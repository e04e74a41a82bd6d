"""Sichuan (Yibin, YinHai centre) HIS of daxiaochengzi/YiBinActive.

Sources: `BenDingForm/Form3.cs` (requests 9001, 1101, 2201, 2202, 2203A, 2204, 2206A, 2207A,
2208, 2301, 2303–2305, 2401, 2402, 2405, 2601), `Active/Model/Params/YinHai/YinHaiGetBaseParam.cs`
(envelope: `recer_sys_code "01"`, `infver "1.0"`, `signtype "SM3"`, `cainfo "000000000000"`),
`Active/Model/Dto/YiHai/RightingDto.cs` (2601). Shapes: the revision codes 2203A/2206A/2207A,
`expContent{card_token}` as an object in every input node, amounts as JSON numbers (`15`,
`1.5`), `acct_used_flag "0"`, the 2207A split sent; `input` sent as a JSON string.
"""

from tests.conformance.shapes import DEC_NULL, SETLDETAIL_READS, Shape, number, setlinfo_reads

SHAPE = Shape(
    name="yibin",
    sources=(
        "daxiaochengzi/YiBinActive BenDingForm/Form3.cs",
        "daxiaochengzi/YiBinActive Active/Model/Params/YinHai/YinHaiGetBaseParam.cs",
        "daxiaochengzi/YiBinActive Active/Model/Dto/YiHai/RightingDto.cs",
    ),
    hospital="H52050000001",
    pharmacy=None,
    region="520500",
    psn_no="520500000000000001",
    certno="520502198806061111",
    insutype="310",
    envelope={"recer_sys_code": "01", "infver": "1.0", "signtype": "SM3", "cainfo": "000000000000"},
    amount=number,
    line_amount=number,
    split_amount=number,
    extras={
        # Form3's 2206A/2207A data carry no certificate; the card token rides in expContent.
        "settle": {
            "expContent": {"card_token": ""},
            "mdtrt_cert_type": None,
            "mdtrt_cert_no": None,
        },
        "data": {"expContent": {"card_token": ""}},
        "mdtrtinfo": {"expContent": {"card_token": ""}},
        "feedetail": {"expContent": {"card_token": ""}},
    },
    codes={"2203": "2203A", "2206": "2206A", "2207": "2207A"},
    input_as_string=True,
    reads={
        "2207": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2304": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
    },
    flows=frozenset({"signin", "outpatient", "inpatient", "reversal"}),
)
