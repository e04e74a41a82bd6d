"""A deferred claim of a whole stay covers the lines uploaded before it, and replay settles exactly
those: a mid-way 2304 deferred, then more lines, settles the lines it was taken for (1000.00), and
the closing 2304 at the counter the rest (200.00), as online. Once with the ledger reachable (the
plan's `defer`), once from the local journal of a process that deferred while the ledger was down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from adapters.national import deferral
from adapters.national.envelope import decode_request
from gateway.app.server import GATEWAY
from gateway.emergency.deferred.journal import Journal
from gateway.ledger import manual_claims as manual_store
from gateway.ledger.deferred import Entry
from gateway.protocol.errors import Conflict
from tests.integration.agency_helpers import (
    ledger_on,
    reviewed_claim,
    settled_claim,
    settled_while_the_counter_waits,
    waiting_for_a_person,
)
from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import (
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    cli,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient, certificate
from tests.integration.parity_helpers import line, total

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
RETIREE = "441800000000000002"
BEFORE = [line("1", "ZL0003", "60", 10), line("2", "ZL0008", "20", 20)]  # 1000.00
AFTER = [
    line("3", "ZL0008", "20", -5, init_feedetl_sn="2"),  # a refund of a line of the claim
    line("4", "ZL0004", "30", 10),
]  # 200.00


ADMITTED_AS = "21"


def _admission() -> dict[str, Any]:
    return {
        "mdtrtinfo": {
            "psn_no": RETIREE,
            "insutype": "310",
            "begntime": "2025-07-01 09:00:00",
            **certificate(RETIREE),
            "med_type": ADMITTED_AS,
            "ipt_no": "ZY-CL-1",
            "atddr_no": "D1",
            "chfpdr_name": "医生",
            "adm_diag_dscr": "肺炎",
            "adm_dept_codg": "K1",
            "adm_dept_name": "内科",
            "adm_bed": "3",
            "dscg_maindiag_code": "J18",
            "dscg_maindiag_name": "肺炎",
        },
        "diseinfo": [],
    }


def _upload(mdtrt_id: str, lines: list[dict[str, Any]], when: str) -> dict[str, Any]:
    return {"feedetail": HisClient.fee_rows(mdtrt_id, RETIREE, lines, when, "")}


def _discharge(mdtrt_id: str) -> dict[str, Any]:
    return {
        "dscginfo": {
            "mdtrt_id": mdtrt_id,
            "psn_no": RETIREE,
            "insutype": "310",
            "endtime": "2025-07-06 10:00:00",
            "dscg_dept_codg": "K1",
            "dscg_dept_name": "内科",
            "dscg_way": "1",
        },
        "diseinfo": [],
    }


def _stay_settlement(his: HisClient, mdtrt_id: str, medfee: str, mid: str) -> dict[str, Any]:
    data = his.settle_data(RETIREE, mdtrt_id, "", medfee, "310", "0", mid_setl_flag=mid)
    del data["data"]["med_type"]  # 2304 carries none: the admission's applies
    return data


def _entry(
    his: HisClient,
    visit: str,
    received: dt.datetime,
    kind: str,
    infno: str,
    input_: Any,
    claim_fen: int,
    **fields: Any,
) -> Entry:
    """A journal record of a call, or of a claim of `claim_fen` on the provisional `visit`, as a
    gateway that took it while the ledger was down wrote it."""
    req = decode_request(msgspec.json.encode(his.envelope(infno, input_)))
    return Entry(
        kind=kind,
        fixmedins_code=HOSPITAL,
        msgid=req.msgid,
        infno=infno,
        psn_no=RETIREE if kind == "claim" else "",
        mdtrt_id=visit if kind == "claim" else "",
        service_date=received.date(),
        medfee_sumamt=claim_fen if kind == "claim" else 0,
        body=deferral.stored_request(req),
        answer=b"{}",
        received_at=received,
        **fields,
    )


async def _replayed(srv: Server, *, settled: int) -> None:
    """`deferred replay --json` settled this many claims, all it found, nothing else to say;
    the reimbursements it owes are recorded as it ends."""
    lines = "SELECT count(*) FROM owed_lines WHERE source = 'deferred'"
    before = await srv.fetchval(lines)
    summary = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
    owed = await srv.fetchval(lines) - before
    assert summary == {
        "total": settled,
        "settled": settled,
        "failed": [],
        "waiting": [],
        "owed": owed,
        "damaged_segments": [],
    }


def _registration(day: str, ipt_otp_no: str) -> dict[str, Any]:
    """The retiree's 2201 input as a journal keeps it."""
    return {
        "data": {"psn_no": RETIREE, "insutype": "310", "begntime": day,
                 **certificate(RETIREE), "ipt_otp_no": ipt_otp_no, "atddr_no": "D001",
                 "dr_name": "医生", "dept_code": "K01", "dept_name": "内科", "caty": "A03"}
    }  # fmt: skip


def _two_nodes(his: HisClient, visit: str, at: dt.datetime) -> Callable[..., Any]:
    """What a gateway node journaled with the ledger away: `seconds` after `at`, a call or a
    claim of 60.00 on `visit`, in that node's journal."""

    async def journaled(
        journal: Journal, seconds: int, kind: str, infno: str, input_: Any, **fields: Any
    ) -> None:
        received = at + dt.timedelta(seconds=seconds)
        await journal.append(_entry(his, visit, received, kind, infno, input_, 6000, **fields))

    return journaled


async def _deferred_claim(srv: Server, his: HisClient, settlement: dict[str, Any]) -> Any:
    """The plan's `defer` set for the region; once in force, the 2304 as a claim: its setlinfo."""
    await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

    async def deferring() -> bool:
        answer = await his.call("2303", settlement)
        return "应急预案" in (answer["warn_msg"] or "")

    await until(deferring)
    # A 2303/2304 names no med_type: the claim's answers give the stay's, as online (found
    # from outside: "" under `defer`, "21" online).
    assert (await his.ok("2303", settlement))["setlinfo"]["med_type"] == ADMITTED_AS
    claim = (await his.ok("2304", settlement))["setlinfo"]
    assert claim["med_type"] == ADMITTED_AS
    return claim


async def _replayed_whole(srv: Server, mdtrt_id: str) -> None:
    """Replay settled the one claim, every line of the stay is settled, the ledger balances."""
    await _replayed(srv, settled=1)
    waiting = await srv.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL", mdtrt_id
    )
    assert waiting == 0
    assert await srv.check_ledger() == []


async def _closing_claim(srv: Server) -> tuple[HisClient, str, dict[str, Any], str]:
    """A stay admitted, charged (BEFORE), discharged and its closing 2304 deferred as a claim:
    the client, the stay, the 2304's input and the claim's number."""
    his = srv.client(HOSPITAL)
    mdtrt_id = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
    await his.ok("2301", _upload(mdtrt_id, BEFORE, "2025-07-02 10:00:00"))
    await his.ok("2402", _discharge(mdtrt_id))
    closing = _stay_settlement(his, mdtrt_id, total(BEFORE), "0")
    claim_id = (await _deferred_claim(srv, his, closing))["setl_id"]
    return his, mdtrt_id, closing, claim_id


async def _lifted(srv: Server, his: HisClient, settlement: dict[str, Any], claim_id: str) -> None:
    """Once the plan is lifted, the stay's pre-settlement is refused as its settlement is while
    the claim holds the lines, naming the claim (found from outside: the 2303 priced the claim's
    lines, as if the patient had not paid them in cash already; under the plan too, priced all
    cash)."""
    assert srv.app is not None
    await srv.app[GATEWAY].reload_plan(force=True)  # the rule cleared is out of force here
    answer = await his.call("2303", settlement)
    assert answer["infcode"] == -1 and not answer["warn_msg"], answer
    assert claim_id in answer["err_msg"] and "暂存结算" in answer["err_msg"], answer


async def _closed_as_online(srv: Server, his: HisClient, mdtrt_id: str) -> None:
    """Replay settled the claim's lines; the closing 2304 at the counter takes the rest."""
    await _replayed(srv, settled=1)
    final = await his.ok("2304", _stay_settlement(his, mdtrt_id, total(AFTER), "0"))
    rows = await srv.fetch(
        "SELECT setl_id, medfee_sumamt, mid_setl_flag FROM settlements WHERE mdtrt_id = $1"
        " AND status = 'settled' ORDER BY setl_time, setl_id",
        mdtrt_id,
    )
    assert [(r["medfee_sumamt"], r["mid_setl_flag"]) for r in rows] == [(100000, "1"), (20000, "0")]
    claim = await srv.fetchrow("SELECT * FROM deferred WHERE kind = 'claim'")
    assert claim is not None
    assert claim["lines"] == ["1", "2"]
    assert claim["status"] == "settled" and claim["setl_id"] == rows[0]["setl_id"]
    assert final["setlinfo"]["setl_id"] == rows[1]["setl_id"]
    by_line = {
        r["feedetl_sn"]: r["setl_id"]
        for r in await srv.fetch(
            "SELECT feedetl_sn, setl_id FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id
        )
    }
    assert by_line == {
        "1": rows[0]["setl_id"],
        "2": rows[0]["setl_id"],
        "3": rows[1]["setl_id"],
        "4": rows[1]["setl_id"],
    }
    assert await srv.check_ledger() == []


