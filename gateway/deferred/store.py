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


async def insert(conn: asyncpg.Connection, e: Entry, source: str) -> bool:
    """Add the entry (inside the caller's transaction); False when its msgid is already there."""
    got = await conn.fetchval(
        "INSERT INTO deferred (kind, claim_id, provisional_id, fixmedins_code, msgid, infno,"
        " psn_no, mdtrt_id, service_date, medfee_sumamt, body, received_at, source)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
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
