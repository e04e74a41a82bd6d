"""A retry is answered by its stored answer, whatever the emergency plan says by then.

A counter that did not get its answer within the deadline sends the same msgid and body again,
possibly after the plan changed (a rule set, a cut-over window opened, the ledger's breaker
open). It must get the answer it was given the first time, byte for byte, with nothing settled
again, nothing forwarded to the old system and nothing deferred; a changed body under the used
msgid is refused. The other order too: an answer given under the plan (a deferred claim, a
self-pay admission, a claim in the local journal) is the answer to its retries after recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web
from msgspec.structs import replace

from gateway.app.config import Breakers
from gateway.app.config import Legacy as LegacyConfig
from gateway.app.runtime import Gateway
from gateway.app.server import GATEWAY, build_app
from gateway.emergency.breaker import BreakerConfig
from gateway.emergency.plan import store
from tests.integration import conftest
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    connect,
    old_system,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient, decode

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
PHARMACY = "P44180000001"
REGION = "region:441800"
EMPLOYEE = "441800000000000003"
WORKER = "441800000000000001"
RETIREE = "441800000000000002"
CLASSES = ("settlement", "encounter")
REUSED = "已使用过且报文内容不同"
# Yesterday: the tests' visits and sales sit at fixed hours of the day, and a run after midnight
# found "today 10:00" in the future (refused by the date bounds).
TODAY = (dt.date.today() - dt.timedelta(days=1)).isoformat()


@dataclass
class Sent:
    """A request as the counter sent it, and the answer it got."""

    client: HisClient
    infno: str
    msgid: str
    body: bytes
    answer: bytes

    def changed(self) -> bytes:
        """The same msgid asking for something else (one more field in its input; the envelope's
        stamps alone would be a retry of the same message)."""
        env = msgspec.json.decode(self.body)
        env["input"] = {**env["input"], "memo": "乙"}
        return msgspec.json.encode(env)


async def send(client: HisClient, infno: str, input_: Any, msgid: str | None = None) -> Sent:
    body = msgspec.json.encode(client.envelope(infno, input_, msgid=msgid))
    status, answer = await client.post_raw(body)
    assert status == 200, answer
    env = msgspec.json.decode(body)
    return Sent(client, infno, env["msgid"], body, answer)


def ok(sent: Sent) -> dict[str, Any]:
    answer = decode(sent.answer)
    assert answer["infcode"] == 0, (sent.infno, answer["err_msg"])
    output = answer["output"]
    assert isinstance(output, dict)
    return output


@dataclass
class Legacy:
    url: str
    received: list[bytes]


@pytest.fixture(scope="module")
async def legacy() -> AsyncIterator[Legacy]:
    """The old system behind route_legacy: counts what it gets, answers a fixed envelope."""
    received: list[bytes] = []

    async def call_service(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    async with old_system(call_service) as url:
        yield Legacy(url, received)


# The breaker opens on three failures and closes by itself ~3 s later once probes answer.
BREAKER = BreakerConfig(
    consecutive_failures=3, min_open_seconds=3.0, half_open_probes=1, healthy_seconds=0.3
)


@dataclass
class Rig:
    srv: Server
    gw: Gateway
    legacy: Legacy

    async def plan(self, action: str | None, classes: tuple[str, ...] = CLASSES) -> None:
        """Set (or clear, with None) the region's rules, in force here at once."""
        for klass in classes:
            if action is None:
                await clear_rule(self.srv.dsn, REGION, klass)
            else:
                await set_rule(self.srv.dsn, REGION, klass, action)
        await self.gw.reload_plan(force=True)

    async def state(self) -> dict[str, Any]:
        """Everything a retry must leave as it was."""
        out = await self.srv.ledger_fingerprint()
        for table in ("deferred", "idempotency", "exchange_files"):
            out[table] = await self.srv.fetchval(f"SELECT count(*) FROM {table}")
        out["legacy"] = len(self.legacy.received)
        out["journal"] = dict(self.gw.journal.answers) if self.gw.journal else {}
        return out


@pytest.fixture(scope="module")
async def rig(new_database: Callable[..., Any], legacy: Legacy) -> AsyncIterator[Rig]:
    config = replace(
        GENEROUS, legacy=LegacyConfig(url=legacy.url), breakers=Breakers(postgres=BREAKER)
    )
    apps: list[web.Application] = []

    def capture(settings: Any) -> web.Application:
        app = build_app(settings)
        apps.append(app)
        return app

    async with contextlib.AsyncExitStack() as stack:
        patch = pytest.MonkeyPatch()
        patch.setattr(conftest, "build_app", capture)
        try:
            srv = await stack.enter_async_context(running_gateway(new_database, config))
        finally:
            patch.undo()
        yield Rig(srv, apps[-1][GATEWAY], legacy)


