"""The hash-chained audit log: who changed what, when, why, before and after.

Each row's hash covers its content and the previous row's hash, so editing or deleting a row
afterwards is seen by `python -m gateway audit verify`; the chain's head (the last row's id and
hash, kept apart) shows the newest rows deleted too. Rows are appended under a transaction-level
advisory lock: two changes at once still form one chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.ledger import audit as audit_log
from gateway.ledger.audit import Row
from gateway.protocol.errors import BadRequest

GENESIS = "0" * 64


def reason_given(reason: str, missing: str) -> str:
    """Why, in words, for an audited change (`missing`: the refusal when none is given): at least
    two printable characters. Found from outside: a plan change refused "x" and invisible
    characters while unlocking a log-in, changing a payee's account and withdrawing or refusing
    a claim took them; one rule for every audited reason."""
    reason = reason.strip()
    if not reason:
        raise BadRequest(missing)
    if len(reason) < 2:
        raise BadRequest(f"原因“{reason}”过短，请写明原因（至少2个字）")
    if not reason.isprintable():
        raise BadRequest("原因含有不可见的控制字符，请删除后重新填写")
    return reason


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
    await audit_log.lock_chain(conn)
    last = await audit_log.last_link(conn)
    audit_id = 1 if last is None else last[0] + 1
    prev_hash = GENESIS if last is None else last[1]
    at = dt.datetime.now(dt.UTC)
    fields = {
        "operator": operator,
        "action": action,
        "target": target,
        "reason": reason,
        "before": before,
        "after": after,
    }
    hash_ = _hash(prev_hash, audit_id, at, fields)
    await audit_log.insert(
        conn,
        Row(
            audit_id=audit_id,
            at=at,
            operator=operator,
            action=action,
            target=target,
            reason=reason,
            before=before,
            after=after,
            prev_hash=prev_hash,
            hash=hash_,
        ),
    )
    await audit_log.set_head(conn, audit_id, hash_)
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
    # One snapshot for the rows and the head: a change appended meanwhile is in neither.
    async with (
        conn.transaction(isolation="repeatable_read", readonly=True),
        aclosing(audit_log.in_order(conn)) as rows,
    ):
        async for r in rows:
            audit_id = r.audit_id
            if audit_id != expected_id:
                return Verdict(count, audit_id, f"row {expected_id} is missing")
            if r.prev_hash != prev:
                return Verdict(count, audit_id, "prev_hash does not match the previous row")
            if _hash(prev, audit_id, r.at, _fields(r)) != r.hash:
                return Verdict(count, audit_id, "content changed after it was written")
            prev = str(r.hash)
            expected_id += 1
            count += 1
        head = await audit_log.last_link(conn)
    # The rows end where the head says: the newest rows deleted leave a chain that holds.
    if head is None and count:
        return Verdict(count, expected_id - 1, "the chain's head is missing")
    if head is not None:
        head_id, head_hash = head
        if head_id >= expected_id:
            return Verdict(
                count,
                expected_id,
                f"row {expected_id} is missing (the chain ends at row {head_id})",
            )
        if (head_id, head_hash) != (expected_id - 1, prev):
            return Verdict(count, head_id, "the chain's head does not match its last row")
    return Verdict(count, None)


async def recent(conn: asyncpg.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The latest rows, newest first, for the console."""
    rows = await audit_log.latest(conn, limit)
    return [
        {"audit_id": r.audit_id, "at": r.at.astimezone().isoformat(), **_fields(r)} for r in rows
    ]


def _fields(r: Row) -> dict[str, Any]:
    """What a row's hash covers, besides its id and time."""
    return {
        "operator": r.operator,
        "action": r.action,
        "target": r.target,
        "reason": r.reason,
        "before": r.before,
        "after": r.after,
    }
