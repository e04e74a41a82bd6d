"""2601 冲正: exact undo of settlements, cancellations and admissions; tombstones for the unseen."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from gateway.ledger import reversals
from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, decode

HOSPITAL = "H44180000001"
EMPLOYEE = "441800000000000003"
RETIREE = "441800000000000002"


async def _state(server: Server, psn_no: str) -> tuple[Any, ...]:
    rows = await server.fetch("SELECT * FROM accumulators WHERE psn_no = $1 ORDER BY year", psn_no)
    balance = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", psn_no)
    # A year whose accumulators are all zero is the same state as no row for it.
    return balance, tuple(tuple(r.values()) for r in rows if any(list(r.values())[2:]))


async def _outpatient(
    his: HisClient, ipt: str, msgid: str | None = None
) -> tuple[str, dict[str, Any], str]:
    mdtrt_id = await his.register(EMPLOYEE, "310", "2026-07-01 09:00:00", ipt)
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0006",
            "pric": "280",
            "cnt": "1",
            "det_item_fee_sumamt": "280.00",
        }
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, lines, "2026-07-01 09:10:00", "B1")}
    )
    msgid = msgid or his.msgid()
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "280.00", "310", "1", chrg_bchno="B1")
    out = await his.ok("2207", data, msgid=msgid)
    return mdtrt_id, out["setlinfo"], msgid


def _reverse(psn_no: str, omsgid: str, oinfno: str) -> dict[str, Any]:
    return {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": oinfno}}


async def test_reversing_a_settlement_restores_everything(server: Server) -> None:
    his = server.client(HOSPITAL)
    before = await _state(server, EMPLOYEE)
    mdtrt_id, info, msgid = await _outpatient(his, "MZ-REV-1")
    assert await _state(server, EMPLOYEE) != before
    body = msgspec.json.encode(his.envelope("2601", _reverse(EMPLOYEE, msgid, "2207")))
    _, first = await his.post_raw(body)
    assert decode(first)["infcode"] == 0
    assert await _state(server, EMPLOYEE) == before
    assert (
        await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", info["setl_id"])
        == "cancelled"
    )
    _, replay = await his.post_raw(body)
    assert replay == first  # the reversal itself is idempotent by its msgid
    again = await his.call("2601", _reverse(EMPLOYEE, msgid, "2207"))
    assert again["infcode"] == -1 and "已冲正" in again["err_msg"]
    # The lines are free again: the visit can be settled anew.
    out = await his.ok(
        "2207", his.settle_data(EMPLOYEE, mdtrt_id, "11", "280.00", "310", "1", chrg_bchno="B1")
    )
    assert out["setlinfo"]["medfee_sumamt"] == info["medfee_sumamt"]


async def test_reversing_a_cancellation_reinstates_the_settlement(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id, info, _ = await _outpatient(his, "MZ-REV-2")
    settled_state = await _state(server, EMPLOYEE)
    cancel_msgid = his.msgid()
    await his.ok(
        "2208",
        {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}},
        msgid=cancel_msgid,
    )
    assert await _state(server, EMPLOYEE) != settled_state
    await his.ok("2601", _reverse(EMPLOYEE, cancel_msgid, "2208"))
    assert await _state(server, EMPLOYEE) == settled_state
    found = await his.ok("5203", {"data": {"setl_id": info["setl_id"]}})
    assert found["setlinfo"]["refd_setl_flag"] == "0"
    for field in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert found["setlinfo"][field] == info[field]


async def test_a_retry_of_a_reversed_message_is_refused_as_reversed(server: Server) -> None:
    """Found from outside (four testers): a till resending a 2102, a 2103, a 2207 under its
    msgid after its own 2601 had reversed it was told 成功 with the old amounts (a sale paid by
    the account, a refund made), where the ledger held the opposite. Its key now answers as a
    late original's does, byte for byte on every retry; the 2601's own retry keeps its 成功;
    nothing is settled or refunded again."""
    his = server.client(HOSPITAL)
    mdtrt_id, info, settle_msgid = await _outpatient(his, "MZ-REV-R1")
    settle = msgspec.json.encode(
        his.envelope(
            "2207",
            his.settle_data(EMPLOYEE, mdtrt_id, "11", "280.00", "310", "1", chrg_bchno="B1"),
            msgid=settle_msgid,
        )
    )
    # A cancellation reversed: its retry refused, the settlement in force as it was.
    cancel_msgid = his.msgid()
    keys = {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}
    cancel = msgspec.json.encode(his.envelope("2208", {"data": keys}, msgid=cancel_msgid))
    _, cancelled = await his.post_raw(cancel)
    assert decode(cancelled)["infcode"] == 0
    undo = msgspec.json.encode(his.envelope("2601", _reverse(EMPLOYEE, cancel_msgid, "2208")))
    _, undone = await his.post_raw(undo)
    assert decode(undone)["infcode"] == 0
    settled_state = await _state(server, EMPLOYEE)
    _, retried = await his.post_raw(cancel)
    answer = decode(retried)
    assert answer["infcode"] == -1, answer
    assert f"报文ID{cancel_msgid}的交易已被冲正（2601）" in answer["err_msg"], answer
    assert await his.post_raw(cancel) == (200, retried)  # the same refusal, byte for byte
    assert await his.post_raw(undo) == (200, undone)  # the 2601's own answer stands
    assert await _state(server, EMPLOYEE) == settled_state
    # The settlement itself reversed: its retry refused, nothing settled again.
    await his.ok("2601", _reverse(EMPLOYEE, settle_msgid, "2207"))
    before = await _state(server, EMPLOYEE)
    _, retried = await his.post_raw(settle)
    assert decode(retried)["infcode"] == -1 and "已被冲正（2601）" in decode(retried)["err_msg"]
    assert await _state(server, EMPLOYEE) == before
    count = "SELECT count(*) FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'"
    assert await server.fetchval(count, mdtrt_id) == 0
    # A pharmacy sale and its refund alike.
    pos = server.client("P44180000001")
    lines = [{"feedetl_sn": "1", "medins_list_codg": "YP0007", "pric": "9.9", "cnt": "1",
              "det_item_fee_sumamt": "9.90"}]  # fmt: skip
    sale_msgid = pos.msgid()
    drug = pos.drug_input(EMPLOYEE, "2026-07-02 10:00:00", "9.90", lines)
    sale = msgspec.json.encode(pos.envelope("2102", drug, msgid=sale_msgid))
    sold = decode((await pos.post_raw(sale))[1])["output"]["setlinfo"]
    refund_msgid = pos.msgid()
    ref = {"data": {"setl_id": sold["setl_id"], "mdtrt_id": sold["mdtrt_id"], "psn_no": EMPLOYEE}}
    refund = msgspec.json.encode(pos.envelope("2103", ref, msgid=refund_msgid))
    assert decode((await pos.post_raw(refund))[1])["infcode"] == 0
    await pos.ok("2601", _reverse(EMPLOYEE, refund_msgid, "2103"))
    sold_state = await _state(server, EMPLOYEE)
    retried_refund = decode((await pos.post_raw(refund))[1])
    assert retried_refund["infcode"] == -1 and "已被冲正" in retried_refund["err_msg"]
    assert await _state(server, EMPLOYEE) == sold_state  # the sale stands, nothing refunded
    await pos.ok("2601", _reverse(EMPLOYEE, sale_msgid, "2102"))
    retried_sale = decode((await pos.post_raw(sale))[1])
    assert retried_sale["infcode"] == -1 and "已被冲正" in retried_sale["err_msg"]
    assert await _state(server, EMPLOYEE) == before


async def test_reversing_a_refused_message_says_nothing_was_put_back(server: Server) -> None:
    """Found from outside: a 2601 of a cancellation that had been refused ("已撤销") answered
    成功 with nothing else, read by the clerk as the settlement put back in force. It changes
    nothing, and says so."""
    his = server.client(HOSPITAL)
    mdtrt_id, info, _ = await _outpatient(his, "MZ-REV-9")
    ref = {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}}
    await his.ok("2208", ref)
    cancelled = await _state(server, EMPLOYEE)
    again = his.msgid()
    refused = await his.call("2208", ref, msgid=again)
    assert refused["infcode"] == -1 and "已撤销" in refused["err_msg"], refused
    reversed_ = await his.call("2601", _reverse(EMPLOYEE, again, "2208"))
    assert reversed_["infcode"] == 0 and reversed_["output"] == {}, reversed_
    assert f"原报文{again}当时未办理成功" in reversed_["warn_msg"]
    assert "原业务状态不变" in reversed_["warn_msg"]
    # Its retries are refused from now on, and it says so (found from outside: "仅作登记, 原业务
    # 状态不变" alone, where the msgid's answer had changed).
    assert "再次发送将答复已被冲正" in reversed_["warn_msg"], reversed_
    retried = await his.call("2208", ref, msgid=again)
    assert retried["infcode"] == -1 and "已被冲正（2601）" in retried["err_msg"], retried
    assert await _state(server, EMPLOYEE) == cancelled
    found = await his.call("5203", {"data": {"setl_id": info["setl_id"]}})
    assert found["output"]["setlinfo"]["refd_setl_flag"] == "1"  # still cancelled
    # And said in words (found from outside: a settlement undone read like one in force).
    assert found["warn_msg"] == (
        f"结算ID{info['setl_id']}已撤销（refd_setl_flag为1），所列为原结算金额，已不再有效"
    )


async def test_reversing_pharmacy_sale_and_admission(server: Server) -> None:
    pos = server.client("P44180000001")
    before = await _state(server, EMPLOYEE)
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "YP0007",
            "pric": "9.9",
            "cnt": "2",
            "det_item_fee_sumamt": "19.80",
        }
    ]
    sale_msgid = pos.msgid()
    sold = await pos.ok(
        "2102", pos.drug_input(EMPLOYEE, "2026-07-02 10:00:00", "19.80", lines), msgid=sale_msgid
    )
    await pos.ok("2601", _reverse(EMPLOYEE, sale_msgid, "2102"))
    assert await _state(server, EMPLOYEE) == before
    mdtrt_id = sold["setlinfo"]["mdtrt_id"]
    assert (
        await server.fetchval("SELECT status FROM encounters WHERE mdtrt_id = $1", mdtrt_id)
        == "cancelled"
    )
    assert (
        await server.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id) == 0
    )

    his = server.client(HOSPITAL)
    admit_msgid = his.msgid()
    admitted = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": RETIREE,
                "insutype": "310",
                "begntime": "2026-07-03 10:00:00",
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": RETIREE,
                "med_type": "21",
                "ipt_no": "ZY-REV-1",
            },
            "diseinfo": [],
        },
        msgid=admit_msgid,
    )
    await his.ok("2601", _reverse(RETIREE, admit_msgid, "2401"))
    status = await server.fetchval(
        "SELECT status FROM encounters WHERE mdtrt_id = $1", admitted["result"]["mdtrt_id"]
    )
    assert status == "cancelled"


async def test_unknown_original_gets_a_tombstone_and_is_refused_late(server: Server) -> None:
    his = server.client(HOSPITAL)
    lost = his.msgid()  # the 2207 that timed out before reaching the centre
    answer = await his.call("2601", _reverse(EMPLOYEE, lost, "2207"))
    assert answer["infcode"] == 0 and "冲正" in answer["warn_msg"]
    mdtrt_id = await his.register(EMPLOYEE, "310", "2026-07-04 09:00:00", "MZ-REV-3")
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0001",
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        }
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, lines, "2026-07-04 09:10:00", "B1")}
    )
    before = await server.ledger_fingerprint()
    counted = await _replays_and_refusals(server)
    late = msgspec.json.encode(
        his.envelope(
            "2207",
            his.settle_data(EMPLOYEE, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1"),
            msgid=lost,
        )
    )
    _, first = await his.post_raw(late)
    refused = decode(first)
    assert refused["infcode"] == -1 and "冲正" in refused["err_msg"]
    assert await server.ledger_fingerprint() == before
    _, again = await his.post_raw(late)
    assert again == first
    # Refusals both, not replays: the client sent this original for the first time (found from
    # outside: logged and counted as a replay).
    replays, refusals = await _replays_and_refusals(server)
    assert (replays, refusals) == (counted[0], counted[1] + 2)


async def _replays_and_refusals(server: Server) -> tuple[float, float]:
    """sgw_replays_total and the 2207 refusals counted so far."""
    async with server.session.get(server.url + "/metrics") as r:
        text = await r.text()
    replays = re.search(r"^sgw_replays_total (\S+)$", text, re.M)
    refused = re.search(
        r'^sgw_requests_total\{infno="2207",outcome="rejected"\} (\S+)$', text, re.M
    )
    return (
        float(replays.group(1)) if replays else 0.0,
        float(refused.group(1)) if refused else 0.0,
    )


async def test_another_institution_cannot_reverse(server: Server) -> None:
    """Found from outside (twice): another institution's 2601 of a sale answered 成功 with "the
    original will be refused when it arrives", read at its counter as the sale reversed. A msgid
    that begins with another registered institution's code is that institution's (protocol
    §1.4): refused, naming it, and nothing is written."""
    his = server.client(HOSPITAL)
    _, info, msgid = await _outpatient(his, "MZ-REV-4")
    other = server.client("H44180000002")
    before = await server.ledger_fingerprint()
    tombstones = await server.fetchval("SELECT count(*) FROM idempotency WHERE tombstone")
    answer = await other.call("2601", _reverse(EMPLOYEE, msgid, "2207"))
    assert answer["infcode"] == -1
    assert f"原报文{msgid}不是本机构的报文" in answer["err_msg"]
    assert HOSPITAL in answer["err_msg"] and "未冲正" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert await server.fetchval("SELECT count(*) FROM idempotency WHERE tombstone") == tombstones
    assert (
        await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", info["setl_id"])
        == "settled"
    )
    assert Decimal(info["medfee_sumamt"]) == Decimal("280.00")
    # The owner's own 2601 still reverses it.
    await his.ok("2601", _reverse(EMPLOYEE, msgid, "2207"))
    assert (
        await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", info["setl_id"])
        != "settled"
    )


async def test_an_unseen_msgid_of_no_registered_institution_is_still_barred(
    server: Server,
) -> None:
    """Only a registered institution's code makes a msgid another's: an original of this
    institution's own that never arrived, whatever its msgid begins with, is barred as before."""
    other = server.client("H44180000002")
    lost = "X99999999999" + other.msgid()[12:]
    answer = await other.call("2601", _reverse(EMPLOYEE, lost, "2207"))
    assert answer["infcode"] == 0 and "原交易到达时将被拒绝" in answer["warn_msg"]


