"""Red-team findings on the emergency plan and the ledger pool, each replayed as it was found.

D3: heavy but legal work at one institution (pre-settlements over thousands of lines, settlements
of locked visits) must not take the ledger connections or the group commit's writers everyone
else needs; a visit's unsettled lines are bounded. D4: under `defer` one batch gets one claim,
and lines under a pending claim are not settled again in real time (the patient paid them in
cash), in the ledger and in the local journal. D7: a plan rule or window for an institution or
region the reference data does not know is refused (console API, CLI, windows).

The slow work is made slow by a row lock the test holds, not by sheer size, so that nothing here
depends on how fast this machine is: the assertions are about answers, and about no request
waiting past its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from msgspec.structs import replace

from gateway.app.config import Breakers, Uploads
from gateway.app.runtime import Gateway
from gateway.app.server import GATEWAY, build_app
from gateway.emergency.breaker import BreakerConfig
from gateway.emergency.deferred import replay
from gateway.ledger.partitions import MAIN
from gateway.pipeline.ledger_shares import SHARE_BUSY
from tests.integration import conftest
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    cli,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration

DEFERRING = "H44180000001"  # the hospital whose settlements are deferred (D4)
HEAVY = "H44180000002"  # legal but heavy pre-settlements (D3)
LOCKED = "H44180000003"  # settlements that wait on a locked visit (D3, group commit)
VICTIM = "P52050000001"  # another region's pharmacy, selling all along
EMPLOYEE = "441800000000000003"
WORKER = "441800000000000001"
RETIREE = "441800000000000002"
BUYER = "520500000000000001"
# Yesterday: the tests' visits and sales sit at fixed hours of the day, and a run after midnight
# found "today 10:00" in the future (refused by the date bounds).
TODAY = (dt.date.today() - dt.timedelta(days=1)).isoformat()
LINE_CAP = 2500  # unsettled lines a visit may hold, in this rig
BIG = 2000  # lines of the heavy visit
PENDING = "已按应急预案暂存为待结算"
DEADLINE = GENEROUS.deadlines.call_seconds
# The breaker opens on three failures and closes by itself ~3 s later once probes answer.
BREAKER = BreakerConfig(
    consecutive_failures=3, min_open_seconds=3.0, half_open_probes=1, healthy_seconds=0.3
)


@dataclass
class Rig:
    srv: Server
    gw: Gateway

    async def plan(self, scope: str, action: str | None, klass: str = "settlement") -> None:
        """Set (or clear, with None) a rule, in force in the serving process at once."""
        if action is None:
            await clear_rule(self.srv.dsn, scope, klass)
        else:
            await set_rule(self.srv.dsn, scope, klass, action)
        await self.gw.reload_plan(force=True)


@pytest.fixture(scope="module")
async def rig(new_database: Callable[..., Any]) -> AsyncIterator[Rig]:
    config = replace(
        GENEROUS,
        breakers=Breakers(postgres=BREAKER),
        uploads=Uploads(max_unsettled_lines_per_visit=LINE_CAP),
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
        yield Rig(srv, apps[-1][GATEWAY])


async def _visit(his: HisClient, psn_no: str, no: str, batches: tuple[str, ...] = ("B1",)) -> str:
    """2201 + 2203 + one 2204 per charge batch (OUTPATIENT_LINES each)."""
    mdtrt_id = await his.register(psn_no, "310", f"{TODAY} 08:30:00", no)
    await his.visit_info(mdtrt_id, psn_no, "11", f"{TODAY} 08:30:00")
    for batch in batches:
        lines = [{**ln, "feedetl_sn": f"{batch}-{ln['feedetl_sn']}"} for ln in OUTPATIENT_LINES]
        rows = his.fee_rows(mdtrt_id, psn_no, lines, f"{TODAY} 08:40:00", batch)
        await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


def _settle(his: HisClient, psn_no: str, mdtrt_id: str, batch: str = "B1") -> dict[str, Any]:
    return his.settle_data(psn_no, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno=batch)


def _cancel(setl_id: str, mdtrt_id: str, psn_no: str) -> dict[str, Any]:
    return {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}}


async def _claims(srv: Server, mdtrt_id: str) -> list[asyncpg.Record]:
    return await srv.fetch(
        "SELECT claim_id, status, source FROM deferred WHERE kind = 'claim' AND mdtrt_id = $1"
        " ORDER BY seq",
        mdtrt_id,
    )


async def _settlements(srv: Server, mdtrt_id: str) -> int:
    return int(await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id))


def _refused_as_pending(answer: dict[str, Any], claim_id: str) -> None:
    assert answer["infcode"] == -1, answer
    assert PENDING in answer["err_msg"] and claim_id in answer["err_msg"], answer["err_msg"]
    assert not answer["output"]


async def _replayed(rig: Rig, claim_id: str) -> str:
    """Replay every pending claim; this claim's status afterwards."""
    await replay.replay(rig.gw)
    row = await rig.srv.fetchrow("SELECT status FROM deferred WHERE claim_id = $1", claim_id)
    assert row is not None
    return str(row["status"])


