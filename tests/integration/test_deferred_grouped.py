"""A pharmacy's deferred claims go through the group commit, as its sales do: a burst of claims
shares transactions, and each claim is answered and stored exactly as the single path answers
and stores it (the group commit off), refusals included."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from gateway.app.config import GroupCommitConfig
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import clear_rule, cli, set_rule, until
from tests.integration.his_client import HisClient, decode
from tests.integration.test_group_commit import basket, batches

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
PEOPLE = ["441800000000000001", "441800000000000002", "441800000000000003"]
UNKNOWN = "441899999999999999"
DAY = "2026-03-02 09:30:00"
ONE_WRITER = replace(GENEROUS, group_commit=GroupCommitConfig(writers=1, max_batch=64))
SINGLE = replace(GENEROUS, group_commit=GroupCommitConfig(writers=0, max_batch=64))


@pytest.fixture(scope="module")
async def paths(new_database: Callable[..., Any]) -> AsyncIterator[dict[str, Server]]:
    async with AsyncExitStack() as stack:
        servers = {
            "grouped": await stack.enter_async_context(running_gateway(new_database, ONE_WRITER)),
            "single": await stack.enter_async_context(running_gateway(new_database, SINGLE)),
        }
        for server in servers.values():
            await _defer(server, server.client(PHARMACY), PEOPLE[0], on=True)
        yield servers


_CLAIM_ID = re.compile(r"DF[0-9A-F]+")


def _normalised(raw: bytes) -> dict[str, Any]:
    """An answer with what differs between two gateways by design taken out: the claim's own
    number (drawn at random), the clocks."""
    answer = decode(raw)
    text = _CLAIM_ID.sub("DF…", msgspec.json.encode(answer).decode())
    answer = msgspec.json.decode(text)
    for key in ("refmsg_time", "respond_time", "inf_refmsgid"):
        answer.pop(key, None)
    info = (answer.get("output") or {}).get("setlinfo")
    if info:
        info["setl_time"] = None
    return dict(answer)


async def _send(pos: HisClient, msgid: str, input_: dict[str, Any]) -> bytes:
    _, raw = await pos.post_raw(msgspec.json.encode(pos.envelope("2102", input_, msgid=msgid)))
    return raw


async def test_a_burst_of_claims_shares_transactions_and_answers_as_the_single_path(
    paths: dict[str, Server],
) -> None:
    grouped, single = paths["grouped"], paths["single"]
    sales = [
        (f"DG{i:04d}", PEOPLE[i % 3], f"{10 + i}.00", basket(f"{10 + i}.00")) for i in range(30)
    ]
    before = batches()
    answers = {}
    for name, server in paths.items():
        pos = server.client(PHARMACY)
        sent = await asyncio.gather(
            *(_send(pos, msgid, pos.drug_input(p, DAY, total, lines)) for msgid, p, total, lines in sales)
        )  # fmt: skip
        answers[name] = {msgid: raw for (msgid, *_), raw in zip(sales, sent, strict=True)}
        if name == "grouped":
            after = batches()
            # 30 claims, fewer commits: the claims were batched (the single gateway is in the
            # same process, but commits nothing through a group).
            assert after[0] - before[0] == 30
            assert after[1] - before[1] < 30
    for msgid, *_ in sales:
        one, other = decode(answers["grouped"][msgid]), decode(answers["single"][msgid])
        assert one["infcode"] == 0, one["err_msg"]
        assert _normalised(answers["grouped"][msgid]) == _normalised(answers["single"][msgid])
        claim_id = one["output"]["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF") and claim_id in one["warn_msg"]
        assert other["output"]["setlinfo"]["setl_id"].startswith("DF")
    rows = {}
    for name, server in paths.items():
        rows[name] = [
            tuple(r)
            for r in await server.fetch(
                "SELECT msgid, kind, psn_no, mdtrt_id, service_date, medfee_sumamt, source,"
                " status, lines FROM deferred WHERE fixmedins_code = $1 AND msgid LIKE 'DG%'"
                " ORDER BY msgid",
                PHARMACY,
            )
        ]
        stored = await server.fetch(
            "SELECT d.msgid, d.claim_id, i.answer FROM deferred d JOIN idempotency i"
            " ON i.fixmedins_code = d.fixmedins_code AND i.msgid = d.msgid"
            " WHERE d.fixmedins_code = $1 AND d.msgid LIKE 'DG%'",
            PHARMACY,
        )
        assert len(stored) == 30
        for r in stored:
            # The claim stored is the one answered, and a retry gets the very bytes.
            assert bytes(r["answer"]) == answers[name][r["msgid"]]
            assert decode(bytes(r["answer"]))["output"]["setlinfo"]["setl_id"] == r["claim_id"]
        assert await server.fetchval("SELECT count(*) FROM settlements") == 0
    assert rows["grouped"] == rows["single"] and len(rows["grouped"]) == 30
    # A retry of a grouped claim: its stored answer, and still one claim.
    pos = grouped.client(PHARMACY)
    msgid, p, total, lines = sales[0]
    assert (
        await _send(pos, msgid, pos.drug_input(p, DAY, total, lines)) == answers["grouped"][msgid]
    )
    assert await grouped.fetchval("SELECT count(*) FROM deferred WHERE msgid = $1", msgid) == 1
    assert await grouped.check_ledger() == []
    assert await single.check_ledger() == []


async def test_a_claim_for_an_unknown_person_or_certificate_is_refused_alike(
    paths: dict[str, Server],
) -> None:
    """The certificate is checked against the person as the single path checks it: an unknown
    psn_no, or a certificate of someone else, refused in the same words; nothing is claimed."""
    refused: dict[str, list[dict[str, Any]]] = {}
    for name, server in paths.items():
        pos = server.client(PHARMACY)
        unknown = pos.drug_input(UNKNOWN, DAY, "12.00", basket("12.00"))
        wrong = pos.drug_input(PEOPLE[0], DAY, "12.00", basket("12.00"))
        wrong["druginfo"]["mdtrt_cert_no"] = PEOPLE[1]
        sent = await asyncio.gather(
            _send(pos, "DGX-UNKNOWN", unknown), _send(pos, "DGX-WRONG", wrong)
        )
        refused[name] = [_normalised(raw) for raw in sent]
        assert await server.fetchval("SELECT count(*) FROM deferred WHERE msgid LIKE 'DGX%'") == 0
    assert refused["grouped"] == refused["single"]
    unknown_answer, wrong_answer = refused["grouped"]
    assert unknown_answer["infcode"] == -1 and UNKNOWN in unknown_answer["err_msg"]
    assert "不存在" in unknown_answer["err_msg"]
    assert wrong_answer["infcode"] == -1


async def test_a_claim_is_refused_for_what_the_sale_would_be_refused_for(
    paths: dict[str, Server],
) -> None:
    """Found from outside: a claim of a lapsed person, of an insutype the person does not hold,
    or declaring a total its lines do not make, was answered with a claim number and the promise
    of a reimbursement that replay then refused (with the wrong total the counter took the
    declared sum in cash). Each is now refused as the sale itself is, in its words, by both
    paths, and nothing is claimed."""
    lapsed = "441800000000000007"
    expected = {
        "DGR-LAPSED": "参保状态异常",
        "DGR-INSUTYPE": "险种类型390与参保人险种310不一致",
        "DGR-TOTAL": "医疗费总额99.00与费用明细合计19.80不一致",
    }
    refused: dict[str, list[dict[str, Any]]] = {}
    for name, server in paths.items():
        pos = server.client(PHARMACY)
        bodies = {
            "DGR-LAPSED": pos.drug_input(lapsed, DAY, "19.80", basket("9.90", 2)),
            "DGR-INSUTYPE": pos.drug_input(
                PEOPLE[0], DAY, "19.80", basket("9.90", 2), insutype="390"
            ),
            "DGR-TOTAL": pos.drug_input(PEOPLE[0], DAY, "99.00", basket("9.90", 2)),
        }
        sent = await asyncio.gather(*(_send(pos, m, b) for m, b in bodies.items()))
        refused[name] = [_normalised(raw) for raw in sent]
        for (msgid, words), answer in zip(expected.items(), refused[name], strict=True):
            assert answer["infcode"] == -1, (msgid, answer)
            assert words in answer["err_msg"], (msgid, answer["err_msg"])
        assert await server.fetchval("SELECT count(*) FROM deferred WHERE msgid LIKE 'DGR%'") == 0
        # A claim the sale would take is still taken.
        ok = decode(
            await _send(pos, "DGR-OK", pos.drug_input(PEOPLE[0], DAY, "19.80", basket("9.90", 2)))
        )
        assert ok["infcode"] == 0 and ok["output"]["setlinfo"]["setl_id"].startswith("DF")
    assert refused["grouped"] == refused["single"]


async def test_withdrawing_a_claim_names_its_visit_and_answers_the_refund_as_a_2103_does(
    paths: dict[str, Server],
) -> None:
    """Found from outside: a 2103 naming another visit withdrew the claim (a sale's 2103 is
    refused for a visit it is not of), and the withdrawal's answer had no cash_payamt, which a
    POS reads the refund from."""
    server = paths["grouped"]
    pos = server.client(PHARMACY)
    claim = decode(
        await _send(pos, "DGW-1", pos.drug_input(PEOPLE[1], DAY, "23.00", basket("23.00")))
    )
    info = claim["output"]["setlinfo"]
    claim_id, visit = info["setl_id"], info["mdtrt_id"]
    assert visit == claim_id  # a purchase's visit is made at replay: the claim stands for it
    wrong = await pos.call(
        "2103", {"data": {"setl_id": claim_id, "mdtrt_id": "XYZ", "psn_no": PEOPLE[1]}}
    )
    assert wrong["infcode"] == -1
    assert wrong["err_msg"] == f"结算ID{claim_id}与就诊ID、人员编号不对应"
    status = "SELECT status FROM deferred WHERE claim_id = $1"
    assert await server.fetchval(status, claim_id) == "pending"
    back = await pos.ok(
        "2103", {"data": {"setl_id": claim_id, "mdtrt_id": visit, "psn_no": PEOPLE[1]}}
    )
    refund = back["setlinfo"]
    # Found from outside: `balc` was null in the claim and in its withdrawal, where the
    # interface requires a number; the account was not touched, so it is the balance as it is.
    balance = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", PEOPLE[1])
    assert str(info["balc"]) == str(refund["balc"]) == f"{Decimal(balance) / 100:.2f}"
    assert str(refund["cash_payamt"]) == str(refund["psn_cash_pay"]) == "-23.00"
    assert str(refund["psn_pay"]) == "-23.00"
    assert await server.fetchval(status, claim_id) == "withdrawn"


async def test_a_claim_replay_could_not_settle_is_withdrawn_at_the_counter(
    paths: dict[str, Server],
) -> None:
    """Found from outside: a 2103 of a claim replay had marked failed was told the claim was
    settled as "-" and to cancel by that number; then, that such a claim was the agency's alone,
    while its lines were free to be settled again in real time, the cash paid under it never
    refunded. The counter withdraws it as a pending one, refunding the cash."""
    server = paths["single"]
    pos = server.client(PHARMACY)
    claim = decode(
        await _send(pos, "DGF-1", pos.drug_input(PEOPLE[2], DAY, "31.00", basket("31.00")))
    )
    claim_id = claim["output"]["setlinfo"]["setl_id"]
    await server.fetch(
        "UPDATE deferred SET status = 'failed', fail_reason = 'test' WHERE claim_id = $1", claim_id
    )
    ref = {"data": {"setl_id": claim_id, "mdtrt_id": claim_id, "psn_no": PEOPLE[2]}}
    back = await pos.ok("2103", ref)
    assert str(back["setlinfo"]["psn_cash_pay"]) == "-31.00"
    status = "SELECT status FROM deferred WHERE claim_id = $1"
    assert await server.fetchval(status, claim_id) == "withdrawn"
    again = await pos.call("2103", ref)
    assert again["infcode"] == -1
    assert again["err_msg"] == f"暂存结算{claim_id}已撤销，不能重复撤销"


async def test_5203_by_the_visit_a_pharmacy_claim_was_answered_with_names_the_claim(
    paths: dict[str, Server],
) -> None:
    """A pharmacy claim's answer gives its own number as the 就诊ID. Found from outside: a 5203
    by that 就诊ID (no setl_id) answered "未查询到本机构的结算信息", as if nothing had been sold."""
    server = paths["grouped"]
    pos = server.client(PHARMACY)
    sent = pos.drug_input(PEOPLE[0], DAY, "14.00", basket("14.00"))
    claim = decode(await _send(pos, "DGQ-1", sent))
    claim_id = claim["output"]["setlinfo"]["mdtrt_id"]
    for setl_id in ("", None):
        query = {"data": {"mdtrt_id": claim_id, "psn_no": PEOPLE[0], "setl_id": setl_id}}
        answer = await pos.call("5203", query)
        assert answer["infcode"] == -1
        assert answer["err_msg"].startswith(f"{claim_id}为应急预案下的暂存结算（主动报）")


async def _deferring(pos: HisClient, psn_no: str) -> bool:
    answer = await pos.call("2101", pos.drug_input(psn_no, DAY, "9.90", basket("9.90")))
    return "应急预案" in str(answer.get("warn_msg") or "")


async def test_a_sale_in_force_is_neither_cancelled_nor_put_back_by_a_2601_while_deferring(
    paths: dict[str, Server],
) -> None:
    """Found from outside: while the plan deferred the pharmacy's settlements, a 2103 of a sale
    made before was refused, but a 2601 of the same sale cancelled it and refunded the account.
    Both are refused now; after the plan the 2601 goes through."""
    server = paths["single"]
    pos = server.client(PHARMACY)
    person = PEOPLE[0]
    await _defer(server, pos, person, on=False)
    msgid = "DGC-SALE"
    sale = decode(await _send(pos, msgid, pos.drug_input(person, DAY, "19.80", basket("9.90", 2))))
    info = sale["output"]["setlinfo"]
    assert sale["infcode"] == 0 and not info["setl_id"].startswith("DF")
    balance = "SELECT balance_fen FROM accounts WHERE psn_no = $1"
    after_sale = await server.fetchval(balance, person)
    await _defer(server, pos, person, on=True)
    refused = "应急处置期间不能撤销已完成的医保结算，请待系统恢复后再办理撤销"
    cancel = {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": person}}
    assert (await pos.call("2103", cancel))["err_msg"] == refused
    reversal = {"data": {"psn_no": person, "omsgid": msgid, "oinfno": "2102"}}
    answer = await pos.call("2601", reversal)
    assert (answer["infcode"], answer["err_msg"]) == (-1, refused)
    assert await server.fetchval(balance, person) == after_sale
    status = "SELECT status FROM settlements WHERE setl_id = $1"
    assert await server.fetchval(status, info["setl_id"]) == "settled"
    # After the plan, the same reversal (a new message) cancels the sale.
    await _defer(server, pos, person, on=False)
    assert (await pos.call("2601", reversal))["infcode"] == 0
    assert await server.fetchval(status, info["setl_id"]) == "cancelled"
    assert await server.check_ledger() == []
    await _defer(server, pos, person, on=True)  # as the module's fixture left it


async def test_a_cancelled_sale_is_not_put_back_by_a_2601_while_deferring(
    paths: dict[str, Server],
) -> None:
    """A 2601 of a sale's 2103 puts the sale back in force, a settlement made again: refused
    while the plan defers the pharmacy's settlements, as the cancellation itself would be."""
    server = paths["grouped"]
    pos = server.client(PHARMACY)
    person = PEOPLE[2]
    await _defer(server, pos, person, on=False)
    sale = decode(await _send(pos, "DGP-SALE", pos.drug_input(person, DAY, "9.90", basket("9.90"))))
    info = sale["output"]["setlinfo"]
    cancel = {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": person}}
    cancel_msgid = "DGP-CANCEL"
    _, raw = await pos.post_raw(
        msgspec.json.encode(pos.envelope("2103", cancel, msgid=cancel_msgid))
    )
    assert decode(raw)["infcode"] == 0
    await _defer(server, pos, person, on=True)
    reversal = {"data": {"psn_no": person, "omsgid": cancel_msgid, "oinfno": "2103"}}
    answer = await pos.call("2601", reversal)
    assert answer["infcode"] == -1 and "应急处置期间不能冲正医保结算的撤销" in answer["err_msg"]
    status = "SELECT status FROM settlements WHERE setl_id = $1"
    assert await server.fetchval(status, info["setl_id"]) == "cancelled"
    # A 2103 that withdrew a claim cancelled no settlement: its 2601 is told so at once, not
    # to wait for the recovery (found from outside), naming the claim it withdrew (found from
    # outside: "未找到原报文…撤销的结算" read as if the message had done nothing).
    claim = decode(
        await _send(pos, "DGP-CLAIM", pos.drug_input(person, DAY, "9.90", basket("9.90")))
    )
    claim_id = claim["output"]["setlinfo"]["setl_id"]
    withdraw = {"data": {"setl_id": claim_id, "mdtrt_id": claim_id, "psn_no": person}}
    _, raw = await pos.post_raw(msgspec.json.encode(pos.envelope("2103", withdraw, msgid="DGP-WD")))
    assert decode(raw)["infcode"] == 0
    of_withdrawal = {"data": {"psn_no": person, "omsgid": "DGP-WD", "oinfno": "2103"}}
    answer = await pos.call("2601", of_withdrawal)
    assert (answer["infcode"], answer["err_msg"]) == (
        -1,
        f"原报文DGP-WD撤销的是应急预案暂存结算{claim_id}（参保人现金应已全额退还），"
        "暂存结算撤销后不能冲正恢复；如需医保结算，请使用新的报文ID重新结算",
    )
    assert await server.check_ledger() == []


async def _defer(server: Server, pos: HisClient, person: str, *, on: bool) -> None:
    """The plan's defer for the pharmacy's settlements set or cleared, and in force."""
    if on:
        await set_rule(server.dsn, f"institution:{PHARMACY}", "settlement", "defer")
    else:
        await clear_rule(server.dsn, f"institution:{PHARMACY}", "settlement")

    async def in_force() -> bool:
        return await _deferring(pos, person) == on

    await until(in_force, within=5.0)


async def test_a_replayed_pharmacy_claim_is_cancelled_with_the_ids_its_till_was_given(
    paths: dict[str, Server],
) -> None:
    """A pharmacy claim's answer gives its DF number as both setl_id and 就诊ID; its visit is
    made at replay under an id the till never saw. Found from outside: told to cancel by the
    replayed setl_id, the till sent that with the DF 就诊ID and was told they did not match; only
    the real 就诊ID, which it could learn from 5203 alone, cancelled it."""
    server = paths["grouped"]
    pos = server.client(PHARMACY)
    claim = decode(
        await _send(pos, "DGR-1", pos.drug_input(PEOPLE[1], DAY, "27.00", basket("27.00")))
    )
    claim_id = claim["output"]["setlinfo"]["setl_id"]
    assert claim["output"]["setlinfo"]["mdtrt_id"] == claim_id
    await _defer(server, pos, PEOPLE[1], on=False)
    try:
        replayed = json.loads(
            cli("deferred", "replay", "--json", "--database-url", server.dsn).stdout
        )
        assert replayed["failed"] == []
        real = await server.fetchval("SELECT setl_id FROM deferred WHERE claim_id = $1", claim_id)
        assert real
        by_claim = await pos.call(
            "2103", {"data": {"setl_id": claim_id, "mdtrt_id": claim_id, "psn_no": PEOPLE[1]}}
        )
        assert by_claim["infcode"] == -1 and real in by_claim["err_msg"], by_claim
        cancelled = await pos.ok(
            "2103", {"data": {"setl_id": real, "mdtrt_id": claim_id, "psn_no": PEOPLE[1]}}
        )
        # The till refunds what it took: the whole bill in cash.
        assert str(cancelled["setlinfo"]["cash_payamt"]) == "-27.00"
        assert str(cancelled["setlinfo"]["psn_pay"]) == "-27.00"
        assert (
            await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", real)
            == "cancelled"
        )
        assert await server.check_ledger() == []
    finally:
        await _defer(server, pos, PEOPLE[0], on=True)
