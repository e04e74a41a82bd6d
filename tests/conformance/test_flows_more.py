"""More whole flows in each lineage's shapes (shapes_*.py), over HTTP against a real gateway:
the paged catalog queries (1312/1317/1318/1319), catalog mapping upload and revoke (3301/3302),
5203 by setl_id and by mdtrt_id, 1101 by each certificate type, and 2601 of every reversible
original (2208, 2103, 2304, 2305, 2401): the undo is exactly the inverse of what it undoes."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from tests.conformance.shapes import Shape
from tests.conformance.test_flows import (
    Client,
    _outpatient,
    at,
    dec,
    fee_rows,
    identities,
    lineages,
    negation,
    settle_data,
    with_split,
)
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

_item_serial = itertools.count(1)


def _page(shape: Shape, infno: str, page_num: int, **filters: Any) -> dict[str, Any]:
    data: dict[str, Any] = {**shape.query_filters, **filters}
    data["page_num"] = shape.page(page_num)
    data["page_size"] = shape.page(shape.page_size)
    return {"data": data}


_QUERIES = {
    # infno -> filters that select known demo rows (config/demo/*.csv)
    "1312": {},
    "1317": {},
    "1318": {"hilist_code": "XL01XCA030A001010100006"},
    "1319": {"hilist_code": "XC10AAA140A001010100003"},
}


@pytest.mark.parametrize("infno", sorted(_QUERIES))
@pytest.mark.parametrize("shape", lineages("catalog"))
async def test_paged_catalog_query(server: Server, shape: Shape, infno: str) -> None:
    c = Client(server, shape)
    first = await c.ok(infno, _page(shape, infno, 1, **_QUERIES[infno]))
    total = int(first["recordCounts"])
    size = int(first["pageSize"])
    assert total >= 1 and first["data"], (shape.name, infno)
    assert size == min(shape.page_size, 1000)
    assert int(first["pages"]) == -(-total // size)
    assert int(first["pageNum"]) == 1 and first["firstPage"] is True
    assert len(first["data"]) == min(size, total) == int(first["size"])
    if total > size:
        second = await c.ok(infno, _page(shape, infno, 2, **_QUERIES[infno]))
        assert int(second["pageNum"]) == 2 and second["firstPage"] is False
        assert second["data"] and second["data"] != first["data"]
    if infno == "1318":
        caps = {r["insu_admdvs"]: Decimal(r["hilist_pric_uplmt_amt"]) for r in first["data"]}
        assert caps["441800"] == Decimal("5500")
    if infno == "1319":
        props = {r["insu_admdvs"]: Decimal(r["selfpay_prop"]) for r in first["data"]}
        assert props["441800"] == Decimal("0.1")


@pytest.mark.parametrize("shape", lineages("mapping"))
async def test_mapping_upload_settles_and_revoke_unmaps(server: Server, shape: Shape) -> None:
    assert shape.upload_3301 is not None
    c = Client(server, shape)
    item = f"ZZ{shape.name[:4].upper()}{next(_item_serial):02d}"
    row = {
        "item": item,
        "name": "对乙酰氨基酚片（新规格）",
        "list_type": "101",
        "code": "XN02BEA010A001010100007",
        "begndate": f"{at('00:00')[:10]}",
    }
    await c.ok("3301", shape.upload_3301([row]))
    national = {"data": {"medins_list_codg": item, "page_num": 1, "page_size": 10}}
    mapped = await c.his.ok("1317", national)
    assert mapped["recordCounts"] == 1, mapped
    assert mapped["data"][0]["med_list_codg"] == row["code"]
    # The new mapping settles: an outpatient line with the new item code is classified.
    reg = await c.his.register(shape.psn_no, shape.insutype, at("08:00"), f"MZM{item}")
    lines = [("1", item, "9.9", "1")]
    out = await c.his.ok("2204", {"feedetail": fee_rows(c, reg, lines, at("08:10"), "B1")})
    assert out["result"][0]["chrgitm_lv"] == "01"
    await c.his.ok(
        "2205", {"data": {"mdtrt_id": reg, "chrg_bchno": "0000", "psn_no": shape.psn_no}}
    )
    if shape.revoke_3302 is not None:
        revoked = await c.ok("3302", shape.revoke_3302([row]))
    else:  # the lineage's 3302 is not public: revoked with the national data object
        revoked = await c.his.ok(
            "3302",
            {
                "data": {
                    "fixmedins_hilist_id": item,
                    "list_type": "101",
                    "med_list_codg": row["code"],
                }
            },
        )
    assert [r["fixmedins_hilist_id"] for r in revoked["sucessData"]] == [item]
    gone = await c.his.ok("1317", national)
    assert gone["recordCounts"] == 0


@pytest.mark.parametrize("shape", lineages("query"))
async def test_settlement_query_by_setl_id_and_by_mdtrt_id(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    if shape.pharmacy is not None:
        settled = await _pharmacy_sale(c, "Q")
        mdtrt_id = settled["mdtrt_id"]
    elif "outpatient" in shape.flows:
        mdtrt_id, settled = await _outpatient(c, "Q")
    else:  # a settlement made at this institution's counter, queried in this lineage's shape
        mdtrt_id, settled = await _outpatient(Client(server, _as_counter(shape)), "Q")
    by_setl = {"psn_no": shape.psn_no, "setl_id": settled["setl_id"], "mdtrt_id": None}
    by_mdtrt = {"psn_no": shape.psn_no, "setl_id": None, "mdtrt_id": mdtrt_id}
    for data in (by_setl, by_mdtrt):
        found = await c.ok("5203", {"data": data})
        info = found["setlinfo"]
        assert info["setl_id"] == settled["setl_id"] and info["mdtrt_id"] == mdtrt_id
        assert info["refd_setl_flag"] == "0"
        identities(info)
        for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
            assert dec(info[name]) == dec(settled[name]), name
        assert dec(info["psn_pay"]) == dec(info["psn_part_amt"])
        assert dec(info["cash_payamt"]) == dec(info["psn_cash_pay"])


def _as_counter(shape: Shape) -> Shape:
    """The institution's own outpatient counter (national baseline shapes) for `shape`."""
    from dataclasses import replace

    from tests.conformance.shapes import number

    return replace(
        shape,
        name=f"{shape.name}-counter",
        envelope={},
        path_per_infno=False,
        amount=number,
        line_amount=number,
        extras={},
        reads={},
    )


