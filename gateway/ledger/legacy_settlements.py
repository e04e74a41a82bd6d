"""Visits' settlements the old system made under the plan's route_legacy (migration 031).

Written with the relayed answer kept against its msgid, in the same transaction; read with the
deferred claims that hold a visit's lines (gateway.ledger.deferred.pending_on_visits), so a
settlement here of the same lines is refused without another round trip.
"""

from __future__ import annotations

import datetime as dt

import asyncpg


async def record(
    conn: asyncpg.Connection,
    *,
    fixmedins_code: str,
    setl_id: str,
    mdtrt_id: str,
    lines: str,
    infno: str,
    msgid: str,
) -> None:
    """The old system settled these lines of the visit (its answer said so)."""
    await conn.execute(
        "INSERT INTO legacy_settlements (fixmedins_code, setl_id, mdtrt_id, lines, infno, msgid)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        fixmedins_code,
        setl_id,
        mdtrt_id,
        lines,
        infno,
        msgid,
    )


async def cancel(conn: asyncpg.Connection, *, fixmedins_code: str, setl_id: str) -> None:
    """The old system cancelled its settlement (a 2208/2305 relayed and answered 成功)."""
    await conn.execute(
        "UPDATE legacy_settlements SET cancelled_at = now() WHERE fixmedins_code = $1"
        " AND setl_id = $2 AND cancelled_at IS NULL",
        fixmedins_code,
        setl_id,
    )


async def in_force(
    conn: asyncpg.Connection, *, fixmedins_code: str, setl_id: str, mdtrt_id: str | None = None
) -> bool:
    """Whether `setl_id` is the old system's settlement of the institution, not cancelled (of
    that visit, where one is named: the two systems' numbers may coincide)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM legacy_settlements WHERE fixmedins_code = $1"
            " AND setl_id = $2 AND cancelled_at IS NULL AND ($3::text IS NULL OR mdtrt_id = $3))",
            fixmedins_code,
            setl_id,
            mdtrt_id,
        )
    )


async def set_aside_since(
    conn: asyncpg.Connection, *, fixmedins_code: str, msgid: str, since: dt.datetime
) -> None:
    """Takes out of force, in the caller's transaction (which the parallel run's pricing rolls
    back), the institution's old-system settlements made by `msgid` or since `since`: a request
    is priced as when the counter asked, not refused by the settlement it led to."""
    await conn.execute(
        "UPDATE legacy_settlements SET cancelled_at = now() WHERE fixmedins_code = $1"
        " AND cancelled_at IS NULL AND (msgid = $2 OR settled_at >= $3)",
        fixmedins_code,
        msgid,
        since,
    )
