"""Zhongshan (Guangdong) HIS of S-117-John/nhis-web (Zebone), Java maps whose camelCase keys
are turned into snake_case just before sending.

Sources: `src/main/java/com/zebone/nhis/compay/pub/service/NationalInsuranceService.java` —
`sendHttpPost` (envelope: `recer_sys_code "01"`, `signtype "SM3"`, posted to HSA_URL + infno, i.e.
`/hsa/hgs/{infno}`; every key converted by `transLine`), `getPersonInfo` (1101 `data` carrying the
HIS's own `pk_pi`/`pk_pv` besides the certificate), `signIn` / `signOut` (9001 `signIn{opter_no, mac,
ip}`, 9002 `signOut{opter_no, sign_no}`), `settlementInformationQuery` (5203 `data{psn_no, setl_id,
mdtrt_id}`, the one not searched for sent as null), `uploadMatchCatalog` (3301: one request per
row, `data` an object, with the HIS's `pk_itemmap`), `cancelMatchCatalog` (3302 `data` with
`fixmedins_code`). Answers are read with Jackson into maps and VOs (BigDecimal amounts).
"""

from typing import Any

from tests.conformance.shapes import DEC_NULL, TEXT, Shape, number


def upload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    # One request per row: the flow sends each of these in turn.
    (r,) = rows
    return {
        "data": {
            "pk_itemmap": f"PK{r['item']}",
            "fixmedins_hilist_id": r["item"],
            "fixmedins_hilist_name": r["name"],
            "list_type": r["list_type"],
            "med_list_codg": r["code"],
            "begndate": r["begndate"],
            "enddate": "2099-12-31",
        }
    }


def revoke(rows: list[dict[str, Any]]) -> dict[str, Any]:
    (r,) = rows
    return {
        "data": {
            "fixmedins_code": "H44180000003",
            "fixmedins_hilist_id": r["item"],
            "list_type": r["list_type"],
            "med_list_codg": r["code"],
            "pk_itemmap": f"PK{r['item']}",
        }
    }


_SETLINFO = {
    **{k: TEXT for k in ("setl_id", "mdtrt_id", "psn_no", "med_type", "setl_time")},
    **{
        k: DEC_NULL
        for k in (
            "medfee_sumamt", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "psn_cash_pay",
            "hosp_part_amt", "acct_mulaid_pay", "balc",
        )
    },
}  # fmt: skip

SHAPE = Shape(
    name="nhisweb",
    sources=(
        "S-117-John/nhis-web src/main/java/com/zebone/nhis/compay/pub/service/"
        "NationalInsuranceService.java",
    ),
    hospital="H44180000003",
    pharmacy=None,
    region="441800",
    psn_no="441800000000000004",
    certno="441802197507074567",
    insutype="390",
    envelope={"recer_sys_code": "01", "infver": "V1.0", "signtype": "SM3", "cainfo": ""},
    amount=number,
    line_amount=number,
    split_amount=None,
    path_per_infno=True,
    card_no="QY0000000004",
    upload_3301=upload,
    revoke_3302=revoke,
    extras={"data": {"pk_pi": "PI0001", "pk_pv": ""}},
    reads={
        "5203": {"setlinfo": _SETLINFO, "setldetail[]": {"fund_pay_type": TEXT}},
        "1101": {"baseinfo": {"psn_no": TEXT, "psn_name": TEXT}, "insuinfo[]": {"insutype": TEXT}},
    },
    flows=frozenset({"signin", "person", "query", "mapping"}),
)
