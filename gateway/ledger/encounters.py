"""Visits (就诊): outpatient registrations, admissions and pharmacy purchases."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec

from gateway.core.timestamps import day_digits
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.ledger.keyed import per_key
from gateway.ledger.writes import insert_statement
from gateway.protocol.errors import Conflict, NotFound, NotYetApplied

# An outpatient visit's med_type from its registration (2201 names none) until its 2203 says.
REGISTRATION_MED_TYPE = "11"


class Encounter(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A visit; the defaults are a newly opened one's."""

    mdtrt_id: str
    fixmedins_code: str
    psn_no: str
    insutype: str
    kind: str  # outpatient | inpatient | pharmacy
    med_type: str
    begntime: dt.datetime
    endtime: dt.datetime | None = None
    ipt_otp_no: str
    dise_codg: str = ""
    dise_name: str = ""
    status: str = "open"  # open | discharged | cancelled
    insuplc_admdvs: str
    adm_dedc_fen: int | None = None
    adm_dedc_used_fen: int = 0
    selfpay: bool = False  # admitted self-pay under the emergency plan; insured after 自费转医保


_COLUMNS = ", ".join(Encounter.__struct_fields__)


def _of(row: Any) -> Encounter:
    return Encounter(**{f: row[f] for f in Encounter.__struct_fields__})


def ledger_id(region: str, on: dt.datetime, serial: int) -> str:
    """就诊ID and 结算ID: region (6) + yyyyMMdd + 12-digit serial, unique across the ledger (a
    visit's serial odd, a settlement's even: the two never spell the same id, migration 037)."""
    return "%s%s%012d" % (region[:6].ljust(6, "0"), day_digits(on), serial)  # noqa: UP031


async def new_mdtrt_id(conn: asyncpg.Connection, region: str, on: dt.datetime) -> str:
    """A fresh 就诊ID."""
    return ledger_id(region, on, int(await conn.fetchval("SELECT nextval('mdtrt_seq')")))


INSERT = insert_statement(
    "encounters",
    [
        ("mdtrt_id", "text"),
        ("fixmedins_code", "text"),
        ("psn_no", "text"),
        ("insutype", "text"),
        ("kind", "text"),
        ("med_type", "text"),
        ("begntime", "timestamp"),
        ("ipt_otp_no", "text"),
        ("dise_codg", "text"),
        ("dise_name", "text"),
        ("insuplc_admdvs", "text"),
        ("detail", "jsonb"),
        ("created_msgid", "text"),
        ("selfpay", "bool"),
    ],
    fixed=[("status", "'open'")],
)
# What a visit's registration (2201) sent that 5201 answers: kept beside a 2203's information
# (found from outside: 5201 lost the certificate type and doctor 2201 sent, the 2203's
# replacing them). Only these: the row is written again in place while its page has room for
# the second version (migration 027), and the whole 2201 kept beside the 2203's took that room.
REGISTRATION_SHOWN = ("mdtrt_cert_type", "atddr_no")
_KEPT_REGISTRATION = ", ".join(
    f"'{name}', detail #> '{{registration,{name}}}'" for name in REGISTRATION_SHOWN
)
# 2203's diagnosis; `detail` keeps the request as sent: its information replaces the last
# one's, and one sending no diagnosis keeps those an earlier one sent. One statement per visit
# (several in a batch go as `executemany`): an equality on the key is planned as an index
# look-up however small the table was when it was prepared, where a join to `unnest` arrays was
# planned as a scan of the whole table on a fresh ledger (benchmarks/RESULTS.md).
SET_INFO = (
    "UPDATE encounters SET med_type = $2, dise_codg = $3, dise_name = $4, detail = $5::jsonb"
    " || CASE WHEN $5::jsonb ? 'diseinfo' OR NOT coalesce(detail ? 'diseinfo', false)"
    " THEN '{}'::jsonb ELSE jsonb_build_object('diseinfo', detail -> 'diseinfo') END"
    " || CASE WHEN detail ? 'registration' THEN jsonb_build_object('registration',"
    f" jsonb_strip_nulls(jsonb_build_object({_KEPT_REGISTRATION}))) ELSE '{{}}'::jsonb END"
    " WHERE mdtrt_id = $1"
)
# A 2403's fields merged over what earlier ones sent (`adminfo`), its diagnoses replacing the
# kept ones when it sends any.
CHANGE_ADMISSION = (
    "UPDATE encounters SET med_type = $2, begntime = $3, dise_codg = $4, dise_name = $5,"
    " detail = coalesce(detail, '{}'::jsonb)"
    " || jsonb_build_object('adminfo', coalesce(detail -> 'adminfo', '{}'::jsonb)"
    " || ($6::jsonb -> 'adminfo')) || ($6::jsonb - 'adminfo') WHERE mdtrt_id = $1"
)
UPDATE_DEDUCTIBLE = (
    "UPDATE encounters SET adm_dedc_fen = $2, adm_dedc_used_fen = $3 WHERE mdtrt_id = $1"
)