@pytest.mark.parametrize("cert", ["01", "02", "03"])
@pytest.mark.parametrize("shape", lineages("person"))
async def test_person_by_each_certificate_type(server: Server, shape: Shape, cert: str) -> None:
    c = Client(server, shape)
    number = {"01": shape.psn_no, "02": shape.certno, "03": shape.card_no}[cert]
    data = {
        "mdtrt_cert_type": cert,
        "mdtrt_cert_no": number,
        "card_sn": "E12345678" if cert == "03" else "",
        "begntime": "",
        "psn_cert_type": "",
        "certno": "",
        "psn_name": "",
        **shape.extra("data"),
    }
    person = await c.ok("1101", {"data": data})
    assert person["baseinfo"]["psn_no"] == shape.psn_no
    assert [row["insutype"] for row in person["insuinfo"]] == [shape.insutype]
    if cert == "03":
        data["card_sn"] = ""
        refused = await c.call("1101", {"data": data})
        assert refused["infcode"] == -1 and "card_sn" in refused["err_msg"]


async def _pharmacy_sale(c: Client, tag: str) -> dict[str, Any]:
    s = c.shape
    info = {
        "psn_no": s.psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": s.certno,
        "begntime": at("11:00"), "medfee_sumamt": c.amt("19.80"), "insutype": s.insutype,
        "dise_codg": "", "dise_name": "", "acct_used_flag": "1", "med_type": "41",
        "invono": f"FP{tag}", **s.extra("druginfo"),
    }  # fmt: skip
    detail = {
        "feedetl_sn": f"{tag}1", "rxno": "", "rx_circ_flag": "0", "fee_ocur_time": at("11:00"),
        "med_list_codg": "", "medins_list_codg": "YP0007",
        "det_item_fee_sumamt": s.line_amount("19.80"), "cnt": s.line_amount("2"),
        "pric": s.line_amount("9.9"), "sin_dos_dscr": "", "used_frqu_dscr": "",
        "prd_days": s.line_amount("3"), "medc_way_dscr": "", "bilg_dr_codg": "D001",
        "bilg_dr_name": "医生", "tcmdrug_used_way": "",
    }  # fmt: skip
    settled = (await c.ok("2102", {"druginfo": info, "drugdetail": [detail]}))["setlinfo"]
    identities(settled)
    assert isinstance(settled, dict)
    return settled


async def _query(c: Client, setl_id: str) -> dict[str, Any]:
    out = await c.his.ok("5203", {"data": {"psn_no": c.shape.psn_no, "setl_id": setl_id}})
    info = out["setlinfo"]
    assert isinstance(info, dict)
    return info


async def _reverse(c: Client, omsgid: str, oinfno: str) -> None:
    data = {"psn_no": c.shape.psn_no, "omsgid": omsgid, "oinfno": oinfno}
    assert await c.ok("2601", {"data": data}) == {}


