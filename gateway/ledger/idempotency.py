"""Idempotency by (institution, msgid): the same message gets the same answer, byte for byte.

The key row is inserted inside the business transaction. A concurrent duplicate blocks on the
unique key until the first commits, then finds the stored answer: one effect, two equal answers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import asyncpg
import msgspec

from gateway.ledger.keyed import per_key
from gateway.ledger.writes import update_statement
from gateway.protocol.errors import Conflict


class Stored(msgspec.Struct, frozen=True, gc=False):
    body_sha256: bytes
    answer: bytes
    tombstone: bool = False  # answers the reversal's refusal: a bar, or an original reversed

    @property
    def barred(self) -> bool:
        """A bar: a 2601 of an original this ledger never received (`tombstone`), where a
        reversed original keeps its own body's digest."""
        return self.tombstone and self.body_sha256 == TOMBSTONE_DIGEST


async def lookup(conn: asyncpg.Connection, fixmedins_code: str, msgid: str) -> Stored | None:
    """The committed answer for this msgid, if any."""
    (found,) = await lookup_many(conn, [(fixmedins_code, msgid)])
    return found


_LOOKUP = (
    "SELECT fixmedins_code, msgid, body_sha256, answer, tombstone FROM idempotency"
    " WHERE fixmedins_code = $1 AND msgid = $2"
)
# Key by key (gateway.ledger.keyed): a join's plan made while the journal was empty read it
# through, and the journal grows by every request.
_LOOKUP_MANY = per_key(
    "fixmedins_code, msgid, body_sha256, answer, tombstone",
    "idempotency",
    [("fixmedins_code", "text"), ("msgid", "text")],
)


