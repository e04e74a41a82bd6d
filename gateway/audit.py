"""The hash-chained audit log: who changed what, when, why, before and after.

Each row's hash covers its content and the previous row's hash, so editing or deleting a row
afterwards is seen by `python -m gateway audit verify`. Rows are appended under a transaction-level
advisory lock: two changes at once still form one chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

_AUDIT_LOCK = 0xA0D17  # arbitrary, stable
GENESIS = "0" * 64


def _canonical(row: dict[str, Any]) -> bytes:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _hash(prev_hash: str, audit_id: int, at: dt.datetime, fields: dict[str, Any]) -> str:
    body = {"audit_id": audit_id, "at": at.astimezone(dt.UTC).isoformat(), **fields}
    return hashlib.sha256(prev_hash.encode() + _canonical(body)).hexdigest()


async def append(
    conn: asyncpg.Connection,
    *,
    operator: str,
    action: str,
    target: str,
    reason: str,
    before: Any = None,
    after: Any = None,
) -> int:
    """Add one row inside the caller's transaction; returns its id."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK)
    last = await conn.fetchrow(
        "SELECT audit_id, hash FROM audit_log ORDER BY audit_id DESC LIMIT 1"
    )
    audit_id = 1 if last is None else int(last["audit_id"]) + 1
    prev_hash = GENESIS if last is None else str(last["hash"])
    at = dt.datetime.now(dt.UTC)
    fields = {
        "operator": operator,
        "action": action,
        "target": target,
        "reason": reason,
        "before": before,
        "after": after,
    }
    await conn.execute(
        "INSERT INTO audit_log (audit_id, at, operator, action, target, reason, before, after,"
        " prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        audit_id,
        at,
        operator,
        action,
        target,
        reason,
        before,
        after,
        prev_hash,
        _hash(prev_hash, audit_id, at, fields),
    )
    return audit_id


@dataclass(frozen=True, slots=True)
class Verdict:
    rows: int
    broken_at: int | None  # the first audit_id whose hash or link does not hold
    problem: str = ""


async def verify(conn: asyncpg.Connection) -> Verdict:
    """Recompute the chain from the first row."""
    prev = GENESIS
    expected_id = 1
    count = 0
    async with conn.transaction():
        async for r in conn.cursor("SELECT * FROM audit_log ORDER BY audit_id"):
            audit_id = int(r["audit_id"])
            if audit_id != expected_id:
                return Verdict(count, audit_id, f"row {expected_id} is missing")
            if r["prev_hash"] != prev:
                return Verdict(count, audit_id, "prev_hash does not match the previous row")
            if _hash(prev, audit_id, r["at"], _fields(r)) != r["hash"]:
                return Verdict(count, audit_id, "content changed after it was written")
            prev = str(r["hash"])
            expected_id += 1
            count += 1
    return Verdict(count, None)


async def recent(conn: asyncpg.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The latest rows, newest first, for the console."""
    rows = await conn.fetch("SELECT * FROM audit_log ORDER BY audit_id DESC LIMIT $1", limit)
    return [
        {"audit_id": int(r["audit_id"]), "at": r["at"].astimezone(dt.UTC).isoformat(), **_fields(r)}
        for r in rows
    ]


def _fields(r: asyncpg.Record) -> dict[str, Any]:
    """What a row's hash covers, besides its id and time."""
    return {k: r[k] for k in ("operator", "action", "target", "reason", "before", "after")}
