"""Chongqing / Hebei HIS of newtouch-cloud/openhis @ffa7e660, `WinServiceAPI/YiBaoInterface/`.

Sources: `Models/Input/InputPost.cs` (envelope), `Models/Input/Input_2201.cs` … `Input_2208.cs`,
`Input_2301.cs` … `Input_2305.cs`, `Input_2401.cs` … `Input_2405.cs`, `Input_1101.cs`,
`Input_9001.cs`, `Input_2601.cs`, `Input_5203.cs`, `Input_1312.cs`, `Input_1317.cs` …
`Input_1319.cs` (`page_num`, `page_size` as strings), `Input_3301.cs` (`data` one object),
`Input_3302.cs`; `Models/Output/Output_2207.cs`, `Output_2208.cs`, `Output_2304.cs`,
`Output_2305.cs`, `Output_1101.cs` (`age`, `balc` C# decimal), `Output_1312.cs` … `Output_1319.cs`
(every paged field a string); the Chongqing 2207 log (protocol.md §A4).
Shapes: 2303/2304 `data` without med_type, medfee_sumamt a string and the split C# decimals
(numbers), local `dscgTime`, `exp_content` an array; 2302 `data` an array; envelope
`recer_sys_code "YBXT"`, `infver "1"`, regional `serv_code`/`serv_sign`, `enctype`.
"""

from typing import Any

from tests.conformance.shapes import (
    DEC,
    DEC_NULL,
    LINE_READS,
    SETLDETAIL_READS,
    TEXT,
    Shape,
    number,
    setlinfo_reads,
    string,
)

_PAGED = {
    k: TEXT
    for k in ("firstPage", "lastPage", "size", "startRow", "pageSize", "pageNum", "recordCounts")
}
_ROW = {k: TEXT for k in ("hilist_code", "insu_admdvs", "begndate", "enddate", "vali_flag")}


def upload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    (r,) = rows  # Input_3301's data is one object
    return {
        "data": {
            "fixmedins_hilist_id": r["item"], "fixmedins_hilist_name": r["name"],
            "list_type": r["list_type"], "med_list_codg": r["code"], "begndate": r["begndate"],
            "enddate": "2099-12-31", "aprvno": "", "dosform": "", "exct_cont": "",
            "item_cont": "", "prcunt": "", "spec": "", "pacspec": "", "memo": "",
        }
    }  # fmt: skip


def revoke(rows: list[dict[str, Any]]) -> dict[str, Any]:
    (r,) = rows
    return {
        "data": {
            "fixmedins_hilist_id": r["item"],
            "fixmedins_code": "H44180000001",
            "list_type": r["list_type"],
            "med_list_codg": r["code"],
        }
    }


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
    card_no="QY0000000003",
    page=str,
    page_size=2,
    query_filters={"query_date": "", "insu_admdvs": "", "vali_flag": "", "updt_time": ""},
    upload_3301=upload,
    revoke_3302=revoke,
    reads={
        "1101": {
            "baseinfo": {"psn_no": TEXT, "psn_name": TEXT, "age": DEC},
            "insuinfo[]": {"balc": DEC, "insutype": TEXT, "psn_insu_stas": TEXT},
        },
        "1312": {"": _PAGED, "data[]": {**_ROW, "hilist_name": TEXT, "list_type": TEXT}},
        "1317": {
            "": _PAGED,
            "data[]": {"medins_list_codg": TEXT, "med_list_codg": TEXT, "begndate": TEXT},
        },
        "1318": {"": _PAGED, "data[]": {**_ROW, "hilist_pric_uplmt_amt": TEXT}},
        "1319": {"": _PAGED, "data[]": {**_ROW, "selfpay_prop": TEXT}},
        "2207": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2208": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2304": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2305": {"setlinfo": setlinfo_reads(DEC_NULL), "setldetail[]": SETLDETAIL_READS},
        "2204": {"result[]": LINE_READS},
        "2301": {"result[]": LINE_READS},
    },
    flows=frozenset(
        {"signin", "person", "outpatient", "inpatient", "reversal", "query", "catalog", "mapping"}
    ),
)
