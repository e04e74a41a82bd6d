"""An outpatient settlement is priced by the med_type its visit recorded (2203), as a stay's is
by its admission's (2401): one sent at settlement must agree with it.

Found from outside: a visit recorded as 14 (门诊慢特病) pre-settled as 11 when the 2206 said
so, and one recorded as 11 at the chronic 90% when the 2206 said 14, where a stay's differing
med_type was refused."""

from __future__ import annotations

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient

HOSPITAL = "H44180000001"
RETIREE = "441800000000000002"  # filed for the chronic disease M07800
DAY = "2026-06-08"
LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1",
     "det_item_fee_sumamt": "25.00"},
    {"feedetl_sn": "2", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2",
     "det_item_fee_sumamt": "80.00"},
]  # fmt: skip
TOTAL = "105.00"


async def _visit(his: HisClient, ipt: str, recorded: str | None) -> str:
    mdtrt_id = await his.register(RETIREE, "310", f"{DAY} 09:00:00", ipt)
    if recorded is not None:
        await his.visit_info(mdtrt_id, RETIREE, recorded, f"{DAY} 09:00:00", "M07800")
    rows = his.fee_rows(mdtrt_id, RETIREE, LINES, f"{DAY} 09:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


async def _presettle(his: HisClient, mdtrt_id: str, med_type: str) -> dict[str, object]:
    data = his.settle_data(RETIREE, mdtrt_id, med_type, TOTAL, "310", "0", chrg_bchno="B1")
    return await his.call("2206", data)


async def test_a_settlement_keeps_the_med_type_its_visit_recorded(server: Server) -> None:
    his = server.client(HOSPITAL)
    chronic = await _visit(his, "MZ-MT-1", "14")
    refused = await _presettle(his, chronic, "11")
    assert refused["infcode"] == -1, refused
    assert "医疗类别11与就诊信息上传（2203）时的医疗类别14不一致" in str(refused["err_msg"])
    assert (await _presettle(his, chronic, "14"))["infcode"] == 0

    ordinary = await _visit(his, "MZ-MT-2", "11")
    refused = await _presettle(his, ordinary, "14")
    assert refused["infcode"] == -1 and "2203" in str(refused["err_msg"]), refused


async def test_a_visit_without_its_information_is_settled_as_the_settlement_says(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    bare = await _visit(his, "MZ-MT-3", None)  # no 2203: only the registration's default
    assert (await _presettle(his, bare, "11"))["infcode"] == 0
