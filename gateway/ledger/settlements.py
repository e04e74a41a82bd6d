"""Settlements: computed against the person's locked state, committed with everything they change.

A settlement and all it changes (accumulators, account balance, fee lines, admission deductible,
fund rows, the idempotency answer) commit in one transaction before the answer is sent. A
cancellation subtracts exactly what the settlement stored in `delta`, never a recomputation.

Lock order. Every path that takes more than one lock takes them in this order, so no two
transactions ever wait for each other in a cycle:

    the original's msgid key (2601 only: reversal.py, before anything else)
    -> the visit (encounters row; several: in mdtrt_id order)
    -> the person (accounts row; several: in psn_no order)
    -> the settlement row
    -> the visit's fee lines

Settling (2207/2304 single path: the visit in the handler, the person in `compute`; 2207/2102 in
the group commit: visits, then persons, each in key order), cancelling (2103/2208/2305, 2601 of a
2102/2207/2304, bulk corrections: `cancel`) and reinstating (2601 of a 2103/2208/2305:
`reinstate`) all follow it; uploads, deletions of lines, discharges take the visit alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec

from gateway.core.catalog import Snapshot
from gateway.core.eligibility import CATEGORY_OF
from gateway.core.model import (
    Accumulators,
    Category,
    FundRow,
    Institution,
    LineSplit,
    Person,
    PersonState,
    Settlement,
    Visit,
)
from gateway.core.money import fen_text
from gateway.core.settle import apply
from gateway.ledger import deferred, encounters, fees, payouts, persons
from gateway.ledger.encounters import Encounter
from gateway.ledger.keyed import per_key
from gateway.ledger.writes import Writes, insert_statement
from gateway.protocol.errors import Conflict, HeldByPlan, NotFound, RuleRejected

CLR_TYPE = {
    Category.OUTPATIENT: "11",
    Category.CHRONIC: "11",
    Category.INPATIENT: "21",
    Category.PHARMACY: "41",
}
AMOUNT_FIELDS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "hosp_part_amt",
    "balc",
)


class Declared(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Totals the client sent; each one present must equal what its lines add up to."""

    medfee_sumamt: int
    fulamt_ownpay_amt: int | None = None
    overlmt_selfpay: int | None = None
    preselfpay_amt: int | None = None
    inscp_scp_amt: int | None = None