# --------------------------------------------------------------------------------------- D4


async def test_a_batch_under_a_pending_claim_gets_no_second_claim(rig: Rig) -> None:
    """d2.py: three 2207s of one batch, each with a new msgid, under `defer`."""
    his = rig.srv.client(DEFERRING)
    scope = f"institution:{DEFERRING}"
    mdtrt_id = await _visit(his, EMPLOYEE, "MZ-RT-D2")
    await rig.plan(scope, "defer")
    try:
        first = await his.ok("2207", _settle(his, EMPLOYEE, mdtrt_id))
        claim_id = first["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
        for _ in range(2):
            _refused_as_pending(await his.call("2207", _settle(his, EMPLOYEE, mdtrt_id)), claim_id)
        # Every unsettled line ("0000") overlaps the claimed batch too.
        whole = await his.call("2207", _settle(his, EMPLOYEE, mdtrt_id, "0000"))
        _refused_as_pending(whole, claim_id)
        assert [r["claim_id"] for r in await _claims(rig.srv, mdtrt_id)] == [claim_id]
    finally:
        await rig.plan(scope, None)
    assert await _replayed(rig, claim_id) == "settled"
    assert await _settlements(rig.srv, mdtrt_id) == 1
    # Settled by replay: a claim of the same batch under `defer` again is refused as settled.
    await rig.plan(scope, "defer")
    try:
        late = await his.call("2207", _settle(his, EMPLOYEE, mdtrt_id))
        assert late["infcode"] == -1 and "已结算" in late["err_msg"], late
        _told_how_it_was_paid(late)
    finally:
        await rig.plan(scope, None)
    assert len(await _claims(rig.srv, mdtrt_id)) == 1


async def test_a_batch_under_a_pending_claim_is_not_settled_in_real_time(rig: Rig) -> None:
    """d1.py: a claim, the rule cleared, then the same batch in real time with a new msgid
    (the group commit's path); withdrawn, it settles in real time as usual."""
    his = rig.srv.client(DEFERRING)
    scope = f"institution:{DEFERRING}"
    kept = await _visit(his, WORKER, "MZ-RT-D1")
    withdrawn = await _visit(his, WORKER, "MZ-RT-D1W")
    await rig.plan(scope, "defer")
    try:
        claim_id = (await his.ok("2207", _settle(his, WORKER, kept)))["setlinfo"]["setl_id"]
        other = (await his.ok("2207", _settle(his, WORKER, withdrawn)))["setlinfo"]["setl_id"]
    finally:
        await rig.plan(scope, None)
    balance = await rig.srv.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", WORKER)

    _refused_as_pending(await his.call("2207", _settle(his, WORKER, kept)), claim_id)
    assert await _settlements(rig.srv, kept) == 0
    assert (
        await rig.srv.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", WORKER)
        == balance
    )
    # Another batch of the same visit is not under the claim.
    assert (await his.call("2207", _settle(his, WORKER, kept, "B9")))["err_msg"].find(PENDING) < 0

    await his.ok("2208", _cancel(other, withdrawn, WORKER))
    settled = (await his.ok("2207", _settle(his, WORKER, withdrawn)))["setlinfo"]
    assert not settled["setl_id"].startswith("DF")

    assert await _replayed(rig, claim_id) == "settled"
    assert await _settlements(rig.srv, kept) == 1
    again = await his.call("2207", _settle(his, WORKER, kept))
    assert again["infcode"] == -1 and "已结算" in again["err_msg"]
    _told_how_it_was_paid(again)
    assert await _settlements(rig.srv, kept) == 1


def _told_how_it_was_paid(answer: dict[str, Any]) -> None:
    """Found from outside: a batch settled by its claim's replay was told only "已结算", and a
    clerk could take it that the fund or the account had paid at the counter."""
    words = answer["err_msg"]
    assert "参保人已全额现金支付" in words and "报销款由经办机构支付给参保人" in words, words
    assert "5203" in words, words
    # The plain meaning first, the replayed case as a case (found from outside: said first, it
    # read as if every settled batch had been paid in cash).
    assert words.index("请勿重复结算") < words.index("仅当该批次曾按应急预案暂存"), words


async def _stay(his: HisClient, psn_no: str, ipt_no: str) -> tuple[str, dict[str, Any]]:
    """2401 → 2301 → 2402: a stay ready for its final settlement (2304's data)."""
    admission = {
        "mdtrtinfo": {
            "psn_no": psn_no, "insutype": "310", "begntime": f"{TODAY} 07:00:00",
            "mdtrt_cert_type": "01", "mdtrt_cert_no": psn_no, "med_type": "21", "ipt_no": ipt_no,
        },
        "diseinfo": [],
    }  # fmt: skip
    mdtrt_id = (await his.ok("2401", admission))["result"]["mdtrt_id"]
    lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}]  # fmt: skip
    await his.ok(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, psn_no, lines, f"{TODAY} 08:00:00", "")}
    )
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "310",
                      "endtime": f"{TODAY} 09:00:00", "dscg_dept_codg": "K1",
                      "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
    )  # fmt: skip
    return mdtrt_id, his.settle_data(
        psn_no, mdtrt_id, "21", "120.00", "310", "0", mid_setl_flag="0"
    )