async def test_ledger_balances_after_reversals(server: Server) -> None:
    assert await server.check_ledger() == []


async def test_a_cancellation_committed_first_gets_the_reversals_own_refusal(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2208 that commits between the 2601's read of the settlement and its lock (a race an
    outside pass found): the 2601 answers as it does when the 2208 came first, "无需冲正", not
    with the 2208's own "不能重复撤销". The race is made certain by a read that sees the
    settlement as it was before the 2208."""
    his = server.client(HOSPITAL)
    mdtrt_id, info, msgid = await _outpatient(his, "MZ-REV-RACE")
    await his.ok(
        "2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}}
    )
    read = reversals.settlement_of

    async def read_before_the_cancellation(*args: Any) -> reversals.Settled | None:
        row = await read(*args)
        return None if row is None else msgspec.structs.replace(row, status="settled")

    monkeypatch.setattr(reversals, "settlement_of", read_before_the_cancellation)
    answer = await his.call("2601", _reverse(EMPLOYEE, msgid, "2207"))
    assert answer["infcode"] == -1 and "无需冲正" in answer["err_msg"], answer["err_msg"]
    assert (
        await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", info["setl_id"])
        == "cancelled"
    )


@pytest.mark.parametrize("omsgid", ["a b", "a\tb", "ｍｓｇ", "x;drop", "../x"])
async def test_a_reversal_of_a_message_id_no_message_can_have_is_refused(
    server: Server, omsgid: str
) -> None:
    """Found from outside: a 2601 whose omsgid no envelope could carry (blanks, full-width
    letters, "../") was answered "the original never arrived, registered as reversed", a bar
    recorded for a message that could never come. Refused now, as such a msgid is: only the
    refusal is kept (against the 2601's own msgid), no bar."""
    pos = server.client("P44180000001")
    bars = "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1"
    before = await server.fetchval(bars, "P44180000001")
    answer = await pos.call("2601", _reverse("441800000000000001", omsgid, "2102"))
    assert answer["infcode"] == -1 and "omsgid格式错误" in answer["err_msg"], answer
    assert await server.fetchval(bars, "P44180000001") == before + 1  # the refusal, kept