async def lookup_many(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> list[Stored | None]:
    """`lookup` of several (fixmedins_code, msgid) in one query (the group read's batches), in
    the order asked."""
    if len(keys) == 1:  # one by equality: the plan of the common case stays an index look-up
        rows = [await conn.fetchrow(_LOOKUP, *keys[0])]
    else:
        rows = await conn.fetch(_LOOKUP_MANY, [k[0] for k in keys], [k[1] for k in keys])
    found = {
        (row["fixmedins_code"], row["msgid"]): Stored(
            bytes(row["body_sha256"]), bytes(row["answer"]), bool(row["tombstone"])
        )
        for row in rows
        if row is not None and row["answer"] is not None
    }
    return [found.get(key) for key in keys]


_NEWEST = (
    "SELECT fixmedins_code, msgid, body_sha256, answer, tombstone FROM idempotency"
    " WHERE answer IS NOT NULL ORDER BY created_at DESC LIMIT $1"
)


async def newest(conn: asyncpg.Connection, limit: int) -> list[tuple[str, str, Stored]]:
    """The latest `limit` committed answers, newest first (a starting process's recent answers)."""
    rows = await conn.fetch(_NEWEST, limit)
    return [
        (
            r["fixmedins_code"],
            r["msgid"],
            Stored(bytes(r["body_sha256"]), bytes(r["answer"]), bool(r["tombstone"])),
        )
        for r in rows
    ]


# A cancellation's answer (2208, 2305, 2103; a claim's withdrawal) marks its setlinfo so: the
# answers are msgspec's compact JSON, so the bytes are these.
_CANCELLATION = b'"setl_type":"2"'


def replay(stored: Stored, body_sha256: bytes, msgid: str, settling: bool = True) -> bytes:
    """The stored answer for the same body; a different body under the same msgid is refused
    (`settling`: whether the request's transaction is one a settlement query (5203) tells the
    outcome of; for the others the way to learn it is to send the original again)."""
    if stored.tombstone:
        return stored.answer  # the refusal written by the 2601, whatever the late body says
    if stored.body_sha256 != body_sha256:
        words = _words_of(stored.answer)
        refused = None if words is None else _cut(words)
        if words is not None and UNKNOWN_OUTCOME in words:
            # Forwarded to the old system, which may have done it: found from outside, a till
            # that rebuilt the sale under its msgid was told it had not happened and to send it
            # under a new one, to the old system again.
            raise Conflict(
                f"报文ID{msgid}的交易已转原医保系统办理，{UNKNOWN_OUTCOME}：请在原系统查询该报文ID"
                "的结果，切勿在本系统重复结算；确认原系统未办理后，再使用新的报文ID重新发送"
            )
        if refused is not None:
            # Found from outside: a clerk who corrected a refused sale and sent it again under
            # its msgid was sent looking for a settlement that never happened.
            raise Conflict(
                f"报文ID{msgid}已用于一笔被拒绝的交易（{refused}），该交易未发生；"
                "更正后请使用新的报文ID重新发送"
            )
        if not settling:
            # Found from outside: a 9101 file upload was sent to the settlement query.
            raise Conflict(
                f"报文ID{msgid}已使用过且报文内容不同：该报文ID已有交易记录，以原报文内容和该"
                "报文ID重发即返回原交易的应答；需要发起新的交易请使用新的报文ID"
            )
        if _CANCELLATION in stored.answer:
            # Found from outside: a 2207 sent under the msgid of a 2208 was sent to 5203 for a
            # settlement of that medins_setl_id, which a cancellation never makes.
            raise Conflict(
                f"报文ID{msgid}已使用过且报文内容不同：该报文ID已用于一笔结算撤销（该撤销已成功），"
                "以原报文内容和该报文ID重发即返回原撤销的应答；需要发起新的交易请使用新的报文ID"
            )
        # The settlement it names is the one whose medins_setl_id is this msgid (found from
        # outside: two clerks' msgids collided, and a 5203 by the second patient showed that
        # patient's earlier, unrelated settlement, read as this message's).
        raise Conflict(
            f"报文ID{msgid}已使用过且报文内容不同：该报文ID已有交易记录，请先查询原交易结果"
            f"（如5203结算信息查询，medins_setl_id为{msgid}的结算才是该报文的结果），"
            "确认未成功后再使用新的报文ID发起交易"
        )
    return stored.answer


class _Answered(msgspec.Struct):
    infcode: int | str = 0
    err_msg: str | None = None


_answered = msgspec.json.Decoder(_Answered)
_QUOTED = 60  # of the earlier refusal's words, in the new one (err_msg holds 200)


# The words of an answer kept for a message forwarded to the old system that did not answer
# in time: it may have done it (gateway.emergency.hook's LEGACY_UNKNOWN_MSG holds them).
UNKNOWN_OUTCOME = "办理结果未知"


def _words_of(answer: bytes) -> str | None:
    """A stored refusal's whole words (infcode -1); None for a success."""
    try:
        stored = _answered.decode(answer)
    except msgspec.DecodeError:
        return None
    if str(stored.infcode) == "0":
        return None
    return stored.err_msg or "原因未记录"


def _cut(words: str) -> str:
    return words if len(words) <= _QUOTED else f"{words[:_QUOTED]}…"


def refusal_of(answer: bytes) -> str | None:
    """The words of a stored refusal (infcode -1), cut to fit; None for a success."""
    words = _words_of(answer)
    return None if words is None else _cut(words)


async def claim(
    conn: asyncpg.Connection, fixmedins_code: str, msgid: str, infno: str, body_sha256: bytes
) -> bool:
    """Take the key inside the caller's transaction; False when another request holds it."""
    got = await conn.fetchval(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256) VALUES ($1,$2,$3,$4)"
        " ON CONFLICT DO NOTHING RETURNING true",
        fixmedins_code,
        msgid,
        infno,
        body_sha256,
    )
    return bool(got)


def _bounded(lock_wait_ms: int | None) -> str:
    """The WHERE of an `INSERT … SELECT` that bounds, from that statement to the end of its
    transaction, a wait for a row lock (`set_config`, evaluated once before the first row is
    inserted: no round trip of its own)."""
    if lock_wait_ms is None:
        return ""
    wait = max(1, int(lock_wait_ms))
    return f" WHERE (SELECT set_config('lock_timeout', '{wait}ms', true)) IS NOT NULL"