async def _balance(c: Client) -> int:
    value = await c.server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", c.shape.psn_no
    )
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize("shape", lineages("reversal"))
async def test_reversal_of_an_outpatient_cancellation(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    mdtrt_id, settled = await _outpatient(c, "X")
    after_settle = await _balance(c)
    ref = {"setl_id": settled["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": shape.psn_no}
    cancel = await c.ok("2208", {"data": {**ref, **shape.extra("data")}})
    negation(cancel["setlinfo"], settled)
    assert await _balance(c) == after_settle + int(dec(settled["acct_pay"]) * 100)
    await _reverse(c, c.last_msgid, "2208")
    again = await _query(c, settled["setl_id"])
    assert again["refd_setl_flag"] == "0"
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay", "hifp_pay"):
        assert dec(again[name]) == dec(settled[name]), name
    assert await _balance(c) == after_settle


@pytest.mark.parametrize("shape", lineages("pharmacy"))
async def test_reversal_of_a_pharmacy_cancellation(server: Server, shape: Shape) -> None:
    assert shape.pharmacy is not None
    c = Client(server, shape, shape.pharmacy)
    settled = await _pharmacy_sale(c, "X")
    after_settle = await _balance(c)
    ref = {"setl_id": settled["setl_id"], "mdtrt_id": settled["mdtrt_id"], "psn_no": shape.psn_no}
    cancel = (await c.ok("2103", {"data": {**ref, **shape.extra("data")}}))["setlinfo"]
    assert dec(cancel["medfee_sumamt"]) == -dec(settled["medfee_sumamt"])
    assert dec(cancel["psn_pay"]) == -dec(settled["psn_part_amt"])
    await _reverse(c, c.last_msgid, "2103")
    again = await _query(c, settled["setl_id"])
    assert again["refd_setl_flag"] == "0"
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert dec(again[name]) == dec(settled[name]), name
    assert await _balance(c) == after_settle


@pytest.mark.parametrize("shape", lineages("inpatient"))
async def test_reversal_of_admission_settlement_and_its_cancellation(
    server: Server, shape: Shape
) -> None:
    c = Client(server, shape)
    s = shape
    before = await _balance(c)

    async def admit(tag: str) -> str:
        adm = {
            "psn_no": s.psn_no, "insutype": s.insutype, "coner_name": "", "tel": "",
            "begntime": at("07:00"), "mdtrt_cert_type": "02", "mdtrt_cert_no": s.certno,
            "med_type": "21", "ipt_no": f"ZY{tag}{s.name}", "medrcdno": "", "atddr_no": "D01",
            "chfpdr_name": "主治医师", "adm_diag_dscr": "肺炎", "adm_dept_codg": "K02",
            "adm_dept_name": "呼吸科", "adm_bed": "12", "dscg_maindiag_code": "J18.900",
            "dscg_maindiag_name": "肺炎", "main_cond_dscr": "", "dise_codg": "",
            "dise_name": "", **s.extra("mdtrtinfo"),
        }  # fmt: skip
        out = await c.ok("2401", {"mdtrtinfo": adm, "diseinfo": []})
        mdtrt_id = out["result"]["mdtrt_id"]
        assert isinstance(mdtrt_id, str)
        return mdtrt_id

    # 2601 of 2401: the admission is undone; nothing can be billed to it any more.
    undone = await admit("U")
    await _reverse(c, c.last_msgid, "2401")
    lines = [("1", "ZL0003", "60", "1")]
    late = await c.call("2301", {"feedetail": fee_rows(c, undone, lines, at("08:00"), None)})
    assert late["infcode"] == -1

    mdtrt_id = await admit("V")
    rows = (
        await c.ok(
            "2301",
            {"feedetail": fee_rows(c, mdtrt_id, [("1", "ZL0003", "60", "2")], at("08:00"), None)},
        )
    )["result"]
    dscg = {
        "mdtrt_id": mdtrt_id, "psn_no": s.psn_no, "insutype": s.insutype,
        "endtime": at("10:00"), "dise_codg": "", "dise_name": "", "dscg_dept_codg": "K02",
        "dscg_dept_name": "呼吸科", "dscg_way": "1",
    }  # fmt: skip
    assert await c.ok("2402", {"dscginfo": dscg, "diseinfo": []}) == {}
    data = with_split(
        c, settle_data(c, mdtrt_id, Decimal("120.00"), mid_setl_flag="0", invono=""), rows
    )
    # 2601 of 2304: the settlement is cancelled exactly; the stay can be settled again.
    first = (await c.ok("2304", data))["setlinfo"]
    identities(first)
    await _reverse(c, c.last_msgid, shape.code("2304"))
    assert (await _query(c, first["setl_id"]))["refd_setl_flag"] == "1"
    assert await _balance(c) == before
    final = (await c.ok("2304", data))["setlinfo"]
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert dec(final[name]) == dec(first[name]), name
    settled_balance = await _balance(c)
    # 2601 of 2305: the cancelled settlement is back with exactly its amounts.
    ref = {"mdtrt_id": mdtrt_id, "psn_no": s.psn_no, "setl_id": final["setl_id"]}
    negation((await c.ok("2305", {"data": ref}))["setlinfo"], final)
    assert await _balance(c) == before
    await _reverse(c, c.last_msgid, "2305")
    back = await _query(c, final["setl_id"])
    assert back["refd_setl_flag"] == "0"
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert dec(back[name]) == dec(final[name]), name
    assert await _balance(c) == settled_balance
