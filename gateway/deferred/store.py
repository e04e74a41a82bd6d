"""Deferred claims and journaled calls in the ledger database."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Entry:
    """One deferred item, as written to the ledger or to the local journal."""

    kind: str  # claim | call | withdrawal (journal only: applied when drained)
    fixmedins_code: str
    msgid: str
    infno: str
    psn_no: str
    mdtrt_id: str
    service_date: dt.date
    medfee_sumamt: int
    body: bytes
    answer: bytes
    received_at: dt.datetime
    claim_id: str | None = None
    provisional_id: str | None = None
    digest: bytes = b""  # sha256 of the HTTP body, for the msgid journal once drained
    # feedetl_sn a claim of a whole visit covers, when known as it is taken (see claim_lines)
    lines: tuple[str, ...] | None = None


async def insert(conn: asyncpg.Connection, e: Entry, source: str) -> bool:
    """Add the entry (inside the caller's transaction); False when its msgid is already there."""
    got = await conn.fetchval(
        "INSERT INTO deferred (kind, claim_id, provisional_id, fixmedins_code, msgid, infno,"
        " psn_no, mdtrt_id, service_date, medfee_sumamt, body, received_at, source, lines)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
        " ON CONFLICT (fixmedins_code, msgid) DO NOTHING RETURNING true",
        e.kind,
        e.claim_id,
        e.provisional_id,
        e.fixmedins_code,
        e.msgid,
        e.infno,
        e.psn_no,
        e.mdtrt_id,
        e.service_date,
        e.medfee_sumamt,
        e.body,
        e.received_at,
        source,
        None if e.lines is None else list(e.lines),
    )
    return bool(got)


async def withdraw(
    conn: asyncpg.Connection, claim_id: str, fixmedins_code: str, psn_no: str, msgid: str
) -> asyncpg.Record | None:
    """Withdraw a pending claim; returns the row as it was, or None when not pending here."""
    return await conn.fetchrow(
        "UPDATE deferred SET status = 'withdrawn', withdrawn_msgid = $4"
        " WHERE claim_id = $1 AND fixmedins_code = $2 AND psn_no = $3 AND status = 'pending'"
        " RETURNING *",
        claim_id,
        fixmedins_code,
        psn_no,
        msgid,
    )


async def claim_row(
    conn: asyncpg.Connection, claim_id: str, fixmedins_code: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM deferred WHERE claim_id = $1 AND fixmedins_code = $2",
        claim_id,
        fixmedins_code,
    )


async def pending_claims(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM deferred WHERE kind = 'claim' AND status = 'pending'"
        )
    )


async def unfixed_claims(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Pending claims that may cover a whole visit and do not name their lines yet, in the
    order they were received (journaled claims, and those taken while the visit's own calls
    waited to be applied)."""
    return list(
        await conn.fetch(
            "SELECT seq, body FROM deferred WHERE kind = 'claim' AND status = 'pending'"
            " AND lines IS NULL AND infno IN ('2207', '2304') ORDER BY seq"
        )
    )


async def fix_lines(conn: asyncpg.Connection, seq: int, lines: list[str]) -> None:
    await conn.execute(
        "UPDATE deferred SET lines = $2 WHERE seq = $1 AND lines IS NULL", seq, lines
    )


async def calls_waiting(conn: asyncpg.Connection, fixmedins_code: str) -> bool:
    """Whether encounter calls of the institution wait to be applied (their lines are not in
    the ledger yet)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM deferred WHERE status = 'pending' AND kind = 'call'"
            " AND fixmedins_code = $1)",
            fixmedins_code,
        )
    )


@dataclass(frozen=True, slots=True)
class Held:
    """Lines of a visit a pending claim covers: a charge batch, or all of them (fees.ALL)."""

    claim_id: str
    infno: str
    lines: str


@dataclass(frozen=True, slots=True)
class PendingClaim:
    """A claim still waiting for replay, on the visit the ledger knows it by."""

    claim_id: str
    fixmedins_code: str
    mdtrt_id: str  # a provisional id already resolved to its visit
    infno: str
    body: bytes


async def pending_on_visits(conn: asyncpg.Connection, mdtrt_ids: list[str]) -> list[PendingClaim]:
    """Pending claims of these visits, including those filed under a provisional id that became
    one of them. The pending set is small (an outage's worth), so this stays cheap."""
    rows = await conn.fetch(
        "SELECT d.claim_id, d.fixmedins_code, coalesce(i.mdtrt_id, d.mdtrt_id) AS visit,"
        " d.infno, d.body FROM deferred d"
        " LEFT JOIN deferred_ids i ON i.provisional_id = d.mdtrt_id"
        " WHERE d.kind = 'claim' AND d.status = 'pending' AND d.mdtrt_id <> ''"
        " AND coalesce(i.mdtrt_id, d.mdtrt_id) = ANY($1::text[])",
        mdtrt_ids,
    )
    return [
        PendingClaim(r["claim_id"], r["fixmedins_code"], r["visit"], r["infno"], bytes(r["body"]))
        for r in rows
    ]


async def visit_of(conn: asyncpg.Connection, mdtrt_id: str) -> str:
    """The visit a provisional id became, or the id itself (not yet applied, or not provisional)."""
    real = await conn.fetchval(
        "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1", mdtrt_id
    )
    return mdtrt_id if real is None else str(real)