async def test_a_midway_claim_settles_the_lines_it_was_taken_for(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        mdtrt_id = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
        await his.ok("2301", _upload(mdtrt_id, BEFORE, "2025-07-02 10:00:00"))
        midway = _stay_settlement(his, mdtrt_id, total(BEFORE), "1")
        claim = await _deferred_claim(srv, his, midway)
        assert claim["setl_id"].startswith("DF")
        await his.ok("2301", _upload(mdtrt_id, AFTER, "2025-07-05 10:00:00"))
        await his.ok("2402", _discharge(mdtrt_id))
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await _lifted(srv, his, _stay_settlement(his, mdtrt_id, "1200.00", "0"), claim["setl_id"])
        await _closed_as_online(srv, his, mdtrt_id)


async def test_a_stays_closing_claim_takes_no_line_after_it(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a line uploaded while a stay's closing claim waited was left
    unsettled under the closing settlement replay made, for good. Refused while the claim
    waits, as under the closing settlement itself; the mid-way claim above takes later lines."""
    async with running_gateway(new_database) as srv:
        his, mdtrt_id, _, claim_id = await _closing_claim(srv)
        late = await his.call("2301", _upload(mdtrt_id, AFTER[1:], "2025-07-05 10:00:00"))
        assert late["infcode"] == -1, late
        assert claim_id in late["err_msg"] and "2305" in late["err_msg"], late
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await _replayed_whole(srv, mdtrt_id)


async def test_nothing_of_a_stay_is_undone_or_put_back_under_its_closing_claim(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a stay's mid-way settlement cancelled (2305, or 2601 of its 2304)
    while its closing claim waited left its line unsettled under the closing settlement replay
    made; a mid-way settlement cancelled before the claim and put back (2601 of its 2305) took a
    line the claim held, and replay failed. Both refused naming the claim."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        for undo_first in (False, True):
            mdtrt_id = (await his.ok("2401", {**_admission(), "mdtrtinfo": {
                **_admission()["mdtrtinfo"], "ipt_no": f"ZY-CL-U{int(undo_first)}"}}))[
                "result"]["mdtrt_id"]  # fmt: skip
            await his.ok("2301", _upload(mdtrt_id, BEFORE[:1], "2025-07-02 10:00:00"))
            mid_msgid = his.msgid()
            mid = (
                await his.ok(
                    "2304", _stay_settlement(his, mdtrt_id, total(BEFORE[:1]), "1"), msgid=mid_msgid
                )
            )["setlinfo"]
            keys = {"data": {"setl_id": mid["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
            cancel_msgid = his.msgid()
            if undo_first:
                await his.ok("2305", keys, msgid=cancel_msgid)
            await his.ok("2301", _upload(mdtrt_id, BEFORE[1:], "2025-07-03 10:00:00"))
            await his.ok("2402", _discharge(mdtrt_id))
            claimed = BEFORE if undo_first else BEFORE[1:]
            closing = _stay_settlement(his, mdtrt_id, total(claimed), "0")
            claim_id = (await _deferred_claim(srv, his, closing))["setl_id"]
            await clear_rule(srv.dsn, "region:441800", "settlement")
            assert srv.app is not None
            await srv.app[GATEWAY].reload_plan(force=True)
            before = await srv.ledger_fingerprint()
            undos = (
                [("2601", {"data": {"psn_no": RETIREE, "omsgid": cancel_msgid, "oinfno": "2305"}})]
                if undo_first
                else [
                    ("2305", keys),
                    ("2601", {"data": {"psn_no": RETIREE, "omsgid": mid_msgid, "oinfno": "2304"}}),
                ]
            )
            for infno, undo in undos:
                answer = await his.call(infno, undo)
                assert answer["infcode"] == -1, (infno, answer)
                assert claim_id in answer["err_msg"], (infno, answer)
            assert await srv.ledger_fingerprint() == before
            await _replayed_whole(srv, mdtrt_id)


async def test_a_visits_med_type_stands_while_a_claim_holds_its_lines(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a 2203 changing a visit's med_type (11 to 14) while its 2207 waited
    as a claim was taken, and the claim failed at replay, the patient's cash paid under it."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2025-07-08 09:00:00"
        mdtrt_id = await his.register(RETIREE, "310", day, "MZ-CL-MT")
        await his.visit_info(mdtrt_id, RETIREE, "11", day)
        rows = his.fee_rows(mdtrt_id, RETIREE, OUTPATIENT_LINES, "2025-07-08 09:10:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(
            RETIREE, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring() -> bool:
            return "应急预案" in ((await his.call("2206", data))["warn_msg"] or "")

        await until(deferring)
        claim_id = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        await clear_rule(srv.dsn, "region:441800", "settlement")
        chronic = his.visit_info_input(mdtrt_id, RETIREE, "14", day, "M07800")
        refused = await his.call("2203", chronic)
        assert refused["infcode"] == -1 and claim_id in refused["err_msg"], refused
        await his.visit_info(mdtrt_id, RETIREE, "11", day)  # sent again as it was: taken
        await _replayed(srv, settled=1)
        assert (await his.call("2203", chronic))["infcode"] == -1  # now under its settlement


async def test_a_claim_replay_could_not_settle_holds_its_lines_until_withdrawn(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a stay's claim replay could not settle held nothing; the counter
    settled its lines again in real time, the cash paid under the claim never refunded and the
    claim still listed for the agency. The lines stay the claim's until the counter withdraws
    it (the cash refunded) or the agency settles it; then they settle as online."""
    async with running_gateway(new_database) as srv:
        his, mdtrt_id, closing, claim_id = await _closing_claim(srv)
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await _lifted(srv, his, closing, claim_id)
        # What replay does with a claim the rules refuse (the tester's: a refund line uploaded
        # under the plan left a negative first self-pay).
        await srv.fetch(
            "UPDATE deferred SET status = 'failed', fail_reason = '演练' WHERE claim_id = $1",
            claim_id,
        )

        before = await srv.ledger_fingerprint()
        refused = await his.call("2304", closing)
        assert refused["infcode"] == -1 and "补结算未成功" in refused["err_msg"], refused
        assert "办理撤销（退还现金）" in refused["err_msg"]
        assert await srv.ledger_fingerprint() == before
        ref = {"data": {"setl_id": claim_id, "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
        back = await his.ok("2305", ref)
        assert str(back["setlinfo"]["psn_cash_pay"]) == f"-{total(BEFORE)}"  # the cash refunded
        settled = await his.ok("2304", closing)
        assert not settled["setlinfo"]["setl_id"].startswith("DF")
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "withdrawn"
        assert await srv.check_ledger() == []


async def test_a_journaled_midway_claim_settles_the_lines_journaled_before_it(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """The ledger was down for the whole stay: admission, lines, claim, more lines and discharge
    are in the journal segment of a process that died; `deferred replay --journal-dir` drains it."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0)
        visit = deferral.new_provisional_id("441800", at, HOSPITAL, "JOURNALED-2401")
        journal = Journal(tmp_path)

        async def journaled(kind: str, infno: str, input_: Any, **fields: Any) -> None:
            entry = _entry(his, visit, at, kind, infno, input_, 100000, **fields)
            await journal.append(entry)

        await journaled("call", "2401", _admission(), provisional_id=visit)
        await journaled("call", "2301", _upload(visit, BEFORE, "2025-07-02 10:00:00"))
        midway = _stay_settlement(his, visit, total(BEFORE), "1")
        await journaled(
            "claim",
            "2304",
            midway,
            claim_id=deferral.new_claim_id("441800", at, HOSPITAL, "JOURNALED-2304"),
        )
        await journaled("call", "2301", _upload(visit, AFTER, "2025-07-05 10:00:00"))
        await journaled("call", "2402", _discharge(visit))
        journal.close()  # the process is gone: its segment is free to drain

        cli("deferred", "replay", "--journal-dir", str(tmp_path), "--database-url", srv.dsn)
        mdtrt_id = await srv.fetchval("SELECT mdtrt_id FROM deferred_ids")
        assert await srv.fetchval("SELECT lines FROM deferred WHERE kind = 'claim'") == ["1", "2"]
        # Settled already by the run above; a second run finds nothing pending.
        await _replayed(srv, settled=0)
        final = await his.ok("2304", _stay_settlement(his, mdtrt_id, total(AFTER), "0"))
        rows = await srv.fetch(
            "SELECT setl_id, medfee_sumamt FROM settlements WHERE mdtrt_id = $1"
            " AND status = 'settled' ORDER BY setl_time, setl_id",
            mdtrt_id,
        )
        assert [r["medfee_sumamt"] for r in rows] == [100000, 20000]
        assert final["setlinfo"]["setl_id"] == rows[1]["setl_id"]
        assert (
            await srv.fetchval(
                "SELECT status FROM deferred WHERE kind = 'claim' AND setl_id = $1",
                rows[0]["setl_id"],
            )
            == "settled"
        )
        assert await srv.check_ledger() == []


async def test_a_visit_split_across_two_gateways_journals_is_applied_in_the_order_received(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found in a failover drill (two gateway nodes, round robin, the ledger's commits hung): a
    visit's 2201/2203/2204 went to one node's journal and its 2207 claim to the other's. The
    claim's journal drained first: its lines were fixed before the visit existed (none), and it
    failed at replay, the patient's cash never reimbursed; the 2203/2204 applied before their
    registration were filed failed, though answered 成功. Calls wait for their registration,
    claims for their visit, and both go in the order the gateways received them."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0)
        visit = deferral.new_provisional_id("441800", at, HOSPITAL, "JOURNALED-2401")
        node_a, node_b = Journal(tmp_path / "a"), Journal(tmp_path / "b")
        day = f"{at:%Y-%m-%d %H:%M:%S}"
        lines = [line("1", "ZL0003", "60", 1)]  # 60.00

        journaled = _two_nodes(his, visit, at)

        registration = _registration(day, "MZ-2N-1")
        await journaled(node_b, 1, "call", "2201", registration, provisional_id=visit)
        info = his.visit_info_input(visit, RETIREE, "11", day)
        await journaled(node_b, 2, "call", "2203", info)
        rows = his.fee_rows(visit, RETIREE, lines, day, "B1")
        await journaled(node_b, 3, "call", "2204", {"feedetail": rows})
        settle = his.settle_data(RETIREE, visit, "11", total(lines), "310", "0", chrg_bchno="B1")
        claim_id = deferral.new_claim_id("441800", at, HOSPITAL, "JOURNALED-2207")
        await journaled(node_a, 4, "claim", "2207", settle, claim_id=claim_id)
        node_a.close()
        node_b.close()

        # Node A's journal drains first; node B's only later.
        cli("deferred", "replay", "--journal-dir", str(tmp_path / "a"), "--database-url", srv.dsn)
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "pending"  # waits for its visit
        cli("deferred", "replay", "--journal-dir", str(tmp_path / "b"), "--database-url", srv.dsn)
        calls = await srv.fetch("SELECT infno, status FROM deferred WHERE kind = 'call'")
        assert sorted((r["infno"], r["status"]) for r in calls) == [
            ("2201", "applied"),
            ("2203", "applied"),
            ("2204", "applied"),
        ]
        claim = await srv.fetchrow("SELECT * FROM deferred WHERE claim_id = $1", claim_id)
        assert claim is not None
        assert (claim["status"], claim["lines"]) == ("settled", ["1"]), claim["fail_reason"]
        settled = await srv.fetchrow(
            "SELECT medfee_sumamt FROM settlements WHERE setl_id = $1", claim["setl_id"]
        )
        assert settled is not None and settled["medfee_sumamt"] == 6000
        assert await srv.check_ledger() == []


async def test_a_stays_claim_is_refused_for_what_its_settlement_would_be_refused_for(
    new_database: Callable[..., Any],
) -> None:
    """A stay's 2304 taken as a claim under the plan is judged as a visit's 2207 is, by its
    pre-settlement over the stay as it is (it was taken unjudged: a total its lines do not make
    was answered with a claim number, the patient paid in cash, and replay refused it)."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        mdtrt_id = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
        await his.ok("2301", _upload(mdtrt_id, BEFORE, "2025-07-02 10:00:00"))
        await his.ok("2402", _discharge(mdtrt_id))
        closing = _stay_settlement(his, mdtrt_id, total(BEFORE), "0")
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring() -> bool:
            answer = await his.call("2303", closing)
            return "应急预案" in (answer["warn_msg"] or "")

        await until(deferring)
        before = await srv.ledger_fingerprint()
        wrong = _stay_settlement(his, mdtrt_id, "999.00", "0")
        for infno in ("2303", "2304"):  # the pre-settlement says what the claim would be told
            refused = await his.call(infno, wrong)
            assert refused["infcode"] == -1, (infno, refused)
            assert f"医疗费总额999.00与费用明细合计{total(BEFORE)}不一致" in refused["err_msg"]
        other_insutype = {"data": dict(closing["data"], insutype="390")}
        refused = await his.call("2304", other_insutype)
        assert refused["infcode"] == -1 and "险种类型390" in refused["err_msg"], refused
        # A stay still in hospital settled as final (mid_setl_flag 0): its 2303 prices it, its
        # 2304 refuses it, and so is its claim (found from outside: taken, failed at replay).
        admission = _admission()
        admission["mdtrtinfo"]["ipt_no"] = "ZY-CL-IN"
        in_hospital = (await his.ok("2401", admission))["result"]["mdtrt_id"]
        await his.ok("2301", _upload(in_hospital, BEFORE, "2025-07-02 10:00:00"))
        before = await srv.ledger_fingerprint()
        final = _stay_settlement(his, in_hospital, total(BEFORE), "0")
        # Its pre-settlement is answered, as online (found from outside: refused under `defer`
        # "not discharged", where online a HIS pre-settles a stay before discharging it).
        presettled = await his.call("2303", final)
        assert presettled["infcode"] == 0 and "应急预案" in presettled["warn_msg"], presettled
        refused = await his.call("2304", final)
        assert refused["infcode"] == -1 and "尚未办理出院" in refused["err_msg"], refused
        assert await srv.ledger_fingerprint() == before
        assert await srv.fetchval("SELECT count(*) FROM deferred") == 0
        taken = (await his.ok("2304", closing))["setlinfo"]
        assert taken["setl_id"].startswith("DF")
        # Under the plan still, the claimed lines' pre-settlement names the claim (found from
        # outside: priced all cash again, 9431.00 for a stay the claim held).
        held = await his.call("2303", closing)
        assert held["infcode"] == -1 and taken["setl_id"] in held["err_msg"], held
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await _lifted(srv, his, closing, taken["setl_id"])
        await _replayed(srv, settled=1)
        assert await srv.check_ledger() == []


async def test_a_fee_upload_the_plan_keeps_is_answered_with_its_lines_priced(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a 2204 kept under the plan (its visit's calls applied at recovery)
    was answered `result: []`, and a HIS that records each line's split from the answer (and
    fills its 2207's 全自费, 超限价, 先行自付 and 符合政策范围 from them) recorded none. Kept, it is
    answered each line's split by the catalog in memory, as the ledger's path answers the same
    lines; a line that path refuses by itself (its price times its quantity not its amount) is
    refused now and nothing is kept."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-06"
        served = await his.register(RETIREE, "310", f"{day} 08:20:00", "MZ-PRICED-1")
        await his.visit_info(served, RETIREE, "11", f"{day} 08:20:00")
        rows = his.fee_rows(served, RETIREE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1")
        normal = (await his.ok("2204", {"feedetail": rows}))["result"]
        await _keep_the_hospitals_visits(srv)
        kept_visit = await his.register(RETIREE, "310", f"{day} 08:30:00", "MZ-PRICED-2")
        assert kept_visit.startswith("PV")
        await his.visit_info(kept_visit, RETIREE, "11", f"{day} 08:30:00")
        rows = his.fee_rows(kept_visit, RETIREE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1")
        kept = await his.call("2204", {"feedetail": rows})
        assert kept["infcode"] == 0 and kept["warn_msg"], kept
        assert kept["output"]["result"] == normal
        assert all(float(r["det_item_fee_sumamt"]) > 0 for r in normal), normal
        calls = "SELECT count(*) FROM deferred WHERE kind = 'call'"
        before = await srv.fetchval(calls)
        wrong = [dict(r) for r in rows]
        wrong[0]["feedetl_sn"] = "9"
        wrong[0]["det_item_fee_sumamt"] = str(Decimal(str(wrong[0]["det_item_fee_sumamt"])) + 1)
        refused = await his.call("2204", {"feedetail": wrong})
        assert refused["infcode"] == -1 and "单价×数量与明细金额不符" in refused["err_msg"], refused
        assert await srv.fetchval(calls) == before
        await _release_the_hospitals_visits(srv)
        assert await srv.check_ledger() == []


async def test_a_claim_declaring_the_split_the_outage_left_empty_is_reimbursed_at_replay(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: with the visit's calls kept under the plan, a 2204 is answered with
    no priced lines, and a HIS that fills its 2207's split (全自费, 超限价, 先行自付, 符合政策范围)
    from that answer declares zeros. The claim was taken, and replay refused it ("先行自付金额0.00
    与中心计算结果…不一致"), the fund's share never reimbursed. At replay a claim's bill is its
    total; the split is the rules'."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-06"
        mdtrt_id = await _kept_visit(srv, his, day, "MZ-CLAIM-ZEROS")
        uploaded = await his.ok(
            "2204",
            {
                "feedetail": his.fee_rows(
                    mdtrt_id, RETIREE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1"
                )
            },
        )
        assert len(uploaded["result"]) == len(OUTPATIENT_LINES)  # priced, yet the HIS sends zeros
        zeros = {
            name: "0.00"
            for name in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
        }
        data = his.settle_data(
            RETIREE, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1", **zeros
        )
        claim = (await his.ok("2207", data))["setlinfo"]
        assert claim["setl_id"].startswith("DF")
        # Under the plan still, with the visit's calls waiting: its 2206 names the claim (found
        # from outside: priced all cash again, the claim not judged while calls wait).
        held = await his.call("2206", data)
        assert held["infcode"] == -1 and claim["setl_id"] in held["err_msg"], held
        await _release_the_hospitals_visits(srv)
        await _replayed(srv, settled=1)
        row = await srv.fetchrow(
            "SELECT s.preselfpay_amt, s.inscp_scp_amt, s.hifp_pay FROM deferred d"
            " JOIN settlements s ON s.setl_id = d.setl_id WHERE d.claim_id = $1",
            claim["setl_id"],
        )
        assert row is not None and row["preselfpay_amt"] > 0 and row["inscp_scp_amt"] > 0
        # The till knows the visit by its provisional id only: its 2208 of the replayed
        # settlement names that id (found from outside: refused as not of the visit).
        replayed = await srv.fetchval(
            "SELECT setl_id FROM deferred WHERE claim_id = $1", claim["setl_id"]
        )
        ref = {"data": {"setl_id": replayed, "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
        back = await his.ok("2208", ref)
        assert str(back["setlinfo"]["psn_cash_pay"]) == f"-{OUTPATIENT_TOTAL}"
        # The claim number afterwards: not pointed to a settlement already cancelled.
        by_claim = {"data": {"setl_id": claim["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
        told = await his.call("2208", by_claim)
        assert told["infcode"] == -1 and "该结算已撤销" in told["err_msg"], told
        assert await srv.check_ledger() == []


async def test_a_self_pay_stays_claim_waits_for_its_conversion(
    new_database: Callable[..., Any],
) -> None:
    """A stay admitted self-pay under the plan (自费入院) and settled as a claim: replay before
    its conversion (自费转医保) leaves the claim waiting, and the replay after settles it (found
    from outside: filed failed, and the conversion afterwards did not bring it back)."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(srv.dsn, "region:441800", "encounter", "selfpay", "演练自费入院")
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")
        assert srv.app is not None
        await srv.app[GATEWAY].reload_plan(force=True)
        admitted = await his.ok("2401", _admission())
        mdtrt_id = admitted["result"]["mdtrt_id"]
        await his.ok("2301", _upload(mdtrt_id, BEFORE, "2025-07-02 10:00:00"))
        await his.ok("2402", _discharge(mdtrt_id))
        claim = await his.ok("2304", _stay_settlement(his, mdtrt_id, total(BEFORE), "0"))
        claim_id = claim["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
        await clear_rule(srv.dsn, "region:441800", "encounter")
        await clear_rule(srv.dsn, "region:441800", "settlement")

        def replay() -> Any:
            return json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)

        early = replay()
        assert (early["settled"], early["failed"]) == (0, []), early
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "pending"
        unexplained = cli("encounter", "convert", "--mdtrt-id", mdtrt_id, "--reason", " ",
                          "--database-url", srv.dsn, check=False)  # fmt: skip
        assert unexplained.returncode == 2 and "请填写转医保原因" in unexplained.stderr
        cli("encounter", "convert", "--mdtrt-id", mdtrt_id, "--reason", "演练恢复",
            "--database-url", srv.dsn)  # fmt: skip
        again = cli("encounter", "convert", "--mdtrt-id", mdtrt_id, "--reason", "演练恢复",
                    "--database-url", srv.dsn, check=False)  # fmt: skip
        assert again.returncode == 2 and "或已转医保" in again.stderr, again.stderr
        late = replay()
        assert (late["settled"], late["failed"]) == (1, []), late
        assert await srv.fetchval(status, claim_id) == "settled"
        assert await srv.check_ledger() == []


async def test_a_failed_claim_is_replayed_again_once_its_cause_is_mended(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a replay run in the wrong time zone filed every sale's claim of an
    outage failed, and nothing but a withdrawal at each counter was left. `deferred retry`
    puts a failed claim back to pending, audited; the next replay settles it, once."""
    async with running_gateway(new_database) as srv:
        _, _, _, claim_id = await _closing_claim(srv)
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await srv.fetch(
            "UPDATE deferred SET status = 'failed', fail_reason = '演练' WHERE claim_id = $1",
            claim_id,
        )

        def retry(*more: str) -> Any:
            return cli("deferred", "retry", "--database-url", srv.dsn, *more, check=False)

        unexplained = retry("--claim-id", claim_id, "--reason", " ")
        assert unexplained.returncode == 2 and "原因" in unexplained.stderr
        unknown = retry("--claim-id", "DF000000", "--reason", "时区已更正")
        assert unknown.returncode == 2 and "暂存结算DF000000不存在" in unknown.stderr
        done = retry("--claim-id", claim_id, "--reason", "时区已更正", "--operator", "agency")
        assert done.returncode == 0 and "pending again" in done.stdout, done.stderr
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "pending"
        audited = await srv.fetchrow(
            "SELECT operator, action, reason FROM audit_log WHERE action = 'deferred.retry'"
        )
        assert audited is not None
        assert tuple(audited) == ("agency", "deferred.retry", "时区已更正")
        summary = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
        assert (summary["settled"], summary["failed"]) == (1, []), summary
        assert await srv.fetchval(status, claim_id) == "settled"
        again = retry("--claim-id", claim_id, "--reason", "时区已更正")
        # Settled: nothing to retry, and the clerk is told so, with its settlement (found from
        # outside: told only that no failed claim had the number).
        setl_id = await srv.fetchval("SELECT setl_id FROM deferred WHERE claim_id = $1", claim_id)
        assert again.returncode == 2
        assert f"暂存结算{claim_id}已补结算（结算ID{setl_id}），无需重新补结算" in again.stderr
        assert await srv.check_ledger() == []


async def test_a_claim_drained_before_its_lines_upload_waits_for_them(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside (two workers, the database cut half-way through a visit registered
    before it): the 2204 went to one worker's journal, the 2207 claim to the other's, which
    drained first; the claim was fixed with no line and failed at replay, its fund share never
    reimbursed, and `deferred retry` could not mend it. A claim whose lines are not in the
    ledger yet waits for them; once they are, it covers them and replay settles it."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0) - dt.timedelta(minutes=5)
        day = f"{at:%Y-%m-%d %H:%M:%S}"
        visit = await his.register(RETIREE, "310", day, "MZ-2W-1")  # before the cut
        node_a, node_b = Journal(tmp_path / "a"), Journal(tmp_path / "b")
        lines = [line("1", "ZL0003", "60", 1)]  # 60.00

        journaled = _two_nodes(his, visit, at)

        rows = his.fee_rows(visit, RETIREE, lines, day, "B1")
        await journaled(node_b, 1, "call", "2204", {"feedetail": rows})
        settle = his.settle_data(RETIREE, visit, "11", total(lines), "310", "0", chrg_bchno="B1")
        claim_id = deferral.new_claim_id("441800", at, HOSPITAL, "JOURNALED-2W-2207")
        await journaled(node_a, 2, "claim", "2207", settle, claim_id=claim_id)
        node_a.close()
        node_b.close()

        cli("deferred", "replay", "--journal-dir", str(tmp_path / "a"), "--database-url", srv.dsn)
        row = "SELECT status, lines FROM deferred WHERE claim_id = $1"
        waiting = await srv.fetchrow(row, claim_id)
        assert waiting is not None and (waiting["status"], waiting["lines"]) == ("pending", None)
        cli("deferred", "replay", "--journal-dir", str(tmp_path / "b"), "--database-url", srv.dsn)
        claim = await srv.fetchrow("SELECT * FROM deferred WHERE claim_id = $1", claim_id)
        assert claim is not None
        assert (claim["status"], claim["lines"]) == ("settled", ["1"]), claim["fail_reason"]
        assert await srv.check_ledger() == []


async def test_a_stays_provisional_id_works_for_its_later_calls(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: after a stay's calls kept under the plan were applied, a 2402 and a
    2405 naming its provisional id answered 成功 and did nothing (their writes went by the PV…
    id, which matches no row); the closing 2304 was then refused as not discharged."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        scope = f"institution:{HOSPITAL}"
        await set_rule(srv.dsn, scope, "encounter", "defer", "演练主动报")
        assert srv.app is not None
        await srv.app[GATEWAY].reload_plan(force=True)
        pv = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
        assert pv.startswith("PV")
        await clear_rule(srv.dsn, scope, "encounter")
        await srv.app[GATEWAY].reload_plan(force=True)
        real = "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1"

        async def applied() -> bool:
            return await srv.fetchval(real, pv) is not None

        await until(applied, within=15.0)
        visit = await srv.fetchval(real, pv)
        await his.ok("2301", _upload(pv, BEFORE, "2025-07-02 10:00:00"))
        status = "SELECT status FROM encounters WHERE mdtrt_id = $1"
        await his.ok("2402", _discharge(pv))
        assert await srv.fetchval(status, visit) == "discharged"
        await his.ok("2405", {"data": {"mdtrt_id": pv, "psn_no": RETIREE}})
        assert await srv.fetchval(status, visit) == "open"
        await his.ok("2402", _discharge(pv))
        settled = await his.ok("2304", _stay_settlement(his, pv, total(BEFORE), "0"))
        assert settled["setlinfo"]["setl_id"]
        assert await srv.check_ledger() == []


async def test_a_withdrawn_claim_of_a_provisional_visit_is_listed_by_its_visit(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a claim on a provisional visit, withdrawn before replay, was listed by
    `deferred list` on the day it arrived and under the provisional id, after the visit's calls
    were applied and its settled neighbours were listed by their visits' days."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-07"
        mdtrt_id = await _kept_visit(srv, his, day, "MZ-CLAIM-WD")
        rows = his.fee_rows(mdtrt_id, RETIREE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(
            RETIREE, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        claim = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        keys = {"setl_id": claim, "mdtrt_id": mdtrt_id, "psn_no": RETIREE}
        await his.ok("2208", {"data": keys})
        await _release_the_hospitals_visits(srv)
        real = await srv.fetchval(
            "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1", mdtrt_id
        )
        listed = cli("deferred", "list", "--json", "--database-url", srv.dsn).stdout
        [row] = [json.loads(line) for line in listed.splitlines()]
        assert (row["claim_id"], row["status"]) == (claim, "withdrawn")
        assert (row["service_date"], row["mdtrt_id"], row["visit_id"]) == (day, mdtrt_id, real)


async def _kept_visit(srv: Server, his: HisClient, day: str, ipt_otp_no: str) -> str:
    """Under the plan's `defer` for the hospital's visits and settlements, the retiree's
    outpatient visit registered on `day` (its provisional id), its 2203 kept."""
    await _keep_the_hospitals_visits(srv)
    mdtrt_id = await his.register(RETIREE, "310", f"{day} 08:30:00", ipt_otp_no)
    assert mdtrt_id.startswith("PV")
    await his.visit_info(mdtrt_id, RETIREE, "11", f"{day} 08:30:00")
    return mdtrt_id


async def _keep_the_hospitals_visits(srv: Server) -> None:
    """The plan's `defer` for the hospital's visits and settlements, in force here now."""
    scope = f"institution:{HOSPITAL}"
    await set_rule(srv.dsn, scope, "encounter", "defer", "演练主动报")
    await set_rule(srv.dsn, scope, "settlement", "defer", "演练主动报")
    assert srv.app is not None
    await srv.app[GATEWAY].reload_plan(force=True)


async def _release_the_hospitals_visits(srv: Server) -> None:
    """The rules cleared, and every call they kept applied (or failed) by the gateway."""
    scope = f"institution:{HOSPITAL}"
    await clear_rule(srv.dsn, scope, "encounter")
    await clear_rule(srv.dsn, scope, "settlement")
    pending = "SELECT count(*) FROM deferred WHERE kind = 'call' AND status = 'pending'"

    async def applied() -> bool:
        return await srv.fetchval(pending) == 0

    await until(applied, within=15.0)


async def _claim_on_a_kept_visit(
    srv: Server, his: HisClient, psn_no: str, stale: bool, ipt: str | None = None
) -> tuple[str, str]:
    """Under the plan's `defer` for the hospital's visits and settlements: a visit registered,
    its lines uploaded and its 2207 taken as a claim, every call kept for recovery; with
    `stale`, the institution's mapping of one line's item then changed (3301), so that the line's
    national code is no longer its mapping's when the upload is applied (a code its mapping
    does not hold at all is refused when the upload is kept); the rules cleared and the calls
    applied. (provisional visit id, claim id)."""
    await _keep_the_hospitals_visits(srv)
    day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    visit = await his.register(psn_no, "310", f"{day} 08:30:00", ipt or f"MZ-FAILED-{psn_no[-2:]}")
    assert visit.startswith("PV")
    await his.visit_info(visit, psn_no, "11", f"{day} 08:30:00")
    lines = [dict(ln) for ln in OUTPATIENT_LINES]
    if stale:
        lines[1]["med_list_codg"] = "XC10AAA140A001010100003"  # YP0003's mapping as it is now
    rows = his.fee_rows(visit, psn_no, lines, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(psn_no, visit, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")
    claim_id = str((await his.ok("2207", data))["setlinfo"]["setl_id"])
    assert claim_id.startswith("DF")
    if stale:
        remap = {"fixmedins_hilist_id": "YP0003", "fixmedins_hilist_name": "药品", "list_type": "101",
                 "med_list_codg": "XA10BAA020A001010100004", "begndate": "2020-01-01",
                 "enddate": "2099-12-31"}  # fmt: skip
        await his.ok("3301", {"data": remap})
    await _release_the_hospitals_visits(srv)
    return visit, claim_id


@pytest.mark.parametrize(
    ("psn_no", "stale", "failed_call"),
    [
        (RETIREE, True, "2204"),  # a line its mapping refuses: the batch never in the ledger
        ("441800000000000007", False, "2201"),  # a lapsed person: the visit never registered
    ],
)
async def test_a_claim_whose_visit_failed_to_apply_fails_with_that_calls_reason(
    new_database: Callable[..., Any], psn_no: str, stale: bool, failed_call: str
) -> None:
    """Found from outside: a visit's 2204 (or 2201) kept under the plan failed when applied,
    and its claim stayed pending for good: replay said "settled 0 of 1" and nothing else, the
    agency could not retry it, and a manual claim of the bill was refused as one still waiting.
    The claim is failed, naming the call and its reason; the counter may withdraw it (the cash
    refunded), as any claim replay could not settle."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        _, claim_id = await _claim_on_a_kept_visit(srv, his, psn_no, stale)
        calls = await srv.fetch(
            "SELECT infno, status FROM deferred WHERE kind = 'call' AND status = 'failed'"
            " ORDER BY received_at, seq"
        )
        assert [r["infno"] for r in calls][:1] == [failed_call]
        claim = await srv.fetchrow("SELECT * FROM deferred WHERE claim_id = $1", claim_id)
        assert claim is not None and claim["status"] == "failed", dict(claim or {})
        assert f"补报交易{failed_call}" in claim["fail_reason"]
        assert "手工报销" in claim["fail_reason"]
        # Nothing left waiting: replay has nothing to do, and says so.
        await _replayed(srv, settled=0)
        listed = cli("deferred", "list", "--status", "failed", "--database-url", srv.dsn).stdout
        assert claim_id in listed and f"补报交易{failed_call}" in listed
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
        assert await srv.check_ledger() == []


async def test_replay_fails_a_journaled_claim_whose_lines_failed_and_names_what_waits(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """`deferred replay` over journals: a claim whose visit's upload failed when applied is
    listed failed with the upload's reason; a claim whose visit is in a journal not drained yet
    is listed waiting, with why (found from outside: "settled 0 of 2", nothing named)."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0)
        day = f"{at:%Y-%m-%d %H:%M:%S}"
        registration = _registration(day, "MZ-J-1")
        failing = deferral.new_provisional_id("441800", at, HOSPITAL, "JOURNALED-2201-A")
        elsewhere = deferral.new_provisional_id("441800", at, HOSPITAL, "JOURNALED-2201-B")
        here, later = Journal(tmp_path / "a"), Journal(tmp_path / "b")
        lines = [line("1", "ZL0003", "60", 1, med_list_codg="009999999999999")]  # 60.00
        claims = {}
        for visit, node, tag in ((failing, here, "A"), (elsewhere, later, "B")):
            journaled = _two_nodes(his, visit, at)
            await journaled(node, 1, "call", "2201", registration, provisional_id=visit)
            rows = his.fee_rows(visit, RETIREE, lines, day, "B1")
            await journaled(node, 2, "call", "2204", {"feedetail": rows})
            settle = his.settle_data(
                RETIREE, visit, "11", total(lines), "310", "0", chrg_bchno="B1"
            )
            claims[tag] = deferral.new_claim_id("441800", at, HOSPITAL, f"JOURNALED-2207-{tag}")
            await journaled(here, 3, "claim", "2207", settle, claim_id=claims[tag])
        here.close()
        later.close()

        out = cli("deferred", "replay", "--journal-dir", str(tmp_path / "a"), "--json",
                  "--database-url", srv.dsn, check=False)  # fmt: skip
        summary = json.loads(out.stdout)
        assert summary["total"] == 2 and summary["settled"] == 0, summary
        assert [f["claim_id"] for f in summary["failed"]] == [claims["A"]]
        assert "补报交易2204" in summary["failed"][0]["reason"]
        assert [w["claim_id"] for w in summary["waiting"]] == [claims["B"]]
        assert "应急日志未并入账本" in summary["waiting"][0]["reason"]
        assert out.returncode == 1
        text = cli("deferred", "replay", "--database-url", srv.dsn).stdout
        assert f"waiting {claims['B']} ({elsewhere})" in text


@pytest.mark.parametrize("registered_before", [False, True], ids=["line-refused", "number-taken"])
async def test_a_failed_claim_the_agency_reimbursed_is_not_withdrawn_for_its_cash(
    new_database: Callable[..., Any], registered_before: bool
) -> None:
    """Found from outside: a claim replay could not settle was settled by the agency as a
    manual claim (零星报销), then withdrawn at the counter, which refunded the patient's cash:
    the patient had the cash back and the reimbursement too. Once the agency has reimbursed the
    bill (the person, the institution, the day and the total), the withdrawal is refused naming
    the manual claim; the day is the visit's, also where its registration failed (its 门诊号
    already taken) and the claim kept the day it arrived."""
    async with running_gateway(new_database) as srv, ledger_on(srv.dsn) as agency:
        his = srv.client(HOSPITAL)
        ipt = "MZ-AGENCY-1"
        if registered_before:
            earlier = dt.date.today() - dt.timedelta(days=2)
            await his.register(RETIREE, "310", f"{earlier} 07:00:00", ipt)
        visit, claim_id = await _claim_on_a_kept_visit(
            srv, his, RETIREE, stale=not registered_before, ipt=ipt
        )
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "failed"
        day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
        manual = await settled_claim(agency, RETIREE, day, OUTPATIENT_LINES, "FP-AGENCY-1")
        before = await srv.ledger_fingerprint()
        ref = {"data": {"setl_id": claim_id, "mdtrt_id": visit, "psn_no": RETIREE}}
        refused = await his.call("2208", ref)
        assert refused["infcode"] == -1, refused
        assert f"已由经办机构零星报销（受理号{manual.claim_no}）" in refused["err_msg"], refused
        after = await srv.ledger_fingerprint()
        assert {k: v for k, v in after.items() if k != "idempotency"} == {
            k: v for k, v in before.items() if k != "idempotency"
        }
        assert await srv.fetchval(status, claim_id) == "failed"


async def test_a_failed_claim_withdrawn_while_the_agency_settles_it_by_hand_is_not_both(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the counter's withdrawal of a claim replay could not settle (its
    cash refunded) and the agency's 结算 of a manual claim for the same bill, at the same
    moment, both went through: the withdrawal looked for the manual claim before any lock.
    It looks under the person's lock, which the 结算 takes too: the agency's settlement, held
    open here until the withdrawal waits for the person, commits first, and the withdrawal is
    refused naming it, the claim still failed."""
    async with running_gateway(new_database) as srv, ledger_on(srv.dsn) as agency:
        his = srv.client(HOSPITAL)
        visit, claim_id = await _claim_on_a_kept_visit(srv, his, RETIREE, stale=True, ipt="MZ-RW")
        status = "SELECT status FROM deferred WHERE claim_id = $1"
        assert await srv.fetchval(status, claim_id) == "failed"
        day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
        async with agency.pool.acquire() as conn:
            claim = await reviewed_claim(conn, agency, RETIREE, day, OUTPATIENT_LINES, "FP-RW-1")
        ref = {"data": {"setl_id": claim_id, "mdtrt_id": visit, "psn_no": RETIREE}}

        async def waiting_or_done(withdrawal: asyncio.Future[dict[str, Any]]) -> bool:
            return withdrawal.done() or await waiting_for_a_person(srv.dsn)

        refused = await settled_while_the_counter_waits(
            agency, RETIREE, claim.claim_no, his.call("2208", ref), waiting_or_done
        )
        assert refused["infcode"] == -1, refused
        assert f"已由经办机构零星报销（受理号{claim.claim_no}）" in refused["err_msg"], refused
        assert await srv.fetchval(status, claim_id) == "failed"
        assert await srv.check_ledger() == []


async def test_a_claim_refused_at_replay_names_the_failed_call_of_its_visit(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: a chronic visit's claim failed at replay telling the clerk to fill in
    the disease in its 2203, which had sent it; the 2203 itself had failed when applied (no
    chronic registration), as only `deferred list --calls` said. The claim's reason names the
    failed call first."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0)
        day = f"{at:%Y-%m-%d %H:%M:%S}"
        visit = deferral.new_provisional_id("441800", at, HOSPITAL, "JOURNALED-2201-C")
        node = Journal(tmp_path)
        journaled = _two_nodes(his, visit, at)
        registration = _registration(day, "MZ-J-CHRONIC")
        await journaled(node, 1, "call", "2201", registration, provisional_id=visit)
        # The retiree is registered for M07800 only.
        chronic = his.visit_info_input(visit, RETIREE, "14", day, dise_codg="E11900")
        await journaled(node, 2, "call", "2203", chronic)
        lines = [line("1", "ZL0003", "60", 1)]
        await journaled(
            node, 3, "call", "2204", {"feedetail": his.fee_rows(visit, RETIREE, lines, day, "B1")}
        )
        settle = his.settle_data(RETIREE, visit, "14", total(lines), "310", "0", chrg_bchno="B1")
        claim_id = deferral.new_claim_id("441800", at, HOSPITAL, "JOURNALED-2207-C")
        await journaled(node, 4, "claim", "2207", settle, claim_id=claim_id)
        node.close()

        out = cli("deferred", "replay", "--journal-dir", str(tmp_path), "--json",
                  "--database-url", srv.dsn, check=False)  # fmt: skip
        summary = json.loads(out.stdout)
        calls = await srv.fetch(
            "SELECT infno, status FROM deferred WHERE kind = 'call' ORDER BY received_at, seq"
        )
        assert [(r["infno"], r["status"]) for r in calls] == [
            ("2201", "applied"),
            ("2203", "failed"),
            ("2204", "applied"),
        ]
        assert [f["claim_id"] for f in summary["failed"]] == [claim_id], summary
        reason = summary["failed"][0]["reason"]
        assert reason.startswith("本就诊的补报交易2203"), reason
        assert "本暂存结算因此未能补结算" in reason
        stored = await srv.fetchval(
            "SELECT fail_reason FROM deferred WHERE claim_id = $1", claim_id
        )
        assert stored == reason


async def _failed_claims_counted(expected: int) -> bool:
    return REGISTRY.get_sample_value("sgw_deferred_claims_failed") == expected


async def test_a_bill_whose_claim_the_counter_withdrew_is_not_reimbursed_by_hand(
    new_database: Callable[..., Any],
) -> None:
    """The other order: the counter withdrew the failed claim first (the cash refunded), then
    the agency settled a manual claim for the same bill. Found from outside, twice: it went
    through, the patient had the refund and the reimbursement, and the counter's settlement of
    the bill afterwards was refused as reimbursed. 结算 is refused naming the withdrawn claim,
    nothing written. `ledger check` still names the state where it stands (written before this
    rule: here, the claim marked withdrawn behind the manual claim's back)."""
    async with running_gateway(new_database) as srv, ledger_on(srv.dsn) as agency:
        his = srv.client(HOSPITAL)
        visit, claim_id = await _claim_on_a_kept_visit(srv, his, RETIREE, stale=True, ipt="MZ-CK")
        # Filed failed, the claim is counted for ops (found from outside: only `deferred list`
        # and `ledger check` showed such claims), and no longer once withdrawn.
        assert await srv.fetchval("SELECT status FROM deferred WHERE claim_id = $1", claim_id) == (
            "failed"
        )
        await until(lambda: _failed_claims_counted(1), within=15.0)
        ref = {"data": {"setl_id": claim_id, "mdtrt_id": visit, "psn_no": RETIREE}}
        await his.ok("2208", ref)
        await until(lambda: _failed_claims_counted(0), within=15.0)
        assert await srv.check_ledger() == []
        day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
        before = await srv.ledger_fingerprint()
        with pytest.raises(Conflict) as refused:
            await settled_claim(agency, RETIREE, day, OUTPATIENT_LINES, "FP-AGENCY-2")
        assert f"暂存结算{claim_id}（主动报，已由医疗机构撤销并退还现金）" in str(refused.value)
        assert "在系统外按手工报销办理" in str(refused.value)  # the way on for another bill
        # A stay's bill is not an outpatient claim's (found from outside: one of the same total
        # that day was refused for it).
        async with agency.pool.acquire() as conn:
            fen = int(Decimal(OUTPATIENT_TOTAL) * 100)
            bill = (HOSPITAL, RETIREE, dt.date.fromisoformat(day), fen)
            assert await manual_store.same_bill(conn, *bill, "2207") == (claim_id, "withdrawn")
            assert await manual_store.same_bill(conn, *bill, "2304") is None
        after = await srv.ledger_fingerprint()
        assert after == before  # the claim registered and reviewed; nothing of its 结算
        assert await srv.check_ledger() == []

        # The state itself, as a ledger from before the rule may hold it.
        await srv.fetchval(
            "UPDATE deferred SET status = 'failed' WHERE claim_id = $1 RETURNING 1", claim_id
        )
        manual = await settled_claim(agency, RETIREE, day, OUTPATIENT_LINES, "FP-AGENCY-3")
        await srv.fetchval(
            "UPDATE deferred SET status = 'withdrawn' WHERE claim_id = $1 RETURNING 1", claim_id
        )
        assert await srv.check_ledger() == [
            f"claim {claim_id}: withdrawn (its cash refunded) while manual claim"
            f" {manual.claim_no} reimburses a bill of the same person, day and total"
        ]
        # A stay's claim is not the visit's bill, as 结算 holds it.
        await srv.fetchval(
            "UPDATE deferred SET infno = '2304' WHERE claim_id = $1 RETURNING 1", claim_id
        )
        assert await srv.check_ledger() == []


async def test_a_claim_of_a_batch_another_node_settled_fails_saying_its_cash_is_owed_back(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: the same charge batch claimed at one node (its ledger away) and
    settled in real time at another at the same moment; replay failed the claim in the words a
    counter is given ("…无需再收或退款"), while the patient had paid the bill twice, once in cash
    for the claim. Its failure says the claim's cash is owed back, and by which number."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        at = dt.datetime.now().replace(microsecond=0)
        day = f"{at:%Y-%m-%d %H:%M:%S}"
        mdtrt_id = await his.register(RETIREE, "310", day, "MZ-TWICE-1")
        await his.visit_info(mdtrt_id, RETIREE, "11", day)
        lines = [line("1", "ZL0003", "60", 1)]  # 60.00
        await his.ok("2204", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, lines, day, "B1")})
        settle = his.settle_data(RETIREE, mdtrt_id, "11", total(lines), "310", "0", chrg_bchno="B1")
        assert not (await his.ok("2207", settle))["setlinfo"]["setl_id"].startswith("DF")
        journal = Journal(tmp_path)
        claim_id = deferral.new_claim_id("441800", at, HOSPITAL, "TWICE-2207")
        await journal.append(
            _entry(his, mdtrt_id, at, "claim", "2207", settle, 6000, claim_id=claim_id)
        )
        journal.close()  # the other node's segment, free to drain

        ran = cli("deferred", "replay", "--journal-dir", str(tmp_path), "--json",
                  "--database-url", srv.dsn, check=False)  # fmt: skip
        (failed,) = json.loads(ran.stdout)["failed"]
        assert failed["claim_id"] == claim_id, ran.stdout
        assert "已另行结算" in failed["reason"] and "无需再收或退款" not in failed["reason"], failed
        assert f"以暂存结算单号{claim_id}办理撤销（退还现金）" in failed["reason"], failed


@pytest.mark.parametrize(("med_type", "dise_codg"), [("14", "M07800"), ("13", "")])
async def test_a_kept_visits_first_2203_is_applied_before_the_claim_its_2207_became(
    new_database: Callable[..., Any], med_type: str, dise_codg: str
) -> None:
    """Found from outside: under `defer` for visits and settlements, a chronic visit's 2203
    (its first, sent before the 2207) was applied after the outage and refused as a change of
    med_type under the claim its own 2207 had become ("有应急预案暂存结算…不能更改医疗类别或
    病种"); the claim then failed at replay for want of the disease, 7 of 7 (and an emergency
    visit's 2203 was filed failed too). A claim taken after the 2203 does not hold the visit
    against it: the 2203 is applied, and the claim replays at the visit's med_type."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        await _keep_the_hospitals_visits(srv)
        day = "2026-05-07"
        visit = await his.register(RETIREE, "310", f"{day} 08:30:00", f"MZ-KEPT-{med_type}")
        assert visit.startswith("PV")
        info = his.visit_info_input(visit, RETIREE, med_type, f"{day} 08:30:00", dise_codg)
        await his.ok("2203", info)
        rows = his.fee_rows(visit, RETIREE, OUTPATIENT_LINES, f"{day} 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(
            RETIREE, visit, med_type, OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        claim = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        assert claim.startswith("DF")
        await _release_the_hospitals_visits(srv)
        calls = await srv.fetch(
            "SELECT infno, status FROM deferred WHERE kind = 'call' ORDER BY received_at, seq"
        )
        assert [(r["infno"], r["status"]) for r in calls] == [
            ("2201", "applied"),
            ("2203", "applied"),
            ("2204", "applied"),
        ]
        await _replayed(srv, settled=1)
        settled = await srv.fetchrow(
            "SELECT s.med_type, e.dise_codg FROM deferred d JOIN settlements s USING (setl_id)"
            " JOIN encounters e ON e.mdtrt_id = s.mdtrt_id WHERE d.claim_id = $1",
            claim,
        )
        assert settled is not None and settled["med_type"] == med_type, settled
        assert (settled["dise_codg"] or "") == dise_codg
        assert await srv.check_ledger() == []


# A wholly self-pay drug, a class-B drug (its self-pay share first) and a class-A treatment:
# each of the four parts of the bill but the over-limit one is other than zero.
MIXED = [
    line("1", "ZL0001", "20.00", 1),
    line("2", "YP0003", "35.50", 2),
    line("3", "YP0010", "12.30", 1),
]
WITHDRAWN = [line("9", "ZL0004", "30", 3)]
PARTS = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")


def _parts_of_lines(uploaded: dict[str, Any]) -> dict[str, Decimal]:
    """The four parts as the 2204 answered its lines (over-limit: `overlmt_amt`)."""
    rows = uploaded["result"]
    names = {"overlmt_selfpay": "overlmt_amt"}
    return {p: sum((Decimal(str(r[names.get(p, p)])) for r in rows), Decimal(0)) for p in PARTS}


def _parts(info: dict[str, Any]) -> dict[str, Decimal]:
    return {p: Decimal(str(info[p])) for p in PARTS}


async def test_a_provisional_visits_parts_are_its_lines_before_they_are_applied(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: under `defer` of a hospital's visits and settlements, a 2206 of a
    visit opened during the plan answered its whole bill within the policy range (a wholly
    self-pay drug included), and a 2207 that copied those parts was taken as a claim; replay
    then settled the lines' own split, the receipt the HIS printed disagreeing with it. The
    parts are now those the visit's waiting calls leave (an upload, another batch uploaded and
    withdrawn by 2205), and a claim declaring other parts is refused as online."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-08"
        mdtrt_id = await _kept_visit(srv, his, day, "MZ-PARTS")
        first, rest = MIXED[:2], MIXED[2:]
        answers = [
            await his.ok("2204", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, part, when, "B1")})
            for part, when in ((first, f"{day} 08:40:00"), (rest, f"{day} 08:45:00"))
        ]
        rows = his.fee_rows(mdtrt_id, RETIREE, WITHDRAWN, f"{day} 08:50:00", "B2")
        await his.ok("2204", {"feedetail": rows})
        await his.ok(
            "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B2", "psn_no": RETIREE}}
        )
        uploaded = {"result": [r for a in answers for r in a["result"]]}
        expected = _parts_of_lines(uploaded)
        assert expected["fulamt_ownpay_amt"] > 0 and expected["preselfpay_amt"] > 0, expected
        medfee = total(MIXED)
        assert sum(expected.values()) == Decimal(medfee)

        data = his.settle_data(RETIREE, mdtrt_id, "11", medfee, "310", "0", chrg_bchno="B1")
        priced = (await his.ok("2206", data))["setlinfo"]
        assert _parts(priced) == expected

        # The parts of the answer before this change: the whole bill within the policy range.
        copied = {**data["data"], **dict.fromkeys(PARTS, "0.00"), "inscp_scp_amt": medfee}
        refused = await his.call("2207", {"data": copied})
        assert refused["infcode"] == -1, refused
        assert "与中心计算结果" in refused["err_msg"] and "请重新预结算" in refused["err_msg"]

        as_priced = {**data["data"], **{p: str(priced[p]) for p in PARTS}}
        claimed = (await his.ok("2207", {"data": as_priced}))["setlinfo"]
        assert claimed["setl_id"].startswith("DF") and _parts(claimed) == expected

        await _release_the_hospitals_visits(srv)

        async def replayed() -> bool:
            status = await srv.fetchval(
                "SELECT status FROM deferred WHERE claim_id = $1", claimed["setl_id"]
            )
            return status == "settled"

        cli("deferred", "replay", "--database-url", srv.dsn)
        await until(replayed, within=15.0)
        setl_id = await srv.fetchval(
            "SELECT setl_id FROM deferred WHERE claim_id = $1", claimed["setl_id"]
        )
        keys = {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": RETIREE}
        settled = (await his.ok("5203", {"data": keys}))["setlinfo"]
        assert _parts(settled) == expected
        assert await srv.check_ledger() == []


async def test_a_provisional_id_whose_calls_were_applied_is_priced_by_its_visits_lines(
    new_database: Callable[..., Any],
) -> None:
    """The visit's calls applied (the plan keeps the hospital's settlements only), a counter
    still naming the provisional id gets the parts of the visit it became, and a claim declaring
    other parts is refused as online."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-09"
        mdtrt_id = await _kept_visit(srv, his, day, "MZ-PARTS-APPLIED")
        rows = his.fee_rows(mdtrt_id, RETIREE, MIXED, f"{day} 08:40:00", "B1")
        expected = _parts_of_lines(await his.ok("2204", {"feedetail": rows}))
        await clear_rule(srv.dsn, f"institution:{HOSPITAL}", "encounter")
        assert srv.app is not None
        await srv.app[GATEWAY].reload_plan(force=True)
        pending = "SELECT count(*) FROM deferred WHERE kind = 'call' AND status = 'pending'"

        async def applied() -> bool:
            return await srv.fetchval(pending) == 0

        await until(applied, within=15.0)
        medfee = total(MIXED)
        data = his.settle_data(RETIREE, mdtrt_id, "11", medfee, "310", "0", chrg_bchno="B1")
        priced = (await his.ok("2206", data))["setlinfo"]
        assert _parts(priced) == expected
        copied = {**data["data"], **dict.fromkeys(PARTS, "0.00"), "inscp_scp_amt": medfee}
        refused = await his.call("2207", {"data": copied})
        assert refused["infcode"] == -1 and "与中心计算结果" in refused["err_msg"], refused
        as_priced = {**data["data"], **{p: str(priced[p]) for p in PARTS}}
        claimed = (await his.ok("2207", {"data": as_priced}))["setlinfo"]
        assert claimed["setl_id"].startswith("DF") and _parts(claimed) == expected


async def test_a_stays_withdrawal_kept_before_its_claim_is_applied_before_it(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: under `defer`, a stay opened during the plan, a line withdrawn (2302)
    and then its 2304 taken as a claim of the lines left; at replay the 2302 failed, the claim
    holding all the stay's lines, and the claim then failed on the withdrawn line's total, the
    patient's cash never reimbursed. A withdrawal is held only by claims taken before it."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        await _keep_the_hospitals_visits(srv)
        pv = (await his.ok("2401", {**_admission(), "diseinfo": []}))["result"]["mdtrt_id"]
        assert pv.startswith("PV")
        withdrawn = line("9", "ZL0004", "30", 10)  # 300.00, withdrawn before the claim
        await his.ok("2301", _upload(pv, [*BEFORE, withdrawn], "2025-07-02 10:00:00"))
        keys = {"feedetl_sn": "9", "mdtrt_id": pv, "psn_no": RETIREE}
        await his.ok("2302", {"data": [keys]})
        await his.ok("2402", _discharge(pv))
        presettled = (await his.ok("2303", _stay_settlement(his, pv, total(BEFORE), "0")))[
            "setlinfo"
        ]
        # The total with the withdrawn line is refused, as the claim would be.
        refused = await his.call("2303", _stay_settlement(his, pv, "1300.00", "0"))
        assert refused["infcode"] == -1 and "医疗费总额1300.00" in refused["err_msg"], refused
        data = _stay_settlement(his, pv, total(BEFORE), "0")
        data["data"].update({p: str(presettled[p]) for p in PARTS})
        claim = (await his.ok("2304", data))["setlinfo"]["setl_id"]
        await _release_the_hospitals_visits(srv)
        cli("deferred", "replay", "--database-url", srv.dsn)
        state = "SELECT status, fail_reason FROM deferred WHERE claim_id = $1"
        row = await srv.fetchrow(state, claim)
        assert row is not None and row["status"] == "settled", row
        calls = "SELECT infno, status FROM deferred WHERE kind = 'call' ORDER BY seq"
        assert [(r["infno"], r["status"]) for r in await srv.fetch(calls)] == [
            ("2401", "applied"),
            ("2301", "applied"),
            ("2302", "applied"),
            ("2402", "applied"),
        ]
        setl_id = await srv.fetchval("SELECT setl_id FROM deferred WHERE claim_id = $1", claim)
        settled = await his.ok(
            "5203", {"data": {"setl_id": setl_id, "mdtrt_id": pv, "psn_no": RETIREE}}
        )
        assert Decimal(str(settled["setlinfo"]["medfee_sumamt"])) == Decimal(total(BEFORE))
        assert await srv.check_ledger() == []


async def test_a_claim_of_a_provisional_visit_is_refused_as_its_settlement_would_be(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: under `defer`, on a visit opened during the plan, a 2207 of a batch
    never uploaded, of a batch withdrawn (2205) and of a total its lines do not make were each
    taken as a claim (the patient told the fund would reimburse) and failed at replay; their
    2206 were priced all cash. Each is refused as online, nothing kept."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        day = "2026-05-10"
        mdtrt_id = await _kept_visit(srv, his, day, "MZ-REFUSED")
        for batch in ("B1", "B2"):
            rows = his.fee_rows(mdtrt_id, RETIREE, MIXED, f"{day} 08:40:00", batch)
            await his.ok(
                "2204", {"feedetail": [{**r, "feedetl_sn": batch + r["feedetl_sn"]} for r in rows]}
            )
        await his.ok(
            "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B2", "psn_no": RETIREE}}
        )
        medfee = total(MIXED)
        cases = [
            ("B9", medfee, "没有待结算的费用明细"),  # never uploaded
            ("B2", medfee, "没有待结算的费用明细"),  # withdrawn
            ("B1", f"{Decimal(medfee) + Decimal('0.01')}", "与费用明细合计"),
        ]
        for batch, amount, words in cases:
            data = his.settle_data(RETIREE, mdtrt_id, "11", amount, "310", "0", chrg_bchno=batch)
            for infno in ("2206", "2207"):
                refused = await his.call(infno, data)
                assert refused["infcode"] == -1 and words in refused["err_msg"], (infno, refused)
        kept = "SELECT count(*) FROM deferred WHERE kind = 'claim'"
        assert await srv.fetchval(kept) == 0
        data = his.settle_data(RETIREE, mdtrt_id, "11", medfee, "310", "0", chrg_bchno="B1")
        assert (await his.ok("2207", data))["setlinfo"]["setl_id"].startswith("DF")


async def test_calls_on_a_provisional_visit_are_refused_for_the_claims_it_has(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: on visits opened under the plan, a 2205 of a batch a claim held, a
    stay's closing 2304 before its 2402, and a 2301 or 2302 after the stay's closing claim were
    each answered as kept (or taken as a claim) and failed when applied: the counter believed a
    batch withdrawn that replay settled, or the patient paid cash on a claim bound to fail.
    Each is refused as the ledger refuses it on a visit it holds."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        mdtrt_id = await _kept_visit(srv, his, "2026-05-11", "MZ-HELD")
        rows = his.fee_rows(mdtrt_id, RETIREE, MIXED, "2026-05-11 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(RETIREE, mdtrt_id, "11", total(MIXED), "310", "0", chrg_bchno="B1")
        claim = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        for batch in ("B1", "0000"):
            keys = {"mdtrt_id": mdtrt_id, "chrg_bchno": batch, "psn_no": RETIREE}
            refused = await his.call("2205", {"data": keys})
            assert refused["infcode"] == -1 and claim in refused["err_msg"], refused

        pv = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
        await his.ok("2301", _upload(pv, BEFORE, "2025-07-02 10:00:00"))
        closing = _stay_settlement(his, pv, total(BEFORE), "0")
        refused = await his.call("2304", closing)
        assert refused["infcode"] == -1 and "尚未办理出院（2402）" in refused["err_msg"], refused
        await his.ok("2402", _discharge(pv))
        stay_claim = (await his.ok("2304", closing))["setlinfo"]["setl_id"]
        late = await his.call(
            "2301", _upload(pv, [line("8", "ZL0004", "30", 1)], "2025-07-05 10:00:00")
        )
        assert late["infcode"] == -1 and stay_claim in late["err_msg"], late
        withdrawal = {"data": [{"feedetl_sn": "1", "mdtrt_id": pv, "psn_no": RETIREE}]}
        refused = await his.call("2302", withdrawal)
        assert refused["infcode"] == -1 and stay_claim in refused["err_msg"], refused
        kept = (
            "SELECT infno FROM deferred WHERE kind = 'call' AND infno IN ('2205', '2301', '2302')"
        )
        assert [r["infno"] for r in await srv.fetch(kept)] == ["2301"]  # the stay's first upload
        await _release_the_hospitals_visits(srv)
        cli("deferred", "replay", "--database-url", srv.dsn)
        settled = "SELECT count(*) FROM deferred WHERE kind = 'claim' AND status = 'settled'"
        assert await srv.fetchval(settled) == 2
        assert await srv.check_ledger() == []


async def test_a_provisional_stays_refunds_are_held_to_its_kept_charges(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: on a stay opened under the plan, a refund of more than was charged
    and one of a charge never uploaded were answered as kept and failed when applied. Both are
    refused as the ledger refuses them; a refund within its charge is kept and applied."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        await _keep_the_hospitals_visits(srv)
        pv = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
        await his.ok("2301", _upload(pv, [line("1", "ZL0008", "20", 1)], "2025-07-02 10:00:00"))
        cases = [
            (line("2", "ZL0008", "20", -2, init_feedetl_sn="1"), "不能重复或超额退费"),
            (line("3", "ZL0008", "20", -1, init_feedetl_sn="99"), "原费用流水号99不存在"),
        ]
        for refund, words in cases:
            refused = await his.call("2301", _upload(pv, [refund], "2025-07-03 10:00:00"))
            assert refused["infcode"] == -1 and words in refused["err_msg"], refused
        within = line("4", "ZL0008", "20", -1, init_feedetl_sn="1")
        await his.ok("2301", _upload(pv, [within], "2025-07-03 10:00:00"))
        # The kept refund counts: a second one of the same charge is more than it.
        again = line("5", "ZL0008", "20", -1, init_feedetl_sn="1")
        refused = await his.call("2301", _upload(pv, [again], "2025-07-03 11:00:00"))
        assert refused["infcode"] == -1 and "不能重复或超额退费" in refused["err_msg"], refused
        await _release_the_hospitals_visits(srv)
        calls = "SELECT infno, status FROM deferred WHERE kind = 'call' ORDER BY seq"
        assert [(r["infno"], r["status"]) for r in await srv.fetch(calls)] == [
            ("2401", "applied"),
            ("2301", "applied"),
            ("2301", "applied"),
        ]
        assert await srv.check_ledger() == []
