"""Chongqing / Hebei HIS of newtouch-cloud/openhis @ffa7e660, `WinServiceAPI/YiBaoInterface/`.

Sources: `Models/Input/InputPost.cs` (envelope), `Models/Input/Input_2201.cs` … `Input_2208.cs`,
`Input_2301.cs` … `Input_2305.cs`, `Input_2401.cs` … `Input_2405.cs`, `Input_1101.cs`,
`Input_9001.cs`, `Input_2601.cs`, `Input_5203.cs`; `Models/Output/Output_2207.cs`,
`Output_2208.cs`, `Output_2304.cs`, `Output_2305.cs`; the Chongqing 2207 log (protocol.md §A4).
Shapes: 2303/2304 `data` without med_type, medfee_sumamt a string and the split C# decimals
(numbers), local `dscgTime`, `exp_content` an array; 2302 `data` an array; envelope
`recer_sys_code "YBXT"`, `infver "1"`, regional `serv_code`/`serv_sign`, `enctype`.
"""

from tests.conformance.shapes import (
    DEC_NULL,
    LINE_READS,
    SETLDETAIL_READS,
    Shape,
    number,
    setlinfo_reads,
    string,
)

SHAPE = Shape(
    name="openhis",
    sources=(
        "newtouch-cloud/openhis WinServiceAPI/YiBaoInterface/Models/Input/Input_2304.cs",
        "newtouch-cloud/openhis WinServiceAPI/YiBaoInterface/Models/Input/Input_2303.cs",
        "newtouch-cloud/openhis WinServiceAPI/YiBaoInterface/Models/Input/InputPost.cs",
        "newtouch-cloud/openhis WinServiceAPI/YiBaoInterface/Models/Output/Output_2304.cs",
    ),
    hospital="H44180000001",
    pharmacy=None,
    region="441800",
    psn_no="441800000000000003",
    certno="441802198203033456",
    insutype="310",
    envelope={
        "recer_sys_code": "YBXT",
        "infver": "1",
        "signtype": "",
        "cainfo": "",
        "serv_code": "",
        "serv_sign": "",
        "enctype": "",
    },
    amount=string,
    line_amount=number,
    split_amount=number,
    extras={
        "settle": {"dscgTime": "", "exp_content": [{"card_token": ""}]},
        "mdtrtinfo": {"exp_content": []},
    },
    reads={
        "2207": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2208": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2304": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2305": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2204": {"result[]": LINE_READS},
        "2301": {"result[]": LINE_READS},
    },
    flows=frozenset({"signin", "outpatient", "inpatient", "reversal", "query"}),
)
