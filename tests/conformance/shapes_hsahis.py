"""Hunan HIS of fengzaiqishi11/hsa-his (Powersi), Java maps serialized with fastjson.

Sources: `hsa-insure/hsa-insure-biz/src/main/java/cn/hsa/insure/unifiedpay/bo/impl/
InsureUnifiedPayRestBOImpl.java` — `UP_1317` (data with empty filters, `page_num` 1 and
`page_size` Integer.MAX_VALUE as JSON integers), the 1312–1319 paging loop (`page_num`,
`page_size`, reads `(int) recordCounts` and `data[]`), the 1318/1319 row readers (begndate,
enddate parsed with yyyy-MM-dd HH:mm:ss; `hilist_pric_uplmt_amt`, `selfpay_prop` into
BigDecimal), `UP_3301` (`data` as an array of at most 100 rows, begndate/enddate as date-times,
regional extras such as `insuplc_admdvs`, `medins_code`, `trade_code`, `valid_flag`) and
`UP_3302` (rows under `purcinfo`, reads `output.sucessData[]` and fails when it is empty);
`hsa-com/src/main/java/cn/hsa/util/StringUtils.java` (msgid); envelope extras `insur_code`,
`medins_code` from `UP_3301`'s httpParam.
"""

from typing import Any

from tests.conformance.shapes import BIGDEC, DATETIME, INT, TEXT, Shape, string

_DATES = {"begndate": DATETIME, "enddate": DATETIME}


def upload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "data": [
            {
                "fixmedins_hilist_id": r["item"], "fixmedins_hilist_name": r["name"],
                "list_type": r["list_type"], "med_list_codg": r["code"],
                "begndate": f"{r['begndate']} 00:00:00", "enddate": "2099-12-31 00:00:00",
                "aprvno": "", "dosform": "", "exct_cont": "", "item_cont": "", "prcunt": "",
                "spec": "", "pacspec": "", "memo": "", "insuplc_admdvs": "441800",
                "medins_code": "H44180000001", "match_type": "", "hosp_dosg": "", "pric": "",
                "item_name": "", "opter": "OP001", "opter_name": "收费员",
                "trade_code": r["list_type"], "trade_name": "", "valid_flag": "1",
                "chk_stas": "", "staple_flag": "", "chrg_sour": "",
            }
            for r in rows
        ]
    }  # fmt: skip


def revoke(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "purcinfo": [
            {
                "fixmedins_code": "H44180000001",
                "fixmedins_hilist_id": r["item"],
                "list_type": r["list_type"],
                "med_list_codg": r["code"],
            }
            for r in rows
        ]
    }


SHAPE = Shape(
    name="hsahis",
    sources=(
        "fengzaiqishi11/hsa-his hsa-insure/hsa-insure-biz/src/main/java/cn/hsa/insure/unifiedpay/"
        "bo/impl/InsureUnifiedPayRestBOImpl.java",
    ),
    hospital="H44180000001",
    pharmacy=None,
    region="441800",
    psn_no="441800000000000003",
    certno="441802198203033456",
    insutype="310",
    envelope={
        "recer_sys_code": "YBXT",
        "infver": "V1.0",
        "signtype": "",
        "cainfo": "",
        "insur_code": "441800",
        "medins_code": "H44180000001",
    },
    amount=string,
    line_amount=string,
    split_amount=None,
    page=int,
    page_size=2147483647,
    query_filters={"medins_list_codg": "", "medins_list_name": "", "list_type": ""},
    upload_3301=upload,
    revoke_3302=revoke,
    reads={
        "1312": {"": {"recordCounts": INT}, "data[]": {"hilist_code": TEXT}},
        "1317": {
            "": {"recordCounts": INT},
            "data[]": {"medins_list_codg": TEXT, "med_list_codg": TEXT, "list_type": TEXT},
        },
        "1318": {
            "": {"recordCounts": INT},
            "data[]": {
                "hilist_code": TEXT,
                "insu_admdvs": TEXT,
                "hilist_pric_uplmt_amt": BIGDEC,
                "vali_flag": TEXT,
                **_DATES,
            },
        },
        "1319": {
            "": {"recordCounts": INT},
            "data[]": {
                "hilist_code": TEXT,
                "insu_admdvs": TEXT,
                "selfpay_prop": BIGDEC,
                "vali_flag": TEXT,
                **_DATES,
            },
        },
        "3302": {"sucessData[]": {"fixmedins_hilist_id": TEXT, "med_list_codg": TEXT}},
    },
    flows=frozenset({"catalog", "mapping"}),
)
