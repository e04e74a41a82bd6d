"""Recovery: drain the local journal into the ledger, apply journaled calls, replay claims.

Claims are settled in service-date order with the rules in force on their service date, the
accumulators at replay time and the personal account not used (settlement-rules §7), through the
very handlers that settle online. Each claim is one transaction that also marks it settled, so a
replay interrupted anywhere and run again settles nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from adapters.his import deferral, settling
from gateway.deferred import store
from gateway.deferred.journal import Journal, read_segment
from gateway.errors import Conflict, GatewayError, NotFound
from gateway.ledger import fees
from gateway.plan.status import REPLAY_LOCK
from gateway.runtime import Gateway
from gateway.transaction import TRANSACTIONS, Call, Mode

log = logging.getLogger("gateway.replay")
# Amounts in the stored setlinfo keep their exact wire text ("123.40"), never a float.
_exact = msgspec.json.Decoder(float_hook=str)


# ------------------------------------------------------------------------------------ draining


async def drain(gw: Gateway, journal: Journal) -> int:
    """Move every segment no running process holds into the ledger; returns entries moved.

    The process's own segment is rotated first so that it is drained too. Inserting is keyed by
    (institution, msgid): a segment drained twice adds nothing twice.
    """
    await journal.rotate()
    moved = 0
    for path, handle in journal.drainable():
        try:
            entries = list(read_segment(path))
            async with gw.pool.acquire() as conn, conn.transaction():
                for e in entries:
                    moved += await _drain_one(conn, e)
            path.unlink()
            _fsync_dir(path.parent)
            journal.forget(entries)
        finally:
            handle.close()
    if moved:
        log.warning("journal drained into the ledger", extra={"entries": moved})
        await apply_calls(gw)
    return moved


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _drain_one(conn: asyncpg.Connection, e: store.Entry) -> int:
    infno = e.infno
    if e.kind == "withdrawal":
        assert e.claim_id is not None
        await store.withdraw(conn, e.claim_id, e.fixmedins_code, e.psn_no, e.msgid)
    elif not await store.insert(conn, e, "journal"):
        return 0
    # The msgid journal gets the answer the counter was given: a retry replays it.
    fresh = await conn.fetchval(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode)"
        " VALUES ($1,$2,$3,$4,$5,0) ON CONFLICT DO NOTHING RETURNING true",
        e.fixmedins_code,
        e.msgid,
        infno,
        e.digest,
        e.answer,
    )
    if not fresh and e.kind != "withdrawal":
        # The ledger had answered this msgid before it became unreachable (a retry deferred
        # while no look-up could reach it): replaying it would do it twice. The team settles
        # the patient's cash against the original answer instead.
        await conn.execute(
            "UPDATE deferred SET status = 'failed', fail_reason = $3, replayed_at = now()"
            " WHERE fixmedins_code = $1 AND msgid = $2",
            e.fixmedins_code,
            e.msgid,
            DUPLICATE_REASON.format(msgid=e.msgid),
        )
    return 1


DUPLICATE_REASON = (
    "报文ID{msgid}在数据库中断前已办结，本笔为重发报文被暂存，不再补结算；"
    "请按原结算核对参保人已付现金并办理退还"
)


# ------------------------------------------------------------------------------ journaled calls


async def _ids(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT provisional_id, mdtrt_id FROM deferred_ids")
    return {r["provisional_id"]: r["mdtrt_id"] for r in rows}


async def _run(gw: Gateway, conn: asyncpg.Connection, row: asyncpg.Record, now: dt.datetime) -> Any:
    """Run a stored request through its transaction's handler; returns the handler's output."""
    req = deferral.for_replay(deferral.request_of(bytes(row["body"])), await _ids(conn))
    institution = gw.snapshot.institution(req.fixmedins_code)
    if institution is None:
        raise NotFound(f"定点医药机构编号{req.fixmedins_code}未登记")
    call = Call(gw, req, conn, now, institution, Mode.REPLAY)
    if row["kind"] == "claim" and row["lines"] is not None:
        answer = await settling.settle_claim(call, list(row["lines"]))
    else:
        answer = await TRANSACTIONS[req.infno].handler(call)
    return _exact.decode(msgspec.json.encode(answer.output))


async def _next(conn: asyncpg.Connection, kind: str, order: str) -> asyncpg.Record | None:
    """The next pending item, locked; another replayer skips it rather than waiting."""
    return await conn.fetchrow(
        f"SELECT * FROM deferred WHERE kind = $1 AND status = 'pending' ORDER BY {order}"
        " LIMIT 1 FOR UPDATE SKIP LOCKED",
        kind,
    )


async def _failed(conn: asyncpg.Connection, seq: int, reason: str) -> None:
    await conn.execute(
        "UPDATE deferred SET status = 'failed', fail_reason = $2, replayed_at = now() WHERE seq = $1",
        seq,
        reason,
    )


async def apply_calls(gw: Gateway) -> tuple[int, int]:
    """Apply pending journaled encounter calls in the order received; (applied, failed)."""
    applied = failed = 0
    async with gw.pool.acquire() as conn:
        unfixed = await _unfixed(conn)
        while True:
            async with conn.transaction():
                row = await _next(conn, "call", "seq")
                await _fix_lines(conn, unfixed, None if row is None else row["seq"])
                if row is None:
                    break
                try:
                    async with conn.transaction():  # a savepoint: a refusal leaves no trace
                        output = await _run(gw, conn, row, row["received_at"])
                        if row["provisional_id"]:
                            node = output.get("data") or output.get("result") or {}
                            await conn.execute(
                                "INSERT INTO deferred_ids VALUES ($1, $2)",
                                row["provisional_id"],
                                node["mdtrt_id"],
                            )
                    await conn.execute(
                        "UPDATE deferred SET status = 'applied', replayed_at = now() WHERE seq = $1",
                        row["seq"],
                    )
                    applied += 1
                except GatewayError as exc:
                    await _failed(conn, row["seq"], exc.err_msg)
                    failed += 1
    return applied, failed


async def _unfixed(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    """(seq, mdtrt_id) of the pending claims of a whole visit that do not name their lines yet."""
    out: list[tuple[int, str]] = []
    for r in await store.unfixed_claims(conn):
        scope = deferral.claim_scope(deferral.request_of(bytes(r["body"])))
        if scope is not None and scope[1] == fees.ALL:
            out.append((int(r["seq"]), scope[0]))
    return out


async def _fix_lines(
    conn: asyncpg.Connection, unfixed: list[tuple[int, str]], before: int | None
) -> None:
    """A claim covers the visit's lines uploaded before it in the order received: fixed once
    every call before it is applied and none after it (`before`: the next call's seq)."""
    while unfixed and (before is None or unfixed[0][0] < before):
        seq, mdtrt_id = unfixed.pop(0)
        visit = await store.visit_of(conn, mdtrt_id)
        await store.fix_lines(
            conn, seq, [ln.feedetl_sn for ln in await fees.unsettled(conn, visit)]
        )


# --------------------------------------------------------------------------------------- claims


@dataclass(slots=True)
class Progress:
    total: int = 0
    settled: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)