async def test_a_stay_under_a_pending_claim_gets_neither_a_second_claim_nor_2304(
    rig: Rig,
) -> None:
    his = rig.srv.client(DEFERRING)
    scope = f"institution:{DEFERRING}"
    mdtrt_id, data = await _stay(his, RETIREE, "ZY-RT-1")
    await rig.plan(scope, "defer")
    try:
        claim_id = (await his.ok("2304", data))["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
        _refused_as_pending(await his.call("2304", data), claim_id)
    finally:
        await rig.plan(scope, None)
    _refused_as_pending(await his.call("2304", data), claim_id)  # the single path
    assert await _settlements(rig.srv, mdtrt_id) == 0
    # Found from outside: the discharge the claim settles could be cancelled under it, and
    # the claim failed at replay ("not discharged") with the patient's cash taken.
    undone = await his.call("2405", {"data": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE}})
    assert undone["infcode"] == -1 and claim_id in undone["err_msg"], undone
    await his.ok("2305", _cancel(claim_id, mdtrt_id, RETIREE))
    settled = (await his.ok("2304", data))["setlinfo"]
    assert not settled["setl_id"].startswith("DF")
    assert await _settlements(rig.srv, mdtrt_id) == 1


async def test_the_local_journal_gives_one_batch_one_claim(rig: Rig) -> None:
    """The ledger's breaker open: claims go to this process's journal, which knows its own."""
    his = rig.srv.client(DEFERRING)
    mdtrt_id = await _visit(his, EMPLOYEE, "MZ-RT-J1")
    breaker = rig.gw.breakers["postgres"]

    async def closed() -> bool:
        return not breaker.is_open

    await until(closed, within=15.0)
    for _ in range(BREAKER.consecutive_failures):
        breaker.record(False)
    if breaker.suspected:
        breaker.confirmed(False)  # its probe failing, as a failing ledger answers it
    assert breaker.is_open
    first = await his.ok("2207", _settle(his, EMPLOYEE, mdtrt_id))
    claim_id = first["setlinfo"]["setl_id"]
    assert claim_id.startswith("DF")
    _refused_as_pending(await his.call("2207", _settle(his, EMPLOYEE, mdtrt_id)), claim_id)
    # Its pre-settlement too (found from outside: priced all cash with the ledger away, as if
    # the lines were free to settle).
    _refused_as_pending(await his.call("2206", _settle(his, EMPLOYEE, mdtrt_id)), claim_id)
    await until(closed, within=15.0)  # the journal is drained into the ledger before it closes

    rows = await _claims(rig.srv, mdtrt_id)
    assert [(r["claim_id"], r["status"], r["source"]) for r in rows] == [
        (claim_id, "pending", "journal")
    ]
    _refused_as_pending(await his.call("2207", _settle(his, EMPLOYEE, mdtrt_id)), claim_id)
    assert await _settlements(rig.srv, mdtrt_id) == 0
    await his.ok("2208", _cancel(claim_id, mdtrt_id, EMPLOYEE))