async def claim_many(
    conn: asyncpg.Connection,
    keys: Sequence[tuple[str, str, str, bytes]],
    drawing: Collection[tuple[str, str]] = (),
    serials: tuple[str, str] = ("NULL", "NULL"),
    lock_wait_ms: int | None = None,
) -> dict[tuple[str, str], tuple[int, int] | None]:
    """Take several keys (fixmedins_code, msgid, infno, digest) at once; returns those taken,
    each with the pair of `serials` (two SQL expressions, e.g. nextvals) drawn for it if it is
    one of `drawing`: a batch's claim and its ids in one round trip, and no id drawn for a
    request another one already answered.

    Keys are inserted in sorted order, so two batches claiming overlapping keys wait for each
    other in one order and never deadlock.

    `lock_wait_ms`: from this statement to the end of the transaction, a wait for a row lock
    longer than this fails (LockNotAvailable) instead of going on; set by the statement itself
    (`set_config`, evaluated once before the first key is taken), not by one more round trip.
    """
    ordered = sorted(keys)
    wanted = sorted(drawing)
    rows = await conn.fetch(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])"
        + _bounded(lock_wait_ms)
        + " ON CONFLICT DO NOTHING RETURNING fixmedins_code, msgid"
        + "".join(
            f", CASE WHEN (fixmedins_code, msgid) IN"
            f" (SELECT * FROM unnest($5::text[], $6::text[])) THEN {expression} END AS {name}"
            for name, expression in zip(("m", "s"), serials, strict=True)
        ),
        [k[0] for k in ordered],
        [k[1] for k in ordered],
        [k[2] for k in ordered],
        [k[3] for k in ordered],
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {
        (r["fixmedins_code"], r["msgid"]): None if r["m"] is None else (int(r["m"]), int(r["s"]))
        for r in rows
    }


class _Probed(Exception):
    """Rolls the probe's transaction back."""


async def held_by_another(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    msgid: str,
    infno: str,
    body_sha256: bytes,
    wait_ms: int = 100,
) -> bool:
    """Whether a transaction still open holds this msgid's key: an earlier attempt of the same
    request whose commit has not completed, and may yet (found from outside: with both
    synchronous standbys gone, a sale's commit waited for them past its deadline, its retries
    were deferred as all-cash claims, and the sale then committed, the account paid too). The
    key is taken in a transaction rolled back at once: the insert waits for the holder, and
    past `wait_ms` it is held. A committed key is `lookup`'s; this sees only open ones."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(wait_ms)}")
            await conn.execute(
                "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                fixmedins_code,
                msgid,
                infno,
                body_sha256,
            )
            raise _Probed
    except asyncpg.LockNotAvailableError:
        return True
    except _Probed:
        return False


ANSWER = update_statement(
    "idempotency",
    [("fixmedins_code", "text"), ("msgid", "text")],
    [("answer", "bytea"), ("infcode", "int4")],
)
RELEASE = "DELETE FROM idempotency WHERE fixmedins_code = $1 AND msgid = $2 AND answer IS NULL"


async def settle_answer(
    conn: asyncpg.Connection, fixmedins_code: str, msgid: str, answer: bytes, infcode: int
) -> None:
    """Record the answer of a claimed key (same transaction as the claim)."""
    await conn.execute(ANSWER, fixmedins_code, msgid, answer, infcode)


async def store_failure(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    msgid: str,
    infno: str,
    body_sha256: bytes,
    answer: bytes,
) -> Stored | None:
    """Keep a refusal's answer for replays; returns the earlier answer if one won the race."""
    if await keep_answer(conn, fixmedins_code, msgid, infno, body_sha256, answer, -1):
        return None
    return await lookup(conn, fixmedins_code, msgid)