async def replay(gw: Gateway, on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Settle every pending claim in service-date order; safe to interrupt and run again."""
    async with gw.pool.acquire() as lock_conn:
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
            raise Conflict("已有补结算（deferred replay）正在进行，请勿重复启动")
        try:
            await apply_calls(gw)
            return await _replay_claims(gw, on_progress)
        finally:
            try:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK)
            except BaseException:
                # The pool does not reset session locks: a connection that may still hold
                # the lock is closed instead of going back (closing releases it).
                lock_conn.terminate()
                raise


async def _replay_claims(gw: Gateway, on_progress: Callable[[Progress], None] | None) -> Progress:
    progress = Progress()
    async with gw.pool.acquire() as conn:
        progress.total = await store.pending_claims(conn)
        while True:
            async with conn.transaction():
                row = await _next(conn, "claim", "service_date, seq")
                if row is None:
                    break
                try:
                    async with conn.transaction():
                        output = await _run(gw, conn, row, dt.datetime.now())
                        info = output["setlinfo"]
                        paid = await conn.fetchrow(
                            "SELECT medfee_sumamt, psn_cash_pay FROM settlements WHERE setl_id = $1",
                            info["setl_id"],
                        )
                    # The patient paid the whole bill in cash; what they owe now is psn_cash_pay.
                    owed = int(row["medfee_sumamt"]) - int(paid["psn_cash_pay"])
                    await conn.execute(
                        "UPDATE deferred SET status = 'settled', setl_id = $2, setlinfo = $3,"
                        " reimbursement_fen = $4, replayed_at = now() WHERE seq = $1",
                        row["seq"],
                        info["setl_id"],
                        info,
                        owed,
                    )
                    progress.settled += 1
                except GatewayError as exc:
                    await _failed(conn, row["seq"], exc.err_msg)
                    progress.failed.append(
                        {
                            "claim_id": row["claim_id"],
                            "mdtrt_id": row["mdtrt_id"],
                            "reason": exc.err_msg,
                        }
                    )
            if on_progress is not None:
                on_progress(progress)
    return progress


async def claims(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every claim, for `deferred list --json` and the reimbursement export."""
    rows = await conn.fetch(
        "SELECT * FROM deferred WHERE kind = 'claim' ORDER BY service_date, seq"
    )
    return [
        {
            "claim_id": r["claim_id"],
            "fixmedins_code": r["fixmedins_code"],
            "msgid": r["msgid"],
            "infno": r["infno"],
            "mdtrt_id": r["mdtrt_id"],
            "psn_no": r["psn_no"],
            "service_date": r["service_date"].isoformat(),
            "medfee_sumamt": r["medfee_sumamt"],
            "lines": r["lines"],
            "received_at": r["received_at"].isoformat(sep=" "),
            "source": r["source"],
            "status": r["status"],
            "setl_id": r["setl_id"],
            "setlinfo": r["setlinfo"],
            "reimbursement_fen": r["reimbursement_fen"],
            "fail_reason": r["fail_reason"],
        }
        for r in rows
    ]
