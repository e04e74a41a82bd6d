"""Deferred claims and journaled calls in the ledger database, the provisional ids they became,
and the lock a running replay holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.emergency.deferred import PROVISIONAL_ID_LENGTH, PROVISIONAL_PREFIX
from gateway.ledger.writes import Writes, form_of, insert_statement

REPLAY_LOCK = 0x2E91A7  # held by a running `deferred replay`; its presence means "replaying"


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
    # feedetl_sn a claim covers (its batch's or its whole visit's), fixed as it is taken or at drain
    lines: tuple[str, ...] | None = None


# Declared for the group commit too: a pharmacy's deferred claim is staged with its answer.
INSERT = insert_statement(
    "deferred",
    [
        ("fixmedins_code", "text"),
        ("msgid", "text"),
        ("kind", "text"),
        ("claim_id", "text"),
        ("provisional_id", "text"),
        ("infno", "text"),
        ("psn_no", "text"),
        ("mdtrt_id", "text"),
        ("service_date", "date"),
        ("medfee_sumamt", "int8"),
        ("body", "bytea"),
        ("received_at", "timestamp"),
        ("source", "text"),
        ("lines", "text[]"),
    ],
    suffix=" ON CONFLICT (fixmedins_code, msgid) DO NOTHING",
    key_columns=2,
)
_INSERT_TOLD = INSERT + " RETURNING true"


def _row(e: Entry, source: str) -> tuple[object, ...]:
    return (
        e.fixmedins_code,
        e.msgid,
        e.kind,
        e.claim_id,
        e.provisional_id,
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


async def insert(conn: asyncpg.Connection, e: Entry, source: str) -> bool:
    """Add the entry (inside the caller's transaction); False when its msgid is already there."""
    return bool(await conn.fetchval(_INSERT_TOLD, *_row(e, source)))


_INSERT_MANY = form_of(INSERT)
_INSERT_MANY_TOLD = _INSERT_MANY.many + " RETURNING fixmedins_code, msgid"


async def insert_many(
    conn: asyncpg.Connection, entries: Sequence[Entry], source: str
) -> set[tuple[str, str]]:
    """`insert` of several entries in one statement, in their order; the (institution, msgid)
    of those added (a msgid already there is left as it is)."""
    if not entries:
        return set()
    rows = await conn.fetch(
        _INSERT_MANY_TOLD, *_INSERT_MANY.arguments([_row(e, source) for e in entries])
    )
    return {(r["fixmedins_code"], r["msgid"]) for r in rows}


async def present(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (institution, msgid) entries the table holds already."""
    if not keys:
        return set()
    rows = await conn.fetch(
        "SELECT d.fixmedins_code, d.msgid FROM deferred d"
        " JOIN unnest($1::text[], $2::text[]) AS k(code, msgid)"
        " ON d.fixmedins_code = k.code AND d.msgid = k.msgid",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["fixmedins_code"], r["msgid"]) for r in rows}


def stage(writes: Writes, e: Entry, source: str) -> None:
    """Stage the entry's insert (a msgid already there is left as it is, as `insert` leaves it)."""
    writes.add(INSERT, *_row(e, source))


# What the counter is told of a claim not (or no longer) to be settled (5203, a withdrawal).
_UNSETTLED = {
    "pending": "{claim_id}为应急预案下的暂存结算（主动报），患者已按现金全额支付，待系统恢复后补结算；"
    "补结算后可再次查询；如需撤销请以暂存结算单号{claim_id}办理撤销",
    "withdrawn": "暂存结算{claim_id}已撤销，未进行医保结算",
    "failed": "暂存结算{claim_id}补结算未成功：请以暂存结算单号{claim_id}办理撤销（退还参保人已付现金）"
    "后重新结算，或联系医保经办机构处理",
}


# Why replay files a claim failed whose message the ledger had settled already (before the claim,
# or beside it through another process): the settlement stands, the claim's cash is owed back.
ANSWERED_IN_LEDGER = (
    "报文ID{msgid}已由医保结算数据库办结（暂存之前，或暂存期间经其他网关进程/节点办结），"
    "本笔暂存不再补结算；请按数据库中的原结算核对参保人已付现金并办理退还"
)
_ANSWERED_MARK = "本笔暂存不再补结算"
# The same for a journaled call (a registration, visit information, fees): no cash was taken.
CALL_IN_LEDGER = (
    "报文ID{msgid}已由医保结算数据库办结（暂存之前，或暂存期间经其他网关进程/节点办结），"
    "本笔暂存业务不再补办，以数据库中的原业务为准"
)


def unsettled_words(status: str, claim_id: str, reason: str | None = None) -> str:
    """What the counter is told of a claim not settled; `reason`, a failed claim's. Found from
    outside: a claim failed because its message had been settled in the ledger was answered
    "withdraw it and settle again", which would charge the account a second time."""
    if status == "failed" and reason and _ANSWERED_MARK in reason:
        return (
            f"暂存结算{claim_id}未补结算：同一报文已由医保结算数据库办结，原结算保留，不要重新结算；"
            f"请以暂存结算单号{claim_id}办理撤销，退还参保人已付现金"
        )
    return _UNSETTLED.get(status, _UNSETTLED["pending"]).format(claim_id=claim_id)


def visit_of_claim(mdtrt_id: str, claim_id: str) -> str:
    """The 就诊ID a claim's answer gave: its visit's, or for a pharmacy purchase (whose visit
    is made at replay, its row's mdtrt_id empty) the claim's own number."""
    return mdtrt_id or claim_id


# `visit_of_claim` over a row of the table.
_VISIT_OF_CLAIM = "coalesce(nullif(mdtrt_id, ''), claim_id)"

# A claim `d` with its visit `e` where the ledger holds one (its provisional id applied or not),
# and the days a bill of the claim's may be dated: the claim's own, the day it arrived, its
# visit's. The agency's look for a bill a withdrawn claim refunded (manual_claims.same_bill) and
# the checker's finding of one reimbursed anyway match on the same days.
CLAIM_WITH_VISIT = (
    "deferred d LEFT JOIN deferred_ids i ON i.provisional_id = d.mdtrt_id"
    " LEFT JOIN encounters e ON e.mdtrt_id = coalesce(i.mdtrt_id, nullif(d.mdtrt_id, ''))"
)
CLAIM_DAYS = "(d.service_date, d.received_at::date, e.begntime::date)"
# A claim whose cash the counter refunded in whole: withdrawn while it waited, or cancelled once
# replay had settled it (the cancellation of a replayed claim refunds the whole bill in cash and
# cancels the reimbursement: `cancellation.Cancelled.at_counter`).
CASH_REFUNDED = (
    "(d.status = 'withdrawn' OR d.status = 'settled' AND EXISTS (SELECT 1 FROM settlements r"
    " WHERE r.setl_id = d.setl_id AND r.status = 'cancelled'))"
)
# The transaction that settles a manual claim of `kind` (a visit's, a stay's), which a withdrawn
# claim of the same bill must have been.
CLAIM_INFNO = {"outpatient": "2207", "inpatient": "2304"}


async def claim_standing(conn: asyncpg.Connection, claim_id: str) -> tuple[str, str | None] | None:
    """A claim's status and, once settled, its settlement's id; None where this database holds
    no claim of that number."""
    row = await conn.fetchrow(
        "SELECT status, setl_id FROM deferred WHERE claim_id = $1 AND kind = 'claim'", claim_id
    )
    return None if row is None else (row["status"], row["setl_id"])


async def withdraw(
    conn: asyncpg.Connection,
    claim_id: str,
    fixmedins_code: str,
    psn_no: str,
    msgid: str,
    mdtrt_id: str = "",
) -> asyncpg.Record | None:
    """Withdraw a claim not settled (pending, or failed at replay: the counter refunds the cash
    the patient paid under it, and the lines it held are free to settle); returns the row as it
    was, or None when there is no such claim here (or `mdtrt_id`, when given, is not the 就诊ID
    the claim was answered with)."""
    return await conn.fetchrow(
        "UPDATE deferred SET status = 'withdrawn', withdrawn_msgid = $4"
        " WHERE claim_id = $1 AND fixmedins_code = $2 AND psn_no = $3"
        " AND status IN ('pending', 'failed')"
        f" AND ($5 = '' OR $5 = {_VISIT_OF_CLAIM})"
        " RETURNING *",
        claim_id,
        fixmedins_code,
        psn_no,
        msgid,
        mdtrt_id,
    )


async def withdrawn_by(conn: asyncpg.Connection, fixmedins_code: str, msgid: str) -> str | None:
    """The claim the institution's message `msgid` withdrew, if it withdrew one (a rare look-up,
    on a refusal's path: no index)."""
    found = await conn.fetchval(
        "SELECT claim_id FROM deferred WHERE fixmedins_code = $1 AND withdrawn_msgid = $2",
        fixmedins_code,
        msgid,
    )
    return None if found is None else str(found)


async def claim_row(
    conn: asyncpg.Connection, claim_id: str, fixmedins_code: str
) -> asyncpg.Record | None:
    """Reads the institution's deferred claim, whatever its status."""
    return await conn.fetchrow(
        "SELECT * FROM deferred WHERE claim_id = $1 AND fixmedins_code = $2",
        claim_id,
        fixmedins_code,
    )


async def registration_of(conn: asyncpg.Connection, provisional_id: str) -> bytes | None:
    """The kept request that opened a provisional visit id (its 2201/2401), applied or not."""
    body = await conn.fetchval(
        "SELECT body FROM deferred WHERE kind = 'call' AND provisional_id = $1", provisional_id
    )
    return None if body is None else bytes(body)


async def claim_of_message(
    conn: asyncpg.Connection, fixmedins_code: str, msgid: str
) -> asyncpg.Record | None:
    """The deferred claim a message was answered with (claim_id, status, setl_id), or None."""
    return await conn.fetchrow(
        "SELECT claim_id, status, setl_id FROM deferred"
        " WHERE kind = 'claim' AND fixmedins_code = $1 AND msgid = $2",
        fixmedins_code,
        msgid,
    )


async def replayed_claim(conn: asyncpg.Connection, setl_id: str) -> asyncpg.Record | None:
    """The deferred claim a settlement was made from by replay (claim_id, reimbursement_fen,
    and `counter_visit`, the 就诊ID its answer gave: `visit_of_claim`), or None: at the counter
    its patient paid the whole bill in cash under the claim."""
    return await conn.fetchrow(
        "SELECT claim_id, coalesce(reimbursement_fen, 0) AS reimbursement_fen,"
        f" {_VISIT_OF_CLAIM} AS counter_visit FROM deferred WHERE kind = 'claim' AND setl_id = $1",
        setl_id,
    )


# The day-end reconciliation's clr_type of a claim, by the transaction it was answered for.
_CLR_TYPE_INFNOS = {"41": ["2102"], "11": ["2207"], "21": ["2304"]}


async def claims_answered(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    begndate: dt.date,
    enddate: dt.date,
    *,
    insutype: str = "",
    clr_type: str = "",
    setl_optins: str = "",
) -> int:
    """The deferred claims (DF…) the institution was answered with on those days and did not
    withdraw, nor cancel once replayed (the cash refunded: found from outside, counted all the
    same): settlements to its counter, none to the centre's reconciliation. Of one insutype,
    clr_type and clearing region where named, as a 3201 asks (found from outside: every
    insutype's 3201 was told the institution's whole count). A claim whose person the database
    does not hold is counted whatever its insutype and region."""
    count = await conn.fetchval(
        "SELECT count(*) FROM deferred d LEFT JOIN persons p ON p.psn_no = d.psn_no"
        " WHERE d.kind = 'claim' AND d.fixmedins_code = $1"
        " AND d.status <> 'withdrawn' AND d.received_at >= $2 AND d.received_at < $3"
        " AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.setl_id = d.setl_id"
        " AND s.status = 'cancelled')"
        " AND ($4::text[] IS NULL OR left(d.infno, 4) = ANY($4::text[]))"
        " AND ($5 = '' OR p.psn_no IS NULL OR p.insutype = $5)"
        " AND ($6 = '' OR p.psn_no IS NULL OR p.insuplc_admdvs = $6)",
        fixmedins_code,
        dt.datetime.combine(begndate, dt.time()),
        dt.datetime.combine(enddate + dt.timedelta(days=1), dt.time()),
        _CLR_TYPE_INFNOS.get(clr_type, []) if clr_type else None,
        insutype,
        setl_optins,
    )
    return int(count or 0)


async def claim_named(
    conn: asyncpg.Connection, fixmedins_code: str, claim_id: str, mdtrt_id: str
) -> asyncpg.Record | None:
    """Reads the institution's latest deferred claim by its number (the setl_id the counter
    was given) or, with none given, by the 就诊ID its answer gave (`visit_of_claim`: a
    pharmacy claim's is its own number; found from outside, a 5203 by it answered "not
    found"): claim_id, status, setl_id, fail_reason."""
    return await conn.fetchrow(
        "SELECT claim_id, status, setl_id, fail_reason FROM deferred WHERE kind = 'claim'"
        " AND fixmedins_code = $1 AND (claim_id = $2"
        f" OR ($2 = '' AND {_VISIT_OF_CLAIM} = $3))"
        " ORDER BY seq DESC LIMIT 1",
        fixmedins_code,
        claim_id,
        mdtrt_id,
    )


async def date_by_visits(conn: asyncpg.Connection) -> int:
    """Dates each pending claim of a visit (2207, 2304) by its visit's begntime, as a claim
    taken with the ledger up is dated; returns how many were dated again. A claim journaled with
    the ledger away, or filed on a provisional visit, could only be dated by the day it was
    received: found from outside, replay (service-date order) then settled a person's later
    visit before an earlier one, the deductible taken by the wrong one (62 claims of 21
    persons, 43.94 overpaid). Run once the visits are in the ledger (their calls applied)."""
    status = await conn.execute(
        "UPDATE deferred d SET service_date = e.begntime::date FROM encounters e"
        " WHERE d.kind = 'claim' AND d.status = 'pending' AND d.mdtrt_id <> ''"
        " AND e.mdtrt_id = coalesce((SELECT i.mdtrt_id FROM deferred_ids i"
        " WHERE i.provisional_id = d.mdtrt_id), d.mdtrt_id)"
        " AND e.kind <> 'pharmacy' AND d.service_date <> e.begntime::date"
    )
    return int(status.rsplit(" ", 1)[-1])


async def pending_claims(conn: asyncpg.Connection) -> int:
    """Counts the claims still waiting for replay."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM deferred WHERE kind = 'claim' AND status = 'pending'"
        )
    )


async def failed_claims(conn: asyncpg.Connection) -> int:
    """Counts the claims replay or the drain filed failed and nobody withdrew yet: each a
    patient who paid in cash and is owed either a settlement or the cash back."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM deferred WHERE kind = 'claim' AND status = 'failed'"
        )
    )


