"""Manual claims (零星报销) in the ledger: the claim, its invoices and its fee lines."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from gateway.ledger import deferred
from gateway.protocol.errors import NotFound


class Claim(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A manual claim as registered, with where it stands."""

    claim_no: str
    psn_no: str
    fixmedins_code: str
    kind: str  # outpatient | inpatient
    med_type: str
    begntime: dt.datetime
    endtime: dt.datetime | None
    dise_codg: str
    acct_used: bool
    invoice_nos: list[str]
    status: str
    registered_by: str
    entered_by: str | None = None
    reviewed_by: str | None = None
    settled_by: str | None = None
    batch_reviewed_by: str | None = None
    closed_reason: str | None = None
    mdtrt_id: str | None = None
    setl_id: str | None = None
    medfee_sumamt: int | None = None
    reimbursement_fen: int | None = None


class Line(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One fee line of a manual claim, as entered from the bill."""

    feedetl_sn: str
    medins_list_codg: str
    med_list_codg: str | None
    pric_micro: int
    cnt: int
    amount_fen: int
    fee_ocur_time: dt.datetime
    hosp_appr_flag: str | None


_COLUMNS = ", ".join(Claim.__struct_fields__)
_LINE_COLUMNS = ", ".join(Line.__struct_fields__)


def _claim_of(r: Any) -> Claim:
    return Claim(**{f: r[f] for f in Claim.__struct_fields__})


async def new_claim_no(conn: asyncpg.Connection, on: dt.datetime) -> str:
    """A fresh 受理号: LX + yyyyMMdd + an 8-digit serial."""
    serial = int(await conn.fetchval("SELECT nextval('manual_claim_seq')"))
    return f"LX{on:%Y%m%d}{serial:08d}"


async def insert(conn: asyncpg.Connection, c: Claim) -> None:
    """Writes a registered claim."""
    await conn.execute(
        "INSERT INTO manual_claims (claim_no, psn_no, fixmedins_code, kind, med_type, begntime,"
        " endtime, dise_codg, acct_used, invoice_nos, status, registered_by)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
        c.claim_no,
        c.psn_no,
        c.fixmedins_code,
        c.kind,
        c.med_type,
        c.begntime,
        c.endtime,
        c.dise_codg,
        c.acct_used,
        c.invoice_nos,
        c.status,
        c.registered_by,
    )


async def invoice_holders(
    conn: asyncpg.Connection, fixmedins_code: str, invonos: Sequence[str]
) -> dict[str, str]:
    """Reads, locking them, the invoices already held by a live claim: invono -> claim_no."""
    rows = await conn.fetch(
        "SELECT invono, claim_no FROM manual_claim_invoices"
        " WHERE fixmedins_code = $1 AND invono = ANY($2::text[]) FOR UPDATE",
        fixmedins_code,
        list(invonos),
    )
    return {r["invono"]: r["claim_no"] for r in rows}


async def hold_invoices(
    conn: asyncpg.Connection, fixmedins_code: str, invonos: Sequence[str], claim_no: str
) -> bool:
    """Writes the claim's hold on its invoices; False when another claim took one meanwhile."""
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO manual_claim_invoices (fixmedins_code, invono, claim_no)"
                " VALUES ($1, $2, $3)",
                [(fixmedins_code, i, claim_no) for i in invonos],
            )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def holds_invoice(
    conn: asyncpg.Connection, fixmedins_code: str, invono: str, claim_no: str
) -> bool:
    """Whether the claim still holds the invoice here (it lets go when refused or withdrawn)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM manual_claim_invoices WHERE fixmedins_code = $1"
            " AND invono = $2 AND claim_no = $3)",
            fixmedins_code,
            invono,
            claim_no,
        )
    )


async def register_invoice(
    main: asyncpg.Connection, fixmedins_code: str, invono: str, claim_no: str
) -> str:
    """The split ledger's registry row for the invoice, written for the claim when there is none:
    returns the claim the row names (this one, or the one already holding it). The row stays
    locked until the caller's transaction ends: a second registration of the invoice waits."""
    holder: str = await main.fetchval(
        "INSERT INTO invoice_registry (fixmedins_code, invono, claim_no) VALUES ($1, $2, $3)"
        # A no-op update: the row is locked and RETURNING names the claim already holding it.
        " ON CONFLICT (fixmedins_code, invono) DO UPDATE SET claim_no = invoice_registry.claim_no"
        " RETURNING claim_no",
        fixmedins_code,
        invono,
        claim_no,
    )
    return holder


