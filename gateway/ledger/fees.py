"""Uploaded fee lines (费用明细) of a visit."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import asyncpg
import msgspec

from gateway.core.model import FeeLine
from gateway.ledger.keyed import per_key
from gateway.ledger.writes import Writes, insert_statement
from gateway.protocol.errors import Conflict

ALL = "0000"  # chrg_bchno / feedetl_sn "0000": every unsettled line of the visit


class StoredLine(FeeLine, frozen=True, gc=False, kw_only=True):
    """A fee line as uploaded, with where it belongs."""

    mdtrt_id: str
    chrg_bchno: str
    init_feedetl_sn: str
    psn_no: str
    fee_ocur_time: dt.datetime
    # 病种编码 of an outpatient line (2204), "" where none was sent: one per charge batch, the
    # visit's own (gateway.services.fee_uploads.one_disease).
    dise_codg: str = ""


def of_batch(lines: list[StoredLine], batch: str) -> list[StoredLine]:
    """The lines of one charge batch, or all of them for ALL (a whole visit's)."""
    return lines if batch == ALL else [ln for ln in lines if ln.chrg_bchno == batch]


INSERT = insert_statement(
    "fee_lines",
    [
        ("mdtrt_id", "text"),
        ("feedetl_sn", "text"),
        ("chrg_bchno", "text"),
        ("init_feedetl_sn", "text"),
        ("psn_no", "text"),
        ("medins_list_codg", "text"),
        ("med_list_codg", "text"),
        ("pric_micro", "int8"),
        ("cnt", "int8"),
        ("amount_fen", "int8"),
        ("fee_ocur_time", "timestamp"),
        ("hosp_appr_flag", "text"),
        ("uploaded_msgid", "text"),
        ("setl_id", "text"),
        ("dise_codg", "text"),
    ],
)
# One row per settlement, its lines as an array: an equality on the visit, which PostgreSQL
# plans as an index look-up however small the table was when the statement was prepared. (A
# row per line joined to `unnest` arrays was tried: prepared on a fresh ledger, its plan
# scanned the whole table for every batch, benchmarks/RESULTS.md.)
MARK_SETTLED = (
    "UPDATE fee_lines SET setl_id = $3 WHERE mdtrt_id = $1 AND feedetl_sn = ANY($2::text[])"
)


def rows(
    lines: Sequence[StoredLine], msgid: str, setl_id: str | None = None
) -> list[tuple[object, ...]]:
    """The INSERT's arguments for uploaded lines; a pharmacy's lines are settled as they are
    stored (`setl_id`), which spares the ledger a second write of every line."""
    return [
        (
            ln.mdtrt_id,
            ln.feedetl_sn,
            ln.chrg_bchno,
            ln.init_feedetl_sn,
            ln.psn_no,
            ln.medins_list_codg,
            ln.med_list_codg,
            ln.pric_micro,
            ln.cnt,
            ln.det_item_fee_sumamt,
            ln.fee_ocur_time,
            ln.hosp_appr_flag,
            msgid,
            setl_id,
            ln.dise_codg or None,
        )
        for ln in lines
    ]


ALREADY_UPLOADED = "费用明细流水号已上传，请勿重复上传（如需修改请先撤销）"
# PostgreSQL's words for the key a line repeats: "Key (mdtrt_id, feedetl_sn)=(<visit>, <sn>)
# already exists." (a visit id holds no comma, so the serial number is what follows the first).
_REPEATED_KEY = re.compile(r"\)=\([^,]*, (.*)\) already exists\.$", re.DOTALL)


def already_uploaded(feedetl_sn: str | None) -> Conflict:
    """The refusal of a line whose serial number the visit already holds, naming it where known
    (found from outside: a clerk was told a line was uploaded twice, not which)."""
    if feedetl_sn is None:
        return Conflict(ALREADY_UPLOADED)
    return Conflict(f"费用明细流水号{feedetl_sn}已上传，请勿重复上传（如需修改请先撤销）")


async def insert(conn: asyncpg.Connection, lines: Sequence[StoredLine], msgid: str) -> None:
    """Store uploaded lines; a feedetl_sn already in force for the visit is refused."""
    staged = Writes()
    staged.extend(INSERT, rows(lines, msgid))
    try:
        await staged.flush(conn)  # one statement for the whole upload
    except asyncpg.UniqueViolationError as exc:
        repeated = _REPEATED_KEY.search(getattr(exc, "detail", None) or "")
        raise already_uploaded(repeated.group(1) if repeated else None) from exc


# `charged_at`: a refund line is priced as the charge it takes back was, on the charge's date
# (found from outside: a refund dated after a 3301 remapped its item was split by the new class,
# and the fund, or the patient, kept paying for an item given back). Looked up only for refund
# lines (the CASE runs its subquery for them alone), by the table's primary key.
_LINE_COLUMNS = (
    "mdtrt_id, feedetl_sn, chrg_bchno, init_feedetl_sn, psn_no, medins_list_codg,"
    " med_list_codg, pric_micro, cnt, amount_fen, fee_ocur_time, hosp_appr_flag, dise_codg,"
    " CASE WHEN t.init_feedetl_sn <> '' THEN (SELECT o.fee_ocur_time FROM fee_lines o"
    " WHERE o.mdtrt_id = t.mdtrt_id AND o.feedetl_sn = t.init_feedetl_sn) END AS charged_at"
)


def _line_of(r: asyncpg.Record) -> StoredLine:
    return StoredLine(
        mdtrt_id=r["mdtrt_id"],
        feedetl_sn=r["feedetl_sn"],
        chrg_bchno=r["chrg_bchno"],
        init_feedetl_sn=r["init_feedetl_sn"],
        psn_no=r["psn_no"],
        medins_list_codg=r["medins_list_codg"],
        med_list_codg=r["med_list_codg"],
        pric_micro=int(r["pric_micro"]),
        cnt=int(r["cnt"]),
        det_item_fee_sumamt=int(r["amount_fen"]),
        fee_ocur_time=r["fee_ocur_time"],
        fee_date=(r["charged_at"] or r["fee_ocur_time"]).date(),
        hosp_appr_flag=r["hosp_appr_flag"],
        dise_codg=r["dise_codg"] or "",
    )


async def unsettled(
    conn: asyncpg.Connection, mdtrt_id: str, chrg_bchno: str = ALL
) -> list[StoredLine]:
    """Unsettled lines of the visit, or of one charge batch, in upload order of feedetl_sn."""
    sql = f"SELECT {_LINE_COLUMNS} FROM fee_lines t WHERE mdtrt_id = $1 AND setl_id IS NULL"
    args: list[object] = [mdtrt_id]
    if chrg_bchno != ALL:
        sql += " AND chrg_bchno = $2"
        args.append(chrg_bchno)
    rows = await conn.fetch(sql + " ORDER BY feedetl_sn", *args)
    return [_line_of(r) for r in rows]


_UNSETTLED_MANY = per_key(
    _LINE_COLUMNS,
    "fee_lines",
    [("mdtrt_id", "text")],
    where="setl_id IS NULL",
    order_by="mdtrt_id, feedetl_sn",
)
_SETTLED_BATCHES = (
    "SELECT DISTINCT mdtrt_id, chrg_bchno FROM ("
    + per_key(
        "mdtrt_id, chrg_bchno", "fee_lines", [("mdtrt_id", "text")], where="setl_id IS NOT NULL"
    )
    + ") AS settled"
)


async def unsettled_many(
    conn: asyncpg.Connection, mdtrt_ids: Sequence[str]
) -> dict[str, list[StoredLine]]:
    """Every unsettled line of several visits, per visit in feedetl_sn order."""
    if len(mdtrt_ids) == 1:  # one visit by equality (see encounters.lock_many)
        rows = await conn.fetch(
            f"SELECT {_LINE_COLUMNS} FROM fee_lines t WHERE mdtrt_id = $1"
            " AND setl_id IS NULL ORDER BY feedetl_sn",
            mdtrt_ids[0],
        )
    else:
        rows = await conn.fetch(_UNSETTLED_MANY, list(mdtrt_ids))
    out: dict[str, list[StoredLine]] = {}
    for r in rows:
        out.setdefault(r["mdtrt_id"], []).append(_line_of(r))
    return out


async def settled_batches(
    conn: asyncpg.Connection, mdtrt_ids: Sequence[str]
) -> dict[str, set[str]]:
    """The charge batches of several visits that have settled lines."""
    rows = await conn.fetch(_SETTLED_BATCHES, list(mdtrt_ids))
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["mdtrt_id"], set()).add(r["chrg_bchno"])
    return out