async def holding_claims(conn: asyncpg.Connection) -> bool:
    """Whether any claim holds lines (pending, or failed at replay and not withdrawn), or an
    old system's settlement made under route_legacy does."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM deferred WHERE kind = 'claim'"
            " AND status IN ('pending', 'failed'))"
            " OR EXISTS (SELECT 1 FROM legacy_settlements WHERE cancelled_at IS NULL)"
        )
    )


async def unfixed_claims(conn: asyncpg.Connection, infnos: list[str]) -> list[asyncpg.Record]:
    """Pending claims of these transactions (those settling a visit's lines) that do not name
    their lines yet, in the order they were received (journaled claims, and those taken while
    the visit's own calls waited to be applied)."""
    return list(
        await conn.fetch(
            "SELECT seq, claim_id, fixmedins_code, body, received_at FROM deferred"
            " WHERE kind = 'claim'"
            " AND status = 'pending' AND lines IS NULL AND infno = ANY($1::text[])"
            " ORDER BY received_at, seq",
            infnos,
        )
    )


async def failed_calls(
    conn: asyncpg.Connection, fixmedins_code: str, before: tuple[dt.datetime, int]
) -> list[asyncpg.Record]:
    """The institution's calls received before `before` (received_at, seq) that failed when
    applied, in the order received: few, an outage's refusals."""
    return list(
        await conn.fetch(
            "SELECT infno, msgid, fail_reason, provisional_id, body FROM deferred"
            " WHERE kind = 'call' AND status = 'failed' AND fixmedins_code = $1"
            " AND (received_at, seq) < ($2, $3) ORDER BY received_at, seq",
            fixmedins_code,
            before[0],
            before[1],
        )
    )


async def failed_registration(
    conn: asyncpg.Connection, provisional_ids: list[str]
) -> asyncpg.Record | None:
    """The call that opened one of these provisional visit ids, where it failed when applied
    (the visit will never be in the ledger). An id is the gateway's, made of its institution's
    code and msgid: no other institution's call opens it."""
    return await conn.fetchrow(
        "SELECT infno, msgid, fail_reason FROM deferred WHERE kind = 'call' AND status = 'failed'"
        " AND provisional_id = ANY($1::text[]) ORDER BY received_at, seq LIMIT 1",
        provisional_ids,
    )


async def fix_lines(conn: asyncpg.Connection, seq: int, lines: list[str]) -> None:
    """Writes the lines a claim of a whole visit covers, once (never over lines already named)."""
    await conn.execute(
        "UPDATE deferred SET lines = $2 WHERE seq = $1 AND lines IS NULL", seq, lines
    )


async def institutions_with_calls(conn: asyncpg.Connection) -> list[str]:
    """The institutions whose encounter calls wait to be applied."""
    rows = await conn.fetch(
        "SELECT DISTINCT fixmedins_code FROM deferred WHERE status = 'pending' AND kind = 'call'"
    )
    return [r["fixmedins_code"] for r in rows]


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


async def calls_on_visit(
    conn: asyncpg.Connection, fixmedins_code: str, mdtrt_id: str
) -> list[bytes]:
    """The stored requests of the institution's calls naming this visit that wait to be
    applied, in the order replay applies them (received, then taken): a provisional visit's
    lines are in them until then."""
    rows = await conn.fetch(
        "SELECT body FROM deferred WHERE kind = 'call' AND status = 'pending'"
        " AND fixmedins_code = $1 AND mdtrt_id = $2 ORDER BY received_at, seq",
        fixmedins_code,
        mdtrt_id,
    )
    return [bytes(r["body"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Held:
    """Lines of a visit a claim covers (pending, or failed at replay): a charge batch, or all of
    them (fees.ALL)."""

    claim_id: str
    infno: str
    lines: str
    failed: bool = False  # replay could not settle it: the counter may withdraw it
    elsewhere: bool = False  # the old system's settlement (route_legacy), not a claim
    received_at: dt.datetime | None = None  # when the gateway took the claim (None: not known)


@dataclass(frozen=True, slots=True)
class PendingClaim:
    """A claim that holds its lines, on the visit the ledger knows it by: waiting for replay, or
    failed at replay (the patient paid its lines in cash; found from outside: once it failed
    they were settled again in real time, the cash never refunded, the claim still listed)."""

    claim_id: str
    fixmedins_code: str
    mdtrt_id: str  # a provisional id already resolved to its visit
    infno: str
    body: bytes
    failed: bool = False
    # The old system's settlement of these lines under route_legacy (claim_id its setl_id):
    # its lines as recorded, no body.
    elsewhere_lines: str | None = None
    received_at: dt.datetime | None = None  # when the gateway took the claim


async def pending_on_visits(conn: asyncpg.Connection, mdtrt_ids: list[str]) -> list[PendingClaim]:
    """The claims holding lines of these visits (pending, or failed at replay and not withdrawn),
    including those filed under a provisional id that became one of them, and the old system's
    settlements of them in force (gateway.ledger.legacy_settlements), in the same round trip.

    Every settlement of a visit asks this while any claim holds lines, so it goes by the
    visits' ids (migration 033): found measuring a long outage's aftermath, it read every
    claim pending or failed for each settlement (1.5 ms at 2,500 claims, growing with the
    backlog for as long as replay took)."""
    rows = await conn.fetch(
        "SELECT d.claim_id, d.fixmedins_code, d.mdtrt_id AS visit,"
        " d.infno, d.body, d.status, NULL::text AS lines, d.received_at FROM deferred d"
        " WHERE d.kind = 'claim' AND d.status IN ('pending', 'failed') AND d.mdtrt_id <> ''"
        " AND d.mdtrt_id = ANY($1::text[])"
        " AND NOT EXISTS (SELECT 1 FROM deferred_ids i WHERE i.provisional_id = d.mdtrt_id)"
        # Filed under a provisional id that became one of these visits: the ids first (a
        # join left to the planner walked every claim while deferred_ids looked empty to it).
        " UNION ALL SELECT d.claim_id, d.fixmedins_code,"
        " (SELECT i.mdtrt_id FROM deferred_ids i WHERE i.provisional_id = d.mdtrt_id),"
        " d.infno, d.body, d.status, NULL, d.received_at FROM deferred d"
        " WHERE d.kind = 'claim' AND d.status IN ('pending', 'failed')"
        " AND d.mdtrt_id = ANY(ARRAY(SELECT i.provisional_id FROM deferred_ids i"
        " WHERE i.mdtrt_id = ANY($1::text[])))"
        " UNION ALL SELECT l.setl_id, l.fixmedins_code, l.mdtrt_id, l.infno, NULL, 'elsewhere',"
        " l.lines, NULL FROM legacy_settlements l"
        " WHERE l.cancelled_at IS NULL AND l.mdtrt_id = ANY($1::text[])",
        mdtrt_ids,
    )
    return [
        PendingClaim(
            r["claim_id"],
            r["fixmedins_code"],
            r["visit"],
            r["infno"],
            b"" if r["body"] is None else bytes(r["body"]),
            failed=r["status"] == "failed",
            elsewhere_lines=r["lines"],
            received_at=r["received_at"],
        )
        for r in rows
    ]


async def visit_of(conn: asyncpg.Connection, mdtrt_id: str) -> str:
    """The visit a provisional id became, or the id itself (not yet applied, or not provisional)."""
    real = await conn.fetchval(
        "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1", mdtrt_id
    )
    return mdtrt_id if real is None else str(real)


async def fail_answered(
    conn: asyncpg.Connection, fixmedins_code: str, msgid: str, reason: str
) -> None:
    """Marks failed, with its reason, the drained entry whose msgid the ledger had answered."""
    await conn.execute(
        "UPDATE deferred SET status = 'failed', fail_reason = $3, replayed_at = now()"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        fixmedins_code,
        msgid,
        reason,
    )


async def applied_as_answered(conn: asyncpg.Connection, fixmedins_code: str, msgid: str) -> None:
    """Marks applied the drained call whose msgid the ledger had answered with the same body:
    the ledger's answer is the call's."""
    await conn.execute(
        "UPDATE deferred SET status = 'applied', replayed_at = now()"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        fixmedins_code,
        msgid,
    )


async def provisional_ids(conn: asyncpg.Connection, body: bytes) -> dict[str, str]:
    """The provisional ids `body` names that are applied, each with the visit it became.

    Only those it names: found measuring a long outage's replay, reading every id applied so
    far for each claim (and replacing each in its body) cost each claim in proportion to the
    outage's visits."""
    named = provisional_ids_in(body)
    if not named:
        return {}
    rows = await conn.fetch(
        "SELECT provisional_id, mdtrt_id FROM deferred_ids WHERE provisional_id = ANY($1::text[])",
        named,
    )
    return {r["provisional_id"]: r["mdtrt_id"] for r in rows}


def provisional_ids_in(body: bytes) -> list[str]:
    """Every text of a provisional id's length that starts with its prefix in `body` (each id
    the body holds is one of them, wherever it stands)."""
    prefix = PROVISIONAL_PREFIX.encode()
    found: set[str] = set()
    at = body.find(prefix)
    while at >= 0:
        found.add(body[at : at + PROVISIONAL_ID_LENGTH].decode("ascii", "replace"))
        at = body.find(prefix, at + 1)
    return sorted(found)


async def record_provisional(conn: asyncpg.Connection, provisional_id: str, mdtrt_id: str) -> None:
    """Writes the visit a provisional id became once its call is applied."""
    await conn.execute("INSERT INTO deferred_ids VALUES ($1, $2)", provisional_id, mdtrt_id)


@dataclass(frozen=True, slots=True)
class Pending:
    """A pending item as replay takes it."""

    seq: int
    kind: str  # claim | call
    fixmedins_code: str
    claim_id: str | None
    provisional_id: str | None
    mdtrt_id: str
    body: bytes
    lines: list[str] | None  # the feedetl_sn a claim covers, once fixed
    received_at: dt.datetime
    medfee_sumamt: int

    @property
    def key(self) -> tuple[dt.datetime, int]:
        """Its place in the order the gateways received their requests."""
        return (self.received_at, self.seq)


@dataclass(frozen=True, slots=True)
class Lane:
    """One of `of` lanes that divide the persons between them (by a hash of psn_no): every
    item of one person is in one lane, so a lane taking its items in order takes each person's
    in order, whatever the other lanes do meanwhile."""

    number: int
    of: int


ONE_LANE = Lane(0, 1)


async def next_pending(
    conn: asyncpg.Connection,
    kind: str,
    order: str,
    held: Sequence[str] = (),
    waiting: Sequence[int] = (),
    lane: Lane = ONE_LANE,
) -> Pending | None:
    """Reads and locks the next pending item of a kind in `order`, skipping those locked
    elsewhere, those of the institutions `held` (the plan still defers their calls) and the
    items `waiting` (by seq) for a visit not applied yet; of the persons of `lane` only."""
    r = await conn.fetchrow(
        f"SELECT * FROM deferred WHERE kind = $1 AND status = 'pending'"
        f" AND fixmedins_code <> ALL($2::text[]) AND seq <> ALL($3::bigint[])"
        f" AND (hashtext(psn_no) & 2147483647) % $4 = $5"
        f" ORDER BY {order} LIMIT 1 FOR UPDATE SKIP LOCKED",
        kind,
        list(held),
        list(waiting),
        lane.of,
        lane.number,
    )
    if r is None:
        return None
    return Pending(
        seq=int(r["seq"]),
        kind=r["kind"],
        fixmedins_code=r["fixmedins_code"],
        claim_id=r["claim_id"],
        provisional_id=r["provisional_id"],
        mdtrt_id=r["mdtrt_id"],
        body=bytes(r["body"]),
        lines=None if r["lines"] is None else list(r["lines"]),
        received_at=r["received_at"],
        medfee_sumamt=int(r["medfee_sumamt"]),
    )


async def fail(conn: asyncpg.Connection, seq: int, reason: str) -> None:
    """Marks an item failed at replay, with the reason."""
    await conn.execute(
        "UPDATE deferred SET status = 'failed', fail_reason = $2, replayed_at = now() WHERE seq = $1",
        seq,
        reason,
    )


async def reopen(conn: asyncpg.Connection, claim_id: str) -> asyncpg.Record | None:
    """A claim replay could not settle, pending again (the caller audits it): its row as it was
    (fixmedins_code, fail_reason), or None when no claim of that number is failed here."""
    return await conn.fetchrow(
        "WITH was AS (SELECT seq, fixmedins_code, fail_reason FROM deferred"
        " WHERE claim_id = $1 AND kind = 'claim' AND status = 'failed' FOR UPDATE)"
        " UPDATE deferred d SET status = 'pending', fail_reason = NULL, replayed_at = NULL"
        " FROM was WHERE d.seq = was.seq RETURNING was.fixmedins_code, was.fail_reason",
        claim_id,
    )


async def mark_applied(conn: asyncpg.Connection, seq: int) -> None:
    """Marks a journaled call applied."""
    await conn.execute(
        "UPDATE deferred SET status = 'applied', replayed_at = now() WHERE seq = $1",
        seq,
    )


async def mark_settled(
    conn: asyncpg.Connection, seq: int, setl_id: str, setlinfo: dict[str, Any], owed: int
) -> None:
    """Marks a claim settled: its settlement, the setlinfo answered, the reimbursement owed."""
    await conn.execute(
        "UPDATE deferred SET status = 'settled', setl_id = $2, setlinfo = $3,"
        " reimbursement_fen = $4, replayed_at = now() WHERE seq = $1",
        seq,
        setl_id,
        setlinfo,
        owed,
    )


async def claims(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Reads every claim, for `deferred list --json` and the reimbursement export."""
    # With its settlement's status: a replayed claim whose settlement was cancelled since is
    # still "settled" by replay, but nothing is owed on it (found from outside: listed with its
    # reimbursement after the cancellation had told the counter it was withdrawn).
    # With the visit the claim is of, once in the ledger: a claim taken with the ledger away, or
    # on a provisional visit, and withdrawn before replay, kept the day it arrived and the
    # provisional id (found from outside: listed on the day of the outage, not of the visit).
    rows = await conn.fetch(
        "SELECT d.*, s.status AS settlement_status, e.mdtrt_id AS visit_id,"
        " e.begntime::date AS visit_day FROM deferred d"
        " LEFT JOIN settlements s USING (setl_id)"
        " LEFT JOIN deferred_ids i ON i.provisional_id = d.mdtrt_id"
        " LEFT JOIN encounters e ON e.mdtrt_id = coalesce(i.mdtrt_id, d.mdtrt_id)"
        " AND e.kind <> 'pharmacy'"
        " WHERE d.kind = 'claim' ORDER BY coalesce(e.begntime::date, d.service_date), d.seq"
    )
    return [
        {
            "claim_id": r["claim_id"],
            "fixmedins_code": r["fixmedins_code"],
            "msgid": r["msgid"],
            "infno": r["infno"],
            # As the counter was answered (a pharmacy claim's own number: found from outside,
            # listed empty as the docs say it is not).
            "mdtrt_id": visit_of_claim(r["mdtrt_id"], r["claim_id"]),
            "visit_id": r["visit_id"],
            "psn_no": r["psn_no"],
            "service_date": (r["visit_day"] or r["service_date"]).isoformat(),
            "medfee_sumamt": r["medfee_sumamt"],
            "lines": r["lines"],
            "received_at": r["received_at"].isoformat(sep=" "),
            "source": r["source"],
            "status": r["status"],
            "setl_id": r["setl_id"],
            "setlinfo": r["setlinfo"],
            "settlement_status": r["settlement_status"],
            "reimbursement_fen": r["reimbursement_fen"],
            "owed_fen": r["reimbursement_fen"] if r["settlement_status"] == "settled" else None,
            "fail_reason": r["fail_reason"],
        }
        for r in rows
    ]


async def calls(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Reads every visit call kept under the plan or journaled, for `deferred list --calls`: the
    provisional id the counter was given, the real one it became, and why one failed (found from
    outside: a registration that failed when applied was listed nowhere a clerk looks)."""
    rows = await conn.fetch(
        "SELECT d.*, i.mdtrt_id AS applied_as FROM deferred d"
        " LEFT JOIN deferred_ids i ON i.provisional_id = d.provisional_id"
        " WHERE d.kind = 'call' ORDER BY d.received_at, d.seq"
    )
    return [
        {
            "fixmedins_code": r["fixmedins_code"],
            "msgid": r["msgid"],
            "infno": r["infno"],
            "psn_no": r["psn_no"],
            "mdtrt_id": r["mdtrt_id"],
            "provisional_id": r["provisional_id"],
            "applied_as": r["applied_as"],
            "received_at": r["received_at"].isoformat(sep=" "),
            "source": r["source"],
            "status": r["status"],
            "fail_reason": r["fail_reason"],
        }
        for r in rows
    ]


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Reads deferred items counted by kind and status, and the reimbursements recorded of those
    whose settlement is in force (fen)."""
    rows = await conn.fetch(
        # What the agency owes patients: the reimbursements of claims whose settlement is in
        # force (a cancelled one owes nothing; its owed line is withdrawn).
        "SELECT d.kind, d.status, count(*) AS n, coalesce(sum(d.reimbursement_fen)"
        "  FILTER (WHERE s.status = 'settled'), 0) AS r"
        " FROM deferred d LEFT JOIN settlements s USING (setl_id) GROUP BY d.kind, d.status"
    )
    out = {
        "claims_pending": 0,
        "claims_settled": 0,
        "claims_failed": 0,
        "claims_withdrawn": 0,
        "calls_pending": 0,
        "calls_failed": 0,
        "reimbursement_fen": 0,
    }
    for r in rows:
        key = f"{r['kind']}s_{r['status']}"
        if key in out:
            out[key] = int(r["n"])
        out["reimbursement_fen"] += int(r["r"])
    return out


async def try_lock_replay(conn: asyncpg.Connection) -> bool:
    """Takes the session-level replay lock; False when another replay holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK))


async def unlock_replay(conn: asyncpg.Connection) -> None:
    """Releases the session-level replay lock."""
    await conn.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK)


async def replay_running(conn: asyncpg.Connection) -> bool:
    """Whether some session holds the replay lock."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
            " AND ((classid::bigint << 32) | objid::bigint) = $1 AND granted)",
            REPLAY_LOCK,
        )
    )
