"""2601 冲正's rows: the original message's key (locked, marked reversed, or barred by a
tombstone) and the settlement it made."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway.ledger.idempotency import TOMBSTONE_DIGEST


class Original(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The key of the message a 2601 reverses."""

    infno: str
    infcode: int | None  # None while the original is still running
    tombstone: bool
    reversed_by: str | None
    answered_elsewhere: bool = False  # the old system's answer, relayed (route_legacy)


async def lock_original(
    conn: asyncpg.Connection, fixmedins_code: str, omsgid: str
) -> Original | None:
    """Reads and locks the original message's key; None when it never arrived."""
    row = await conn.fetchrow(
        "SELECT infno, infcode, tombstone, reversed_by, answered_elsewhere FROM idempotency"
        " WHERE fixmedins_code = $1 AND msgid = $2 FOR UPDATE",
        fixmedins_code,
        omsgid,
    )
    if row is None:
        return None
    return Original(
        infno=row["infno"],
        infcode=row["infcode"],
        tombstone=row["tombstone"],
        reversed_by=row["reversed_by"],
        answered_elsewhere=row["answered_elsewhere"],
    )


async def bar(
    conn: asyncpg.Connection, fixmedins_code: str, omsgid: str, oinfno: str, refusal: bytes
) -> bool:
    """Writes a tombstone as the original's key (a late one gets `refusal`); False if it is taken."""
    got = await conn.fetchval(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode, tombstone)"
        " VALUES ($1, $2, $3, $4, $5, -1, true) ON CONFLICT DO NOTHING RETURNING true",
        fixmedins_code,
        omsgid,
        oinfno,
        TOMBSTONE_DIGEST,
        refusal,
    )
    return bool(got)


async def mark_reversed(
    conn: asyncpg.Connection, fixmedins_code: str, omsgid: str, msgid: str, refusal: bytes
) -> None:
    """Writes the 2601's msgid on the original's key (it cannot be reversed twice), and has the
    key answer its retries with `refusal`, as a late original is answered (the answer it was
    given kept beside it, migration 040)."""
    await conn.execute(
        "UPDATE idempotency SET reversed_by = $3, reversed_answer = answer, answer = $4,"
        " tombstone = true WHERE fixmedins_code = $1 AND msgid = $2",
        fixmedins_code,
        omsgid,
        msgid,
        refusal,
    )


class Settled(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The settlement an original settling message made."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    status: str
    category: str = ""


async def settlement_of(
    conn: asyncpg.Connection, fixmedins_code: str, omsgid: str, infno: str
) -> Settled | None:
    """Reads the settlement the counter's original made (not a correction's re-settlement of it)."""
    row = await conn.fetchrow(
        "SELECT setl_id, mdtrt_id, psn_no, status, category FROM settlements"
        " WHERE fixmedins_code = $1"
        " AND medins_setl_id = $2 AND infno = $3"
        # A bulk correction's re-settlement carries the original's msgid; the original is the one
        # the counter sent. A counter's own re-settlement after a refund has a msgid of its own.
        " AND NOT EXISTS (SELECT 1 FROM correction_items c WHERE c.new_setl_id = settlements.setl_id)",
        fixmedins_code,
        omsgid,
        infno,
    )
    if row is None:
        return None
    return Settled(
        setl_id=row["setl_id"],
        mdtrt_id=row["mdtrt_id"],
        psn_no=row["psn_no"],
        status=row["status"],
        category=row["category"],
    )
