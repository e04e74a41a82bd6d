"""The emergency plan's actions over HTTP: reject, defer (主动报) and replay, selfpay, route_legacy,
a 温州-style window, propagation within 2 s, the audit log, the in-flight report."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from adapters.national.envelope import decode_request, fingerprint
from gateway.app.appkeys import GATEWAY
from gateway.app.config import DEFAULT_CREDENTIALS, Breakers, GatewayConfig, Legacy, PlanConfig
from gateway.emergency.breaker import BreakerConfig
from gateway.emergency.plan import store
from gateway.pipeline.auth import AuthError, Verifier, load_credentials
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import (
    BIG_LINES,
    BIG_TOTAL,
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    cli,
    connect,
    old_system,
    set_rule,
    until,
    yuan,
)
from tests.integration.his_client import HisClient, amount_text, decode
from tests.integration.test_reconciliation import _detail_compared

EMPLOYEE = "441800000000000003"
WORKER = "441800000000000001"
RETIREE = "441800000000000002"
PHARMACY_441800 = "P44180000001"


async def _reload_plan(srv: Server) -> None:
    """The serving process reads the plan now (it polls every second otherwise)."""
    assert srv.app is not None
    await srv.app[GATEWAY].reload_plan(force=True)


async def _visit(
    his: HisClient, psn_no: str, day: str, no: str, lines: list[dict[str, str]] = OUTPATIENT_LINES
) -> str:
    """2201 + 2203 + 2204 (batch B1): a visit ready to settle."""
    mdtrt_id = await his.register(psn_no, "310", f"{day} 08:30:00", no)
    await his.visit_info(mdtrt_id, psn_no, "11", f"{day} 08:30:00")
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, psn_no, lines, f"{day} 08:40:00", "B1")}
    )
    return mdtrt_id


_viewer_tokens: dict[str, str] = {}


async def _plan_view(server: Server) -> dict[str, Any]:
    """The plan the serving process applies now (GET /api/plan, as the console's viewer)."""
    if server.url not in _viewer_tokens:
        viewer = {"operator": "watch", "password": "watch-2026"}
        async with server.session.post(server.url + "/api/console/login", json=viewer) as r:
            assert r.status == 200, await r.text()
            _viewer_tokens[server.url] = (await r.json())["token"]
    headers = {"Authorization": f"Bearer {_viewer_tokens[server.url]}"}
    async with server.session.get(server.url + "/api/plan", headers=headers) as r:
        assert r.status == 200, await r.text()
        view: dict[str, Any] = await r.json()
        return view


async def _plan_version_in_force(server: Server, version: int) -> float:
    """Seconds until the serving process reports this plan version as the one it applies;
    fails past 2 s, the plan's promise for a change to take effect."""

    async def reported() -> bool:
        return int((await _plan_view(server))["version"]) >= version

    return await until(reported, within=2.0)


async def test_reject_answers_self_pay_within_two_seconds_and_writes_nothing(
    server: Server,
) -> None:
    his = server.client("H44180000002")
    settled_visit = await _visit(his, WORKER, "2026-05-02", "MZ-REJ-0")
    settled = await his.ok(
        "2207",
        his.settle_data(WORKER, settled_visit, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"),
    )
    mdtrt_id = await _visit(his, WORKER, "2026-05-02", "MZ-REJ-1")
    data = his.settle_data(WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")
    before = await server.ledger_fingerprint()
    await set_rule(server.dsn, "institution:H44180000002", "settlement", "reject")
    version = await server.fetchval("SELECT version FROM plan_version")

    # The change reaches the serving process by the database poll (no Redis here); once the
    # process reports the new version, the very next call is refused.
    await _plan_version_in_force(server, version)
    assert (await his.call("2206", data))["infcode"] == -1
    envelope = his.envelope("2207", data)
    status, refusal = await his.post_raw(msgspec.json.encode(envelope))
    answer = decode(refusal)
    assert status == 200 and answer["infcode"] == -1
    assert "应急预案" in answer["err_msg"] and "全自费结算" in answer["err_msg"]
    assert "本报文ID不再办理医保结算" in answer["err_msg"]
    assert not answer["output"]
    # A cancellation has nothing to settle as self-pay (found from outside: it was told to).
    cancel = {
        "data": {"setl_id": settled["setlinfo"]["setl_id"], "mdtrt_id": settled_visit,
                 "psn_no": WORKER}
    }  # fmt: skip
    refused = await his.call("2208", cancel)
    assert refused["infcode"] == -1 and "原结算仍然有效，未退费" in refused["err_msg"]
    assert "全自费结算" not in refused["err_msg"]
    # Nor a reversal (2601) of the sale's message (found from outside: told to settle as
    # self-pay while the sale it reversed stood, and that refusal kept against its msgid).
    omsgid = await server.fetchval(
        "SELECT medins_setl_id FROM settlements WHERE setl_id = $1", settled["setlinfo"]["setl_id"]
    )
    reversal = his.envelope(
        "2601", {"data": {"psn_no": WORKER, "omsgid": omsgid, "oinfno": "2207"}}
    )
    reversed_under_rule = decode((await his.post_raw(msgspec.json.encode(reversal)))[1])
    assert reversed_under_rule["infcode"] == -1, reversed_under_rule
    assert "原结算仍然有效，未退费" in reversed_under_rule["err_msg"]
    assert "全自费结算" not in reversed_under_rule["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert await server.fetchval("SELECT count(*) FROM deferred") == 0
    # An inpatient settlement is told what the cut-over notices tell hospitals (毕节's, item
    # 十): discharge, settle once the system is back (found from outside: told to settle as
    # self-pay, the outpatient advice).
    stay = {"data": {"psn_no": WORKER, "mdtrt_id": "441800NOSUCHSTAY", "mid_setl_flag": "0",
                     "medfee_sumamt": "120.00", "insutype": "310", "acct_used_flag": "0",
                     "mdtrt_cert_type": "02", "mdtrt_cert_no": WORKER}}  # fmt: skip
    for infno in ("2303", "2304"):
        inpatient = await his.call(infno, stay)
        assert inpatient["infcode"] == -1, inpatient
        assert "住院费用暂不结算" in inpatient["err_msg"], inpatient
        assert "待系统恢复后再通知患者结算" in inpatient["err_msg"]
    assert await server.ledger_fingerprint() == before
    # Other institutions are not touched by an institution-scoped rule.
    other = server.client("H44180000001")
    assert (await other.call("2206", {"data": {}}))["err_msg"] != answer["err_msg"]

    await clear_rule(server.dsn, "institution:H44180000002", "settlement")
    await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))
    # The refused settlement's msgid keeps its refusal: the counter took the bill in cash on it
    # (found from outside: sent again once the rule was cleared, it settled too, the account
    # paying what the patient had paid in cash).
    assert await his.post_raw(msgspec.json.encode(envelope)) == (200, refusal)
    assert await server.ledger_fingerprint() == before
    # The reversal's refusal is not kept: sent again, it reverses the sale.
    reversed_after = decode((await his.post_raw(msgspec.json.encode(reversal)))[1])
    assert reversed_after["infcode"] == 0, reversed_after
    assert (
        await server.fetchval(
            "SELECT status FROM settlements WHERE setl_id = $1", settled["setlinfo"]["setl_id"]
        )
        == "cancelled"
    )
    assert (await his.call("2206", data))["infcode"] == 0
    await his.ok("2207", data)  # a new msgid settles it


async def test_a_kept_refusal_racing_the_first_attempts_commit_answers_the_first(
    server: Server,
) -> None:
    """A retry under `reject` whose first attempt still holds the msgid's key (its commit not
    yet done): the refusal the plan would keep waits for the key, and the first attempt's
    answer, committed, is the one given; the refusal is not kept over it."""
    pos = server.client(PHARMACY_441800)
    drug = pos.drug_input(EMPLOYEE, "2026-05-22 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
    envelope = pos.envelope("2102", drug)
    body = msgspec.json.encode(envelope)
    # A refusal stands for the first attempt's answer: an acknowledged one with no settlement
    # behind it would be the module's shared ledger's finding for every test after this one.
    first = b'{"infcode":-1,"err_msg":"the first attempt"}'
    await set_rule(server.dsn, f"institution:{PHARMACY_441800}", "settlement", "reject")
    try:
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )
        async with connect(server.dsn) as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer,"
                " infcode) VALUES ($1, $2, '2102', $3, $4, -1)",
                PHARMACY_441800, envelope["msgid"], fingerprint(decode_request(body)), first,
            )  # fmt: skip
            retry = asyncio.ensure_future(pos.post_raw(body))
            await asyncio.sleep(0.5)
            assert not retry.done()  # waiting for the key
            await tx.commit()
        status, answer = await retry
        assert status == 200 and answer == first
        assert await pos.post_raw(body) == (200, first)
    finally:
        await clear_rule(server.dsn, f"institution:{PHARMACY_441800}", "settlement")
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )


async def test_reject_tells_a_pharmacy_to_sell_for_cash_without_a_claim_to_come(
    server: Server,
) -> None:
    """A pharmacy's purchase is not reimbursed by hand (the agency refuses a pharmacy's
    receipts): found from outside, `reject` told the till to sell for cash and claim later."""
    pos = server.client(PHARMACY_441800)
    drug = pos.drug_input(EMPLOYEE, "2026-05-21 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
    await set_rule(server.dsn, f"institution:{PHARMACY_441800}", "settlement", "reject")
    try:
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )
        for infno, kept in (("2101", False), ("2102", True)):
            answer = await pos.call(infno, drug)
            assert answer["infcode"] == -1, answer
            words = answer["err_msg"]
            assert "药店购药不办理零星报销" in words and "办理报销" not in words, words
            assert ("本报文ID不再办理医保结算" in words) is kept, words
    finally:
        await clear_rule(server.dsn, f"institution:{PHARMACY_441800}", "settlement")
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )


async def test_defer_answers_all_cash_and_replay_reimburses(server: Server) -> None:
    his = server.client("H44180000001")
    scope = "institution:H44180000001"
    mdtrt_id = await _visit(his, EMPLOYEE, "2026-05-03", "MZ-DEF-1", BIG_LINES)
    withdrawn_visit = await _visit(his, EMPLOYEE, "2026-05-04", "MZ-DEF-2")
    balance = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", EMPLOYEE)
    await set_rule(server.dsn, scope, "settlement", "defer")
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "1", chrg_bchno="B1")

    async def deferred() -> bool:
        return str((await his.call("2206", data))["warn_msg"] or "").find("应急预案") >= 0

    assert await until(deferred) < 2.0
    settlements_before = await server.fetchval("SELECT count(*) FROM settlements")
    # One body sent three times: a till's retry resends its message as it was (a new inf_time
    # would make it another message under the same msgid, refused as such).
    msgid = his.msgid()
    body = msgspec.json.encode(his.envelope("2207", data, msgid=msgid))
    _, raw = await his.post_raw(body)
    answer = decode(raw)
    assert answer["infcode"] == 0, answer["err_msg"]
    info = answer["output"]["setlinfo"]
    claim_id = info["setl_id"]
    assert claim_id.startswith("DF")
    assert info["mdtrt_id"] == mdtrt_id
    assert amount_text(info["medfee_sumamt"]) == BIG_TOTAL
    assert amount_text(info["fund_pay_sumamt"]) == "0.00"
    assert amount_text(info["acct_pay"]) == "0.00"
    assert amount_text(info["psn_cash_pay"]) == BIG_TOTAL
    # Found from outside: `balc` was null, where the interface requires a number (a client
    # binding it to a non-nullable decimal cannot read the answer). The account is untouched.
    assert amount_text(info["balc"]) == f"{Decimal(balance) / 100:.2f}"
    assert claim_id in answer["warn_msg"] and "主动报" in answer["warn_msg"]
    # The same message again: the same answer, byte for byte, and still one claim.
    _, first = await his.post_raw(body)
    _, second = await his.post_raw(body)
    assert raw == first == second
    assert await server.fetchval("SELECT count(*) FROM settlements") == settlements_before
    assert await server.fetchval("SELECT count(*) FROM deferred WHERE kind = 'claim'") == 1
    # A 2601 of the claim's message is refused naming the claim and how to withdraw it (found
    # from outside: told "未找到原报文的结算", the clerk took the visit as never charged, and the
    # replay settled it later); nothing is barred, and the claim stays pending.
    reversal = {"data": {"psn_no": EMPLOYEE, "omsgid": msgid, "oinfno": "2207"}}
    refused = await his.call("2601", reversal)
    assert refused["infcode"] == -1
    assert refused["err_msg"] == (
        f"原报文{msgid}是应急期间的暂存结算{claim_id}（待补结算），不能冲正；"
        f"如需撤销请对结算ID{claim_id}发起2208"
    )
    marked = await server.fetch(
        "SELECT tombstone, reversed_by FROM idempotency WHERE msgid = $1", msgid
    )
    assert [(r["tombstone"], r["reversed_by"]) for r in marked] == [(False, None)]
    assert (
        await server.fetchval("SELECT status FROM deferred WHERE claim_id = $1", claim_id)
        == "pending"
    )

    # A second claim, withdrawn at the counter before any replay.
    data2 = his.settle_data(
        EMPLOYEE, withdrawn_visit, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
    )
    claim2 = (await his.ok("2207", data2))["setlinfo"]["setl_id"]
    cancel = {"data": {"setl_id": claim2, "mdtrt_id": withdrawn_visit, "psn_no": EMPLOYEE}}
    back = (await his.ok("2208", cancel))["setlinfo"]
    assert amount_text(back["psn_cash_pay"]) == f"-{OUTPATIENT_TOTAL}"
    assert amount_text(back["balc"]) == f"{Decimal(balance) / 100:.2f}"
    again = await his.call("2208", cancel)
    assert again["infcode"] == -1 and "已撤销" in again["err_msg"]

    # Recovery: back to normal, replay settles the pending claim with the account not used.
    await clear_rule(server.dsn, scope, "settlement")
    done = cli("deferred", "replay", "--json", "--database-url", server.dsn)
    summary = json.loads(done.stdout)
    assert summary["settled"] == 1 and summary["failed"] == []
    listed = [
        json.loads(line)
        for line in cli(
            "deferred", "list", "--json", "--database-url", server.dsn
        ).stdout.splitlines()
    ]
    by_id = {c["claim_id"]: c for c in listed}
    assert by_id[claim2]["status"] == "withdrawn"
    replayed = by_id[claim_id]
    assert replayed["status"] == "settled" and replayed["mdtrt_id"] == mdtrt_id
    setl = replayed["setlinfo"]
    assert amount_text(setl["acct_pay"]) == "0.00"
    assert yuan(setl["fund_pay_sumamt"]) > 0
    owed = Decimal(replayed["reimbursement_fen"]) / 100
    assert owed == yuan(BIG_TOTAL) - yuan(setl["psn_cash_pay"])
    assert owed == yuan(setl["fund_pay_sumamt"])
    # The account was not used; the settlement exists once, linked to the claim.
    assert (
        await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", EMPLOYEE)
        == balance
    )
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE medins_setl_id = $1", msgid)
        == 1
    )
    # Replaying again settles nothing twice.
    assert (
        json.loads(cli("deferred", "replay", "--json", "--database-url", server.dsn).stdout)[
            "settled"
        ]
        == 0
    )
    # After replay, the claim number cancels as its settlement would: the counter is told how.
    late = await his.call(
        "2208", {"data": {"setl_id": claim_id, "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}}
    )
    assert late["infcode"] == -1 and setl["setl_id"] in late["err_msg"]
    assert await server.check_ledger() == []


async def test_selfpay_admission_is_converted_then_settled(server: Server) -> None:
    his = server.client("H44180000003")
    scope = "institution:H44180000003"
    await set_rule(server.dsn, scope, "encounter", "selfpay")
    admission = {
        "mdtrtinfo": {
            "psn_no": RETIREE, "insutype": "310", "begntime": "2026-05-05 10:00:00",
            "mdtrt_cert_type": "01", "mdtrt_cert_no": RETIREE, "med_type": "21", "ipt_no": "ZY-SP-1",
        },
        "diseinfo": [],
    }  # fmt: skip

    async def selfpay() -> bool:
        answer = await his.call("2401", admission, msgid=his.msgid())
        if answer["infcode"] == 0 and "自费" in (answer["warn_msg"] or ""):
            return True
        if answer["infcode"] == 0:  # admitted insured before the rule arrived: undo and retry
            mdtrt = answer["output"]["result"]["mdtrt_id"]
            await his.ok("2404", {"data": {"mdtrt_id": mdtrt, "psn_no": RETIREE}})
        return False

    assert await until(selfpay) < 2.0
    mdtrt_id = await server.fetchval(
        "SELECT mdtrt_id FROM encounters WHERE ipt_otp_no = 'ZY-SP-1' AND status <> 'cancelled'"
    )
    assert await server.fetchval("SELECT selfpay FROM encounters WHERE mdtrt_id = $1", mdtrt_id)
    await clear_rule(server.dsn, scope, "encounter")
    lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}]  # fmt: skip
    await his.ok(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, lines, "2026-05-06 09:00:00", "")}
    )
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE, "insutype": "310",
                      "endtime": "2026-05-07 10:00:00", "dscg_dept_codg": "K1",
                      "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
    )  # fmt: skip
    settle = his.settle_data(RETIREE, mdtrt_id, "21", "120.00", "310", "0", mid_setl_flag="0")
    refused = await his.call("2304", settle)
    assert refused["infcode"] == -1 and "自费转医保" in refused["err_msg"]
    cli("encounter", "convert", "--mdtrt-id", mdtrt_id, "--reason", "新系统上线后办理自费转医保",
        "--operator", "duty", "--database-url", server.dsn)  # fmt: skip
    settled = (await his.ok("2304", settle))["setlinfo"]
    assert yuan(settled["fund_pay_sumamt"]) + yuan(settled["psn_part_amt"]) == Decimal("120.00")
    audit = await server.fetch("SELECT * FROM audit_log WHERE action = 'encounter.convert'")
    assert [r["operator"] for r in audit] == ["duty"]


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """The old system's callService: records what it got, answers a fixed envelope."""
    received: list[bytes] = []

    async def call_service(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    async with old_system(call_service) as url:
        yield url, received


@asynccontextmanager
async def _routed_pharmacy(
    new_database: Callable[..., Any],
    call_service: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[tuple[HisClient, dict[str, Any]]]:
    """A gateway whose region's settlements the plan routes to an old system answering with
    `call_service`: a pharmacy's client and a sale's input."""
    async with old_system(call_service) as url:
        config = GatewayConfig(rate_limit=GENEROUS.rate_limit, legacy=Legacy(url=url))
        async with running_gateway(new_database, config) as srv:
            pos = srv.client("P44180000001")
            await set_rule(srv.dsn, "region:441800", "settlement", "route_legacy")
            yield pos, pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", DRUG_TOTAL, DRUG_LINES)


async def test_route_legacy_relays_only_an_envelope(new_database: Callable[..., Any]) -> None:
    """Found from outside: the old system's HTML error page (HTTP 200) went to the till as the
    answer. Relayed byte for byte means an envelope relayed; anything else is the old system
    failing, answered as such in the envelope."""
    pages = [b"<html>oops</html>", b"", b'["infcode", 0]', b"Service Unavailable"]

    async def call_service(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=pages[0], content_type="text/html")

    async with _routed_pharmacy(new_database, call_service) as (pos, drug):

        async def routed() -> bool:
            answer = await pos.call("2101", drug)
            return "原医保系统" in (answer["err_msg"] or "")

        await until(routed)
        while pages:
            status, raw = await pos.post_raw(msgspec.json.encode(pos.envelope("2101", drug)))
            answer = msgspec.json.decode(raw)
            assert status == 200 and answer["infcode"] == -1, (pages[0], raw)
            assert "原医保系统" in answer["err_msg"]
            pages.pop(0)


async def test_route_legacy_forwards_unchanged_and_relays(
    new_database: Callable[..., Any], legacy: tuple[str, list[bytes]]
) -> None:
    url, received = legacy
    config = GatewayConfig(rate_limit=GENEROUS.rate_limit, legacy=Legacy(url=url))
    async with running_gateway(new_database, config) as srv:
        pos = srv.client("P44180000001")
        await set_rule(srv.dsn, "region:441800", "settlement", "route_legacy")
        drug = pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", DRUG_TOTAL, DRUG_LINES)

        async def routed() -> bool:  # probed with pre-settlements, which change nothing
            _, answer = await pos.post_raw(msgspec.json.encode(pos.envelope("2101", drug)))
            return answer == b'{"infcode":0,"output":{"legacy":true},"err_msg":null}'

        assert await until(routed) < 2.0
        body = msgspec.json.encode(pos.envelope("2102", drug))
        status, answer = await pos.post_raw(body)
        assert status == 200
        assert answer == b'{"infcode":0,"output":{"legacy":true},"err_msg":null}'
        assert received[-1] == body
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
        # Found from outside: the same message retried once the plan no longer routed it was
        # settled here too, the sale paid by two systems. Its relayed answer is kept.
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await _reload_plan(srv)
        status, again = await pos.post_raw(body)
        assert (status, again) == (200, answer)
        assert received.count(body) == 1
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
        # Undone where it was done: a 2601 of it here would have barred it as never arrived.
        omsgid = msgspec.json.decode(body)["msgid"]
        reversal = {"data": {"psn_no": EMPLOYEE, "omsgid": omsgid, "oinfno": "2102"}}
        refused = await pos.call("2601", reversal)
        assert refused["infcode"] == -1 and "原系统冲正" in refused["err_msg"], refused
        assert await srv.check_ledger() == []
        # Encounter calls are another class: still served here.
        assert (
            await pos.call(
                "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802198203033456"}}
            )
        )["infcode"] == 0


