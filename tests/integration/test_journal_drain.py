"""Draining a big journal segment: progress is kept chunk by chunk.

A busy outage leaves segments of thousands of claims. Drained in one transaction, a segment that
could not finish within the watcher's budget rolled back whole, every time, and the breaker never
closed (seen on the loopback cluster). Now each chunk commits: a drain interrupted half-way keeps
what it committed, the next drain adds the rest, and nothing is added twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.national import deferral
from adapters.national.envelope import decode_request, fingerprint
from gateway.app.config import Settings
from gateway.app.runtime import Gateway
from gateway.emergency.deferred import replay
from gateway.emergency.deferred.journal import Journal
from gateway.ledger.deferred import Entry
from tests.adversity.proxy import Proxy
from tests.adversity.test_ledger_outage import _tcp, _through
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL, cli

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
PERSONS = ["441800000000000001", "441800000000000002", "441800000000000003"]
CLAIMS = 12


class _Interrupted(Exception):
    pass


def _drug(pos: Any, n: int, at: dt.datetime) -> dict[str, Any]:
    return pos.drug_input(PERSONS[n % 3], f"{at:%Y-%m-%d} 10:00:00", DRUG_TOTAL, DRUG_LINES)


async def _journaled_sales(pos: Any, directory: Path, count: int, at: dt.datetime) -> list[Entry]:
    """`count` sales journaled as claims by a process that is gone (its segment closed, free
    to drain), as the journal writes them."""
    journal = Journal(directory)
    entries = []
    for n in range(count):
        req = decode_request(msgspec.json.encode(pos.envelope("2102", _drug(pos, n, at))))
        entry = Entry(
            kind="claim",
            fixmedins_code=PHARMACY,
            msgid=req.msgid,
            infno="2102",
            psn_no=PERSONS[n % 3],
            mdtrt_id="",
            service_date=at.date(),
            medfee_sumamt=11500,
            body=deferral.stored_request(req),
            answer=b"{}",
            received_at=at,
            claim_id=deferral.new_claim_id("441800", at, req.fixmedins_code, req.msgid),
            digest=fingerprint(req),
        )
        await journal.append(entry)
        entries.append(entry)
    journal.close()
    return entries


async def test_an_interrupted_drain_keeps_its_committed_chunks(
    new_database: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        at = dt.datetime.now().replace(microsecond=0)
        dead = tmp_path / "dead"
        entries = await _journaled_sales(pos, dead, CLAIMS, at)
        claim_ids = [e.claim_id for e in entries]
        assert len(set(claim_ids)) == CLAIMS

        gw = await Gateway.start(Settings(srv.dsn, config=GENEROUS, journal_dir=tmp_path / "own"))
        try:
            monkeypatch.setattr(replay, "DRAIN_CHUNK", 5)
            drain_chunk = replay._drain_chunk
            calls = 0

            async def failing(conn: Any, chunk: list[Entry], answered: list[Entry]) -> int:
                nonlocal calls
                calls += 1
                moved = await drain_chunk(conn, chunk, answered)
                if calls == 2:  # the second chunk, written: the first is committed by then
                    raise _Interrupted
                return moved

            monkeypatch.setattr(replay, "_drain_chunk", failing)
            with pytest.raises(_Interrupted):
                await replay.drain(gw, Journal(dead))
            kept = await srv.fetchval("SELECT count(*) FROM deferred")
            assert kept == 5  # the first chunk; the second rolled back
            assert list(dead.glob("*.journal"))  # the segment stays until drained whole

            def remembered() -> list[bytes]:
                found = (gw.recent.answered(PHARMACY, e.msgid) for e in entries)
                return [stored.answer for stored in found if stored is not None]

            # What the ledger committed, the process answers while it is away again; what rolled
            # back it does not hold as committed.
            assert len(remembered()) == 5
            monkeypatch.setattr(replay, "_drain_chunk", drain_chunk)
            assert await replay.drain(gw, Journal(dead)) == CLAIMS - 5
            assert sorted(remembered()) == sorted(e.answer for e in entries)
        finally:
            await gw.close()
        rows = await srv.fetch("SELECT claim_id FROM deferred ORDER BY claim_id")
        assert [r["claim_id"] for r in rows] == sorted(claim_ids)  # each once
        assert not list(dead.glob("*.journal"))
        answered = await srv.fetchval(
            "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1", PHARMACY
        )
        assert answered == CLAIMS  # each msgid's answer journaled once


async def test_a_damaged_record_keeps_its_segment_and_bars_its_msgid(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: four bytes overwritten in one record of six, the drain moved five,
    deleted the segment and said nothing; the till's retry of the lost claim's msgid then
    settled as a new sale and charged the patient's account, though the patient had paid the
    whole bill in cash under the claim. Now the segment is kept (`.damaged`), the replay
    command says so and exits 1, and the msgid's retry is refused in words."""
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        at = dt.datetime.now().replace(microsecond=0)
        dead = tmp_path / "dead"
        entries = await _journaled_sales(pos, dead, 6, at)
        (segment,) = dead.glob("*.journal")
        lines = segment.read_bytes().splitlines(keepends=True)
        # Damage the third record past its msgid: the JSON no longer reads.
        third = lines[2]
        cut = third.index(b'"body"')
        lines[2] = third[:cut] + b"\x00\x00\x00\x00" + third[cut + 4 :]
        segment.write_bytes(b"".join(lines))
        lost = entries[2].msgid

        done = await asyncio.to_thread(
            cli, "deferred", "replay", "--journal-dir", str(dead), "--database-url", srv.dsn,
            check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        assert "could not be read" in done.stderr
        assert not list(dead.glob("*.journal"))
        (kept,) = dead.glob("*.damaged")
        assert kept.read_bytes() == b"".join(lines)  # whole, as it was found
        drained = await srv.fetchval("SELECT count(*) FROM deferred")
        assert drained == 5

        # The till retries the lost claim's msgid: refused, never a second charge.
        settled = await srv.fetchval("SELECT count(*) FROM settlements")
        answer = await pos.call("2102", _drug(pos, 2, at), msgid=lost)
        assert answer["infcode"] == -1
        assert "请勿向参保人重复收费" in answer["err_msg"]
        assert await srv.fetchval("SELECT count(*) FROM settlements") == settled


async def test_a_slow_ledger_drains_a_backlog_within_the_watchers_budgets(
    new_database: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: a ledger 30 ms away each way never drained 211 journaled entries: the
    watcher gives a drain 30 s, the one chunk of 256 took longer and rolled back whole at every
    attempt, and the gateway deferred sales on a working ledger for more than a minute. Here each
    entry costs 20 ms and the watcher's budget is 1 s, against 60 entries (1.2 s in all): every
    chunk commits within a budget, a drain cut short keeps them, the next passes over them in one
    round trip and moves the rest; each entry once."""
    count = 60
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        at = dt.datetime.now().replace(microsecond=0)
        dead = tmp_path / "dead"
        entries = await _journaled_sales(pos, dead, count, at)
        gw = await Gateway.start(Settings(srv.dsn, config=GENEROUS, journal_dir=tmp_path / "own"))
        try:
            drain_chunk = replay._drain_chunk
            tried: list[str] = []

            async def far_away(conn: Any, chunk: list[Entry], answered: list[Entry]) -> int:
                tried.extend(e.msgid for e in chunk)
                await asyncio.sleep(0.02 * len(chunk))  # as a ledger 30 ms away cost each entry
                return await drain_chunk(conn, chunk, answered)

            monkeypatch.setattr(replay, "_drain_chunk", far_away)
            for _ in range(4):  # the watcher's steps, each with its budget
                try:
                    async with asyncio.timeout(1.0):
                        await replay.drain(gw, Journal(dead))
                    break
                except TimeoutError:
                    continue
            else:
                moved = await srv.fetchval("SELECT count(*) FROM deferred")
                raise AssertionError(f"never drained: {moved} of {count} moved")
        finally:
            await gw.close()
        assert await srv.fetchval("SELECT count(*) FROM deferred") == count
        assert not list(dead.glob("*.journal"))
        assert len(tried) < 2 * count  # what a cut-short drain moved is not tried again
        assert {e.msgid for e in entries} == set(tried)


async def test_a_backlog_drains_in_fewer_round_trips_than_entries(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: an outage's 2,600-3,000 journaled claims took about 20 s to drain
    after the ledger was back, one round trip or two an entry; the ledger's breaker closes only
    once the journal is drained, so every sale meanwhile was an all-cash claim on a working
    ledger. A chunk's claims go in one statement per table: counted at a proxy in front of the
    ledger, the drain of 96 claims sends fewer messages than half the claims (215 before,
    about two an entry; 35 with three chunks of 32)."""
    count = 96
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        at = dt.datetime.now().replace(microsecond=0)
        dead = tmp_path / "dead"
        entries = await _journaled_sales(pos, dead, count, at)
        proxy = Proxy(*_tcp(srv.dsn))
        await proxy.start()
        settings = Settings(
            _through(srv.dsn, proxy.port), config=GENEROUS, journal_dir=tmp_path / "own"
        )
        gw = await Gateway.start(settings)
        try:
            proxy.sent = 0
            assert await replay.drain(gw, Journal(dead)) == count
            sent = proxy.sent
        finally:
            await gw.close()
            await proxy.close()
        assert sent < count // 2, sent
        rows = await srv.fetch("SELECT msgid FROM deferred ORDER BY seq")
        assert [r["msgid"] for r in rows] == [e.msgid for e in entries]  # in order, each once
        answered = await srv.fetchval(
            "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1", PHARMACY
        )
        assert answered == count


async def test_a_replay_lock_granted_to_an_interrupted_ask_is_not_kept(
    new_database: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher asks for the replay lock within its step's timeout. Interrupted after the
    server granted it, the session lock stayed on a pooled connection, and every later
    `deferred replay` waited for it in vain ("…已等待30秒仍未结束", seen in a loaded run). The
    connection that asked is dropped instead: the lock is free for the next replay."""
    from gateway.app.server import prepare_database
    from gateway.ledger import db, deferred

    dsn = await new_database("replaylock")
    await prepare_database(Settings(dsn))
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    real = deferred.try_lock_replay

    async def granted_then_interrupted(conn: Any) -> bool:
        await real(conn)
        raise asyncio.CancelledError

    try:
        monkeypatch.setattr(deferred, "try_lock_replay", granted_then_interrupted)
        async with pool.acquire() as conn:
            with pytest.raises(asyncio.CancelledError):
                await replay._try_lock(conn)
        monkeypatch.undo()
        other = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            async with other.acquire() as elsewhere:
                assert await real(elsewhere)  # free: the next replay takes it
                await deferred.unlock_replay(elsewhere)
        finally:
            await other.close()
    finally:
        await pool.close()


async def test_a_worker_forgets_its_segment_another_worker_drained(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: with two workers, one drained the other's rotated segment; the other
    counted its claims as waiting for good (`sgw_deferred_claims_journaled` stayed 5 and the
    alert on waiting claims never cleared), held their visits as pending, and drained again
    every half second. A worker's drain first forgets its own segments drained elsewhere."""
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        at = dt.datetime.now().replace(microsecond=0)
        shared = tmp_path / "journal"
        gw = await Gateway.start(Settings(srv.dsn, config=GENEROUS, journal_dir=tmp_path / "gw"))
        try:
            first = Journal(shared)  # the worker that answered the claims
            for entry in await _journaled_sales(pos, tmp_path / "scratch", 3, at):
                await first.append(entry)
            second_claim = await _journaled_sales(pos, tmp_path / "scratch2", 1, at)
            await first.rotate()  # its own drain begins: the segment is free to drain
            await first.append(second_claim[0])  # a claim answered meanwhile, in a new segment
            assert first.claims_waiting == 4 and first.holds_anything
            assert await replay.drain(gw, Journal(shared)) == 3  # the other worker drains it
            assert await replay.drain(gw, first) == 1  # its newer segment: its own to drain
            assert first.claims_waiting == 0
            assert not first.holds_anything and not first.names_anything
            assert await srv.fetchval("SELECT count(*) FROM deferred") == 4
        finally:
            await gw.close()