async def answered_here(conn: asyncpg.Connection, fixmedins_code: str, msgid: str) -> bool:
    """Whether this ledger holds the msgid's key as its own (not an answer another system gave)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM idempotency WHERE fixmedins_code = $1 AND msgid = $2"
            " AND NOT answered_elsewhere)",
            fixmedins_code,
            msgid,
        )
    )


async def purge(conn: asyncpg.Connection, keep_days: int) -> int:
    """Drop keys older than the retention (at least 7 days by policy)."""
    status = await conn.execute(
        "DELETE FROM idempotency WHERE created_at < now() - make_interval(days => $1)",
        max(keep_days, 7),
    )
    return int(status.split()[-1])


TOMBSTONE_DIGEST = b"\x00" * 32  # no request body hashes to this


async def tombstone(
    conn: asyncpg.Connection, fixmedins_code: str, msgid: str, infno: str, answer: bytes
) -> None:
    """Mark a msgid reversed before its original arrived, so a late original is refused."""
    await conn.execute(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode, tombstone)"
        " VALUES ($1, $2, $3, $4, $5, -1, true)",
        fixmedins_code,
        msgid,
        infno,
        TOMBSTONE_DIGEST,
        answer,
    )


async def record_deferred(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    msgid: str,
    infno: str,
    body_sha256: bytes,
    answer: bytes,
) -> bool:
    """Writes a deferred request's answer for its retries; False when the msgid had a key already."""
    return await keep_answer(conn, fixmedins_code, msgid, infno, body_sha256, answer, 0)


class Kept(msgspec.Struct, frozen=True, gc=False):
    """An answer to be written with its key at once (`keep_answer`'s arguments)."""

    fixmedins_code: str
    msgid: str
    infno: str
    body_sha256: bytes
    answer: bytes
    infcode: int
    elsewhere: bool = False


async def keep_many(
    conn: asyncpg.Connection, kept: Sequence[Kept], lock_wait_ms: int | None = None
) -> list[Stored | None]:
    """`keep_answer` of several keys in one statement (committed by itself: call it outside a
    transaction), then the earlier answers of the keys that had one. For each, in the order
    given: None where its answer is now the key's (or the key has none to give), else the
    answer the key had. A key given twice is kept once, by its first; the second gets it.

    Keys are inserted in sorted order, as `claim_many` takes them, so batches never deadlock;
    `lock_wait_ms` bounds the wait for a key an open transaction holds (LockNotAvailable)."""
    first: dict[tuple[str, str], int] = {}  # each key's first place in `kept`
    for at, one in enumerate(kept):
        first.setdefault((one.fixmedins_code, one.msgid), at)
    fresh = await keep_fresh(conn, [kept[at] for at in first.values()], lock_wait_ms)
    mine = {first[key] for key in fresh}
    others = [(k.fixmedins_code, k.msgid) for at, k in enumerate(kept) if at not in mine]
    found = dict(zip(others, await lookup_many(conn, others), strict=True)) if others else {}
    return [None if at in mine else found[(k.fixmedins_code, k.msgid)] for at, k in enumerate(kept)]


async def keep_fresh(
    conn: asyncpg.Connection, kept: Sequence[Kept], lock_wait_ms: int | None = None
) -> set[tuple[str, str]]:
    """Each key written with its answer at once, in one statement; which keys were new (a
    key already there keeps its first answer). Keys are inserted in sorted order, as
    `claim_many` takes them, so batches never deadlock; a key given twice is kept once."""
    firsts: dict[tuple[str, str], Kept] = {}
    for one in kept:
        firsts.setdefault((one.fixmedins_code, one.msgid), one)
    ordered = [firsts[key] for key in sorted(firsts)]
    rows = await conn.fetch(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode,"
        " answered_elsewhere) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::bytea[], $5::bytea[], $6::int4[], $7::bool[])"
        + _bounded(lock_wait_ms)
        + " ON CONFLICT DO NOTHING RETURNING fixmedins_code, msgid",
        [k.fixmedins_code for k in ordered],
        [k.msgid for k in ordered],
        [k.infno for k in ordered],
        [k.body_sha256 for k in ordered],
        [k.answer for k in ordered],
        [k.infcode for k in ordered],
        [k.elsewhere for k in ordered],
    )
    return {(r["fixmedins_code"], r["msgid"]) for r in rows}


async def keep_answer(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    msgid: str,
    infno: str,
    body_sha256: bytes,
    answer: bytes,
    infcode: int,
    *,
    elsewhere: bool = False,
) -> bool:
    """A key written with its answer at once (`elsewhere`: another system gave it, the old
    system's under route_legacy); False when the msgid had a key already (the first stays)."""
    fresh = await conn.fetchval(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode,"
        " answered_elsewhere) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING"
        " RETURNING true",
        fixmedins_code,
        msgid,
        infno,
        body_sha256,
        answer,
        infcode,
        elsewhere,
    )
    return bool(fresh)