async def test_route_legacy_signs_what_it_forwards_as_the_institution(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: forwarded with no x-tif headers, every request was refused by an old
    system that verifies signatures (and the parallel run counted each refusal as a money
    difference). Forwarded signed as the institution signs, with a fresh nonce each time."""
    secrets = load_credentials(DEFAULT_CREDENTIALS)
    verifier = Verifier(secrets, None, None)
    seen: list[str] = []

    async def call_service(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            who = await verifier.verify(request.headers)
        except AuthError as exc:
            return web.json_response({"infcode": -1, "output": None, "err_msg": exc.err_msg})
        assert who == decode_request(body).fixmedins_code
        seen.append(request.headers["x-tif-nonce"])
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    async with _routed_pharmacy(new_database, call_service) as (pos, drug):

        async def routed() -> bool:
            return (await pos.call("2101", drug)).get("output") == {"legacy": True}

        await until(routed)
        for _ in range(2):
            answer = await pos.call("2102", drug)
            assert answer["infcode"] == 0 and answer["output"] == {"legacy": True}, answer
        assert len(seen) >= 3 and len(set(seen)) == len(seen)


def _seed_windows() -> list[dict[str, Any]]:
    path = Path(__file__).resolve().parents[2] / "config" / "plan" / "windows.toml"
    windows: list[dict[str, Any]] = tomllib.loads(path.read_text(encoding="utf-8"))["window"]
    return windows


async def test_wenzhou_window_defers_settlement_while_encounters_work(server: Server) -> None:
    """温州's seed timetable (config/plan/windows.toml) as it stands, moved to now: outpatient
    and pharmacy settlements are deferred (主动报), a stay's settlement is refused with the
    in-patient words (paid in full and claimed where insured, or settled once back: (三)4;
    found from outside, one region-wide `defer` promised discharged in-patients the reverse),
    and registrations, visit information and uploads go on."""
    now = dt.datetime.now()
    rows = [w for w in _seed_windows() if w["name"].startswith("温州实时结算停机") and w["classes"] == ["settlement"]]  # fmt: skip
    assert len(rows) == 4
    his = server.client("H33030000001", region="330300")
    person = "330300000000000001"
    # A stay admitted before the stop, discharged in it.
    admitted = {"mdtrtinfo": {"psn_no": person, "insutype": "310", "begntime": "2026-05-08 09:00:00",
                              "mdtrt_cert_type": "01", "mdtrt_cert_no": person, "med_type": "21",
                              "ipt_no": "ZY-WZ-1"}, "diseinfo": []}  # fmt: skip
    stay = (await his.ok("2401", admitted))["result"]["mdtrt_id"]
    await his.ok("2301", {"feedetail": his.fee_rows(stay, person, OUTPATIENT_LINES, "2026-05-08 10:00:00", "")})  # fmt: skip
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": person, "endtime": "2026-05-09 09:00:00"}})  # fmt: skip
    async with connect(server.dsn) as conn:
        for w in rows:
            await store.add_window(
                conn, name=f"{w['name']}(演练)", scope=w["scope"], classes=w["classes"],
                action=w["action"], begins=now - dt.timedelta(hours=1),
                ends=now + dt.timedelta(hours=1), operator="test", reason="演练温州第二时间窗",
            )  # fmt: skip
    his = server.client("H33030000001", region="330300")
    pos = server.client("P33030000001", region="330300")
    person = "330300000000000001"
    drug = pos.drug_input(person, "2026-05-09 11:00:00", DRUG_TOTAL, DRUG_LINES)

    async def deferred() -> bool:
        return "应急预案" in ((await pos.call("2101", drug))["warn_msg"] or "")

    assert await until(deferred) < 2.0
    # A sale has no visit before it settles: null, as outside the plan (found from outside: "").
    assert (await pos.ok("2101", drug))["setlinfo"]["mdtrt_id"] is None
    # Registration, visit information and fee uploads go on as normal in the window.
    mdtrt_id = await _visit(his, person, "2026-05-09", "WZ-1")
    assert not mdtrt_id.startswith("PV")
    assert (
        await server.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id) == 3
    )
    claim = (await his.ok("2207", his.settle_data(person, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")))["setlinfo"]  # fmt: skip
    bought = (await pos.ok("2102", drug))["setlinfo"]
    assert claim["setl_id"].startswith("DF") and bought["setl_id"].startswith("DF")
    closing = await his.call("2304", his.settle_data(person, stay, "21", OUTPATIENT_TOTAL, "310", "0", mid_setl_flag="0"))  # fmt: skip
    assert closing["infcode"] == -1, closing
    assert "住院费用暂不结算" in closing["err_msg"] and "回参保地经办机构报销" in closing["err_msg"]
    assert "温州实时结算停机-住院" in closing["err_msg"]
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE fixmedins_code LIKE '%3303%'")
        == 0
    )
    windows = json.loads(cli("plan", "windows", "--json", "--database-url", server.dsn).stdout)
    active = [w for w in windows if w["active"]]
    assert sorted(w["name"] for w in active) == sorted(f"{w['name']}(演练)" for w in rows)
    async with connect(server.dsn) as conn:
        for window in active:
            await store.remove_window(
                conn, window_id=window["window_id"], operator="test", reason="演练结束"
            )
    summary = json.loads(cli("deferred", "replay", "--json", "--database-url", server.dsn).stdout)
    assert summary["failed"] == []
    states = {r["setl_id"] for r in await server.fetch("SELECT setl_id FROM deferred WHERE claim_id = ANY($1) AND status = 'settled'", [claim["setl_id"], bought["setl_id"]])}  # fmt: skip
    assert len(states) == 2
    # Listed under the 就诊ID each counter was answered (found from outside: a pharmacy
    # claim's was empty), its visit beside it.
    listed = [json.loads(x) for x in cli("deferred", "list", "--json", "--database-url", server.dsn).stdout.splitlines()]  # fmt: skip
    by_claim = {r["claim_id"]: r for r in listed}
    assert by_claim[bought["setl_id"]]["mdtrt_id"] == bought["mdtrt_id"] == bought["setl_id"]
    assert by_claim[claim["setl_id"]]["mdtrt_id"] == mdtrt_id
    # The pharmacy's day: a till that booked its DF answer declares one sale the centre does
    # not count, and is told that is why (found from outside: told only "see 3202").
    today = dt.date.today().isoformat()
    period = {"insutype": "310", "clr_type": "41", "setl_optins": "330300",
              "stmt_begndate": today, "stmt_enddate": today}  # fmt: skip
    booked = await pos.ok("3201", {"data": {**period, "medfee_sumamt": bought["medfee_sumamt"],
                                            "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                            "fixmedins_setl_cnt": "1"}})  # fmt: skip
    words = booked["stmtinfo"]["stmt_rslt_dscr"]
    assert booked["stmtinfo"]["stmt_rslt"] != "0", words
    assert "核对；本机构该期间另有1笔应急预案暂存结算（结算ID以DF开头" in words, words
    assert len(words) <= 200, words
    assert words.endswith("如已计入请剔除后再对账"), words  # cut in the middle, if at all
    # Counted by the 3201's own insutype and clr_type (found from outside: each was told the
    # institution's whole count), and only where the institution counts more than the centre.
    other_insutype = await pos.ok("3201", {"data": {**period, "insutype": "390",
                                                    "medfee_sumamt": bought["medfee_sumamt"],
                                                    "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                                    "fixmedins_setl_cnt": "1"}})  # fmt: skip
    assert other_insutype["stmtinfo"]["stmt_rslt"] != "0"
    assert "暂存结算" not in other_insutype["stmtinfo"]["stmt_rslt_dscr"]
    hospital = {**period, "clr_type": "21", "medfee_sumamt": "99999.00",
                "fund_pay_sumamt": "0.00", "acct_pay": "0.00", "fixmedins_setl_cnt": "999"}  # fmt: skip
    stays = await his.ok("3201", {"data": hospital})
    assert "暂存结算" not in stays["stmtinfo"]["stmt_rslt_dscr"], stays["stmtinfo"]
    visits = await his.ok("3201", {"data": {**hospital, "clr_type": "11"}})
    assert "另有1笔应急预案暂存结算" in visits["stmtinfo"]["stmt_rslt_dscr"], visits["stmtinfo"]
    left_out = await pos.ok("3201", {"data": {**period, "medfee_sumamt": "0.00",
                                              "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                              "fixmedins_setl_cnt": "0"}})  # fmt: skip
    assert left_out["stmtinfo"]["stmt_rslt"] == "0", left_out["stmtinfo"]["stmt_rslt_dscr"]
    assert "暂存结算" not in left_out["stmtinfo"]["stmt_rslt_dscr"]
    # Cancelled once replayed, the cash refunded, the claim is not one of them (found from
    # outside: counted all the same).
    real = await server.fetchval(
        "SELECT setl_id FROM deferred WHERE claim_id = $1", bought["setl_id"]
    )
    queried = await pos.ok("5203", {"data": {"setl_id": bought["setl_id"], "psn_no": person}})
    cancelled = await pos.ok(
        "2103", {"data": {"setl_id": real, "mdtrt_id": bought["setl_id"], "psn_no": person}}
    )
    # Under the 就诊ID the till was given, the claim's number (found from outside: answered
    # the visit replay made, which the till never saw), and asked by it with the real setl_id.
    for answer in (queried, cancelled):
        assert answer["setlinfo"]["mdtrt_id"] == bought["mdtrt_id"] == bought["setl_id"], answer
    pair = {"data": {"setl_id": real, "mdtrt_id": bought["setl_id"], "psn_no": person}}
    listed = await pos.call("5204", pair)
    assert listed["infcode"] == 0, listed["err_msg"]
    lines = listed["output"]  # 5204's output is the list itself
    assert lines and all(row["mdtrt_id"] == bought["setl_id"] for row in lines), lines
    # The detail file's row of the claim's number says what became of it (found from outside:
    # "the agency reimburses the fund's share" of a settlement cancelled, its cash refunded).
    row = {"setl_id": bought["setl_id"], "mdtrt_id": bought["setl_id"], "psn_no": person,
           "medfee_sumamt": bought["medfee_sumamt"], "fund_pay_sumamt": "0.00",
           "acct_pay": "0.00", "psn_cash_pay": bought["medfee_sumamt"]}  # fmt: skip
    _, detail = await _detail_compared(
        server, [row], [row], institution="P33030000001", clr_type="41", setl_optins="330300"
    )
    (told,) = detail
    assert "已撤销" in told["memo"] and "报销给参保人" not in told["memo"], told
    refunded = await pos.ok("3201", {"data": {**period, "medfee_sumamt": bought["medfee_sumamt"],
                                              "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                              "fixmedins_setl_cnt": "1"}})  # fmt: skip
    assert refunded["stmtinfo"]["stmt_rslt"] != "0"
    assert "暂存结算" not in refunded["stmtinfo"]["stmt_rslt_dscr"], refunded["stmtinfo"]
    assert await server.check_ledger() == []


async def test_reject_tells_a_reconciliation_to_come_back_not_to_settle_in_cash(
    server: Server,
) -> None:
    """Found from outside: a 3201 under `reject` was told to settle the patient as self-pay."""
    his = server.client("H44180000002")
    await set_rule(server.dsn, "institution:H44180000002", "reconcile", "reject")
    try:
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )
        query = {"data": {"insutype": "310", "clr_type": "11", "setl_optins": "441800",
                          "stmt_begndate": "2026-01-01", "stmt_enddate": "2026-01-31",
                          "medfee_sumamt": "0", "fund_pay_sumamt": "0", "acct_pay": "0",
                          "fixmedins_setl_cnt": "0"}}  # fmt: skip
        answer = await his.call("3201", query)
        assert answer["infcode"] == -1, answer
        assert "本次业务未办理" in answer["err_msg"] and "自费" not in answer["err_msg"], answer
    finally:
        await clear_rule(server.dsn, "institution:H44180000002", "reconcile")
        await _plan_version_in_force(
            server, await server.fetchval("SELECT version FROM plan_version")
        )


async def test_cli_changes_are_audited_in_a_chain_that_detects_tampering(server: Server) -> None:
    cli("plan", "set", "--scope", "region:520500", "--class", "catalog", "--action", "reject",
        "--reason", "目录维护", "--operator", "duty", "--database-url", server.dsn)  # fmt: skip
    shown = json.loads(cli("plan", "show", "--json", "--database-url", server.dsn).stdout)
    assert {"scope": "region:520500", "class": "catalog", "action": "reject"}.items() <= shown[
        "rules"
    ][0].items() or any(
        r["scope"] == "region:520500" and r["action"] == "reject" for r in shown["rules"]
    )
    missing = cli("plan", "clear", "--scope", "region:520500", "--class", "catalog", "--reason", "",
                  "--database-url", server.dsn, check=False)  # fmt: skip
    assert missing.returncode == 2 and "原因" in missing.stderr
    cli("plan", "clear", "--scope", "region:520500", "--class", "catalog", "--reason", "维护完成",
        "--operator", "duty", "--database-url", server.dsn)  # fmt: skip
    rows = await server.fetch(
        "SELECT * FROM audit_log WHERE target = 'region:520500/catalog' ORDER BY audit_id"
    )
    assert [r["action"] for r in rows] == ["plan.set", "plan.clear"]
    assert rows[0]["before"] is None and rows[0]["after"]["action"] == "reject"
    assert rows[1]["before"]["reason"] == "目录维护" and rows[1]["after"] is None
    assert rows[1]["reason"] == "维护完成" and rows[1]["operator"] == "duty"
    assert "intact" in cli("audit", "verify", "--database-url", server.dsn).stdout
    async with connect(server.dsn) as conn:
        await conn.execute(
            "UPDATE audit_log SET reason = '改过的原因' WHERE audit_id = $1", rows[0]["audit_id"]
        )
        try:
            broken = cli("audit", "verify", "--database-url", server.dsn, check=False)
            assert broken.returncode == 1 and f"row {rows[0]['audit_id']}" in broken.stderr
        finally:
            await conn.execute(
                "UPDATE audit_log SET reason = '目录维护' WHERE audit_id = $1", rows[0]["audit_id"]
            )


async def test_the_newest_audit_rows_deleted_are_seen(new_database: Callable[..., Any]) -> None:
    """Found from outside: deleting the newest row left a shorter chain that verified intact,
    and the next change took the deleted row's id, so the change it recorded was gone for good.
    The chain's head is kept apart (028): verify names the missing rows, and the next change is
    chained to the head, leaving the gap in sight."""
    async with running_gateway(new_database) as srv:
        await _tail_deleted(srv.dsn)


async def _tail_deleted(dsn: str) -> None:
    for reason in ("目录维护", "维护完成"):
        action = ("set", "--action", "reject") if reason == "目录维护" else ("clear",)
        cli("plan", action[0], "--scope", "region:520500", "--class", "catalog", *action[1:],
            "--reason", reason, "--database-url", dsn)  # fmt: skip
    assert "intact" in cli("audit", "verify", "--database-url", dsn).stdout
    async with connect(dsn) as conn:
        newest = await conn.fetchval("SELECT max(audit_id) FROM audit_log")
        await conn.execute("DELETE FROM audit_log WHERE audit_id = $1", newest)
    broken = cli("audit", "verify", "--database-url", dsn, check=False)
    assert broken.returncode == 1, broken.stdout
    assert f"row {newest} is missing" in broken.stderr + broken.stdout
    # The next change does not take the deleted row's place.
    cli("plan", "set", "--scope", "region:520500", "--class", "catalog", "--action", "reject",
        "--reason", "再次维护", "--database-url", dsn)  # fmt: skip
    async with connect(dsn) as conn:
        assert await conn.fetchval("SELECT max(audit_id) FROM audit_log") == newest + 1
    broken = cli("audit", "verify", "--database-url", dsn, check=False)
    assert broken.returncode == 1 and f"row {newest} is missing" in broken.stderr + broken.stdout
    # The head itself removed, with rows left: seen as well.
    async with connect(dsn) as conn:
        await conn.execute("DELETE FROM audit_head")
    broken = cli("audit", "verify", "--database-url", dsn, check=False)
    assert broken.returncode == 1


async def test_inflight_report_lists_open_work_before_a_window(server: Server) -> None:
    his = server.client("H52050000001", region="520500")
    person = "520500000000000001"
    admitted = await his.ok(
        "2401",
        {"mdtrtinfo": {"psn_no": person, "insutype": "310", "begntime": "2026-05-10 10:00:00",
                       "mdtrt_cert_type": "01", "mdtrt_cert_no": person, "med_type": "21",
                       "ipt_no": "BJ-ZY-1"}, "diseinfo": []},
    )  # fmt: skip
    mdtrt_id = admitted["result"]["mdtrt_id"]
    lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "1", "det_item_fee_sumamt": "60.00"}]  # fmt: skip
    await his.ok(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, person, lines, "2026-05-10 12:00:00", "")}
    )
    await his.ok(
        "2303", his.settle_data(person, mdtrt_id, "21", "60.00", "310", "0", mid_setl_flag="1")
    )
    window = (dt.datetime.now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    found = json.loads(
        cli("plan", "inflight", "--before", window, "--institution", "H52050000001",
            "--json", "--database-url", server.dsn).stdout
    )["H52050000001"]  # fmt: skip
    assert [r["mdtrt_id"] for r in found["admitted_not_settled"]] == [mdtrt_id]
    assert found["uploaded_not_settled"][0]["amount_fen"] == 6000
    assert [r["mdtrt_id"] for r in found["presettled_not_settled"]] == [mdtrt_id]
    earlier = json.loads(
        cli("plan", "inflight", "--before", "2026-05-10T00:00", "--institution", "H52050000001",
            "--json", "--database-url", server.dsn).stdout
    )  # fmt: skip
    assert earlier == {}


async def test_a_cancelled_pharmacy_sale_is_not_work_in_flight(server: Server) -> None:
    """A sale stores its lines settled; its cancellation (2103) unsettles them and leaves nothing
    open. Found from outside: the report listed cancelled sales as uploads to finish before a
    window."""
    pos = server.client("P44180000001")
    person = "441800000000000001"
    sale = await pos.ok(
        "2102", pos.drug_input(person, "2026-05-11 10:00:00", DRUG_TOTAL, DRUG_LINES)
    )
    info = sale["setlinfo"]
    await pos.ok(
        "2103",
        {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": person}},
    )
    window = (dt.datetime.now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    found = json.loads(
        cli("plan", "inflight", "--before", window, "--json", "--database-url", server.dsn).stdout
    )
    assert all(
        r["mdtrt_id"] != info["mdtrt_id"]
        for parts in found.values()
        for key in ("admitted_not_settled", "uploaded_not_settled", "presettled_not_settled")
        for r in parts[key]
    ), found


async def test_plan_change_reaches_every_process_through_redis(
    new_database: Callable[..., Any], redis_url: str
) -> None:
    """Two gateways on one database; a change made through one is in force in the other < 2 s.
    The poll interval is stretched so only the Redis announcement can make it in time."""
    config = GatewayConfig(rate_limit=GENEROUS.rate_limit, plan=PlanConfig(poll_seconds=30.0))
    async with running_gateway(new_database, config, redis_url) as first:
        his = first.client("H44180000002")
        await set_rule(first.dsn, "institution:H44180000002", "reconcile", "reject")
        cli("plan", "clear", "--scope", "institution:H44180000002", "--class", "reconcile",
            "--reason", "演练", "--redis-url", redis_url, "--database-url", first.dsn)  # fmt: skip
        # The first reload on start saw the rule; the announcement of the clear removes it.
        query = {"data": {"insutype": "310", "clr_type": "11", "setl_optins": "441800",
                          "stmt_begndate": "2026-01-01", "stmt_enddate": "2026-01-31",
                          "medfee_sumamt": "0", "fund_pay_sumamt": "0", "acct_pay": "0",
                          "fixmedins_setl_cnt": "0"}}  # fmt: skip

        async def normal() -> bool:
            return "应急预案" not in ((await his.call("3201", query))["err_msg"] or "")

        assert await until(normal, within=2.0) < 2.0
        cli("plan", "set", "--scope", "institution:H44180000002", "--class", "reconcile",
            "--action", "reject", "--reason", "演练", "--redis-url", redis_url,
            "--database-url", first.dsn)  # fmt: skip

        async def rejected() -> bool:
            return "应急预案" in ((await his.call("3201", query))["err_msg"] or "")

        assert await until(rejected, within=2.0) < 2.0


async def test_redis_down_never_stops_settlement_and_its_breaker_opens(
    new_database: Callable[..., Any],
) -> None:
    dead_redis = "redis://127.0.0.1:1/0"  # nothing listens there
    async with running_gateway(new_database, GENEROUS, dead_redis) as srv:
        pos = srv.client(PHARMACY_441800)
        for n in range(6):
            drug = pos.drug_input(EMPLOYEE, f"2026-05-2{n} 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
            assert (await pos.call("2102", drug))["infcode"] == 0
        async with srv.session.get(srv.url + "/metrics") as resp:
            text = await resp.text()
        assert 'sgw_breaker_state{dependency="redis"} 2.0' in text
        assert 'sgw_breaker_state{dependency="postgres"} 0.0' in text


async def test_seed_timetables_load_as_windows(server: Server) -> None:
    # A reason too short is the command's fault, not the file's first window's (found from
    # outside), and nothing is loaded.
    short = cli("plan", "windows", "--load", "config/plan/windows.toml", "--reason", "t",
                "--database-url", server.dsn, check=False)  # fmt: skip
    assert short.returncode == 2 and "原因“t”过短" in short.stderr, short.stderr
    assert "时间窗" not in short.stderr
    assert not json.loads(cli("plan", "windows", "--json", "--database-url", server.dsn).stdout)
    loaded = cli("plan", "windows", "--load", "config/plan/windows.toml", "--reason", "导入切换公告时间表",
                 "--operator", "duty", "--database-url", server.dsn)  # fmt: skip
    # Past windows are loaded, each named as one that will not apply (found from outside: a
    # window of a wrong year loaded without a word).
    assert loaded.stderr.count("不会生效：请核对年份和日期") == 10, loaded.stderr
    assert "第1个时间窗（清远切换" in loaded.stderr, loaded.stderr
    windows = json.loads(cli("plan", "windows", "--json", "--database-url", server.dsn).stdout)
    by_name = {w["name"]: w for w in windows}
    # 温州's 主动报 is of outpatient fees at local institutions; a stay discharged during the
    # stop is paid in full and claimed by hand (found from outside: one region-wide `defer`
    # promised discharged in-patients the reverse).
    wz = {
        w["scope"]: w["action"]
        for w in windows
        if w["name"].startswith("温州实时结算停机") and w["classes"] == ["settlement"]
    }
    assert wz == {
        "region:330300:outpatient": "defer",
        "region:330300:chronic": "defer",
        "region:330300:pharmacy": "defer",
        "region:330300:inpatient": "reject",
    }
    stop = by_name["温州实时结算停机-住院"]
    assert (stop["begins"], stop["ends"]) == ("2022-03-04 00:00:00", "2022-03-07 00:00:00")
    assert by_name["温州实时结算停机-入院"]["action"] == "selfpay"
    assert by_name["温州业务经办停机"]["begins"] == "2022-02-26 00:00:00"
    assert by_name["清远切换-结算"]["ends"] == "2021-03-18 08:00:00"
    assert by_name["毕节切换-入院"]["action"] == "selfpay"
    assert not any(w["active"] for w in windows)  # all in the past
    audited = await server.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'window.set' AND reason = '导入切换公告时间表'"
    )
    assert audited == len(windows) == 10
    # Loading again reschedules the same windows (by name and scope), it does not add more.
    cli("plan", "windows", "--load", "config/plan/windows.toml", "--reason", "再次导入",
        "--database-url", server.dsn)  # fmt: skip
    assert (
        len(json.loads(cli("plan", "windows", "--json", "--database-url", server.dsn).stdout)) == 10
    )


async def test_a_rule_narrowed_to_a_medical_category_applies_to_that_category_only(
    server: Server,
) -> None:
    """清远 1.2.2 names 普通门诊 apart from 住院 and the pharmacies: `reject` for the region's
    outpatient settlements refuses a 2207 there, while a pharmacy's 2102 and an inpatient 2304
    (which carries no med_type: a stay is inpatient) in the same region settle as normal."""
    scope = "region:441800:outpatient"
    for bad, named in (("region:441800:surgery", "医疗类别surgery"), ("region:999999:outpatient", "999999")):  # fmt: skip
        refused = cli("plan", "set", "--scope", bad, "--class", "settlement", "--action", "reject",
                      "--reason", "演练", "--database-url", server.dsn, check=False)  # fmt: skip
        assert refused.returncode == 2 and named in refused.stderr, refused.stderr
    cli("plan", "set", "--scope", scope, "--class", "settlement", "--action", "reject",
        "--reason", "普通门诊待遇结算不准确", "--operator", "duty", "--database-url", server.dsn)  # fmt: skip
    try:
        shown = json.loads(cli("plan", "show", "--json", "--database-url", server.dsn).stdout)
        assert [r["action"] for r in shown["rules"] if r["scope"] == scope] == ["reject"]
        await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))  # fmt: skip

        his = server.client("H44180000001")
        mdtrt_id = await _visit(his, WORKER, "2026-05-09", "MZ-CAT-1")
        data = his.settle_data(WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")  # fmt: skip
        answer = await his.call("2207", data)
        in_force = (await _plan_view(server))["rules"]
        assert answer["infcode"] == -1 and "普通门诊待遇结算不准确" in answer["err_msg"], (answer, in_force)  # fmt: skip
        assert await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 0  # fmt: skip

        pos = server.client(PHARMACY_441800)
        bought = await pos.ok("2102", pos.drug_input(WORKER, "2026-05-09 10:00:00", DRUG_TOTAL, DRUG_LINES))  # fmt: skip
        assert bought["setlinfo"]["setl_id"]

        admission = {
            "mdtrtinfo": {
                "psn_no": RETIREE, "insutype": "310", "begntime": "2026-05-09 09:00:00",
                "mdtrt_cert_type": "01", "mdtrt_cert_no": RETIREE, "med_type": "21", "ipt_no": "ZY-CAT-1",
            },
            "diseinfo": [],
        }  # fmt: skip
        stay = (await his.ok("2401", admission))["result"]["mdtrt_id"]
        lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}]  # fmt: skip
        await his.ok("2301", {"feedetail": his.fee_rows(stay, RETIREE, lines, "2026-05-09 10:00:00", "")})  # fmt: skip
        await his.ok(
            "2402",
            {"dscginfo": {"mdtrt_id": stay, "psn_no": RETIREE, "insutype": "310",
                          "endtime": "2026-05-10 10:00:00", "dscg_dept_codg": "K1",
                          "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
        )  # fmt: skip
        settle = his.settle_data(RETIREE, stay, "21", "120.00", "310", "0", mid_setl_flag="0")
        del settle["data"]["med_type"]  # 2304 carries none (protocol.md §2.4)
        assert (await his.ok("2304", settle))["setlinfo"]["setl_id"]
    finally:
        # Cleared from the console's JSON API: shown there, cleared, audited.
        async with server.session.post(
            server.url + "/api/console/login", json={"operator": "duty", "password": "duty-2026"}
        ) as r:
            headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
        async with server.session.get(server.url + "/api/plan", headers=headers) as r:
            assert [x["scope"] for x in (await r.json())["rules"] if x["scope"] == scope] == [scope]
        clear = {"scope": scope, "class": "settlement", "reason": "门诊待遇已核实"}
        async with server.session.post(server.url + "/api/plan/rules/clear", json=clear, headers=headers) as r:  # fmt: skip
            assert r.status == 200, await r.text()
    rows = await server.fetch(
        "SELECT operator, action FROM audit_log WHERE target = $1 ORDER BY audit_id",
        f"{scope}/settlement",
    )
    assert [tuple(r) for r in rows] == [("duty", "plan.set"), ("duty", "plan.clear")]
    await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))
    assert (await his.ok("2207", data))["setlinfo"]["setl_id"]


async def test_a_visit_claim_is_refused_for_what_its_settlement_would_be_refused_for(
    server: Server,
) -> None:
    """The class of a pharmacy claim's fault found from outside, for a visit's: a claim of an
    insutype the person does not hold, or declaring a total its lines do not make, was answered
    with a claim number and the promise of a reimbursement that replay would refuse. Refused
    now in the settlement's words; nothing is claimed; the proper claim is still taken."""
    his = server.client("H44180000003")
    scope = "institution:H44180000003"
    mdtrt_id = await _visit(his, WORKER, "2026-05-06", "MZ-DEF-CHECK")
    await set_rule(server.dsn, scope, "settlement", "defer")
    right = his.settle_data(WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")

    async def deferring() -> bool:
        return "应急预案" in str((await his.call("2206", right))["warn_msg"] or "")

    await until(deferring)
    claims = "SELECT count(*) FROM deferred WHERE fixmedins_code = 'H44180000003'"
    before = await server.fetchval(claims)
    other_insutype = dict(right["data"], insutype="390")
    refused = await his.call("2207", {"data": other_insutype})
    assert refused["infcode"] == -1 and "险种类型390与登记时的险种310不一致" in refused["err_msg"]
    other_total = dict(right["data"], medfee_sumamt="999.00")
    refused = await his.call("2207", {"data": other_total})
    assert refused["infcode"] == -1
    assert f"医疗费总额999.00与费用明细合计{OUTPATIENT_TOTAL}不一致" in refused["err_msg"]
    assert await server.fetchval(claims) == before
    taken = await his.ok("2207", right)
    assert taken["setlinfo"]["setl_id"].startswith("DF")
    assert await server.fetchval(claims) == before + 1
    await clear_rule(server.dsn, scope, "settlement")


async def _kept_visit(
    server: Server, his: HisClient, day: str, ipt: str, *, info: bool
) -> tuple[str, str, bytes]:
    """A visit whose calls the institution's encounter `defer` keeps (its registration, its
    2203 where `info`, its fees): its provisional id, and the msgid and body of its 2207."""
    await set_rule(server.dsn, "institution:H44180000001", "encounter", "defer")
    await _reload_plan(server)
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{day} 08:30:00", ipt)
    assert mdtrt_id.startswith("PV")
    if info:
        await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{day} 08:30:00")
    await his.ok(
        "2204",
        {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1")},
    )
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")
    msgid = his.msgid()
    return mdtrt_id, msgid, msgspec.json.encode(his.envelope("2207", data, msgid=msgid))


async def test_visit_calls_the_plan_deferred_are_applied_once_it_stops_and_the_settlement_waits(
    server: Server,
) -> None:
    """Found from outside: under an encounter-class `defer` with the ledger up, a visit's calls
    were kept with a provisional id and waited for a person to run `deferred replay`; the 2207 on
    that id was refused "retry later" and the refusal was kept against its msgid, so every retry
    of it, after the calls were applied too, got the same refusal. The refusal is not kept now,
    and the calls are applied by the gateway once no rule defers them."""
    his = server.client("H44180000001")
    scope = "institution:H44180000001"
    mdtrt_id, msgid, body = await _kept_visit(server, his, "2026-05-06", "MZ-PV-1", info=True)
    _, raw = await his.post_raw(body)
    refused = decode(raw)
    assert refused["infcode"] == -1
    assert "尚未补办" in refused["err_msg"] and "相同报文ID" in refused["err_msg"]
    # Nothing kept against the msgid: its retry is judged again.
    kept = "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1 AND msgid = $2"
    assert await server.fetchval(kept, "H44180000001", msgid) == 0
    calls = "SELECT count(*) FROM deferred WHERE kind = 'call' AND status = 'pending'"
    # The registration, the diagnosis and the fees, held while the rule stands, and counted
    # where the team looks (the console had them, `plan show` not).
    assert await server.fetchval(calls) == 3
    shown = await asyncio.to_thread(cli, "plan", "show", "--database-url", server.dsn)
    assert "deferred visit calls: 3 waiting" in shown.stdout, shown.stdout

    await clear_rule(server.dsn, scope, "encounter")

    async def applied() -> bool:
        return await server.fetchval(calls) == 0

    await until(applied, within=15.0, seen=lambda: "calls still pending")
    assert await server.fetchval("SELECT count(*) FROM deferred WHERE status = 'failed'") == 0
    real = await server.fetchval(
        "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1", mdtrt_id
    )
    assert real is not None and not str(real).startswith("PV")
    # The till's retry of the same message now settles the visit the calls made.
    _, raw = await his.post_raw(body)
    settled = decode(raw)
    assert settled["infcode"] == 0, settled["err_msg"]
    info = settled["output"]["setlinfo"]
    assert amount_text(info["medfee_sumamt"]) == OUTPATIENT_TOTAL
    assert (
        await server.fetchval(
            "SELECT count(*) FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'", real
        )
        == 1
    )


async def test_a_settlement_between_its_visits_calls_being_applied_waits_unkept(
    server: Server,
) -> None:
    """Found from outside (a failover drill): a 2207 on a provisional id, retried after the
    visit's registration was applied and before its fees were, was refused "没有待结算的费用明细"
    and the refusal kept against its msgid, though the 2204 had been acknowledged: every retry
    got it, and the visit stayed open. It is told to wait, unkept, and its retry settles once
    the calls are applied."""
    his = server.client("H44180000001")
    scope = "institution:H44180000001"
    mdtrt_id, msgid, body = await _kept_visit(server, his, "2026-05-08", "MZ-PV-MID", info=False)
    # The fees' call is held where the gateway applying the calls must update it: the
    # registration is applied, the fees wait.
    holder = await asyncpg.connect(server.dsn)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute(
            "SELECT 1 FROM deferred WHERE kind = 'call' AND infno = '2204'"
            " AND fixmedins_code = 'H44180000001' AND status = 'pending' FOR UPDATE",
        )
        await clear_rule(server.dsn, scope, "encounter")
        became = "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1"

        async def registered() -> bool:
            return await server.fetchval(became, mdtrt_id) is not None

        await until(registered, within=15.0, seen=lambda: "registration not applied")
        _, raw = await his.post_raw(body)
        waiting = decode(raw)
        assert waiting["infcode"] == -1, waiting
        assert "尚未全部补办" in waiting["err_msg"] and "相同报文ID" in waiting["err_msg"]
        kept = "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1 AND msgid = $2"
        assert await server.fetchval(kept, "H44180000001", msgid) == 0
        await held.rollback()
    finally:
        await holder.close()
    calls = "SELECT count(*) FROM deferred WHERE kind = 'call' AND status = 'pending'"

    async def applied() -> bool:
        return await server.fetchval(calls) == 0

    await until(applied, within=15.0, seen=lambda: "calls still pending")
    _, raw = await his.post_raw(body)
    settled = decode(raw)
    assert settled["infcode"] == 0, settled["err_msg"]
    assert amount_text(settled["output"]["setlinfo"]["medfee_sumamt"]) == OUTPATIENT_TOTAL


async def test_a_settlement_on_a_provisional_visit_whose_registration_failed_is_told_so(
    server: Server,
) -> None:
    """The other side of the retryable refusal above: a registration kept under the plan that
    failed when applied (here, a person the ledger does not know) will never be applied, so the
    2207 on its provisional id is told to register again, not to wait."""
    his = server.client("H44180000001")
    scope = "institution:H44180000001"
    await set_rule(server.dsn, scope, "encounter", "defer")
    await _reload_plan(server)
    unknown = "441800000000009999"
    mdtrt_id = await his.register(unknown, "310", "2026-05-07 08:30:00", "MZ-PVX-1")
    assert mdtrt_id.startswith("PV")
    await clear_rule(server.dsn, scope, "encounter")
    failed = "SELECT fail_reason FROM deferred WHERE provisional_id = $1 AND status = 'failed'"

    async def applied() -> bool:
        return await server.fetchval(failed, mdtrt_id) is not None

    await until(applied, within=15.0)
    data = his.settle_data(unknown, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")
    answer = await his.call("2207", data)
    assert answer["infcode"] == -1
    assert "补办失败" in answer["err_msg"] and "重新办理就诊登记" in answer["err_msg"]
    assert "稍后" not in answer["err_msg"]
    # And the clerk finds it where kept calls are listed (found from outside: listed nowhere).
    reason = await server.fetchval(failed, mdtrt_id)
    listed = cli("deferred", "list", "--calls", "--json", "--database-url", server.dsn).stdout
    rows = [json.loads(line) for line in listed.splitlines()]  # the server's other tests' too
    [row] = [r for r in rows if r["provisional_id"] == mdtrt_id]
    assert (row["infno"], row["psn_no"], row["provisional_id"]) == ("2201", unknown, mdtrt_id)
    assert (row["status"], row["fail_reason"], row["applied_as"]) == ("failed", reason, None)
    shown = cli("deferred", "list", "--calls", "--status", "failed", "--database-url", server.dsn)
    assert f"2201 H44180000001 {row['msgid']} {unknown} {mdtrt_id}" in shown.stdout, shown.stdout
    assert f"failed ({reason})" in shown.stdout, shown.stdout
    claims = cli("deferred", "list", "--json", "--database-url", server.dsn).stdout
    assert mdtrt_id not in claims  # a call, not a claim


async def test_another_institutions_provisional_visit_is_not_found_not_waited_for(
    server: Server,
) -> None:
    """Found from outside: a call on a provisional id another institution was given, not applied
    yet, was told to retry once it was applied, and then was told it was not found: a visit
    that is not the institution's own is not found, whether applied or not."""
    his, other = server.client("H44180000001"), server.client("H44180000002")
    scope = "institution:H44180000001"
    await set_rule(server.dsn, scope, "encounter", "defer")
    try:
        await _reload_plan(server)
        psn_no = "441800000000000001"
        mdtrt_id = await his.register(psn_no, "310", "2026-05-07 08:30:00", "MZ-PVO-1")
        assert mdtrt_id.startswith("PV")
        info = other.visit_info_input(mdtrt_id, psn_no, "11", "2026-05-07 08:30:00")
        data = other.settle_data(psn_no, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")  # fmt: skip
        for infno, body in (("2203", info), ("2206", data), ("2207", data)):
            answer = await other.call(infno, body)
            assert answer["infcode"] == -1, (infno, answer)
            assert f"就诊ID{mdtrt_id}不存在或不属于本机构" in answer["err_msg"], (infno, answer)
        # The institution that was given it is still told to wait for it.
        mine = his.settle_data(psn_no, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")  # fmt: skip
        own = await his.call("2207", mine)
        assert own["infcode"] == -1 and "尚未补办" in own["err_msg"], own
    finally:
        # The module's later tests register at this hospital (they got provisional ids).
        await clear_rule(server.dsn, scope, "encounter")
        await _reload_plan(server)


@pytest.mark.parametrize(
    ("legacy_timeout", "answers_after"),
    [
        (0.5, 2.0),
        # Its own timeout past the call's deadline (the shipped 10 s against 5 s): found from
        # outside, the call's deadline answered "retry the same msgid" while the forward still
        # waited, and the retry was settled here once the plan changed.
        (10.0, 8.0),
    ],
)
async def test_a_sale_the_old_system_may_have_done_is_never_settled_here(
    new_database: Callable[..., Any], legacy_timeout: float, answers_after: float
) -> None:
    """Found from outside: a sale forwarded under route_legacy that the old system answered
    after the gateway gave up (it did settle it there) was settled here too when the counter
    retried after the plan changed. Sent and unanswered, its outcome is unknown: the counter is
    told to look in the old system, and that answer is kept for every retry."""
    sent: list[bytes] = []

    async def slow(request: web.Request) -> web.Response:
        sent.append(await request.read())
        await asyncio.sleep(answers_after)
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    async with old_system(slow) as url:
        config = GatewayConfig(
            rate_limit=GENEROUS.rate_limit,
            legacy=Legacy(url=url, timeout_seconds=legacy_timeout),
        )
        async with running_gateway(new_database, config) as srv:
            pos = srv.client("P44180000001")
            scope = "institution:P44180000001"
            await set_rule(srv.dsn, scope, "settlement", "route_legacy")
            await _reload_plan(srv)
            drug = pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", DRUG_TOTAL, DRUG_LINES)
            body = msgspec.json.encode(pos.envelope("2102", drug))
            errors = _legacy_errors()
            status, answer = await pos.post_raw(body)
            first = decode(answer)
            assert status == 200 and first["infcode"] == -1
            assert "结果未知" in first["err_msg"] and "原系统" in first["err_msg"]
            # Counted as the old system's failure, a timeout (found from outside: counted as a
            # refusal, so the error alerts never saw an old system that stopped answering).
            assert _legacy_errors() == (errors[0] + 1, errors[1] + 1, errors[2])
            # The msgid sent again with its body rebuilt is told the outcome is unknown, not that
            # nothing happened (found from outside: told to use a new msgid, which would have
            # sent the sale to the old system a second time).
            rebuilt = {**drug, "druginfo": {**drug["druginfo"], "begntime": "2026-05-08 10:00:01"}}
            again = await pos.call("2102", rebuilt, msgid=decode_request(body).msgid)
            assert again["infcode"] == -1 and "办理结果未知" in again["err_msg"], again
            assert "该交易未发生" not in again["err_msg"] and "原系统查询" in again["err_msg"]
            assert sent == [body]
            # A pre-settlement did nothing there either way: retry the same msgid (found from
            # outside: it was told its outcome was unknown and not to settle it here).
            read = await pos.call("2101", drug)
            assert read["infcode"] == -1 and "相同报文ID重试" in read["err_msg"], read
            assert "办理结果未知" not in read["err_msg"]
            balance = await srv.fetchval(
                "SELECT balance_fen FROM accounts WHERE psn_no = $1", EMPLOYEE
            )
            await clear_rule(srv.dsn, scope, "settlement")
            await _reload_plan(srv)
            status, again = await pos.post_raw(body)
            assert (status, again) == (200, answer)
            assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
            assert balance == await srv.fetchval(
                "SELECT balance_fen FROM accounts WHERE psn_no = $1", EMPLOYEE
            )


def _legacy_errors() -> tuple[float, float, float]:
    """The pharmacy's 2102 errors, its institution's timeouts, and its 2102 refusals."""

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return (
        sample("sgw_requests_total", {"infno": "2102", "outcome": "error"}),
        sample(
            "sgw_institution_errors_total", {"fixmedins_code": "P44180000001", "kind": "timeout"}
        ),
        sample("sgw_requests_total", {"infno": "2102", "outcome": "rejected"}),
    )


async def test_what_this_gateway_did_is_undone_here_under_route_legacy(
    new_database: Callable[..., Any], legacy: tuple[str, list[bytes]]
) -> None:
    """Found from outside: under route_legacy a 2103 and a 2601 of sales this gateway settled
    went to the old system, which never had them; its answer was kept, the clerk told
    "cancelled" while this ledger kept the sale. An undo of what was done here is done here."""
    url, received = legacy
    config = GatewayConfig(rate_limit=GENEROUS.rate_limit, legacy=Legacy(url=url))
    async with running_gateway(new_database, config) as srv:
        pos = srv.client("P44180000001")
        drug = pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", DRUG_TOTAL, DRUG_LINES)
        sold = (await pos.ok("2102", drug))["setlinfo"]
        second = pos.msgid()
        await pos.ok("2102", drug, msgid=second)
        await set_rule(srv.dsn, "institution:P44180000001", "settlement", "route_legacy")
        await _reload_plan(srv)
        cancel = {
            "data": {"setl_id": sold["setl_id"], "mdtrt_id": sold["mdtrt_id"], "psn_no": EMPLOYEE}
        }
        cancelled = await pos.call("2103", cancel)
        assert cancelled["infcode"] == 0, cancelled["err_msg"]
        reversal = {"data": {"psn_no": EMPLOYEE, "omsgid": second, "oinfno": "2102"}}
        reversed_ = await pos.call("2601", reversal)
        assert reversed_["infcode"] == 0, reversed_["err_msg"]
        assert received == []  # the old system was asked nothing
        assert await srv.fetchval("SELECT count(*) FROM settlements WHERE status = 'settled'") == 0
        assert await srv.check_ledger() == []


async def test_the_old_systems_breaker_closes_once_it_is_back_with_nothing_routed_to_it(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: requests were the old system's breaker's only probes, so once the
    route_legacy rule was cleared its breaker stayed open (`SgwBreakerOpen` paging) for a
    system back for minutes. It is probed while open, without a request and without sending
    the old system anything it would act on."""
    down = True
    posts: list[bytes] = []
    probes: list[str] = []

    async def old(request: web.Request) -> web.Response:
        if request.method == "POST":
            posts.append(await request.read())
        else:
            probes.append(request.method)
        if down:
            return web.Response(status=500, text="down")
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    quick = BreakerConfig(
        consecutive_failures=2, min_open_seconds=0.5, half_open_probes=2, healthy_seconds=0.5
    )
    async with old_system(old, every_method=True) as url:
        config = GatewayConfig(
            rate_limit=GENEROUS.rate_limit, legacy=Legacy(url=url), breakers=Breakers(legacy=quick)
        )
        async with running_gateway(new_database, config) as srv:
            assert srv.app is not None
            breaker = srv.app[GATEWAY].breakers["legacy"]
            pos = srv.client("P44180000001")
            scope = "institution:P44180000001"
            await set_rule(srv.dsn, scope, "settlement", "route_legacy")
            await _reload_plan(srv)
            drug = pos.drug_input(EMPLOYEE, "2026-05-08 10:00:00", DRUG_TOTAL, DRUG_LINES)
            for _ in range(2):
                answer = await pos.call("2101", drug)
                assert answer["infcode"] == -1 and "原" in answer["err_msg"], answer
            assert breaker.state == "open"
            await clear_rule(srv.dsn, scope, "settlement")
            await _reload_plan(srv)
            sent = len(posts)
            # Still down: probed, and kept open.
            await until(lambda: _at_least(probes, 2), within=5.0)
            assert breaker.state == "open"
            down = False

            async def closed() -> bool:
                return breaker.state == "closed"

            await until(closed, within=10.0)
            gauge = REGISTRY.get_sample_value("sgw_breaker_state", {"dependency": "legacy"})
            assert gauge == 0
            assert len(posts) == sent  # probes sent nothing it would act on


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_a_rule_narrowed_to_a_category_refuses_undoing_that_categorys_settlements(
    server: Server,
) -> None:
    """Found from outside: under the 温州 timetable, whose settlement rules are per medical
    category, a 2208 and 2601s refunded outpatient and pharmacy settlements made before the stop,
    while the 2103 of a sale beside them was refused (a cancellation and a 2601 name no
    med_type; they saw the plain scopes only). A settlement of the category is not undone while
    its category's settlements are deferred (or rejected), in the words of the plain scopes;
    another category's is; nothing is written for a refusal. Found from outside again: those
    refusals (and a plain scope's of a 2601) were kept against the msgid, and once the rule was
    cleared the same message was refused for good in the plan's words: kept nothing now."""
    his = server.client("H44180000001")
    pos = server.client(PHARMACY_441800)
    visits = [await _visit(his, WORKER, "2026-05-11", f"MZ-UNDO-{n}") for n in range(2)]
    settled = []
    for mdtrt_id in visits:
        data = his.settle_data(WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")  # fmt: skip
        body = his.envelope("2207", data)
        answer = decode((await his.post_raw(msgspec.json.encode(body)))[1])
        assert answer["infcode"] == 0, answer["err_msg"]
        settled.append((body["msgid"], answer["output"]["setlinfo"]))
    sale = pos.envelope("2102", pos.drug_input(WORKER, "2026-05-11 10:00:00", DRUG_TOTAL, DRUG_LINES))  # fmt: skip
    assert decode((await pos.post_raw(msgspec.json.encode(sale)))[1])["infcode"] == 0
    refused: list[tuple[HisClient, bytes, str]] = []  # (client, body, the plan's words)
    for scope, action, words in [
        ("region:441800:outpatient", "defer", "应急处置期间不能撤销已完成的医保结算"),
        ("region:441800:pharmacy", "defer", "应急处置期间不能撤销已完成的医保结算"),
        ("region:441800:outpatient", "reject", "原结算仍然有效，未退费"),
        ("region:441800", "defer", "应急处置期间不能撤销已完成的医保结算"),
    ]:
        cli("plan", "set", "--scope", scope, "--class", "settlement", "--action", action,
            "--reason", "演练切换", "--database-url", server.dsn)  # fmt: skip
        await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))  # fmt: skip
        before = await server.fetchval("SELECT count(*) FROM settlements WHERE status = 'settled'")
        msgid, info = settled[0]
        undos = [
            (pos, "2601", {"data": {"psn_no": WORKER, "omsgid": sale["msgid"], "oinfno": "2102"}}),
        ] if scope.endswith("pharmacy") else [
            (his, "2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": WORKER}}),
            (his, "2601", {"data": {"psn_no": WORKER, "omsgid": msgid, "oinfno": "2207"}}),
        ]  # fmt: skip
        for client, infno, data in undos:
            body = msgspec.json.encode(client.envelope(infno, data))
            answer = decode((await client.post_raw(body))[1])
            assert answer["infcode"] == -1 and words in answer["err_msg"], (scope, infno, answer)
            refused.append((client, body, words))
        after = await server.fetchval("SELECT count(*) FROM settlements WHERE status = 'settled'")
        assert after == before
        if scope.endswith("pharmacy"):
            # Another category's settlement is undone as ever.
            msgid, info = settled[1]
            cancel = {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": WORKER}}  # fmt: skip
            assert (await his.ok("2208", cancel))["setlinfo"]["setl_id"]
        cli("plan", "clear", "--scope", scope, "--class", "settlement", "--reason", "演练结束",
            "--database-url", server.dsn)  # fmt: skip
    await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))
    # The same messages once the rules are cleared: the first 2601 of each settlement reverses
    # it, and no message is answered in the plan's words again.
    outcomes = {}
    for n, (client, body, words) in reversed(list(enumerate(refused))):
        answer = decode((await client.post_raw(body))[1])
        assert words not in (answer["err_msg"] or ""), answer
        outcomes[n] = answer["infcode"]
    # The plain scope's 2601 of the first visit (the last refused), the pharmacy's of the sale.
    assert outcomes[len(refused) - 1] == 0 and outcomes[2] == 0, outcomes
    assert await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", settled[0][1]["setl_id"]) != "settled"  # fmt: skip


async def test_a_rule_narrowed_to_a_category_refuses_putting_its_cancelled_settlements_back(
    server: Server,
) -> None:
    """Found from outside: under a category's rule (defer or reject, rule or window), a 2601 of
    a 2208, 2103 or 2305 put the cancelled settlement back in force, the account paying again,
    where the plain scopes refuse it. Refused now by the cancelled settlement's category;
    another category's is put back."""
    his = server.client("H44180000001")
    pos = server.client(PHARMACY_441800)
    cancels = []
    for n in range(3):
        mdtrt_id = await _visit(his, WORKER, "2026-05-12", f"MZ-BACK-{n}")
        data = his.settle_data(WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")  # fmt: skip
        info = (await his.ok("2207", data))["setlinfo"]
        body = his.envelope("2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": WORKER}})  # fmt: skip
        answer = decode((await his.post_raw(msgspec.json.encode(body)))[1])
        assert answer["infcode"] == 0, answer
        cancels.append((body["msgid"], info["setl_id"]))
    bought = await pos.ok("2102", pos.drug_input(WORKER, "2026-05-12 10:00:00", DRUG_TOTAL, DRUG_LINES))  # fmt: skip
    sale = bought["setlinfo"]
    back = pos.envelope("2103", {"data": {"setl_id": sale["setl_id"], "mdtrt_id": sale["mdtrt_id"], "psn_no": WORKER}})  # fmt: skip
    assert decode((await pos.post_raw(msgspec.json.encode(back)))[1])["infcode"] == 0
    for scope, action, client, (msgid, setl_id), oinfno, words in [
        ("region:441800:outpatient", "defer", his, cancels[0], "2208", "不能冲正医保结算的撤销（恢复原结算）"),
        ("region:441800:outpatient", "reject", his, cancels[1], "2208", "原结算已撤销，未恢复"),
        ("region:441800:pharmacy", "defer", pos, (back["msgid"], sale["setl_id"]), "2103", "不能冲正医保结算的撤销（恢复原结算）"),
    ]:  # fmt: skip
        cli("plan", "set", "--scope", scope, "--class", "settlement", "--action", action,
            "--reason", "演练切换", "--database-url", server.dsn)  # fmt: skip
        await _plan_version_in_force(server, await server.fetchval("SELECT version FROM plan_version"))  # fmt: skip
        answer = await client.call("2601", {"data": {"psn_no": WORKER, "omsgid": msgid, "oinfno": oinfno}})  # fmt: skip
        assert answer["infcode"] == -1 and words in answer["err_msg"], (scope, answer)
        status = await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", setl_id)
        assert status != "settled", (scope, status)
        if scope.endswith("pharmacy"):
            # An outpatient cancellation is put back under a pharmacy rule.
            msgid, setl_id = cancels[2]
            assert (await his.ok("2601", {"data": {"psn_no": WORKER, "omsgid": msgid, "oinfno": "2208"}})) == {}  # fmt: skip
            assert await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", setl_id) == "settled"  # fmt: skip
        cli("plan", "clear", "--scope", scope, "--class", "settlement", "--reason", "演练结束",
            "--database-url", server.dsn)  # fmt: skip