async def delete_unsettled(
    conn: asyncpg.Connection,
    mdtrt_id: str,
    *,
    chrg_bchno: str | None = None,
    feedetl_sn: str | None = None,
) -> int:
    """2205/2302: remove unsettled lines (a batch, one line, or "0000" for all); returns count."""
    sql = "DELETE FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL"
    args: list[object] = [mdtrt_id]
    if chrg_bchno is not None and chrg_bchno != ALL:
        sql += " AND chrg_bchno = $2"
        args.append(chrg_bchno)
    elif feedetl_sn is not None and feedetl_sn != ALL:
        sql += " AND feedetl_sn = $2"
        args.append(feedetl_sn)
    status = await conn.execute(sql, *args)
    return int(status.split()[-1])


async def mark_settled(
    conn: asyncpg.Connection, mdtrt_id: str, feedetl_sns: Sequence[str], setl_id: str | None
) -> None:
    """Attach lines to a settlement, or release them (None) when it is cancelled."""
    await conn.execute(MARK_SETTLED, mdtrt_id, list(feedetl_sns), setl_id)


# A settlement's lines are its visit's (mark_settled attaches them within it): found by the
# visit, the key's first column, not by setl_id, which no index holds. By setl_id alone every
# cancellation read the whole table, every line of every visit ever uploaded.
RELEASE = (
    "UPDATE fee_lines SET setl_id = NULL, released_from = $2 WHERE mdtrt_id = $1 AND setl_id = $2"
)
OF_SETTLEMENT = "SELECT feedetl_sn FROM fee_lines WHERE mdtrt_id = $1 AND setl_id = $2"