class Record(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A settlement as answered: amounts in fen, the person, the clearing fields."""

    setl_id: str | None
    setl_time: dt.datetime | None
    mdtrt_id: str
    med_type: str
    person: Person
    medins_setl_id: str
    clr_optins: str
    clr_type: str
    pool_prop_bp: int
    amounts: dict[str, int]
    funds: tuple[FundRow, ...]
    status: str = "settled"
    # The visit's service date, where the record was read back from the ledger: an answer gives
    # the person's age on it, as the settlement's own answer did (found from outside: a 5203
    # gave the age on the day of the query).
    service_date: dt.date | None = None
    mdtrt_cert_type: str = ""  # the certificate the settlement was made with ("" before 029)


class Context(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One settlement request, canonical."""

    institution: Institution
    encounter: Encounter
    visit: Visit
    infno: str
    msgid: str
    chrg_bchno: str = ""
    mid_setl_flag: str = "0"
    dev_no: str = ""
    opter: str = ""
    mdtrtarea_admvs: str = ""
    mdtrt_cert_type: str = ""  # the request's, "" where it sent none


async def held(conn: asyncpg.Connection, fixmedins_code: str, setl_id: str) -> bool:
    """Whether the institution's settlement `setl_id` is in this ledger, whatever its status."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM settlements WHERE fixmedins_code = $1 AND setl_id = $2)",
            fixmedins_code,
            setl_id,
        )
    )


def check_total(declared: int, lines_total: int) -> None:
    """The request's medfee_sumamt must equal its lines' total (settlement-rules §2)."""
    if declared != lines_total:
        raise RuleRejected(
            f"医疗费总额{fen_text(declared)}与费用明细合计{fen_text(lines_total)}不一致，"
            "请核对上传的费用明细"
        )


# The parts of a bill (settlement-rules §6), by their setlinfo names, as a clerk reads them.
SPLIT = (
    ("fulamt_ownpay_amt", "全自费金额"),
    ("overlmt_selfpay", "超限价自费金额"),
    ("preselfpay_amt", "先行自付金额"),
    ("inscp_scp_amt", "符合政策范围金额"),
)


def check_declared(s: Settlement, declared: Declared) -> None:
    """The request's totals must equal the uploaded lines' (settlement-rules §2)."""
    check_total(declared.medfee_sumamt, s.medfee_sumamt)
    check_split(
        s.medfee_sumamt,
        {name: getattr(declared, name) for name, _ in SPLIT},
        {name: getattr(s, name) for name, _ in SPLIT},
    )


def check_split(
    medfee_sumamt: int, sent: Mapping[str, int | None], computed: Mapping[str, int]
) -> None:
    """The parts a request declares (None: not sent) must equal those its lines make."""
    if medfee_sumamt and not any(sent.values()):
        # All four left at zero (found from outside: a client that does not copy them from
        # the 2206 answer sends zeros): they make the bill, so zeros on a bill of more than
        # nothing are no split at all, and are read as not sent.
        return
    for name, label in SPLIT:
        part = sent.get(name)
        if part is not None and part != computed[name]:
            # What the clerk does next (found from outside: after a 3301 changed an item's
            # mapping between the 2206 and the 2207, the words said only that they differed).
            raise RuleRejected(
                f"{label}{fen_text(part)}与中心计算结果{fen_text(computed[name])}不一致"
                "（目录对照或待遇政策可能已变更），请重新预结算后按预结算结果结算"
            )


# A fresh pair of serials (就诊ID, 结算ID) as SQL: the group commit draws its batch's with the
# claim of its msgids (gateway.ledger.idempotency.claim_many), in the same round trip.
SERIALS = ("nextval('mdtrt_seq')", "nextval('setl_seq')")


async def draw_serials(conn: asyncpg.Connection, n: int) -> list[tuple[int, int]]:
    """n pairs of fresh serials (就诊ID, 结算ID), one round trip."""
    rows = await conn.fetch(
        f"SELECT {SERIALS[0]} AS m, {SERIALS[1]} AS s FROM generate_series(1, $1)", n
    )
    return [(int(r["m"]), int(r["s"])) for r in rows]


# Key by key, the EXISTS kept per visit by OFFSET 0 (gateway.ledger.keyed): as a join and a
# semi-join, a plan made on a fresh ledger read both tables through.
_OTHER_STAYS = per_key(
    "mdtrt_id",
    "encounters",
    [("mdtrt_id", "text")],
    where="EXISTS (SELECT 1 FROM settlements s WHERE s.psn_no = t.psn_no"
    " AND s.year = EXTRACT(YEAR FROM t.begntime)::int AND s.category = 'inpatient'"
    " AND s.status = 'settled' AND s.mdtrt_id <> t.mdtrt_id OFFSET 0)",
)


async def stays_with_another_in_force(
    conn: asyncpg.Connection, mdtrt_ids: Sequence[str]
) -> list[str]:
    """Those of the stays whose person has another stay's settlement in force in the stay's
    year (read after the person's lock, so that one committing meanwhile is seen)."""
    return [r["mdtrt_id"] for r in await conn.fetch(_OTHER_STAYS, list(mdtrt_ids))]


# The visit's latest pre-settlement (day-end and the console show it): staged by a pre-settlement's
# build, written by `preview_many` (gateway.services.settlement_state) for one or a batch.
NOTE_PRESETTLEMENT = insert_statement(
    "presettlements",
    [("mdtrt_id", "text"), ("fixmedins_code", "text"), ("infno", "text"), ("at", "timestamp")],
    suffix=" ON CONFLICT (mdtrt_id) DO UPDATE SET infno = EXCLUDED.infno, at = EXCLUDED.at",
    key_columns=1,
)


def record_of(
    s: Settlement,
    ctx: Context,
    person: Person,
    *,
    setl_id: str | None,
    setl_time: dt.datetime | None,
) -> Record:
    """The answer's view of a computed settlement."""
    return Record(
        setl_id=setl_id,
        setl_time=setl_time,
        mdtrt_id=ctx.encounter.mdtrt_id,
        med_type=ctx.visit.med_type,
        person=person,
        medins_setl_id=ctx.msgid,
        clr_optins=person.insuplc_admdvs,
        clr_type=CLR_TYPE[s.category],
        pool_prop_bp=s.pool_prop_selfpay_bp,
        amounts={f: getattr(s, f) for f in AMOUNT_FIELDS},
        funds=s.funds,
        mdtrt_cert_type=ctx.mdtrt_cert_type,
    )


_TEXT = "text"


class AlreadyCancelled(Conflict):
    """The settlement was found cancelled once locked: another cancellation (a 2208, a 2601)
    committed first. Callers that undo it another way answer in their own words."""


INSERT = insert_statement(
    "settlements",
    [
        *((c, _TEXT) for c in (
            "setl_id", "fixmedins_code", "mdtrt_id", "psn_no", "infno", "medins_setl_id",
            "chrg_bchno", "mid_setl_flag", "med_type", "insutype", "category", "clr_type",
            "clr_optins", "mdtrtarea_admvs",
        )),
        ("service_date", "date"),
        ("year", "int4"),
        ("setl_time", "timestamp"),
        ("snapshot_version", "int8"),
        *((f, "int8") for f in AMOUNT_FIELDS),
        ("pool_prop_bp", "int4"),
        ("delta", "jsonb"),
        ("lines", "jsonb"),
        ("dev_no", _TEXT),
        ("opter", _TEXT),
        ("acct_used_flag", "bool"),
        ("replaces_setl_id", _TEXT),
        ("adm_dedc_fen", "int8"),
        ("mdtrt_cert_type", _TEXT),
        ("dise_codg", _TEXT),
    ],
    fixed=[("status", "'settled'")],
)  # fmt: skip
INSERT_FUND = insert_statement(
    "settlement_funds",
    [
        ("setl_id", _TEXT),
        ("fund_pay_type", _TEXT),
        ("fund_pay_type_name", _TEXT),
        ("fund_payamt", "int8"),
        ("inscp_scp_amt", "int8"),
        ("crt_payb_lmt_amt", "int8"),
    ],
)


def stage(
    writes: Writes,
    snapshot: Snapshot,
    ctx: Context,
    lines: Sequence[fees.StoredLine],
    s: Settlement,
    state: PersonState,
    now: dt.datetime,
    *,
    setl_id: str,
    replaces: str | None,
    lines_stored_settled: bool = False,
) -> Record:
    """Stage the settlement and everything it changes; the one list of a settlement's writes.

    `lines_stored_settled`: the caller stages the lines' INSERT with this setl_id already (a
    pharmacy purchase), so they need no update.

    Pure: the caller has read the locked state and drawn the id, and flushes `writes` inside the
    transaction that holds the person's lock.
    """
    person = state.person
    inpatient = s.category is Category.INPATIENT
    writes.add(
        INSERT,
        setl_id,
        ctx.institution.fixmedins_code,
        ctx.encounter.mdtrt_id,
        person.psn_no,
        ctx.infno,
        ctx.msgid,
        ctx.chrg_bchno,
        ctx.mid_setl_flag,
        ctx.visit.med_type,
        person.insutype,
        s.category.value,
        CLR_TYPE[s.category],
        person.insuplc_admdvs,
        ctx.institution.admdvs,
        ctx.visit.service_date,
        s.year,
        now,
        snapshot.version,
        *(getattr(s, f) for f in AMOUNT_FIELDS),
        s.pool_prop_selfpay_bp,
        msgspec.to_builtins(s.delta),
        # Each line's split as it was applied, with the national code it was resolved to on its
        # own date (`med_list_codg`, "" when unmapped): what corrections compare with today's
        # mapping. The mapping row itself is not copied (a third of the row's bytes); the copy
        # was looked up on the visit's date, which for a stay's later lines was not the row
        # that priced them.
        s.lines,
        ctx.dev_no,
        ctx.opter,
        ctx.visit.acct_used_flag,
        replaces,
        s.admission_dedc_fen if inpatient else None,
        ctx.mdtrt_cert_type,
        ctx.visit.dise_codg or None,
    )
    writes.extend(
        INSERT_FUND,
        (
            (
                setl_id,
                f.fund_pay_type,
                f.fund_pay_type_name,
                f.fund_payamt,
                f.inscp_scp_amt,
                f.crt_payb_lmt_amt,
            )
            for f in s.funds
        ),
    )
    writes.add(
        persons.ACC_UPSERT,
        *persons.accumulator_row(person.psn_no, s.year, apply(state.year, s.delta)),
    )
    writes.extend(persons.SET_BALANCE, [(person.psn_no, s.balc)] if s.acct_pay else [])
    if not lines_stored_settled:
        sns = [ln.feedetl_sn for ln in lines]
        writes.add(fees.MARK_SETTLED, ctx.encounter.mdtrt_id, sns, setl_id)
    if inpatient:
        writes.add(
            encounters.UPDATE_DEDUCTIBLE,
            ctx.encounter.mdtrt_id,
            s.admission_dedc_fen,
            ctx.encounter.adm_dedc_used_fen + s.act_pay_dedc,
        )
    return record_of(s, ctx, person, setl_id=setl_id, setl_time=now)


_UNREPLACED_REFUNDS = (
    "SELECT DISTINCT ON (mdtrt_id, chrg_bchno) mdtrt_id, chrg_bchno, setl_id FROM ("
    + per_key(
        "mdtrt_id, chrg_bchno, setl_id, cancel_setl_time",
        "settlements",
        [("mdtrt_id", "text")],
        where="status = 'cancelled' AND NOT EXISTS"
        " (SELECT 1 FROM settlements r WHERE r.replaces_setl_id = t.setl_id OFFSET 0)",
    )
    + ") AS cancelled ORDER BY mdtrt_id, chrg_bchno, cancel_setl_time DESC, setl_id DESC"
)


async def refunded_predecessors(
    conn: asyncpg.Connection, mdtrt_ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Per visit and charge batch, the latest refunded settlement nothing replaces yet: what a
    settlement of that batch at the counter makes again (the single path's look-up, batched)."""
    rows = await conn.fetch(_UNREPLACED_REFUNDS, list(mdtrt_ids))
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        out.setdefault(r["mdtrt_id"], {})[r["chrg_bchno"]] = r["setl_id"]
    return out


# The settlement was cancelled by the 2601 that reversed the message that made it (its msgid
# journal row names the reversal that is its cancellation): a condition on a `settlements` row.
REVERSED = (
    "(status = 'cancelled' AND EXISTS (SELECT 1 FROM idempotency o"
    " WHERE o.fixmedins_code = settlements.fixmedins_code"
    " AND o.msgid = settlements.medins_setl_id AND o.reversed_by = settlements.cancel_msgid))"
)

_SETTLEMENT_COLUMNS = (
    "setl_id, fixmedins_code, mdtrt_id, psn_no, infno, medins_setl_id, med_type, category, year,"
    " clr_type, clr_optins, setl_time, status, pool_prop_bp, delta, service_date, mdtrt_cert_type, "
    + ", ".join(AMOUNT_FIELDS)
)


async def _funds(conn: asyncpg.Connection, setl_id: str) -> tuple[FundRow, ...]:
    rows = await conn.fetch(
        "SELECT fund_pay_type, fund_pay_type_name, fund_payamt, inscp_scp_amt, crt_payb_lmt_amt"
        " FROM settlement_funds WHERE setl_id = $1",
        setl_id,
    )
    order = {
        "310100": 0,
        "390100": 0,
        "320100": 1,
        "330100": 2,
        "390200": 3,
        "610100": 4,
        "310200": 5,
    }
    funds = [
        FundRow(
            fund_pay_type=r["fund_pay_type"],
            fund_pay_type_name=r["fund_pay_type_name"],
            fund_payamt=int(r["fund_payamt"]),
            inscp_scp_amt=int(r["inscp_scp_amt"]),
            crt_payb_lmt_amt=int(r["crt_payb_lmt_amt"]),
        )
        for r in rows
    ]
    return tuple(sorted(funds, key=lambda f: order.get(f.fund_pay_type, 9)))


def _record_of_row(row: Any, person: Person, funds: tuple[FundRow, ...]) -> Record:
    return Record(
        setl_id=row["setl_id"],
        setl_time=row["setl_time"],
        mdtrt_id=row["mdtrt_id"],
        med_type=row["med_type"],
        person=person,
        medins_setl_id=row["medins_setl_id"],
        clr_optins=row["clr_optins"],
        clr_type=row["clr_type"],
        pool_prop_bp=int(row["pool_prop_bp"]),
        amounts={f: int(row[f]) for f in AMOUNT_FIELDS},
        funds=funds,
        status=row["status"],
        service_date=row["service_date"],
        mdtrt_cert_type=row["mdtrt_cert_type"],
    )


async def find(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    *,
    setl_id: str = "",
    mdtrt_id: str = "",
    psn_no: str = "",
    limit: int = 100,
) -> list[Record]:
    """5203: the institution's settlements matching the given keys, those in force first, each
    group newest first. Found from outside: by mdtrt_id a stay's cancelled mid-way settlement
    was answered while an earlier one was still in force, so the clerk took the stay for
    unsettled."""
    where = ["fixmedins_code = $1"]
    args: list[object] = [fixmedins_code]
    for column, value in (("setl_id", setl_id), ("mdtrt_id", mdtrt_id), ("psn_no", psn_no)):
        if value:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    rows = await conn.fetch(
        f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE {' AND '.join(where)}"
        f" ORDER BY status = 'settled' DESC, setl_time DESC, setl_id DESC LIMIT {int(limit)}",
        *args,
    )
    out = []
    for row in rows:
        person, _ = await persons.read(conn, row["psn_no"])
        out.append(_record_of_row(row, person, await _funds(conn, row["setl_id"])))
    return out


_SPLIT_FIELDS = frozenset(LineSplit.__struct_fields__)


def split_of(stored: dict[str, Any]) -> LineSplit:
    """A line's split as a settlement stored it (older rows carry keys a split no longer has)."""
    return msgspec.convert({k: v for k, v in stored.items() if k in _SPLIT_FIELDS}, LineSplit)


class SettledLine(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One line of a settlement: its split as settled, and what its upload said of it."""

    split: LineSplit
    fee_ocur_time: dt.datetime | None
    chrg_bchno: str
    hosp_appr_flag: str | None


async def settled_lines(conn: asyncpg.Connection, setl_id: str) -> list[SettledLine]:
    """5204: a settlement's lines in the order it settled them, cancelled or in force (the
    split is the settlement's own). What the upload said of a line (its time, batch, approval)
    is read from the row of its visit and serial number where that is the charge it settled:
    the row it holds or its cancellation released, or one of the same item, price, quantity and
    amount (settled and released again since, by later settlements or a 2601). Found from
    outside: a line withdrawn and sent again changed under the same serial number lent its new
    time to the old settlement. A charge no longer there gives no time or approval; the batch
    is then the one the settlement was asked for."""
    rows = await conn.fetch(
        "SELECT ln.value AS line, f.fee_ocur_time, f.hosp_appr_flag,"
        " coalesce(f.chrg_bchno, NULLIF(s.chrg_bchno, '0000')) AS chrg_bchno"
        " FROM settlements s CROSS JOIN LATERAL jsonb_array_elements(s.lines)"
        " WITH ORDINALITY AS ln(value, n)"
        " LEFT JOIN fee_lines f ON f.mdtrt_id = s.mdtrt_id AND f.feedetl_sn = ln.value->>'feedetl_sn'"
        " AND (f.setl_id = s.setl_id OR f.released_from = s.setl_id"
        " OR (f.medins_list_codg = ln.value->>'medins_list_codg'"
        " AND f.pric_micro = (ln.value->>'pric_micro')::bigint"
        " AND f.cnt = (ln.value->>'cnt')::bigint"
        " AND f.amount_fen = (ln.value->>'det_item_fee_sumamt')::bigint))"
        " WHERE s.setl_id = $1 ORDER BY ln.n",
        setl_id,
    )
    return [
        SettledLine(
            split=split_of(r["line"]),  # the pool's codec decodes jsonb (gateway.ledger.db)
            fee_ocur_time=r["fee_ocur_time"],
            chrg_bchno=r["chrg_bchno"] or "",
            hosp_appr_flag=r["hosp_appr_flag"],
        )
        for r in rows
    ]


# Each kind of settlement with the transaction that cancels it, for a refusal of another.
UNDONE_BY = {
    "pharmacy": ("药店购药结算", "2103"),
    "outpatient": ("门诊结算", "2208"),
    "chronic": ("门诊结算", "2208"),
    "inpatient": ("住院结算", "2305"),
}


async def replacement(conn: asyncpg.Connection, setl_id: str) -> str | None:
    """Why a settlement a bulk correction replaced cannot be cancelled or reversed itself: the
    words name the settlement now standing for it and how to cancel that one; None when no
    correction replaced it. Found from outside: a 2601 of the corrected message's msgid was
    told "已撤销，无需冲正" while its replacement still charged the patient's account."""
    # correction_items, not replaces_setl_id: a counter's own 2208 and new 2207 of the same
    # lines link the two as well, and that settlement was cancelled, not replaced.
    newer, status, category = setl_id, "", ""
    while (
        row := await conn.fetchrow(
            "SELECT s.setl_id, s.status, s.category FROM correction_items c"
            " JOIN settlements s ON s.setl_id = c.new_setl_id WHERE c.old_setl_id = $1",
            newer,
        )
    ) is not None:
        newer, status, category = row["setl_id"], row["status"], row["category"]
    if newer == setl_id:
        return None
    if status != "settled":
        return f"结算ID{setl_id}已因目录更正重新结算为{newer}，{newer}也已撤销，无需再撤销"
    kind, undo = UNDONE_BY[category]
    return (
        f"结算ID{setl_id}已因目录更正重新结算为{newer}（{kind}，仍有效），"
        f"如需撤销请对结算ID{newer}发起{undo}"
    )


async def cancel(
    conn: asyncpg.Connection,
    *,
    fixmedins_code: str,
    setl_id: str,
    mdtrt_id: str,
    psn_no: str,
    msgid: str,
    now: dt.datetime,
    categories: frozenset[str],
    resettling: bool = False,
) -> tuple[Record, int]:
    """Reverse exactly what the settlement applied; returns it and the balance after the refund.
    A settlement whose reimbursement the agency pays is refused as gateway.ledger.payouts
    `hold_for_cancel` says (`resettling`: a bulk correction settles it again)."""
    found = await conn.fetchrow(
        "SELECT mdtrt_id, psn_no, category FROM settlements WHERE setl_id = $1"
        " AND fixmedins_code = $2",
        setl_id,
        fixmedins_code,
    )
    if found is None:
        # Most often, in the months after a cut-over, one the old system made before it (found
        # from outside: a clerk was told only that it did not exist).
        raise NotFound(
            f"结算ID{setl_id}不存在或不属于本机构；如为本系统上线前由原系统办理的结算，"
            "请在原系统办理撤销"
        )
    if found["category"] not in categories:
        # Found from outside: a pharmacy's 2208 of its own sale was told the sale did not exist.
        kind, undo = UNDONE_BY[found["category"]]
        raise Conflict(f"结算ID{setl_id}是{kind}，不能用本交易撤销，请用{undo}撤销")
    if found["mdtrt_id"] != mdtrt_id or found["psn_no"] != psn_no:
        raise Conflict(f"结算ID{setl_id}与就诊ID、人员编号不对应")
    # A settlement's visit and person never change: lock them in the module's order, then the row.
    enc = await encounters.lock(conn, mdtrt_id, fixmedins_code)
    person, balance = await persons.read(conn, psn_no, lock=True)
    row = await conn.fetchrow(
        f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE setl_id = $1 FOR UPDATE", setl_id
    )
    assert row is not None  # settlements are never deleted
    if row["status"] != "settled":
        replaced = await replacement(conn, setl_id)
        if replaced is not None:
            raise Conflict(replaced)
        if await conn.fetchval(
            f"SELECT {REVERSED} FROM settlements WHERE fixmedins_code = $1 AND setl_id = $2",
            fixmedins_code,
            setl_id,
        ):
            # Found from outside: a 2103 of a sale a 2601 had reversed was told it was already
            # cancelled, and the clerk looked for a 2103 nobody had sent.
            raise AlreadyCancelled(
                f"结算ID{setl_id}已冲正（2601，原报文{row['medins_setl_id']}），视为未发生，无需撤销"
            )
        raise AlreadyCancelled(f"结算ID{setl_id}已撤销，不能重复撤销")
    held = await payouts.hold_for_cancel(conn, setl_id, resettling=resettling)
    if held is not None:
        raise Conflict(held)
    if not resettling and enc.kind == "inpatient":
        await _not_under_the_closing_one(conn, enc.mdtrt_id, setl_id)
    delta = Accumulators(**row["delta"])
    year = int(row["year"])
    acc = await persons.year_accumulators(conn, psn_no, year)
    await persons.write_accumulators(conn, psn_no, year, apply(acc, delta, -1))
    acct_pay = int(row["acct_pay"])
    balance_after = balance + acct_pay
    if acct_pay:
        await persons.set_balance(conn, psn_no, balance_after)
    await conn.execute(
        "UPDATE settlements SET status = 'cancelled', cancel_setl_time = $2, cancel_msgid = $3,"
        " cancel_seq = nextval('settlement_event_seq') WHERE setl_id = $1",
        setl_id,
        now,
        msgid,
    )
    await fees.release(conn, mdtrt_id, setl_id)
    if row["category"] == Category.INPATIENT.value:
        left = await encounters.settled_count(conn, mdtrt_id)
        # The admission's deductible is forgotten once none of its settlements is in force.
        await encounters.update(
            conn,
            mdtrt_id,
            adm_dedc_fen=enc.adm_dedc_fen if left else None,
            adm_dedc_used_fen=enc.adm_dedc_used_fen - int(row["act_pay_dedc"]) if left else 0,
        )
    return _record_of_row(row, person, await _funds(conn, setl_id)), balance_after


# The categories that share accumulators (settlement-rules §3): a settlement reads and writes the
# caps, deductibles and layers of its group only (cvlserv is summed by all but capped by none), so
# a later settlement in another group cannot have been paid against this one's absence.
ACCUMULATOR_GROUP = {
    Category.OUTPATIENT.value: (Category.OUTPATIENT.value,),
    Category.INPATIENT.value: (Category.INPATIENT.value, Category.CHRONIC.value),
    Category.CHRONIC.value: (Category.INPATIENT.value, Category.CHRONIC.value),
    Category.PHARMACY.value: (Category.PHARMACY.value,),
}
_GROUP_LABEL = {
    Category.OUTPATIENT.value: "门诊",
    Category.INPATIENT.value: "住院（含门诊慢特病）",
    Category.CHRONIC.value: "住院（含门诊慢特病）",
    Category.PHARMACY.value: "药店购药",
}
_AGAIN = "不能冲正撤销交易，请重新结算"


async def reinstate(
    conn: asyncpg.Connection,
    *,
    now: dt.datetime,
    fixmedins_code: str,
    cancel_msgid: str,
    psn_no: str,
    categories: frozenset[str],
    refused: str | None = None,
) -> str:
    """2601 of a cancellation: the cancelled settlement in force again with exactly its amounts;
    returns its setl_id. `refused`: the refusal once the settlement is found (the emergency plan
    defers settlements now); a message that cancelled none is told so first.

    Its delta was computed against the year's accumulators, the admission's deductible, the
    account and the lines as they were; adding it back is right only while none of that has
    changed since the cancellation. So it is refused, and the counter settles again, when
    - a settlement of the person in the same year and accumulator group that came into force
      after the cancellation is in force now (it was computed without this one: both would pay
      against one cap; one cancelled since left the accumulators as they were);
    - any of its lines is no longer the very row it released (deleted, re-uploaded under the same
      feedetl_sn, settled again);
    - the account no longer holds its account payment; the person is no longer insured;
    - the visit was cancelled, or a closing inpatient settlement's discharge was cancelled, or
      a mid-way settlement of its stay was cancelled after it.
    """
    found = await conn.fetchrow(
        "SELECT setl_id, mdtrt_id, psn_no, category FROM settlements WHERE fixmedins_code = $1"
        " AND cancel_msgid = $2",
        fixmedins_code,
        cancel_msgid,
    )
    if found is None:
        claim_id = await deferred.withdrawn_by(conn, fixmedins_code, cancel_msgid)
        if claim_id is not None:
            # Found from outside: told the message had cancelled nothing, when it had withdrawn
            # a claim the patient was refunded for.
            raise Conflict(
                f"原报文{cancel_msgid}撤销的是应急预案暂存结算{claim_id}（参保人现金应已全额退还），"
                "暂存结算撤销后不能冲正恢复；如需医保结算，请使用新的报文ID重新结算"
            )
    if found is None or found["category"] not in categories:
        raise NotFound(f"未找到原报文{cancel_msgid}撤销的结算")
    if found["psn_no"] != psn_no:
        raise Conflict("人员编号与原结算的参保人不一致")
    if refused is not None:
        raise HeldByPlan(refused)
    setl_id, mdtrt_id = found["setl_id"], found["mdtrt_id"]
    enc = await encounters.lock(conn, mdtrt_id, fixmedins_code)
    person, balance = await persons.read(conn, psn_no, lock=True)
    row = await conn.fetchrow(
        "SELECT status, cancel_msgid, cancel_seq, year, category, mid_setl_flag, acct_pay,"
        " act_pay_dedc, delta, lines, adm_dedc_fen, med_type, dise_codg, chrg_bchno, service_date"
        " FROM settlements WHERE setl_id = $1 FOR UPDATE",
        setl_id,
    )
    assert row is not None  # settlements are never deleted
    if (
        row["status"] != "cancelled"
        or row["cancel_msgid"] != cancel_msgid
        or await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM settlements WHERE replaces_setl_id = $1)", setl_id
        )
    ):
        raise Conflict(f"结算{setl_id}已重新结算，不能冲正其撤销")
    if enc.status == "cancelled":
        raise Conflict(f"就诊ID{mdtrt_id}已撤销，{_AGAIN}")
    inpatient = row["category"] == Category.INPATIENT.value
    final = inpatient and row["mid_setl_flag"] == "0"
    if final:
        if enc.status != "discharged":
            raise Conflict(f"就诊ID{mdtrt_id}已撤销出院，原出院结算{_AGAIN}")
        await _no_mid_way_undone_since(conn, mdtrt_id, setl_id, row["cancel_seq"])
    persons.require_insured(person)
    year = int(row["year"])
    later = await conn.fetchval(
        "SELECT setl_id FROM settlements WHERE psn_no = $1 AND year = $2"
        " AND category = ANY($3::text[]) AND status = 'settled' AND in_force_seq > $4"
        " ORDER BY in_force_seq LIMIT 1",
        psn_no,
        year,
        list(ACCUMULATOR_GROUP[row["category"]]),
        row["cancel_seq"] or 0,
    )
    if later is not None:
        raise Conflict(
            f"参保人{year}年度{_GROUP_LABEL[row['category']]}已有后续结算（结算ID{later}），"
            f"原结算{setl_id}撤销后累计已变化，{_AGAIN}"
        )
    sns = [ln["feedetl_sn"] for ln in row["lines"]]
    if not await fees.still_released(conn, mdtrt_id, setl_id, sns):
        raise Conflict(
            f"原结算{setl_id}的费用明细撤销后已被删除、重新上传或重新结算，费用明细已变更，{_AGAIN}"
        )
    _visit_as_settled(enc, setl_id, row["med_type"], row["dise_codg"], row["service_date"])
    if row["category"] != Category.PHARMACY.value and (not inpatient or final):
        # An outpatient batch is settled once, whole, and a stay's closing settlement ends it:
        # neither stands again over lines uploaded since (found from outside: 2208, a new line
        # into the batch, 2601 of the 2208, and a second 2207 then settled the batch again).
        batch = None if inpatient else (row["chrg_bchno"] or None)
        since = await fees.unsettled_besides(conn, mdtrt_id, sns, batch)
        if since is not None:
            where = f"收费批次{batch}" if batch else f"就诊ID{mdtrt_id}"
            raise Conflict(
                f"原结算{setl_id}撤销后，{where}已上传新的费用明细（流水号{since}），{_AGAIN}"
                f"（{'2207' if batch else '2304'}将一并结算）"
            )
    acct_pay = int(row["acct_pay"])
    if balance < acct_pay:
        raise RuleRejected(
            f"个人账户余额{fen_text(balance)}已不足原结算的账户支付{fen_text(acct_pay)}，{_AGAIN}"
        )
    acc = await persons.year_accumulators(conn, psn_no, year)
    await persons.write_accumulators(conn, psn_no, year, apply(acc, Accumulators(**row["delta"])))
    if acct_pay:
        await persons.set_balance(conn, psn_no, balance - acct_pay)
    await fees.mark_settled(conn, mdtrt_id, sns, setl_id)
    await conn.execute(
        "UPDATE settlements SET status = 'settled', cancel_setl_time = NULL, cancel_msgid = NULL,"
        " cancel_seq = NULL, in_force_seq = nextval('settlement_event_seq'), reinstated_at = $2"
        " WHERE setl_id = $1",
        setl_id,
        now,
    )
    if inpatient:
        await encounters.update(
            conn,
            mdtrt_id,
            adm_dedc_fen=enc.adm_dedc_fen if enc.adm_dedc_fen is not None else row["adm_dedc_fen"],
            adm_dedc_used_fen=enc.adm_dedc_used_fen + int(row["act_pay_dedc"]),
        )
    return str(setl_id)


def _visit_as_settled(
    enc: encounters.Encounter,
    setl_id: str,
    med_type: str,
    dise_codg: str | None,
    service_date: dt.date,
) -> None:
    """The visit is still what the settlement was made for: its med_type and 病种 (a chronic
    settlement is paid at the chronic ratio for a registered disease). Found from outside: 2208,
    2203 correcting the visit to ordinary (11) with another disease, then 2601 of the 2208 put
    the chronic settlement back in force at 90%. `dise_codg` None: a settlement from before the
    ledger kept it, judged by med_type alone.

    And its service date, which picks the policy version and the year whose caps and
    deductible pay (settlement-rules §3): found from outside, 2305 of a stay's mid-way
    settlement, 2403 moving the admission from January 2026 to December 2025, then 2601 of the
    2305 stood a 2026 settlement on a 2025 stay, whose closing settlement then owed no
    deductible in 2025 and was paid from two years' funds."""
    if enc.begntime.date() != service_date:
        raise Conflict(
            f"原结算{setl_id}撤销后，就诊的开始时间已更改（原结算按{service_date.isoformat()}"
            f"结算，现为{enc.begntime.date().isoformat()}），{_AGAIN}"
        )
    chronic = CATEGORY_OF.get(med_type) is Category.CHRONIC  # an ordinary one's prices nothing
    changed = enc.med_type != med_type or (
        chronic and dise_codg is not None and (enc.dise_codg or "") != dise_codg
    )
    if changed:
        raise Conflict(
            f"原结算{setl_id}撤销后，就诊的医疗类别或病种已更改（原结算为医疗类别{med_type}"
            f"{'、病种' + dise_codg if dise_codg else ''}，现为医疗类别{enc.med_type}"
            f"{'、病种' + enc.dise_codg if enc.dise_codg else ''}），{_AGAIN}"
        )


async def _no_mid_way_undone_since(
    conn: asyncpg.Connection, mdtrt_id: str, setl_id: str, cancel_seq: int | None
) -> None:
    """A closing settlement is computed over the stay's mid-way settlements in force (their
    deductible paid, their lines settled): one cancelled after it leaves its lines unsettled and
    the stay's deductible unpaid, so the closing settlement cannot stand again over it. Found
    from outside: 2305 of the closing settlement, 2305 of the mid-way one, then 2601 of the
    first 2305 put the closing settlement back in force above four unsettled lines, and a new
    mid-way settlement was then taken under it."""
    undone = await conn.fetchval(
        "SELECT setl_id FROM settlements WHERE mdtrt_id = $1 AND setl_id <> $2"
        " AND status = 'cancelled' AND cancel_seq > $3 ORDER BY cancel_seq LIMIT 1",
        mdtrt_id,
        setl_id,
        cancel_seq or 0,
    )
    if undone is not None:
        raise Conflict(
            f"原出院结算{setl_id}撤销后，该住院的中途结算{undone}也已撤销，其费用已回到待结算，"
            f"原出院结算{_AGAIN}：请以出院结算（2304，mid_setl_flag=0）结算全部费用"
        )


async def visit_cancelled_by(
    conn: asyncpg.Connection, fixmedins_code: str, cancel_msgid: str
) -> str | None:
    """The visit of the settlement the institution's message `cancel_msgid` cancelled, if any."""
    found: str | None = await conn.fetchval(
        "SELECT mdtrt_id FROM settlements WHERE fixmedins_code = $1 AND cancel_msgid = $2",
        fixmedins_code,
        cancel_msgid,
    )
    return found


async def category_cancelled_by(
    conn: asyncpg.Connection, fixmedins_code: str, cancel_msgid: str
) -> str | None:
    """The medical category of the settlement the institution's message `cancel_msgid`
    cancelled, if any."""
    found: str | None = await conn.fetchval(
        "SELECT category FROM settlements WHERE fixmedins_code = $1 AND cancel_msgid = $2",
        fixmedins_code,
        cancel_msgid,
    )
    return found


async def paid(conn: asyncpg.Connection, setl_id: str) -> tuple[int, int]:
    """Reads a settlement's medfee_sumamt and psn_cash_pay."""
    row = await conn.fetchrow(
        "SELECT medfee_sumamt, psn_cash_pay FROM settlements WHERE setl_id = $1",
        setl_id,
    )
    return int(row["medfee_sumamt"]), int(row["psn_cash_pay"])


async def status_of(conn: asyncpg.Connection, setl_id: str) -> str | None:
    """A settlement's status ("settled", "cancelled"), None when there is none of that id."""
    status: str | None = await conn.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1", setl_id
    )
    return status


async def category_of(conn: asyncpg.Connection, fixmedins_code: str, setl_id: str) -> str | None:
    """The medical category of the institution's settlement, None if it has none by that id."""
    category: str | None = await conn.fetchval(
        "SELECT category FROM settlements WHERE fixmedins_code = $1 AND setl_id = $2",
        fixmedins_code,
        setl_id,
    )
    return category


async def exists(conn: asyncpg.Connection, setl_id: str) -> bool:
    """Whether this ledger database holds the settlement `setl_id`."""
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM settlements WHERE setl_id = $1)", setl_id)
    )