async def _visit(his: HisClient, psn_no: str, no: str) -> str:
    mdtrt_id = await his.register(psn_no, "310", f"{TODAY} 08:30:00", no)
    await his.visit_info(mdtrt_id, psn_no, "11", f"{TODAY} 08:30:00")
    rows = his.fee_rows(mdtrt_id, psn_no, OUTPATIENT_LINES, f"{TODAY} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


def _admission(psn_no: str, ipt_no: str) -> dict[str, Any]:
    return {
        "mdtrtinfo": {
            "psn_no": psn_no, "insutype": "310", "begntime": f"{TODAY} 07:00:00",
            "mdtrt_cert_type": "01", "mdtrt_cert_no": psn_no, "med_type": "21", "ipt_no": ipt_no,
        },
        "diseinfo": [],
    }  # fmt: skip


async def _inpatient(his: HisClient, psn_no: str, ipt_no: str) -> tuple[str, dict[str, Any]]:
    """2401 → 2301 → 2402: a stay ready for its final settlement (2304's data)."""
    mdtrt_id = (await his.ok("2401", _admission(psn_no, ipt_no)))["result"]["mdtrt_id"]
    lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}]  # fmt: skip
    rows = his.fee_rows(mdtrt_id, psn_no, lines, f"{TODAY} 08:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "310",
                      "endtime": f"{TODAY} 09:00:00", "dscg_dept_codg": "K1",
                      "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
    )  # fmt: skip
    return mdtrt_id, his.settle_data(
        psn_no, mdtrt_id, "21", "120.00", "310", "0", mid_setl_flag="0"
    )