async def release(conn: asyncpg.Connection, mdtrt_id: str, setl_id: str) -> None:
    """A cancelled settlement's lines become unsettled again (so 2205/2302 can remove them).

    Each line remembers the settlement it was released from: only those very rows, never
    deleted and re-uploaded meanwhile, can carry that settlement again (2601 of its cancellation).
    """
    await conn.execute(RELEASE, mdtrt_id, setl_id)


async def still_released(
    conn: asyncpg.Connection, mdtrt_id: str, setl_id: str, feedetl_sns: Sequence[str]
) -> bool:
    """Whether every one of the settlement's lines is the row it released, still unsettled."""
    n = await conn.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = ANY($2::text[])"
        " AND setl_id IS NULL AND released_from = $3",
        mdtrt_id,
        list(feedetl_sns),
        setl_id,
    )
    return int(n) == len(set(feedetl_sns))


async def unsettled_besides(
    conn: asyncpg.Connection, mdtrt_id: str, feedetl_sns: Sequence[str], chrg_bchno: str | None
) -> str | None:
    """An unsettled line of the visit (of one charge batch, where named) other than these: the
    first by serial number, None when there is none."""
    sn: str | None = await conn.fetchval(
        "SELECT feedetl_sn FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL"
        " AND NOT (feedetl_sn = ANY($2::text[])) AND ($3::text IS NULL OR chrg_bchno = $3)"
        " ORDER BY feedetl_sn LIMIT 1",
        mdtrt_id,
        list(feedetl_sns),
        chrg_bchno,
    )
    return sn


async def latest_fee_time(conn: asyncpg.Connection, mdtrt_id: str) -> dt.datetime | None:
    """When the visit's latest uploaded line occurred (None without lines)."""
    value = await conn.fetchval(
        "SELECT max(fee_ocur_time) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id
    )
    return value if isinstance(value, dt.datetime) else None


async def earliest_fee_time(conn: asyncpg.Connection, mdtrt_id: str) -> dt.datetime | None:
    """When the visit's earliest uploaded line occurred (None without lines)."""
    value = await conn.fetchval(
        "SELECT min(fee_ocur_time) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id
    )
    return value if isinstance(value, dt.datetime) else None


async def has_lines(conn: asyncpg.Connection, mdtrt_id: str) -> bool:
    """Whether the visit has any uploaded line, settled or not."""
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM fee_lines WHERE mdtrt_id = $1)", mdtrt_id)
    )


async def settled_by(conn: asyncpg.Connection, mdtrt_id: str, feedetl_sn: str) -> str | None:
    """The settlement that settled the visit's line, if it is uploaded and settled."""
    found = await conn.fetchval(
        "SELECT setl_id FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = $2",
        mdtrt_id,
        feedetl_sn,
    )
    return None if found is None else str(found)


