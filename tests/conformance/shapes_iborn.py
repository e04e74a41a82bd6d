"""Guangzhou HIS of liutao2019/IBORN_HIS_ALL, `MEDICAL/广州医保/API.GZSI/`.

Sources: `Models/Request/RequestBase.cs` (envelope: `recer_admdvs`, `infver "1.0.0"`,
`signtype "SM3"`), `Models/Request/RequestGzsiModel3301.cs` and its use in the same project's
test form (3301 `catalogcompin[]`, rows without `enddate`, each field also present in camelCase
and left null, extra `drugadm_strdcod`, `pric` as text). Its 13xx and 1101 answers are read as
plain lists and its 9001 sends a `data` node with a password (Guangzhou pilot shapes the
gateway does not answer; docs/protocol.md).
"""

from typing import Any

from tests.conformance.shapes import Shape, string


def upload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "catalogcompin": [
            {
                "fixmedins_hilist_id": r["item"], "fixmedinsHilistId": None,
                "fixmedins_hilist_name": r["name"], "fixmedinsHilistName": None,
                "list_type": r["list_type"], "listType": None,
                "med_list_codg": r["code"], "medListCodg": None,
                "begndate": r["begndate"], "enddate": None, "drugadm_strdcod": None,
                "genname_no": None, "aprvno": "1001", "dosform": None, "exept_cont": None,
                "item_cont": None, "prcunt": None, "spec": "0.1g*100片/瓶", "pacspec": None,
                "pric": "2.56", "memo": None, "exctCont": None,
            }
            for r in rows
        ]
    }  # fmt: skip


SHAPE = Shape(
    name="iborn",
    sources=(
        "liutao2019/IBORN_HIS_ALL MEDICAL/广州医保/API.GZSI/Models/Request/RequestGzsiModel3301.cs",
    ),
    hospital="H44180000002",
    pharmacy=None,
    region="441800",
    psn_no="441800000000000001",
    certno="441802199001011234",
    insutype="310",
    envelope={"recer_admdvs": "441800", "infver": "1.0.0", "signtype": "SM3", "cainfo": ""},
    amount=string,
    line_amount=string,
    split_amount=None,
    upload_3301=upload,
    flows=frozenset({"mapping"}),
)