async def medfee_of(conn: asyncpg.Connection, setl_id: str) -> int:
    """A settlement's whole bill (medfee_sumamt), in fen."""
    fen: int = await conn.fetchval(
        "SELECT medfee_sumamt FROM settlements WHERE setl_id = $1", setl_id
    )
    return fen


async def visit_of(conn: asyncpg.Connection, setl_id: str) -> str:
    """Reads the visit (mdtrt_id) a settlement belongs to."""
    mdtrt_id: str = await conn.fetchval(
        "SELECT mdtrt_id FROM settlements WHERE setl_id = $1", setl_id
    )
    return mdtrt_id


async def _not_under_the_closing_one(conn: asyncpg.Connection, mdtrt_id: str, setl_id: str) -> None:
    """A stay's mid-way settlement is not cancelled (2305, or a 2601 of its 2304) while a closing
    settlement of the stay is in force: its lines, unsettled again, could only be settled by a
    second closing settlement (found from outside: the stay then held two in force). The closing
    one is cancelled first, as a HIS does (the latest settlement first). A bulk correction, which
    settles each again at once, is not held by this."""
    final = await final_of(conn, mdtrt_id)
    if final is not None and final != setl_id:
        raise Conflict(
            f"该住院已办理出院结算（结算ID{final}），不能单独撤销中途结算{setl_id}："
            "请先撤销出院结算（2305），再撤销中途结算"
        )


async def final_of(conn: asyncpg.Connection, mdtrt_id: str) -> str | None:
    """The setl_id of the visit's closing (not mid-way) settlement in force, if any."""
    return (await finals_of(conn, [mdtrt_id])).get(mdtrt_id)


async def finals_of(conn: asyncpg.Connection, mdtrt_ids: Sequence[str]) -> dict[str, str]:
    """The closing settlement in force of each of these stays that has one."""
    if not mdtrt_ids:
        return {}
    rows = await conn.fetch(
        "SELECT DISTINCT ON (mdtrt_id) mdtrt_id, setl_id FROM settlements"
        " WHERE mdtrt_id = ANY($1::text[]) AND status = 'settled' AND mid_setl_flag = '0'"
        " ORDER BY mdtrt_id, setl_time DESC, setl_id DESC",
        list(mdtrt_ids),
    )
    return {r["mdtrt_id"]: r["setl_id"] for r in rows}


async def has_final(conn: asyncpg.Connection, mdtrt_id: str) -> bool:
    """Whether the visit has a closing (not mid-way) settlement in force."""
    return await final_of(conn, mdtrt_id) is not None