async def unsettled_count(conn: asyncpg.Connection, mdtrt_id: str) -> int:
    """Counts the visit's unsettled lines."""
    held = await conn.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL", mdtrt_id
    )
    return int(held)


async def batch_settled(conn: asyncpg.Connection, mdtrt_id: str, chrg_bchno: str) -> bool:
    """Whether every line of the charge batch is settled (False for a batch without lines)."""
    return bool(
        await conn.fetchval(
            "SELECT bool_and(setl_id IS NOT NULL) FROM fee_lines WHERE mdtrt_id = $1"
            " AND chrg_bchno = $2",
            mdtrt_id,
            chrg_bchno,
        )
    )


async def of_settlement(conn: asyncpg.Connection, mdtrt_id: str, setl_id: str) -> list[str]:
    """Reads the feedetl_sn of a settlement's lines."""
    return [r["feedetl_sn"] for r in await conn.fetch(OF_SETTLEMENT, mdtrt_id, setl_id)]


async def set_national_code(
    conn: asyncpg.Connection, mdtrt_id: str, feedetl_sn: str, med_list_codg: str | None
) -> None:
    """Writes the national code an unsettled line resolves to (a catalog correction)."""
    await conn.execute(
        "UPDATE fee_lines SET med_list_codg = $3 WHERE mdtrt_id = $1 AND feedetl_sn = $2"
        " AND setl_id IS NULL",
        mdtrt_id,
        feedetl_sn,
        med_list_codg,
    )


_ORPHAN_REFUND = (
    "SELECT r.feedetl_sn, r.init_feedetl_sn FROM fee_lines r WHERE r.mdtrt_id = $1"
    " AND r.cnt < 0 AND NOT EXISTS (SELECT 1 FROM fee_lines o"
    " WHERE o.mdtrt_id = r.mdtrt_id AND o.feedetl_sn = r.init_feedetl_sn)"
    " ORDER BY r.feedetl_sn LIMIT 1"
)


async def orphan_refund(conn: asyncpg.Connection, mdtrt_id: str) -> tuple[str, str] | None:
    """Reads a refund line of the visit whose charge is gone: (its feedetl_sn, the charge's)."""
    orphan = await conn.fetchrow(_ORPHAN_REFUND, mdtrt_id)
    return None if orphan is None else (orphan["feedetl_sn"], orphan["init_feedetl_sn"])


class Charged(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A stored line as a refund citing it sees it."""

    feedetl_sn: str
    medins_list_codg: str
    pric_micro: int
    cnt: int
    amount_fen: int
    init_feedetl_sn: str
    fee_date: dt.date


_ORIGINALS = (
    "SELECT feedetl_sn, medins_list_codg, pric_micro, cnt, amount_fen, init_feedetl_sn,"
    " fee_ocur_time"
    " FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = ANY($2::text[])"
)
# Refund lines in force: a withdrawn one (2302) is deleted, a cancelled settlement's come back
# unsettled and still count.
_REFUNDED = (
    "SELECT init_feedetl_sn, sum(cnt) AS cnt, sum(amount_fen) AS amount FROM fee_lines"
    " WHERE mdtrt_id = $1 AND cnt < 0 AND init_feedetl_sn = ANY($2::text[])"
    " GROUP BY init_feedetl_sn"
)


async def cited(conn: asyncpg.Connection, mdtrt_id: str, feedetl_sns: list[str]) -> list[Charged]:
    """Reads the visit's lines with these feedetl_sn (those refunds cite)."""
    return [
        Charged(
            feedetl_sn=r["feedetl_sn"],
            medins_list_codg=r["medins_list_codg"],
            pric_micro=int(r["pric_micro"]),
            cnt=int(r["cnt"]),
            amount_fen=int(r["amount_fen"]),
            init_feedetl_sn=r["init_feedetl_sn"],
            fee_date=r["fee_ocur_time"].date(),
        )
        for r in await conn.fetch(_ORIGINALS, mdtrt_id, feedetl_sns)
    ]


async def refunded(
    conn: asyncpg.Connection, mdtrt_id: str, feedetl_sns: list[str]
) -> dict[str, tuple[int, int]]:
    """Reads per cited charge the quantity and amount (negative) its refund lines in force take."""
    return {
        r["init_feedetl_sn"]: (int(r["cnt"]), int(r["amount"]))
        for r in await conn.fetch(_REFUNDED, mdtrt_id, feedetl_sns)
    }