def row(enc: Encounter, msgid: str, detail: dict[str, Any] | None = None) -> tuple[object, ...]:
    """The INSERT's arguments for a new visit."""
    return (
        enc.mdtrt_id,
        enc.fixmedins_code,
        enc.psn_no,
        enc.insutype,
        enc.kind,
        enc.med_type,
        enc.begntime,
        enc.ipt_otp_no,
        enc.dise_codg,
        enc.dise_name,
        enc.insuplc_admdvs,
        detail or {},
        msgid,
        enc.selfpay,
    )


async def create(
    conn: asyncpg.Connection,
    *,
    mdtrt_id: str,
    fixmedins_code: str,
    psn_no: str,
    insutype: str,
    kind: str,
    med_type: str,
    begntime: dt.datetime,
    ipt_otp_no: str,
    insuplc_admdvs: str,
    msgid: str,
    dise_codg: str = "",
    dise_name: str = "",
    detail: dict[str, Any] | None = None,
    selfpay: bool = False,
) -> None:
    """Open a visit; the institution's visit number must not be open already."""
    try:
        # A savepoint: after a clash the transaction still reads the visit that holds the number.
        async with conn.transaction():
            await conn.execute(
                INSERT,
                mdtrt_id,
                fixmedins_code,
                psn_no,
                insutype,
                kind,
                med_type,
                begntime,
                ipt_otp_no,
                dise_codg,
                dise_name,
                insuplc_admdvs,
                detail or {},
                msgid,
                selfpay,
            )
    except asyncpg.UniqueViolationError as exc:
        raise await number_taken(conn, fixmedins_code, kind, ipt_otp_no, psn_no) from exc


async def number_taken(
    conn: asyncpg.Connection, fixmedins_code: str, kind: str, ipt_otp_no: str, psn_no: str
) -> Conflict:
    """The refusal of a visit number already held (the number is unique in the institution,
    protocol §6.3), naming the visit that holds it and the way on from there (found from
    outside: a HIS that lost its 2201's answer and registered again under a new msgid was told
    only that the number was taken, with no 就诊ID to carry on with). Another person's visit is
    named without its person, and a finished visit is not sent to an undo it cannot take. The
    caller's transaction must still be usable: the clash inside a savepoint."""
    held = await conn.fetchrow(
        "SELECT e.mdtrt_id, e.psn_no, e.status, EXISTS (SELECT 1 FROM settlements s"
        "  WHERE s.mdtrt_id = e.mdtrt_id AND s.status = 'settled') AS settled"
        " FROM encounters e WHERE e.fixmedins_code = $1 AND e.kind = $2"
        " AND e.ipt_otp_no = $3 AND e.status <> 'cancelled'",
        fixmedins_code,
        kind,
        ipt_otp_no,
    )
    label = "住院号" if kind == "inpatient" else "门诊号"
    taken = f"{label}{ipt_otp_no}已登记且未撤销"
    if held is None:  # cancelled since, by a request beside this one
        return Conflict(f"{taken}，请勿重复登记")
    visit = held["mdtrt_id"]
    if held["psn_no"] != psn_no:
        return Conflict(
            f"{taken}（另一参保人的就诊，就诊ID{visit}），{label}在本机构内唯一，"
            f"请核对{label}，或使用新的{label}登记"
        )
    if held["settled"] or held["status"] == "discharged":
        return Conflict(
            f"{taken}（就诊ID{visit}，已结算或已出院），{label}在本机构内唯一，"
            f"新的就诊请使用新的{label}登记"
        )
    undo = "2404" if kind == "inpatient" else "2202"
    return Conflict(
        f"{taken}（就诊ID{visit}），请勿重复登记；继续办理请使用该就诊ID，"
        f"重新登记请先撤销（{undo}）"
    )


async def med_type_of(conn: asyncpg.Connection, fixmedins_code: str, mdtrt_id: str) -> str | None:
    """The visit's med_type (None for a visit the institution does not have)."""
    found: str | None = await conn.fetchval(
        "SELECT med_type FROM encounters WHERE mdtrt_id = $1 AND fixmedins_code = $2",
        mdtrt_id,
        fixmedins_code,
    )
    return found