def _cancel(info: dict[str, Any], psn_no: str) -> dict[str, Any]:
    return {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": psn_no}}


@pytest.fixture(scope="module")
async def acknowledged(rig: Rig) -> dict[str, Sent]:
    """One acknowledged request of each writing transaction, sent with no plan in force."""
    his, pos = rig.srv.client(HOSPITAL), rig.srv.client(PHARMACY)
    out: dict[str, Sent] = {}
    drug = pos.drug_input(WORKER, f"{TODAY} 10:00:00", DRUG_TOTAL, DRUG_LINES)
    out["2102"] = await send(pos, "2102", drug)
    sold = await send(pos, "2102", drug)
    out["2103"] = await send(pos, "2103", _cancel(ok(sold)["setlinfo"], WORKER))
    reversed_sale = await send(pos, "2102", drug)
    out["2601"] = await send(
        pos, "2601", {"data": {"psn_no": WORKER, "omsgid": reversed_sale.msgid, "oinfno": "2102"}}
    )
    visit = await _visit(his, EMPLOYEE, "MZ-RP-1")
    data = his.settle_data(EMPLOYEE, visit, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")
    out["2207"] = await send(his, "2207", data)
    other = await _visit(his, EMPLOYEE, "MZ-RP-2")
    data = his.settle_data(EMPLOYEE, other, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1")
    settled = await send(his, "2207", data)
    out["2208"] = await send(his, "2208", _cancel(ok(settled)["setlinfo"], EMPLOYEE))
    _, stay = await _inpatient(his, RETIREE, "ZY-RP-1")
    out["2304"] = await send(his, "2304", stay)
    _, stay2 = await _inpatient(his, RETIREE, "ZY-RP-2")
    discharged = await send(his, "2304", stay2)
    out["2305"] = await send(his, "2305", _cancel(ok(discharged)["setlinfo"], RETIREE))
    out["2201"] = await send(
        his,
        "2201",
        {"data": {"psn_no": EMPLOYEE, "insutype": "310", "begntime": f"{TODAY} 11:00:00",
                  "mdtrt_cert_type": "01", "mdtrt_cert_no": EMPLOYEE, "ipt_otp_no": "MZ-RP-3",
                  "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01", "dept_name": "内科",
                  "caty": "A03"}},
    )  # fmt: skip
    out["2401"] = await send(his, "2401", _admission(RETIREE, "ZY-RP-3"))
    for sent in out.values():
        output = ok(sent)
        setl_id = (output.get("setlinfo") or {}).get("setl_id") or ""
        assert not setl_id.startswith("DF"), sent.infno
    return out


async def _retries_get_their_answers(rig: Rig, acknowledged: dict[str, Sent]) -> None:
    before = await rig.state()
    for infno, sent in acknowledged.items():
        status, again = await sent.client.post_raw(sent.body)
        assert status == 200
        assert again == sent.answer, (infno, decode(again).get("err_msg"))
        status, changed = await sent.client.post_raw(sent.changed())
        refusal = decode(changed)
        assert refusal["infcode"] == -1 and REUSED in refusal["err_msg"], (infno, refusal)
    assert await rig.state() == before


@pytest.mark.parametrize("action", ["reject", "defer", "selfpay", "route_legacy"])
async def test_a_retry_after_the_plan_changed_gets_its_stored_answer(
    rig: Rig, acknowledged: dict[str, Sent], action: str
) -> None:
    classes = ("encounter",) if action == "selfpay" else CLASSES  # selfpay is for admissions
    await rig.plan(action, classes)
    try:
        await _retries_get_their_answers(rig, acknowledged)
    finally:
        await rig.plan(None, classes)


async def test_a_retry_in_a_cut_over_window_gets_its_stored_answer(
    rig: Rig, acknowledged: dict[str, Sent]
) -> None:
    now = dt.datetime.now()
    for action in ("reject", "route_legacy"):
        async with connect(rig.srv.dsn) as conn:
            await store.add_window(
                conn, name=f"切换演练{action}", scope=REGION, classes=list(CLASSES),
                action=action, begins=now - dt.timedelta(hours=1),
                ends=now + dt.timedelta(hours=1), operator="test", reason="切换窗口内的重发",
            )  # fmt: skip
        await rig.gw.reload_plan(force=True)
        assert rig.gw.plan.windows
        try:
            await _retries_get_their_answers(rig, acknowledged)
        finally:
            async with connect(rig.srv.dsn) as conn:
                for w in rig.gw.plan.windows:
                    await store.remove_window(
                        conn, window_id=w.window_id, operator="test", reason="演练结束"
                    )
            await rig.gw.reload_plan(force=True)


async def _breaker_closed(rig: Rig) -> None:
    breaker = rig.gw.breakers["postgres"]

    async def closed() -> bool:
        return not breaker.is_open

    await until(closed, within=15.0)


def _trip(rig: Rig) -> None:
    """The ledger's breaker opens (as after a burst of failures) while the ledger is reachable."""
    breaker = rig.gw.breakers["postgres"]
    for _ in range(BREAKER.consecutive_failures):
        breaker.record(False)
    if breaker.suspected:
        breaker.confirmed(False)  # its probe failing, as a failing ledger answers it
    assert breaker.is_open


async def test_acknowledged_before_an_outage_is_not_deferred_again(
    rig: Rig, acknowledged: dict[str, Sent]
) -> None:
    """The breaker opens after the ledger answered; the retries are looked up in the ledger
    (it answers) instead of becoming claims in the local journal."""
    await _breaker_closed(rig)
    _trip(rig)
    try:
        await _retries_get_their_answers(rig, acknowledged)
    finally:
        await _breaker_closed(rig)


async def test_an_answer_given_under_the_plan_is_the_answer_after_it(rig: Rig) -> None:
    his, pos = rig.srv.client(HOSPITAL), rig.srv.client(PHARMACY)
    drug = pos.drug_input(EMPLOYEE, f"{TODAY} 12:00:00", DRUG_TOTAL, DRUG_LINES)
    given: list[Sent] = []

    await rig.plan("defer")
    given.append(await send(pos, "2102", drug))  # a claim in the ledger (主动报)
    given.append(await send(his, "2201", {"data": {"psn_no": EMPLOYEE, "insutype": "310", "begntime": f"{TODAY} 12:30:00", "mdtrt_cert_type": "01", "mdtrt_cert_no": EMPLOYEE, "ipt_otp_no": "MZ-RP-9", "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01", "dept_name": "内科", "caty": "A03"}}))  # fmt: skip
    await rig.plan(None)
    await rig.plan("selfpay", ("encounter",))
    given.append(await send(his, "2401", _admission(EMPLOYEE, "ZY-RP-9")))
    await rig.plan(None, ("encounter",))
    assert ok(given[0])["setlinfo"]["setl_id"].startswith("DF")
    assert ok(given[1])["data"]["mdtrt_id"].startswith("PV")
    assert "自费" in (decode(given[2].answer)["warn_msg"] or "")

    # The ledger's breaker opens: a sale goes to the local journal; its retry while the ledger
    # is still away gets the same claim, and a changed body under its msgid is refused.
    await _breaker_closed(rig)
    _trip(rig)
    journaled = await send(pos, "2102", drug)
    assert ok(journaled)["setlinfo"]["setl_id"].startswith("DF")
    assert rig.gw.journal is not None and rig.gw.journal.holds_anything
    _, again = await pos.post_raw(journaled.body)
    assert again == journaled.answer
    refusal = decode((await pos.post_raw(journaled.changed()))[1])
    assert refusal["infcode"] == -1 and REUSED in refusal["err_msg"]
    await _breaker_closed(rig)  # the journal is drained into the ledger before it closes
    given.append(journaled)

    settlements = await rig.srv.fetchval("SELECT count(*) FROM settlements")
    claims = await rig.srv.fetchval("SELECT count(*) FROM deferred")
    for sent in given:
        _, again = await sent.client.post_raw(sent.body)
        assert again == sent.answer, (sent.infno, decode(again).get("err_msg"))
        refusal = decode((await sent.client.post_raw(sent.changed()))[1])
        assert refusal["infcode"] == -1 and REUSED in refusal["err_msg"], sent.infno
    assert await rig.srv.fetchval("SELECT count(*) FROM settlements") == settlements
    assert await rig.srv.fetchval("SELECT count(*) FROM deferred") == claims


async def test_a_retry_beside_an_attempt_still_at_work_is_not_forwarded_to_the_old_system(
    new_database: Callable[..., Any], legacy: Legacy
) -> None:
    """Found from outside: a sale held in the ledger (its msgid's key taken, waiting on a lock),
    the plan then set to `route_legacy`, and its retry sent to a second gateway process: the
    retry was forwarded to the old system, which settled it, and the first attempt committed
    here as well: the fund and the account paid twice across the two systems. A retry whose
    message an open transaction still holds is told the outcome is pending, and nothing is
    forwarded; once the first attempt commits, the retry gets its answer."""
    config = replace(
        GENEROUS, legacy=LegacyConfig(url=legacy.url), breakers=Breakers(postgres=BREAKER)
    )
    async with running_gateway(new_database, config) as first_process:

        async def the_same_ledger(_: str) -> str:
            return first_process.dsn

        async with running_gateway(new_database, config, serve_through=the_same_ledger) as other:
            pos, pos_beside = first_process.client(PHARMACY), other.client(PHARMACY)
            drug = pos.drug_input(WORKER, f"{TODAY} 11:00:00", DRUG_TOTAL, DRUG_LINES)
            body = msgspec.json.encode(pos.envelope("2102", drug))
            locker = await asyncpg.connect(first_process.dsn)
            try:
                lock = locker.transaction()
                await lock.start()
                await locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
                attempt = asyncio.create_task(pos.post_raw(body))
                await asyncio.sleep(1.0)  # its key taken, waiting on the lock
                await set_rule(first_process.dsn, REGION, "settlement", "route_legacy")
                for srv in (first_process, other):
                    assert srv.app is not None
                    await srv.app[GATEWAY].reload_plan(force=True)
                forwarded = len(legacy.received)
                retry = decode((await pos_beside.post_raw(body))[1])
                assert retry["infcode"] == -1 and "结果待定" in retry["err_msg"], retry
                assert len(legacy.received) == forwarded
                await lock.rollback()
                status, answer = await attempt
                assert status == 200 and decode(answer)["infcode"] == 0, answer
                assert (await pos_beside.post_raw(body))[1] == answer
                assert len(legacy.received) == forwarded
            finally:
                await clear_rule(first_process.dsn, REGION, "settlement")
                await locker.close()


async def test_duplicates_of_one_sale_at_one_process_are_forwarded_to_the_old_system_once(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: under `route_legacy`, copies of one sale sent together (a till's
    retries) were each forwarded to the old system, which settled each under its own number;
    the counter got one answer, the old system kept several settlements. While one attempt of
    the message is being forwarded, the others are told the outcome is pending, and each retry
    afterwards gets the relayed answer."""
    received: list[bytes] = []

    async def slow_old_system(request: web.Request) -> web.Response:
        received.append(await request.read())
        await asyncio.sleep(1.0)
        return web.Response(body=b'{"infcode":0,"output":{"legacy":true},"err_msg":null}')

    async with old_system(slow_old_system) as url:
        config = replace(
            GENEROUS, legacy=LegacyConfig(url=url), breakers=Breakers(postgres=BREAKER)
        )
        async with running_gateway(new_database, config) as srv:
            await set_rule(srv.dsn, REGION, "settlement", "route_legacy")
            assert srv.app is not None
            await srv.app[GATEWAY].reload_plan(force=True)
            pos = srv.client(PHARMACY)
            drug = pos.drug_input(WORKER, f"{TODAY} 11:30:00", DRUG_TOTAL, DRUG_LINES)
            body = msgspec.json.encode(pos.envelope("2102", drug))
            answers = await asyncio.gather(*(pos.post_raw(body) for _ in range(4)))
            relayed = [a for _, a in answers if decode(a)["infcode"] == 0]
            assert len(relayed) >= 1 and all(a == relayed[0] for a in relayed), answers
            for _, answer in answers:
                if decode(answer)["infcode"] != 0:
                    assert "结果待定" in decode(answer)["err_msg"], answer
            assert (await pos.post_raw(body))[1] == relayed[0]
            assert len(received) == 1
            await clear_rule(srv.dsn, REGION, "settlement")
