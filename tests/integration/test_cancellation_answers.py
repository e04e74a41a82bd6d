"""What a cancellation and a 5203 answer say besides the money (found from outside, by a tester
comparing every answer with a model of the rules written from the spec alone): the person's age
on the visit's date, and which of a stay's settlements a 5203 by visit names."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import BIG_LINES, BIG_TOTAL
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import total
from tests.integration.test_replay_claim_lines import (
    BEFORE,
    HOSPITAL,
    RETIREE,
    _admission,
    _stay_settlement,
    _upload,
)

pytestmark = pytest.mark.integration

EMPLOYEE = "441800000000000001"  # born 1990-01-01


async def _outpatient(his: HisClient, day: str, no: str) -> dict[str, Any]:
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{day} 08:30:00", no)
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{day} 08:30:00")
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, BIG_LINES, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    return await his.ok("2207", data)


async def test_the_age_answered_is_on_the_visits_date_in_every_answer(server: Server) -> None:
    """The employee was 35 on 2025-03-20 and is older on any day this test runs: the
    cancellation and the 5203 answered the age on the day they were asked."""
    his = server.client(HOSPITAL)
    settled = (await _outpatient(his, "2025-03-20", "MZ-AGE-1"))["setlinfo"]
    assert Decimal(str(settled["age"])) == Decimal("35.0")
    keys = {"setl_id": settled["setl_id"], "mdtrt_id": settled["mdtrt_id"], "psn_no": EMPLOYEE}
    queried = (await his.ok("5203", {"data": keys}))["setlinfo"]
    cancelled = (await his.ok("2208", {"data": keys}))["setlinfo"]
    after = (await his.ok("5203", {"data": keys}))["setlinfo"]
    assert [Decimal(str(x["age"])) for x in (queried, cancelled, after)] == [Decimal("35.0")] * 3


async def test_5203_by_visit_names_the_settlement_in_force(server: Server) -> None:
    """A stay settled mid-way twice, the second cancelled: by mdtrt_id the 5203 answered the
    cancelled one (the newest), and the clerk took the stay for unsettled."""
    his = server.client(HOSPITAL)
    mdtrt_id = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
    await his.ok("2301", _upload(mdtrt_id, BEFORE[:1], "2025-07-02 10:00:00"))
    kept = (await his.ok("2304", _stay_settlement(his, mdtrt_id, total(BEFORE[:1]), "1")))[
        "setlinfo"
    ]
    await his.ok("2301", _upload(mdtrt_id, BEFORE[1:], "2025-07-03 10:00:00"))
    later = (await his.ok("2304", _stay_settlement(his, mdtrt_id, total(BEFORE[1:]), "1")))[
        "setlinfo"
    ]
    by_visit = {"data": {"psn_no": RETIREE, "setl_id": "", "mdtrt_id": mdtrt_id}}
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == later["setl_id"]  # both in force: the newest
    cancel = {"data": {"setl_id": later["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    await his.ok("2305", cancel)
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == kept["setl_id"] and found["refd_setl_flag"] == "0"
    await his.ok(
        "2305", {"data": {"setl_id": kept["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    )
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == later["setl_id"] and found["refd_setl_flag"] == "1"


async def test_5203_of_a_settlement_with_another_visit_says_the_pair_is_wrong(
    server: Server,
) -> None:
    """A 结算ID sent with another visit's 就诊ID was answered "未查询到本机构的结算信息", which a
    clerk reads as "no such settlement" (and may settle again) when only the pair is wrong."""
    his = server.client(HOSPITAL)
    one = (await _outpatient(his, "2025-04-01", "MZ-PAIR-1"))["setlinfo"]
    other = (await _outpatient(his, "2025-04-02", "MZ-PAIR-2"))["setlinfo"]
    wrong = {"data": {"setl_id": one["setl_id"], "mdtrt_id": other["mdtrt_id"], "psn_no": EMPLOYEE}}
    answer = await his.call("5203", wrong)
    assert answer["infcode"] == -1
    assert answer["err_msg"] == f"结算ID{one['setl_id']}与就诊ID、人员编号不对应，请核对后查询"
    unknown = {"data": {"setl_id": "NO-SUCH", "mdtrt_id": other["mdtrt_id"], "psn_no": EMPLOYEE}}
    assert (await his.call("5203", unknown))["err_msg"] == "未查询到本机构的结算信息"


async def test_a_cancellation_of_a_settlement_never_made_here_points_to_the_old_system(
    server: Server,
) -> None:
    """Found from outside: after a cut-over, 2208 of a settlement the old system made before it
    was told only that it did not exist or was not the institution's."""
    his = server.client(HOSPITAL)
    old = {"data": {"setl_id": "OLDSETL000777", "mdtrt_id": "OLDMDTRT000777", "psn_no": EMPLOYEE}}
    answer = await his.call("2208", old)
    assert answer["infcode"] == -1
    assert answer["err_msg"] == (
        "结算IDOLDSETL000777不存在或不属于本机构；如为本系统上线前由原系统办理的结算，"
        "请在原系统办理撤销"
    )