async def test_a_pharmacy_claim_withdrawn_from_the_local_journal_answers_as_a_2103(
    rig: Rig,
) -> None:
    """Found from outside: a pharmacy's 2103 withdrawing a claim with the ledger away (from this
    process's journal) answered no `psn_pay` or `cash_payamt`, which a POS reads the refund
    from, where the same withdrawal with the ledger up does."""
    pos = rig.srv.client("P44180000001")
    breaker = rig.gw.breakers["postgres"]

    async def closed() -> bool:
        return not breaker.is_open

    await until(closed, within=15.0)
    for _ in range(BREAKER.consecutive_failures):
        breaker.record(False)
    if breaker.suspected:
        breaker.confirmed(False)  # its probe failing, as a failing ledger answers it
    assert breaker.is_open
    sale = pos.drug_input(WORKER, f"{TODAY} 10:00:00", DRUG_TOTAL, DRUG_LINES)
    claim = (await pos.ok("2102", sale))["setlinfo"]
    assert claim["setl_id"].startswith("DF")
    refund = (await pos.ok("2103", _cancel(claim["setl_id"], claim["mdtrt_id"], WORKER)))[
        "setlinfo"
    ]
    assert str(refund["cash_payamt"]) == str(refund["psn_cash_pay"]) == f"-{DRUG_TOTAL}"
    assert str(refund["psn_pay"]) == str(refund["psn_part_amt"]) == f"-{DRUG_TOTAL}"
    await until(closed, within=15.0)  # drained: the withdrawn claim is in the ledger as such
    row = await rig.srv.fetchrow(
        "SELECT status FROM deferred WHERE claim_id = $1", claim["setl_id"]
    )
    assert row is not None and row["status"] == "withdrawn"


# --------------------------------------------------------------------------------------- D3


def _big_lines(first: int, count: int) -> list[dict[str, str]]:
    line = {"medins_list_codg": "ZL0001", "pric": "25", "cnt": "1", "det_item_fee_sumamt": "25.00"}
    return [{"feedetl_sn": str(n), **line} for n in range(first, first + count)]


@pytest.fixture(scope="module")
async def big_visit(rig: Rig) -> str:
    """A visit of HEAVY's holding BIG unsettled lines in one batch."""
    his = rig.srv.client(HEAVY)
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{TODAY} 08:30:00", "MZ-RT-BIG")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{TODAY} 08:30:00")
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, _big_lines(1, BIG), f"{TODAY} 08:40:00", "BIG")
    await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


async def test_a_visit_holds_a_bounded_number_of_unsettled_lines(rig: Rig, big_visit: str) -> None:
    his = rig.srv.client(HEAVY)
    more = his.fee_rows(
        big_visit, EMPLOYEE, _big_lines(BIG + 1, LINE_CAP - BIG + 1), f"{TODAY} 08:50:00", "BIG"
    )
    count = "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1"
    try:
        answer = await his.call("2204", {"feedetail": more})
        assert answer["infcode"] == -1
        assert str(LINE_CAP) in answer["err_msg"] and "上限" in answer["err_msg"], answer
        assert await rig.srv.fetchval(count, big_visit) == BIG  # nothing written
        await his.ok("2204", {"feedetail": more[:-1]})  # up to the cap is fine
        assert await rig.srv.fetchval(count, big_visit) == LINE_CAP
    finally:  # the heavy visit stays as the other tests expect it
        await rig.srv.fetch(
            "DELETE FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn::int > $2", big_visit, BIG
        )


async def _lock_waiters(srv: Server) -> int:
    """Sessions waiting for a lock (asked outside any transaction: inside one, PostgreSQL keeps
    showing the activity as it was at the transaction's first look)."""
    return int(
        await srv.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
    )


async def _timed(his: HisClient, infno: str, input_: Any) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    answer = await his.call(infno, input_)
    return time.monotonic() - started, answer