async def take_over_invoice(
    main: asyncpg.Connection, fixmedins_code: str, invono: str, claim_no: str
) -> None:
    """The registry row given to the claim (the one it named no longer holds the invoice)."""
    await main.execute(
        "UPDATE invoice_registry SET claim_no = $3 WHERE fixmedins_code = $1 AND invono = $2",
        fixmedins_code,
        invono,
        claim_no,
    )


def settlement_msgid(claim_no: str) -> str:
    """The message id a claim's visit and settlement record: one per claim."""
    return f"{claim_no}S"


async def settled_under(conn: asyncpg.Connection, fixmedins_code: str, msgid: str) -> str | None:
    """The institution's claim whose settlement records this message id, or None."""
    if not msgid.endswith("S"):
        return None
    found: str | None = await conn.fetchval(
        "SELECT claim_no FROM manual_claims WHERE claim_no = $1 AND fixmedins_code = $2",
        msgid[:-1],
        fixmedins_code,
    )
    return found


async def exists(conn: asyncpg.Connection, claim_no: str) -> bool:
    """Whether this database holds the claim."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM manual_claims WHERE claim_no = $1)", claim_no
        )
    )


async def release_invoices(conn: asyncpg.Connection, claim_no: str) -> None:
    """Deletes the claim's hold on its invoices (refused or withdrawn: the bill may be claimed
    again)."""
    await conn.execute("DELETE FROM manual_claim_invoices WHERE claim_no = $1", claim_no)


async def get(conn: asyncpg.Connection, claim_no: str, *, lock: bool = False) -> Claim:
    """Reads a claim (locked for the step that changes it); unknown: NotFound."""
    r = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM manual_claims WHERE claim_no = $1"
        + (" FOR UPDATE" if lock else ""),
        claim_no,
    )
    if r is None:
        raise NotFound(f"零星报销受理号{claim_no}不存在")
    return _claim_of(r)


async def listing(conn: asyncpg.Connection, status: str | None = None) -> list[Claim]:
    """Reads the claims, oldest first; of one status when given."""
    if status is None:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM manual_claims ORDER BY claim_no")
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM manual_claims WHERE status = $1 ORDER BY claim_no", status
        )
    return [_claim_of(r) for r in rows]


async def update(conn: asyncpg.Connection, claim_no: str, **fields: Any) -> None:
    """Writes some columns of a claim (the caller holds its lock)."""
    names = list(fields)
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    await conn.execute(
        f"UPDATE manual_claims SET {sets} WHERE claim_no = $1",
        claim_no,
        *(fields[n] for n in names),
    )


async def replace_lines(conn: asyncpg.Connection, claim_no: str, lines: Sequence[Line]) -> None:
    """Writes the claim's fee lines in place of those entered before (明细录入 again)."""
    await conn.execute("DELETE FROM manual_claim_lines WHERE claim_no = $1", claim_no)
    await conn.executemany(
        f"INSERT INTO manual_claim_lines (claim_no, {_LINE_COLUMNS})"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        [
            (
                claim_no,
                ln.feedetl_sn,
                ln.medins_list_codg,
                ln.med_list_codg,
                ln.pric_micro,
                ln.cnt,
                ln.amount_fen,
                ln.fee_ocur_time,
                ln.hosp_appr_flag,
            )
            for ln in lines
        ],
    )


async def lines(conn: asyncpg.Connection, claim_no: str) -> list[Line]:
    """Reads the claim's fee lines in feedetl_sn order."""
    rows = await conn.fetch(
        f"SELECT {_LINE_COLUMNS} FROM manual_claim_lines WHERE claim_no = $1 ORDER BY feedetl_sn",
        claim_no,
    )
    return [Line(**{f: r[f] for f in Line.__struct_fields__}) for r in rows]


async def payout_of(conn: asyncpg.Connection, claim_no: str) -> dict[str, Any] | None:
    """Reads where the claim's reimbursement stands: its owed line's state and the batch that
    holds or paid it (the latest item), if it is owed at all."""
    r = await conn.fetchrow(
        "SELECT o.status, i.batch_no, i.status AS item_status, i.bank_reason"
        " FROM owed_lines o LEFT JOIN LATERAL (SELECT batch_no, status, bank_reason"
        "   FROM payout_items WHERE owed_id = o.owed_id ORDER BY batch_no DESC LIMIT 1) i ON true"
        " WHERE o.source = 'manual' AND o.source_ref = $1",
        claim_no,
    )
    return None if r is None else dict(r)