async def get(
    conn: asyncpg.Connection,
    mdtrt_id: str,
    fixmedins_code: str,
    *,
    psn_no: str | None = None,
    lock: bool = False,
) -> Encounter:
    """The institution's own visit; another institution's mdtrt_id is not found, not shown.

    A provisional id handed out while the ledger was down names the visit it became."""
    mdtrt_id = await real_id(conn, mdtrt_id, fixmedins_code)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM encounters WHERE mdtrt_id = $1 AND fixmedins_code = $2"
        + (" FOR UPDATE" if lock else ""),
        mdtrt_id,
        fixmedins_code,
    )
    return own(None if row is None else _of(row), mdtrt_id, fixmedins_code, psn_no)


def own(
    enc: Encounter | None, mdtrt_id: str, fixmedins_code: str, psn_no: str | None = None
) -> Encounter:
    """The visit as read, if it is the institution's own (and, given psn_no, that person's):
    another institution's mdtrt_id is not found, not shown. Every path that reads a visit
    answers these two faults in these words, whether it read the visit alone or in a batch."""
    if enc is None or enc.fixmedins_code != fixmedins_code:
        raise NotFound(f"就诊ID{mdtrt_id}不存在或不属于本机构")
    if psn_no is not None and psn_no != enc.psn_no:
        raise Conflict(f"人员编号{psn_no}与就诊ID{mdtrt_id}的参保人不一致")
    return enc


async def real_id(conn: asyncpg.Connection, mdtrt_id: str, fixmedins_code: str) -> str:
    """The visit a provisional id handed out while the ledger was down became; any other id as
    it is. One not applied yet is refused: the visit exists only in the deferred journal. A
    provisional id another institution was given is not found, as a visit of theirs is (found
    from outside: told to retry until the other institution's call was applied)."""
    if not mdtrt_id.startswith(PROVISIONAL_PREFIX):
        return mdtrt_id
    found = await conn.fetchrow(
        "SELECT i.mdtrt_id, d.status, d.fail_reason, d.fixmedins_code"
        " FROM (SELECT $1::text AS id) AS p"
        " LEFT JOIN deferred_ids i ON i.provisional_id = p.id"
        " LEFT JOIN deferred d ON d.provisional_id = p.id AND d.kind = 'call'",
        mdtrt_id,
    )
    assert found is not None  # one row whatever is found
    if found["mdtrt_id"] is not None:
        return str(found["mdtrt_id"])  # whose visit it is, the visit's own row says
    if found["fixmedins_code"] not in (None, fixmedins_code):
        raise NotFound(f"就诊ID{mdtrt_id}不存在或不属于本机构")
    if found["status"] == "failed":
        # Never to be applied: a retry would be told to wait for good.
        raise NotFound(
            f"就诊ID{mdtrt_id}为应急期间的临时编号，其就诊登记补办失败（{found['fail_reason']}），"
            "请重新办理就诊登记"
        )
    # Pending in the ledger, or still in a gateway's local journal (the ledger was away).
    raise NotYetApplied(
        f"就诊ID{mdtrt_id}为应急期间的临时编号，尚未补办，请待补办后使用相同报文ID重试"
    )


async def calls_waiting(conn: asyncpg.Connection, fixmedins_code: str, provisional_id: str) -> bool:
    """Whether calls kept under the plan on a provisional id (a 2203, a 2204) still wait to be
    applied to the visit it became: its registration is applied first, each call then in turn."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM deferred WHERE kind = 'call' AND status = 'pending'"
            " AND fixmedins_code = $1 AND mdtrt_id = $2)",
            fixmedins_code,
            provisional_id,
        )
    )


def calls_not_yet_applied(provisional_id: str) -> NotYetApplied:
    """The retryable refusal of a settlement asked while such calls wait."""
    return NotYetApplied(
        f"就诊ID{provisional_id}为应急期间的临时编号，其此前的业务（就诊信息、费用明细等）尚未全部补办，"
        "请待补办后使用相同报文ID重试"
    )


# Visits a 5201 answers at most: a range of years of a frequent patient is still one answer.
VISITS_LISTED = 500


async def of_person(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    psn_no: str,
    begn: dt.datetime,
    end: dt.datetime,
    med_type: str = "",
) -> list[tuple[Encounter, dict[str, Any]]]:
    """The institution's visits and stays of the person begun within [begn, end] (of one
    med_type, "" for any), not cancelled, in the order they began; each with what its calls kept
    as sent (`detail`). A pharmacy sale is not a visit (5203 finds it)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, detail FROM encounters WHERE psn_no = $1 AND fixmedins_code = $2"
        " AND begntime >= $3 AND begntime <= $4 AND ($5 = '' OR med_type = $5)"
        " AND kind <> 'pharmacy' AND status <> 'cancelled'"
        f" ORDER BY begntime, mdtrt_id LIMIT {VISITS_LISTED}",
        psn_no,
        fixmedins_code,
        begn,
        end,
        med_type,
    )
    return [(_of(r), dict(r["detail"] or {})) for r in rows]