async def test_5204_answers_a_settlements_lines_as_it_settled_them(server: Server) -> None:
    """5204 费用明细查询 was refused as unknown; nhis-web reads every settlement's lines back
    with it after 2207/2304 and cancels the settlement when it fails, so none survived. The
    answer's `output` is the list of lines (that client reads it so), each with the split the
    settlement applied: the same figures the upload's answer gave for each line."""
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(EMPLOYEE, "310", "2025-05-06 08:30:00", "MZ-5204-1")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", "2025-05-06 08:30:00")
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, BIG_LINES, "2025-05-06 08:40:00", "B1")
    uploaded = (await his.ok("2204", {"feedetail": rows}))["result"]
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    info = (await his.ok("2207", data))["setlinfo"]
    keys = {"data": {"psn_no": EMPLOYEE, "setl_id": info["setl_id"], "mdtrt_id": mdtrt_id}}
    answer = await his.call("5204", keys)
    assert answer["infcode"] == 0, answer["err_msg"]
    lines = answer["output"]
    assert isinstance(lines, list) and [ln["feedetl_sn"] for ln in lines] == ["1", "2"]
    split = ("det_item_fee_sumamt", "fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt",
             "inscp_scp_amt", "selfpay_prop", "chrgitm_lv", "med_chrgitm_type")  # fmt: skip
    for got, up in zip(lines, uploaded, strict=True):
        assert {k: str(got[k]) for k in split} == {k: str(up[k]) for k in split}
        assert got["setl_id"] == info["setl_id"] and got["mdtrt_id"] == mdtrt_id
        assert got["fee_ocur_time"] == "2025-05-06 08:40:00" and got["chrg_bchno"] == "B1"
        assert got["med_type"] == "11" and got["hilist_code"] == got["med_list_codg"]
    assert sum(Decimal(str(ln["det_item_fee_sumamt"])) for ln in lines) == Decimal(BIG_TOTAL)
    assert lines[1]["medins_list_codg"] == "YP0003" and lines[1]["hilist_name"]
    # Cancelled, the settlement's lines are still its own to read back.
    await his.ok("2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}})  # fmt: skip
    again = await his.call("5204", keys)
    assert again["infcode"] == 0 and again["output"] == lines
    # Settled again and cancelled again, the rows untouched: still the times they were uploaded
    # with (found from outside: a stay's mid-way cancelled, settled and cancelled again, and a
    # sale a 2601 reversed, read back with none).
    data2 = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    second = (await his.ok("2207", data2))["setlinfo"]
    await his.ok("2208", {"data": {"setl_id": second["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}})  # fmt: skip
    assert (await his.call("5204", keys))["output"] == lines
    # Its lines withdrawn and one sent again, changed, under the same serial number: the
    # settlement's record is what it settled, never the new upload's (found from outside: the
    # new line's time showed beside the old amounts, and a withdrawn line lost its batch).
    await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": EMPLOYEE}})
    changed_line = dict(BIG_LINES[0], cnt="2", det_item_fee_sumamt="50.00")
    changed = his.fee_rows(mdtrt_id, EMPLOYEE, [changed_line], "2025-05-06 09:10:00", "B7")
    await his.ok("2204", {"feedetail": changed})
    later = await his.call("5204", keys)
    assert later["infcode"] == 0
    for got, before in zip(later["output"], lines, strict=True):
        assert {k: str(got[k]) for k in split} == {k: str(before[k]) for k in split}
        assert got["fee_ocur_time"] is None and got["chrg_bchno"] == "B1", got
    # Refusals in the clerk's words: a pair that does not match, none at all (no 结算ID is
    # the visit's lines: the test below).
    other = await his.register(EMPLOYEE, "310", "2025-05-07 08:30:00", "MZ-5204-2")
    wrong = {"data": {"psn_no": EMPLOYEE, "setl_id": info["setl_id"], "mdtrt_id": other}}
    assert (await his.call("5204", wrong))["err_msg"].endswith("不对应，请核对后查询")
    none = {"data": {"psn_no": EMPLOYEE, "setl_id": "NO-SUCH", "mdtrt_id": mdtrt_id}}
    assert (await his.call("5204", none))["err_msg"] == "未查询到本机构的结算信息"


async def test_5204_of_a_pharmacy_sale_gives_its_detlcutinfo(server: Server) -> None:
    pos = server.client("P44180000001")
    lines = [
        {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2",
         "det_item_fee_sumamt": "80.00"},
        {"feedetl_sn": "2", "medins_list_codg": "YP0007", "pric": "0.99", "cnt": "20",
         "det_item_fee_sumamt": "19.80"},
    ]  # fmt: skip
    sale = await pos.ok("2102", pos.drug_input(EMPLOYEE, "2025-05-08 10:00:00", "99.80", lines))
    info = sale["setlinfo"]
    keys = {"data": {"psn_no": EMPLOYEE, "setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"]}}
    answer = await pos.call("5204", keys)
    assert answer["infcode"] == 0, answer["err_msg"]
    got = answer["output"]
    # A till whose sale timed out knows the person and its msgid, not the ids (protocol §6.2):
    # 5203 by the person alone answers their latest settlement here (found from outside:
    # refused), to be matched by medins_setl_id.
    by_person = {"data": {"psn_no": EMPLOYEE, "setl_id": "", "mdtrt_id": ""}}
    latest = (await pos.ok("5203", by_person))["setlinfo"]
    assert latest["setl_id"] == info["setl_id"]
    assert latest["medins_setl_id"] == info["medins_setl_id"]
    nobody = {"data": {"psn_no": "441899999999999999", "setl_id": "", "mdtrt_id": ""}}
    assert (await pos.call("5203", nobody))["err_msg"] == "未查询到本机构该人员的结算信息"
    none = {"data": {"psn_no": "", "setl_id": "", "mdtrt_id": ""}}
    assert "至少填写一项" in (await pos.call("5203", none))["err_msg"]
    for row, cut in zip(got, sale["detlcutinfo"], strict=True):
        assert {k: str(v) for k, v in cut.items()} == {k: str(row[k]) for k in cut}
        assert row["fee_ocur_time"] == "2025-05-08 10:00:00"


def _limit(answer: dict[str, Any], fund: str) -> Decimal:
    [row] = [r for r in answer["setldetail"] if r["fund_pay_type"] == fund]
    return Decimal(str(row["crt_payb_lmt_amt"]))


async def test_a_cancellations_limit_is_the_funds_year_after_the_refund(server: Server) -> None:
    """Found from outside (five testers): a 2208's fund rows repeated the original settlement's
    remaining annual limit, as if the refund had left the fund's year as it was. It is the limit
    after the refund: the original's, plus what it drew, less what settlements since drew."""
    his = server.client(HOSPITAL)
    day = "2025-05-21"  # a year of its own for the person in this module
    first = await _outpatient(his, day, "MZ-LMT-1")
    second = await _outpatient(his, day, "MZ-LMT-2")
    pool = "310100"
    drew = [Decimal(str(a["setlinfo"]["hifp_pay"])) for a in (first, second)]
    assert drew[0] > 0 and drew[1] > 0
    assert _limit(second, pool) == _limit(first, pool) - drew[1]
    info = first["setlinfo"]
    keys = {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": EMPLOYEE}
    cancelled = await his.ok("2208", {"data": keys})
    # The first's draw is back; the second's, made since, is still drawn.
    assert _limit(cancelled, pool) == _limit(second, pool) + drew[0]
    assert Decimal(str(cancelled["setldetail"][0]["fund_payamt"])) == -drew[0]


async def test_a_msgid_a_cancellation_used_is_told_as_a_cancellations(server: Server) -> None:
    """Found from outside: a 2207 sent under the msgid a 2208 had used was told to find, by
    5203, the settlement whose medins_setl_id is that msgid; a cancellation makes none."""
    his = server.client(HOSPITAL)
    settled = (await _outpatient(his, "2025-03-21", "MZ-MSGID-1"))["setlinfo"]
    keys = {"setl_id": settled["setl_id"], "mdtrt_id": settled["mdtrt_id"], "psn_no": EMPLOYEE}
    cancel_msgid = his.msgid()
    await his.ok("2208", {"data": keys}, msgid=cancel_msgid)
    data = his.settle_data(
        EMPLOYEE, settled["mdtrt_id"], "11", BIG_TOTAL, "310", "0", chrg_bchno="B1"
    )
    reused = await his.call("2207", data, msgid=cancel_msgid)
    assert reused["infcode"] == -1, reused
    words = str(reused["err_msg"])
    assert "结算撤销" in words and "新的报文ID" in words and "medins_setl_id" not in words, words
    # A settlement's msgid used again still points to the settlement it made.
    again = await _outpatient(his, "2025-03-21", "MZ-MSGID-2")
    medins = again["setlinfo"]["medins_setl_id"]
    other = await his.call("2207", data, msgid=medins)
    assert f"medins_setl_id为{medins}的结算" in str(other["err_msg"]), other


@pytest.mark.parametrize("setl_id", ["", None], ids=["empty", "null"])
async def test_5204_by_the_visit_alone_answers_its_lines_settled_or_not(
    server: Server, setl_id: str | None
) -> None:
    """Found from outside: a 5204 naming the visit with its 结算ID empty or null was refused
    ("缺少必填字段结算ID"), where the interface's table makes the 就诊ID required and the
    结算ID optional (binzhe12123/Medical `SY.Com.Medical.Model/SYB/XXCX/FY5204.cs`, `In5204`).
    By the visit alone it answers every line of it: those its settlement in force settled,
    with that settlement's id and split, and those not settled yet, split as their upload was
    answered, with no 结算ID; a cancelled settlement's lines are unsettled again."""
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(EMPLOYEE, "310", "2025-05-07 08:30:00", f"MZ-5204-V{setl_id}")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", "2025-05-07 08:30:00")
    first = his.fee_rows(mdtrt_id, EMPLOYEE, BIG_LINES, "2025-05-07 08:40:00", "B1")
    uploaded = (await his.ok("2204", {"feedetail": first}))["result"]
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    info = (await his.ok("2207", data))["setlinfo"]
    later_line = dict(BIG_LINES[0], feedetl_sn="9")
    second = his.fee_rows(mdtrt_id, EMPLOYEE, [later_line], "2025-05-07 09:00:00", "B2")
    waiting = (await his.ok("2204", {"feedetail": second}))["result"]
    keys = {"data": {"psn_no": EMPLOYEE, "setl_id": setl_id, "mdtrt_id": mdtrt_id}}
    lines = await _rows_5204(his, keys)
    assert [(ln["feedetl_sn"], ln["setl_id"], ln["chrg_bchno"]) for ln in lines] == [
        ("1", info["setl_id"], "B1"),
        ("2", info["setl_id"], "B1"),
        ("9", "", "B2"),
    ]
    split = ("det_item_fee_sumamt", "fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt",
             "inscp_scp_amt", "selfpay_prop", "chrgitm_lv", "med_chrgitm_type")  # fmt: skip
    for got, up in zip(lines, [*uploaded, *waiting], strict=True):
        assert {k: str(got[k]) for k in split} == {k: str(up[k]) for k in split}
        assert got["mdtrt_id"] == mdtrt_id and got["med_type"] == "11"
    assert lines[2]["fee_ocur_time"] == "2025-05-07 09:00:00"
    # Cancelled, the settlement's lines are the visit's unsettled lines again.
    await his.ok("2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}})  # fmt: skip
    after = await _rows_5204(his, keys)
    assert [(ln["feedetl_sn"], ln["setl_id"]) for ln in after] == [("1", ""), ("2", ""), ("9", "")]
    # Another person's pair, and neither id, are refused in words.
    other = {"data": {"psn_no": "441800000000000002", "setl_id": setl_id, "mdtrt_id": mdtrt_id}}
    refused = await his.call("5204", other)
    assert refused["infcode"] == -1 and "参保人不一致" in refused["err_msg"]
    neither = await his.call("5204", {"data": {"psn_no": EMPLOYEE, "setl_id": setl_id}})
    assert neither["infcode"] == -1
    assert neither["err_msg"] == "结算ID setl_id与就诊ID mdtrt_id至少填写一项"


async def _rows_5204(his: HisClient, keys: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await his.call("5204", keys)
    assert answer["infcode"] == 0, answer["err_msg"]
    rows = answer["output"]
    assert isinstance(rows, list)
    return rows


async def test_5204_by_a_pharmacy_sales_visit_lists_no_line_once_the_sale_is_cancelled(
    server: Server,
) -> None:
    """Found from outside: after a sale's 2103, 5204 by its 就诊ID listed the sale's line as
    waiting to be settled, a phantom bill of the refunded amount (a sale has no lines outside
    its settlement, and a cancelled one can never be settled)."""
    pos = server.client("P44180000001")
    drug = pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", "80.00", [
        {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"}
    ])  # fmt: skip
    sale = (await pos.ok("2102", drug))["setlinfo"]
    keys = {"data": {"psn_no": EMPLOYEE, "setl_id": "", "mdtrt_id": sale["mdtrt_id"]}}
    lines = await _rows_5204(pos, keys)
    assert [(ln["feedetl_sn"], ln["setl_id"]) for ln in lines] == [("1", sale["setl_id"])]
    ref = {"setl_id": sale["setl_id"], "mdtrt_id": sale["mdtrt_id"], "psn_no": EMPLOYEE}
    await pos.ok("2103", {"data": ref})
    assert await _rows_5204(pos, keys) == []