async def reimbursed_on(
    conn: asyncpg.Connection, visits: Sequence[tuple[str, str, dt.date]]
) -> dict[tuple[str, str, dt.date], list[tuple[str, int]]]:
    """For each (psn_no, fixmedins_code, day), the manual claims whose settlement is in force
    for a bill of the person at the institution on that day: (claim_no, medfee_sumamt)."""
    if not visits:
        return {}
    rows = await conn.fetch(
        "SELECT c.claim_no, c.psn_no, c.fixmedins_code, s.service_date, s.medfee_sumamt"
        " FROM manual_claims c JOIN settlements s ON s.setl_id = c.setl_id"
        " WHERE c.setl_id IS NOT NULL AND s.status = 'settled'"
        " AND (c.psn_no, c.fixmedins_code, s.service_date) IN"
        " (SELECT * FROM unnest($1::text[], $2::text[], $3::date[]))",
        [v[0] for v in visits],
        [v[1] for v in visits],
        [v[2] for v in visits],
    )
    out: dict[tuple[str, str, dt.date], list[tuple[str, int]]] = {}
    for r in rows:
        key = (r["psn_no"], r["fixmedins_code"], r["service_date"])
        out.setdefault(key, []).append((r["claim_no"], int(r["medfee_sumamt"])))
    return out


async def stays_reimbursed(
    conn: asyncpg.Connection, stays: Sequence[tuple[str, str, dt.datetime, dt.datetime | None]]
) -> dict[tuple[str, str, dt.datetime], list[tuple[str, dt.datetime, dt.datetime]]]:
    """For each stay (psn_no, fixmedins_code, admitted, discharged or None), the inpatient
    manual claims in force of the person at the institution whose stay overlaps it:
    (claim_no, begntime, endtime)."""
    if not stays:
        return {}
    rows = await conn.fetch(
        "SELECT c.claim_no, c.psn_no, c.fixmedins_code, c.begntime, c.endtime, u.begn"
        " FROM unnest($1::text[], $2::text[], $3::timestamp[], $4::timestamp[])"
        " AS u(psn_no, fixmedins_code, begn, endn)"
        " JOIN manual_claims c ON c.psn_no = u.psn_no AND c.fixmedins_code = u.fixmedins_code"
        " JOIN settlements s ON s.setl_id = c.setl_id"
        " WHERE c.kind = 'inpatient' AND c.setl_id IS NOT NULL AND s.status = 'settled'"
        f" AND {_claim_overlaps_stay('c.begntime', 'c.endtime', 'u.begn', 'u.endn')}",
        [s[0] for s in stays],
        [s[1] for s in stays],
        [s[2] for s in stays],
        [s[3] for s in stays],
    )
    out: dict[tuple[str, str, dt.datetime], list[tuple[str, dt.datetime, dt.datetime]]] = {}
    for r in rows:
        key = (r["psn_no"], r["fixmedins_code"], r["begn"])
        out.setdefault(key, []).append((r["claim_no"], r["begntime"], r["endtime"]))
    return out


def _claim_overlaps_stay(claim_begn: str, claim_end: str, stay_begn: str, stay_end: str) -> str:
    """Whether a manual claim's stay and a hospital's stay (its end NULL while the patient is
    in) overlap, as SQL over the four expressions. By the moment, not the day: a patient
    discharged in the morning may be admitted again that afternoon, a stay of its own. A claim
    registered by dates alone (midnight) is known to the day only: it overlaps a stay that ends
    on a later day than it began, or begins on an earlier day than it ended (found from
    outside: a claim of 12-05 to 12-06 by dates refused the stay discharged on 12-05 at nine),
    and a stay admitted on its first day or discharged on its last (found from outside: a claim
    of 12-07 to 12-07 by dates reimbursed the stay admitted and discharged on 12-07 that the
    hospital had settled). The agency's check before reimbursing a stay and the counter's before
    settling one ask the same question from either side."""
    until = f"coalesce({stay_end}, 'infinity')"
    by_date = {t: f"{t} = date_trunc('day', {t})" for t in (claim_begn, claim_end)}
    return (
        f"((CASE WHEN {by_date[claim_begn]}"
        f" THEN {claim_begn}::date < {until}::date ELSE {claim_begn} < {until} END"
        f" AND CASE WHEN {by_date[claim_end]}"
        f" THEN {claim_end}::date > {stay_begn}::date ELSE {claim_end} > {stay_begn} END)"
        f" OR ({by_date[claim_begn]} AND {claim_begn}::date = {stay_begn}::date)"
        f" OR ({by_date[claim_end]} AND {claim_end}::date = {stay_end}::date))"
    )