async def with_detail(
    conn: asyncpg.Connection, mdtrt_id: str, fixmedins_code: str, psn_no: str | None = None
) -> tuple[Encounter, dict[str, Any]]:
    """The institution's own visit, as `get` finds it, with what its calls kept as sent."""
    enc = await get(conn, mdtrt_id, fixmedins_code, psn_no=psn_no)
    detail = await conn.fetchval("SELECT detail FROM encounters WHERE mdtrt_id = $1", enc.mdtrt_id)
    return enc, dict(detail or {})


async def lock(conn: asyncpg.Connection, mdtrt_id: str, fixmedins_code: str) -> Encounter:
    """The institution's visit, locked: the first lock of every path that takes more than one
    (gateway.ledger.settlements has the order)."""
    return await get(conn, mdtrt_id, fixmedins_code, lock=True)


_LOCK_ONE = f"SELECT {_COLUMNS} FROM encounters WHERE mdtrt_id = $1 FOR UPDATE"
_READ_ONE = f"SELECT {_COLUMNS} FROM encounters WHERE mdtrt_id = $1"
_LOCK_MANY = per_key(_COLUMNS, "encounters", [("mdtrt_id", "text")], lock=True)
_READ_MANY = per_key(_COLUMNS, "encounters", [("mdtrt_id", "text")])


async def lock_many(
    conn: asyncpg.Connection, mdtrt_ids: list[str], *, lock: bool = True
) -> dict[str, Encounter]:
    """Several visits, locked in mdtrt_id order (a batch's visits, before its persons) unless
    lock=False (a pre-settlement's read); the caller checks each belongs to the institution
    asking."""
    # One visit (the single path, a pre-settlement) by equality: a plan PostgreSQL caches as
    # cheaply as the old single-visit read, where an array parameter costs more per call.
    if len(mdtrt_ids) == 1:
        sql = _LOCK_ONE if lock else _READ_ONE
        rows = await conn.fetch(sql, mdtrt_ids[0])
    else:
        rows = await conn.fetch(_LOCK_MANY if lock else _READ_MANY, mdtrt_ids)
    return {r["mdtrt_id"]: _of(r) for r in rows}


def require_open(enc: Encounter) -> None:
    """Uploads and settlements need a visit that is not cancelled."""
    if enc.status == "cancelled":
        raise Conflict(f"就诊ID{enc.mdtrt_id}已撤销")


async def update(conn: asyncpg.Connection, mdtrt_id: str, **fields: Any) -> None:
    """Set some columns of a visit."""
    names = list(fields)
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    await conn.execute(
        f"UPDATE encounters SET {sets} WHERE mdtrt_id = $1", mdtrt_id, *(fields[n] for n in names)
    )


async def settled_count(conn: asyncpg.Connection, mdtrt_id: str) -> int:
    """Settlements of the visit in force."""
    n = await conn.fetchval(
        "SELECT count(*) FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'", mdtrt_id
    )
    return int(n)


class SelfpayVisit(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A visit as 自费转医保 reads it."""

    psn_no: str
    fixmedins_code: str
    selfpay: bool
    status: str
    insutype: str


async def lock_for_conversion(conn: asyncpg.Connection, mdtrt_id: str) -> SelfpayVisit | None:
    """Reads and locks a visit, of any institution, for 自费转医保; None when there is none."""
    row = await conn.fetchrow(
        "SELECT psn_no, fixmedins_code, selfpay, status, insutype FROM encounters"
        " WHERE mdtrt_id = $1"
        " FOR UPDATE",
        mdtrt_id,
    )
    if row is None:
        return None
    return SelfpayVisit(
        psn_no=row["psn_no"],
        fixmedins_code=row["fixmedins_code"],
        selfpay=row["selfpay"],
        status=row["status"],
        insutype=row["insutype"],
    )


async def insure(conn: asyncpg.Connection, mdtrt_id: str) -> None:
    """Writes a self-pay visit insured (自费转医保)."""
    await conn.execute("UPDATE encounters SET selfpay = false WHERE mdtrt_id = $1", mdtrt_id)


async def created_admission(
    conn: asyncpg.Connection, fixmedins_code: str, created_msgid: str
) -> str | None:
    """Reads the admission (mdtrt_id) the institution's message created, if any."""
    mdtrt_id: str | None = await conn.fetchval(
        "SELECT mdtrt_id FROM encounters WHERE fixmedins_code = $1 AND created_msgid = $2 AND kind = 'inpatient'",
        fixmedins_code,
        created_msgid,
    )
    return mdtrt_id
