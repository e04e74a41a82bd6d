"""The audit log's rows: a hash chain appended under a transaction-level advisory lock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import asyncpg

_AUDIT_LOCK = 0xA0D17  # arbitrary, stable


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the audit log."""

    audit_id: int
    at: dt.datetime
    operator: str
    action: str
    target: str
    reason: str
    before: Any
    after: Any
    prev_hash: str
    hash: str


def _row_of(r: Any) -> Row:
    return Row(
        audit_id=int(r["audit_id"]),
        at=r["at"],
        operator=r["operator"],
        action=r["action"],
        target=r["target"],
        reason=r["reason"],
        before=r["before"],
        after=r["after"],
        prev_hash=r["prev_hash"],
        hash=r["hash"],
    )


async def lock_chain(conn: asyncpg.Connection) -> None:
    """Takes the chain's lock until the caller's transaction ends: two appends form one chain."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK)


async def last_link(conn: asyncpg.Connection) -> tuple[int, str] | None:
    """Reads the id and hash of the chain's head (its last row as written, migration 028);
    None while the log is empty."""
    head = await conn.fetchrow("SELECT audit_id, hash FROM audit_head")
    return None if head is None else (int(head["audit_id"]), str(head["hash"]))


async def set_head(conn: asyncpg.Connection, audit_id: int, hash_: str) -> None:
    """Moves the chain's head to the row just written (in the same transaction)."""
    await conn.execute(
        "INSERT INTO audit_head (audit_id, hash) VALUES ($1, $2)"
        " ON CONFLICT (only_row) DO UPDATE SET audit_id = $1, hash = $2",
        audit_id,
        hash_,
    )


async def insert(conn: asyncpg.Connection, row: Row) -> None:
    """Writes one row of the chain."""
    await conn.execute(
        "INSERT INTO audit_log (audit_id, at, operator, action, target, reason, before, after,"
        " prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        row.audit_id,
        row.at,
        row.operator,
        row.action,
        row.target,
        row.reason,
        row.before,
        row.after,
        row.prev_hash,
        row.hash,
    )


async def in_order(conn: asyncpg.Connection) -> AsyncGenerator[Row, None]:
    """Reads every row from the first, through a cursor (inside the caller's transaction)."""
    async for r in conn.cursor("SELECT * FROM audit_log ORDER BY audit_id"):
        yield _row_of(r)


async def latest(conn: asyncpg.Connection, limit: int) -> list[Row]:
    """Reads the latest rows, newest first."""
    rows = await conn.fetch("SELECT * FROM audit_log ORDER BY audit_id DESC LIMIT $1", limit)
    return [_row_of(r) for r in rows]