async def _victims_sell(rig: Rig, rounds: int = 3) -> None:
    """Another region's pharmacy: pre-settlements and sales all answered, sales settled."""
    pos = rig.srv.client(VICTIM, "520500")
    for _ in range(rounds):
        drug = pos.drug_input(BUYER, f"{TODAY} 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
        preview = await pos.call("2101", drug)
        assert preview["infcode"] == 0, preview["err_msg"]
        sale = await pos.call("2102", drug)
        assert sale["infcode"] == 0, sale["err_msg"]
        assert not sale["output"]["setlinfo"]["setl_id"].startswith("DF")


def _own_backlog_or_answered(results: list[tuple[float, dict[str, Any]]]) -> None:
    """The heavy institution's own calls: answered, or refused busy (its own backlog), and
    none waited past its deadline (a generous margin for a busy machine)."""
    for seconds, answer in results:
        assert answer["infcode"] == 0 or answer["err_msg"] == SHARE_BUSY, answer["err_msg"]
        assert seconds < DEADLINE + 3.0


async def test_heavy_presettlements_leave_other_institutions_their_connections(
    rig: Rig, big_visit: str
) -> None:
    """v3/v4.py: many concurrent pre-settlements of a big batch hold ledger connections (here
    held by a lock on their visit's pre-settlement row); another institution still sells."""
    his = rig.srv.client(HEAVY)
    data = his.settle_data(
        EMPLOYEE, big_visit, "11", f"{25 * BIG}.00", "310", "0", chrg_bchno="BIG"
    )
    assert (await his.call("2206", data))["infcode"] == 0  # its pre-settlement row exists
    share = rig.gw.shares.limit
    pool = rig.gw.pool.get_max_size()
    assert share < pool
    holder = await asyncpg.connect(rig.srv.dsn)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(
            "SELECT 1 FROM presettlements WHERE mdtrt_id = $1 FOR UPDATE", big_visit
        )
        heavy = [asyncio.create_task(_timed(his, "2206", data)) for _ in range(pool + 6)]
        try:

            async def all_share_waiting() -> bool:
                return await _lock_waiters(rig.srv) >= share

            await until(all_share_waiting, within=DEADLINE - 1.0)
            await _victims_sell(rig)
        finally:
            await lock.rollback()
        _own_backlog_or_answered(await asyncio.gather(*heavy))
    finally:
        await holder.close()


async def test_settlements_of_a_locked_visit_leave_group_commit_writers(rig: Rig) -> None:
    """The group commit's path: one institution's settlements stuck behind a locked visit
    occupy its share of the writers, and another institution's sales are still committed."""
    his = rig.srv.client(LOCKED)
    group = rig.gw.groups.get(MAIN)
    assert group is not None
    batches = tuple(f"B{n}" for n in range(1, group.writers + 2))
    mdtrt_id = await _visit(his, WORKER, "MZ-RT-GC", batches)
    holder = await asyncpg.connect(rig.srv.dsn)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM encounters WHERE mdtrt_id = $1 FOR UPDATE", mdtrt_id)
        stuck: list[asyncio.Task[tuple[float, dict[str, Any]]]] = []
        try:
            for n, batch in enumerate(batches, 1):
                # One at a time, so that each would need a writer of its own.
                stuck.append(asyncio.create_task(_timed(his, "2207", _settle(his, WORKER, mdtrt_id, batch))))  # fmt: skip

                async def placed(n: int = n) -> bool:
                    """Each sent settlement waits on the lock, or in the queue where no writer
                    takes it (every writer busy, or its institution's share taken)."""
                    queued = group._waiting
                    idle = group._running >= group.writers or all(
                        getattr(it, "held_back", False) for it in queued
                    )
                    waiting = await _lock_waiters(rig.srv) + len(queued)
                    return idle and waiting >= min(n, group.writers)

                await until(placed, within=DEADLINE - 2.0)
            await _victims_sell(rig, rounds=2)
        finally:
            await lock.rollback()
        _own_backlog_or_answered(await asyncio.gather(*stuck))
    finally:
        await holder.close()


# --------------------------------------------------------------------------------------- D7

OPERATOR = {"operator": "duty", "password": "duty-2026"}
UNKNOWN = ("institution:ZZZ", "institution:H44180000099", "region:999999")


async def _plan_rows(srv: Server) -> tuple[int, int, int]:
    return (
        await srv.fetchval("SELECT count(*) FROM plan_rules"),
        await srv.fetchval("SELECT count(*) FROM plan_windows"),
        await srv.fetchval("SELECT count(*) FROM audit_log"),
    )


async def test_a_rule_for_an_unknown_scope_is_refused_by_the_console_api(rig: Rig) -> None:
    srv = rig.srv
    async with srv.session.post(srv.url + "/api/console/login", json=OPERATOR) as r:
        assert r.status == 200, await r.text()
        headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    before = await _plan_rows(srv)
    for scope in UNKNOWN:
        rule = {"scope": scope, "class": "settlement", "action": "reject", "reason": "演练"}
        async with srv.session.post(srv.url + "/api/plan/rules", json=rule, headers=headers) as r:
            body = await r.json()
            assert r.status == 400, body
        assert scope in body["error"] and ("未登记" in body["error"] or "没有登记" in body["error"])
    assert await _plan_rows(srv) == before
    known = {"scope": "region:330300", "class": "catalog", "action": "reject", "reason": "演练"}
    async with srv.session.post(srv.url + "/api/plan/rules", json=known, headers=headers) as r:
        assert r.status == 200, await r.text()
    await rig.plan("region:330300", None, "catalog")


async def test_a_rule_that_could_never_act_as_shown_is_refused(rig: Rig, tmp_path: Path) -> None:
    """Found from outside: `defer` was taken for the catalog's and reconciliation's classes (the
    console said 暂存（主动报）, counters were refused as under reject, nothing kept); a
    pharmacy's inpatient rule was taken and listed, matching nothing; and the console's API read
    the second of a key sent twice, the audit keeping that one."""
    srv = rig.srv
    async with srv.session.post(srv.url + "/api/console/login", json=OPERATOR) as r:
        assert r.status == 200, await r.text()
        headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    before = await _plan_rows(srv)
    refused = [
        (
            {"scope": "global", "class": "catalog", "action": "defer"},
            "只适用于settlement和encounter",
        ),
        ({"scope": "global", "class": "reconcile", "action": "defer"}, "请改用reject"),
        (
            {
                "scope": "institution:P44180000001:inpatient",
                "class": "settlement",
                "action": "reject",
            },
            "定点零售药店",
        ),
    ]
    for rule, words in refused:
        async with srv.session.post(
            srv.url + "/api/plan/rules", json={**rule, "reason": "演练"}, headers=headers
        ) as r:
            body = await r.json()
            assert r.status == 400 and words in body["error"], (rule, body)
        done = cli(
            "plan", "set", "--scope", rule["scope"], "--class", rule["class"], "--action",
            rule["action"], "--reason", "演练", "--database-url", srv.dsn, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and words in done.stderr, done.stdout + done.stderr
    twice = '{"scope": "global", "class": "encounter", "action": "reject", "reason": "ab",' + (
        ' "reason": "重复键"}'
    )
    async with srv.session.post(
        srv.url + "/api/plan/rules",
        data=twice.encode(),
        headers={**headers, "Content-Type": "application/json"},
    ) as r:
        body = await r.json()
        assert r.status == 400 and "reason" in body["error"], body
    windows = tmp_path / "windows.toml"
    windows.write_text(
        _WINDOW + 'classes = ["catalog"]\naction = "defer"\n'
        "begins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n",
        encoding="utf-8",
    )
    done = cli(
        "plan", "windows", "--load", str(windows), "--reason", "演练", "--database-url", srv.dsn,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "请改用reject" in done.stderr, done.stdout + done.stderr
    assert await _plan_rows(srv) == before
    allowed = {"scope": "institution:P44180000001:pharmacy", "class": "settlement"}
    async with srv.session.post(
        srv.url + "/api/plan/rules",
        json={**allowed, "action": "reject", "reason": "演练"},
        headers=headers,
    ) as r:
        assert r.status == 200, await r.text()
    await rig.plan(allowed["scope"], None, "settlement")


async def test_a_rule_or_window_for_an_unknown_scope_is_refused_by_the_cli(
    rig: Rig, tmp_path: Path
) -> None:
    srv = rig.srv
    before = await _plan_rows(srv)
    for scope in UNKNOWN:
        done = cli(
            "plan", "set", "--scope", scope, "--class", "settlement", "--action", "reject",
            "--reason", "演练", "--database-url", srv.dsn, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert scope in done.stderr and "refused" in done.stderr
    windows = tmp_path / "windows.toml"
    windows.write_text(
        '[[window]]\nname = "切换"\nscope = "region:999999"\nclasses = ["settlement"]\n'
        'action = "reject"\nbegins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n',
        encoding="utf-8",
    )
    done = cli(
        "plan", "windows", "--load", str(windows), "--reason", "演练", "--database-url", srv.dsn,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "region:999999" in done.stderr, done.stdout + done.stderr
    assert await _plan_rows(srv) == before


_WINDOW = '[[window]]\nname = "切换"\nscope = "region:330300"\n'


async def test_a_timetable_or_time_the_cli_cannot_take_is_refused_in_words(
    rig: Rig, tmp_path: Path
) -> None:
    """Found from outside: a window without its classes, a date without its time, times with an
    offset and a file that is not TOML ended in tracebacks; a self-pay window on settlements
    (which `plan set` refuses) and a window from year 1 to 9999 (which refused every sale of
    its scope) were taken. Each is refused in words, exit status 2, nothing written."""
    srv = rig.srv
    before = await _plan_rows(srv)
    refused = {
        "no classes": (
            _WINDOW
            + 'action = "reject"\nbegins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n',
            "缺少classes",
        ),
        "a date only": (
            _WINDOW + 'classes = ["settlement"]\naction = "reject"\n'
            "begins = 2030-01-01\nends = 2030-01-02T00:00:00\n",
            "只写日期不知从几点起",
        ),
        "a time only": (
            _WINDOW + 'classes = ["settlement"]\naction = "reject"\n'
            "begins = 10:00:00\nends = 2030-01-02T00:00:00\n",
            "只写时间不知是哪一天",
        ),
        "ends before begins, in the second window": (
            _WINDOW + 'classes = ["catalog"]\naction = "reject"\n'
            "begins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n"
            + _WINDOW
            + 'classes = ["catalog"]\naction = "reject"\n'
            "begins = 2030-01-02T00:00:00\nends = 2030-01-01T00:00:00\n",
            "第2个时间窗",
        ),
        "not TOML": ("[[window]\nname = ", "不是有效的TOML"),
        # As the notices write a day's end (found from outside: the parser's words alone).
        "24:00": (
            _WINDOW + 'classes = ["settlement"]\naction = "reject"\n'
            "begins = 2030-01-01T00:00:00\nends = 2030-01-01T24:00:00\n",
            "24:00请写作次日00:00",
        ),
        "classes as text": (
            _WINDOW + 'classes = "settlement"\naction = "reject"\n'
            "begins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n",
            "classes应为交易类别的列表",
        ),
        "selfpay on settlements": (
            _WINDOW + 'classes = ["settlement"]\naction = "selfpay"\n'
            "begins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n",
            "只适用于encounter类交易",
        ),
        "a good window, then one for no known scope": (
            _WINDOW + 'classes = ["catalog"]\naction = "reject"\n'
            "begins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n"
            '[[window]]\nname = "切换"\nscope = "region:999999"\nclasses = ["catalog"]\n'
            'action = "reject"\nbegins = 2030-01-01T00:00:00\nends = 2030-01-02T00:00:00\n',
            "region:999999",
        ),
        "years long": (
            _WINDOW + 'classes = ["settlement"]\naction = "reject"\n'
            "begins = 0001-01-01T00:00:00\nends = 9999-12-31T23:59:59\n",
            "时间窗最长31天",
        ),
    }
    for what, (text, words) in refused.items():
        path = tmp_path / "windows.toml"
        path.write_text(text, encoding="utf-8")
        done = cli(
            "plan", "windows", "--load", str(path), "--reason", "演练", "--database-url", srv.dsn,
            check=False,
        )  # fmt: skip
        assert done.returncode == 2, (what, done.stdout + done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, (what, done.stderr)
        assert await _plan_rows(srv) == before, what
    missing = cli(
        "plan", "windows", "--load", str(tmp_path / "none.toml"), "--reason", "演练",
        "--database-url", srv.dsn, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "找不到时间窗文件" in missing.stderr, missing.stderr

    for when in ("garbage", "2026-13-45T00:00"):
        done = cli("plan", "inflight", "--before", when, "--database-url", srv.dsn, check=False)
        assert done.returncode == 2 and "应为日期和时间" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    # An offset is converted to local time (the gateway's clocks), not refused by the database.
    offset = cli(
        "plan", "inflight", "--before", "2026-12-05T00:00+08:00", "--json",
        "--database-url", srv.dsn, check=False,
    )  # fmt: skip
    assert offset.returncode == 0, offset.stderr

    for argv, words in [
        (("plan", "show", "--config", str(tmp_path / "none.toml")), "找不到配置文件"),
        (("deferred", "replay", "--journal-dir", str(tmp_path / "none")), "找不到目录"),
    ]:
        done = cli(*argv, "--database-url", srv.dsn, check=False)
        assert done.returncode == 2 and words in done.stderr, (argv, done.stderr)
    assert await _plan_rows(srv) == before

    # Times with an offset load as the Beijing times they stand for, the gateway's, whatever
    # the operator's shell runs in (found from outside: from a shell in UTC a window given in
    # +00:00 was stored as UTC wall time, and a gateway in Beijing time enforced it 8 hours
    # off); a command started in another zone runs in Beijing time, and says so.
    path = tmp_path / "windows.toml"
    path.write_text(
        _WINDOW + 'classes = ["catalog"]\naction = "reject"\n'
        "begins = 2030-01-01T10:00:00+00:00\nends = 2030-01-01T18:00:00+00:00\n",
        encoding="utf-8",
    )
    loaded = cli(
        "plan", "windows", "--load", str(path), "--reason", "演练", "--database-url", srv.dsn,
        tz="UTC0",
    )  # fmt: skip
    assert "it runs in Beijing time" in loaded.stderr, loaded
    assert "2030-01-01 18:00:00" in loaded.stdout, loaded
    row = await srv.fetchrow(
        "SELECT window_id, begins, ends FROM plan_windows WHERE name = '切换'"
        " AND scope = 'region:330300'"
    )
    assert row is not None
    assert (row["begins"], row["ends"]) == (
        dt.datetime(2030, 1, 1, 18),
        dt.datetime(2030, 1, 2, 2),
    )  # 18:00 to 02:00 Beijing time, across midnight
    listed = cli("plan", "windows", "--database-url", srv.dsn, tz="CST-8")
    assert listed.stderr == ""  # in Beijing time nothing to warn of
    # `plan show` judges what is in force by Beijing time from a UTC shell too (found from
    # outside: it said "normal" there while a window stood at the gateway).
    shown = cli("plan", "show", "--database-url", srv.dsn, tz="UTC0")
    assert "it runs in Beijing time" in shown.stderr, shown.stderr
    assert cli("plan", "show", "--database-url", srv.dsn, tz="CST-8").stderr == ""
    removed = cli(
        "plan", "windows", "--remove", str(row["window_id"]), "--reason", "演练",
        "--database-url", srv.dsn, tz="CST-8",
    )  # fmt: skip
    assert removed.stdout.strip() == "no cut-over window"  # not silence


async def test_a_route_to_the_old_system_without_its_address_is_refused(rig: Rig) -> None:
    """Found from outside: `route_legacy` was taken with `[legacy] url` empty, and every sale of
    its scope was refused until someone cleared it. The CLI (its --config, here the shipped
    one, which names no old system) and the console (the serving gateway's own configuration)
    refuse it, writing nothing."""
    srv = rig.srv
    assert not rig.gw.config.legacy.url
    before = await _plan_rows(srv)
    for action in ("route_legacy", "route_legacy_shadow"):
        done = cli(
            "plan", "set", "--scope", "institution:P44180000001", "--class", "settlement",
            "--action", action, "--reason", "演练", "--database-url", srv.dsn, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert "[legacy] url" in done.stderr and "refused" in done.stderr
    # A timetable's window too (found from outside: loaded, where `plan set` refuses it).
    timetable = Path(tempfile.mkdtemp(prefix="windows-")) / "windows.toml"
    timetable.write_text(
        _WINDOW + 'classes = ["settlement"]\naction = "route_legacy"\n'
        "begins = 2030-01-01T08:00:00\nends = 2030-01-02T08:00:00\n",
        encoding="utf-8",
    )
    done = cli(
        "plan", "windows", "--load", str(timetable), "--reason", "演练", "--database-url", srv.dsn,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "第1个时间窗" in done.stderr and "[legacy] url" in done.stderr
    async with srv.session.post(srv.url + "/api/console/login", json=OPERATOR) as r:
        assert r.status == 200, await r.text()
        headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    rule = {
        "scope": "institution:P44180000001",
        "class": "settlement",
        "action": "route_legacy",
        "reason": "演练",
    }
    async with srv.session.post(srv.url + "/api/plan/rules", json=rule, headers=headers) as r:
        body = await r.json()
        assert r.status == 400, body
    assert "[legacy] url" in body["error"]
    assert await _plan_rows(srv) == before


async def test_replay_takes_the_configured_journal_folder_before_any_outage_made_it(
    rig: Rig, tmp_path: Path
) -> None:
    """Found from outside: `deferred replay --journal-dir var/journal`, as the docs write it,
    exited 2 on a box where no outage had made the folder. The configured folder may be
    missing (nothing to drain); any other missing folder is still refused (a mistyped one
    drained nothing and reported success)."""
    journal = tmp_path / "journal"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[journal]\ndir = "{journal}"\n', encoding="utf-8")
    done = cli(
        "deferred", "replay", "--journal-dir", str(journal), "--config", str(config),
        "--database-url", rig.srv.dsn, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "nothing to drain" in done.stderr and "\r" not in done.stderr
    assert not journal.exists()
    typo = cli(
        "deferred", "replay", "--journal-dir", str(tmp_path / "jounral"), "--config",
        str(config), "--database-url", rig.srv.dsn, check=False,
    )  # fmt: skip
    assert typo.returncode == 2 and "找不到目录" in typo.stderr, typo.stderr