async def stay_settled(
    conn: asyncpg.Connection,
    psn_no: str,
    fixmedins_code: str,
    begntime: dt.datetime,
    endtime: dt.datetime,
) -> tuple[str, str, dt.datetime, dt.datetime | None] | None:
    """A stay of the person at the institution overlapping a manual claim's (`begntime` to
    `endtime`) that the funds already pay or will: a settlement in force of it (the counter's
    2303/2304, a 主动报 claim's replay, another manual claim's), or a 主动报 2304 claim of it
    waiting to be replayed, or one whose cash the counter refunded (withdrawn, or its replayed
    settlement cancelled). (what: "settlement", "claim", "withdrawn" or "settled" as `same_bill`
    names them, its id, the stay's admission and discharge), or None."""
    row = await conn.fetchrow(
        "SELECT 'settlement' AS what, s.setl_id AS ref, e.begntime, e.endtime"
        " FROM encounters e JOIN settlements s ON s.mdtrt_id = e.mdtrt_id"
        " WHERE e.psn_no = $1 AND e.fixmedins_code = $2 AND e.kind = 'inpatient'"
        " AND e.status <> 'cancelled' AND s.status = 'settled'"
        f" AND {_claim_overlaps_stay('$3::timestamp', '$4::timestamp', 'e.begntime', 'e.endtime')}"
        " UNION ALL SELECT 'claim', d.claim_id, e.begntime, e.endtime"
        f" FROM {deferred.CLAIM_WITH_VISIT}"
        " WHERE d.kind = 'claim' AND d.status = 'pending' AND d.infno = '2304'"
        " AND d.psn_no = $1 AND d.fixmedins_code = $2 AND e.kind = 'inpatient'"
        f" AND {_claim_overlaps_stay('$3::timestamp', '$4::timestamp', 'e.begntime', 'e.endtime')}"
        # Its cash refunded at the counter, withdrawn or its replay cancelled: the stay is the
        # hospital's to settle again, not the agency's (found from outside: a claim of it with
        # one line less was reimbursed, past the exact-total check).
        " UNION ALL SELECT d.status, d.claim_id, e.begntime, e.endtime"
        f" FROM {deferred.CLAIM_WITH_VISIT}"
        f" WHERE d.kind = 'claim' AND d.infno = '2304' AND {deferred.CASH_REFUNDED}"
        " AND d.psn_no = $1 AND d.fixmedins_code = $2 AND e.kind = 'inpatient'"
        f" AND {_claim_overlaps_stay('$3::timestamp', '$4::timestamp', 'e.begntime', 'e.endtime')}"
        " LIMIT 1",
        psn_no,
        fixmedins_code,
        begntime,
        endtime,
    )
    if row is None:
        return None
    return row["what"], row["ref"], row["begntime"], row["endtime"]


async def same_bill(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    psn_no: str,
    day: dt.date,
    total_fen: int,
    infno: str,
) -> tuple[str, str] | None:
    """A bill of the person at the institution on the day, of the same total, that the funds
    already pay or will (a settlement in force, real-time, replayed or another claim's; or a
    主动报 claim still to be replayed), or whose cash the counter refunded by withdrawing its
    主动报 claim (found from outside, twice: reimbursed after that, the patient had the refund
    and the reimbursement, and the counter could not settle the bill again; `ledger check`
    names that state); or whose replayed settlement the counter cancelled, which refunds the
    whole bill in cash too (found from outside: reimbursed by hand after that, the same).
    A withdrawn claim's day is matched as the checker matches it: the
    claim's, the day it arrived, or its visit's; and its settling transaction is the claim's
    own (`infno`: 2207 or 2304; found from outside, a stay's claim was refused for a withdrawn
    outpatient claim of the same total that day). (its id, "settlement", "claim", "withdrawn"
    or "settled": a replayed claim whose settlement was cancelled), or None."""
    row = await conn.fetchrow(
        "SELECT setl_id AS ref, 'settlement' AS what FROM settlements"
        " WHERE psn_no = $2 AND fixmedins_code = $1 AND service_date = $3"
        " AND medfee_sumamt = $4 AND status = 'settled'"
        " UNION ALL SELECT claim_id, 'claim' FROM deferred WHERE kind = 'claim'"
        " AND status = 'pending' AND psn_no = $2 AND fixmedins_code = $1"
        " AND service_date = $3 AND medfee_sumamt = $4"
        f" UNION ALL SELECT d.claim_id, d.status FROM {deferred.CLAIM_WITH_VISIT}"
        f" WHERE d.kind = 'claim' AND {deferred.CASH_REFUNDED} AND d.psn_no = $2"
        " AND d.fixmedins_code = $1 AND d.medfee_sumamt = $4 AND d.infno = $5"
        f" AND $3 IN {deferred.CLAIM_DAYS} LIMIT 1",
        fixmedins_code,
        psn_no,
        day,
        total_fen,
        infno,
    )
    return None if row is None else (row["ref"], row["what"])
