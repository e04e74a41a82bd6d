"""Settlements: computed against the person's locked state, committed with everything they change.

A settlement and all it changes (accumulators, account balance, fee lines, admission deductible,
fund rows, the idempotency answer) commit in one transaction before the answer is sent. A
cancellation subtracts exactly what the settlement stored in `delta`, never a recomputation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from gateway.core.catalog import Snapshot
from gateway.core.model import (
    Accumulators,
    Category,
    FundRow,
    Institution,
    Person,
    PersonState,
    Settlement,
    Visit,
)
from gateway.core.settle import apply, settle
from gateway.errors import Conflict, NotFound, RuleRejected
from gateway.ledger import encounters, fees, persons
from gateway.ledger.encounters import Encounter
from gateway.ledger.writes import Writes
from gateway.money import fen_text

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


def check_declared(s: Settlement, declared: Declared) -> None:
    """The request's totals must equal the uploaded lines' (settlement-rules §2)."""
    if declared.medfee_sumamt != s.medfee_sumamt:
        raise RuleRejected(
            f"医疗费总额{fen_text(declared.medfee_sumamt)}与费用明细合计{fen_text(s.medfee_sumamt)}不一致，"
            "请核对上传的费用明细"
        )
    for name, label in (
        ("fulamt_ownpay_amt", "全自费金额"),
        ("overlmt_selfpay", "超限价自费金额"),
        ("preselfpay_amt", "先行自付金额"),
        ("inscp_scp_amt", "符合政策范围金额"),
    ):
        sent = getattr(declared, name)
        if sent is not None and sent != getattr(s, name):
            raise RuleRejected(
                f"{label}{fen_text(sent)}与中心计算结果{fen_text(getattr(s, name))}不一致"
            )


async def _state(
    conn: asyncpg.Connection, ctx: Context, person: Person, balance: int, acc: Accumulators
) -> PersonState:
    enc = ctx.encounter
    other = False
    if enc.kind == "inpatient":
        other = bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM settlements WHERE psn_no = $1 AND year = $2"
                " AND category = 'inpatient' AND status = 'settled' AND mdtrt_id <> $3)",
                person.psn_no,
                ctx.visit.service_date.year,
                enc.mdtrt_id,
            )
        )
    return PersonState(
        person=person,
        balance_fen=balance,
        year=acc,
        admission_dedc_fen=enc.adm_dedc_fen,
        admission_dedc_used_fen=enc.adm_dedc_used_fen,
        other_inpatient_in_force=other,
    )


async def compute(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    ctx: Context,
    lines: Sequence[fees.StoredLine],
    declared: Declared,
    *,
    lock: bool,
    use_account: bool = True,
) -> tuple[Settlement, PersonState]:
    """The fund split against the person's current state; lock=True for a real settlement."""
    if not lines:
        raise NotFound("没有待结算的费用明细（可能已结算或未上传），请核对收费批次号")
    psn_no, year = ctx.encounter.psn_no, ctx.visit.service_date.year
    if lock:
        # Two statements on purpose: the accumulators must be read after the lock is granted.
        # In one locking join PostgreSQL re-reads only the locked row when it had to wait, and
        # the joined accumulators would be those of before the other settlement committed.
        person, balance = await persons.read(conn, psn_no, lock=True)
        acc = await persons.year_accumulators(conn, psn_no, year)
    else:
        person, balance, acc = await persons.read_with_year(conn, psn_no, year)
    persons.require_insured(person)
    state = await _state(conn, ctx, person, balance, acc)
    s = settle(snapshot, ctx.visit, state, lines, use_account=use_account)
    check_declared(s, declared)
    return s, state


async def new_setl_id(conn: asyncpg.Connection, region: str, on: dt.datetime) -> str:
    """A fresh 结算ID (same shape as the 就诊ID)."""
    return encounters.ledger_id(region, on, int(await conn.fetchval("SELECT nextval('setl_seq')")))


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
    )


def _lines_json(s: Settlement, snapshot: Snapshot, ctx: Context) -> list[dict[str, Any]]:
    out = []
    for ln in s.lines:
        mapping = snapshot.mapping(
            ctx.visit.fixmedins_code, ln.medins_list_codg, ctx.visit.service_date
        )
        row = msgspec.structs.asdict(ln)
        row["mapping"] = None if mapping is None else msgspec.to_builtins(mapping)
        out.append(row)
    return out


INSERT = (
    "INSERT INTO settlements (setl_id, fixmedins_code, mdtrt_id, psn_no, infno, medins_setl_id,"
    " chrg_bchno, mid_setl_flag, med_type, insutype, category, clr_type, clr_optins,"
    " mdtrtarea_admvs, service_date, year, setl_time, status, snapshot_version,"
    f" {', '.join(AMOUNT_FIELDS)}, pool_prop_bp, delta, lines, dev_no, opter, acct_used_flag,"
    " replaces_setl_id, adm_dedc_fen)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,'settled',$18,"
    + ", ".join(f"${i + 19}" for i in range(len(AMOUNT_FIELDS) + 8))
    + ")"
)
INSERT_FUND = (
    "INSERT INTO settlement_funds (setl_id, fund_pay_type, fund_pay_type_name, fund_payamt,"
    " inscp_scp_amt, crt_payb_lmt_amt) VALUES ($1,$2,$3,$4,$5,$6)"
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
        _lines_json(s, snapshot, ctx),
        ctx.dev_no,
        ctx.opter,
        ctx.visit.acct_used_flag,
        replaces,
        s.admission_dedc_fen if inpatient else None,
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


async def commit(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    ctx: Context,
    lines: Sequence[fees.StoredLine],
    s: Settlement,
    state: PersonState,
    now: dt.datetime,
    *,
    replaces: str | None = None,
) -> Record:
    """Write the settlement and everything it changes (the caller holds the transaction).

    `replaces` names the refunded settlement this one makes again (bulk corrections); at the
    counter the link is found: the latest refunded settlement of the same visit and batch.
    """
    setl_id = await new_setl_id(conn, ctx.institution.admdvs, now)
    writes = Writes()
    rec = stage(
        writes,
        snapshot,
        ctx,
        lines,
        s,
        state,
        now,
        setl_id=setl_id,
        replaces=replaces or await _refunded_predecessor(conn, ctx),
    )
    await writes.flush(conn)
    return rec


_UNREPLACED_REFUNDS = (
    "SELECT DISTINCT ON (s.mdtrt_id, s.chrg_bchno) s.mdtrt_id, s.chrg_bchno, s.setl_id"
    " FROM settlements s WHERE s.mdtrt_id = ANY($1::text[]) AND s.status = 'cancelled'"
    " AND NOT EXISTS (SELECT 1 FROM settlements r WHERE r.replaces_setl_id = s.setl_id)"
    " ORDER BY s.mdtrt_id, s.chrg_bchno, s.cancel_setl_time DESC, s.setl_id DESC"
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


async def _refunded_predecessor(conn: asyncpg.Connection, ctx: Context) -> str | None:
    """The visit's (and batch's) latest refunded settlement that nothing replaces yet."""
    found = await refunded_predecessors(conn, [ctx.encounter.mdtrt_id])
    return found.get(ctx.encounter.mdtrt_id, {}).get(ctx.chrg_bchno)


_SETTLEMENT_COLUMNS = (
    "setl_id, fixmedins_code, mdtrt_id, psn_no, infno, medins_setl_id, med_type, category, year,"
    " clr_type, clr_optins, setl_time, status, pool_prop_bp, delta, " + ", ".join(AMOUNT_FIELDS)
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
    """5203: the institution's settlements matching the given keys, newest first."""
    where = ["fixmedins_code = $1"]
    args: list[object] = [fixmedins_code]
    for column, value in (("setl_id", setl_id), ("mdtrt_id", mdtrt_id), ("psn_no", psn_no)):
        if value:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    rows = await conn.fetch(
        f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE {' AND '.join(where)}"
        f" ORDER BY setl_time DESC, setl_id DESC LIMIT {int(limit)}",
        *args,
    )
    out = []
    for row in rows:
        person, _ = await persons.read(conn, row["psn_no"])
        out.append(_record_of_row(row, person, await _funds(conn, row["setl_id"])))
    return out


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
) -> tuple[Record, int]:
    """Reverse exactly what the settlement applied; returns it and the balance after the refund."""
    # Lock the person first, as settlements do, so the two never deadlock.
    person, balance = await persons.read(conn, psn_no, lock=True)
    row = await conn.fetchrow(
        f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE setl_id = $1 AND fixmedins_code = $2"
        " FOR UPDATE",
        setl_id,
        fixmedins_code,
    )
    if row is None or row["category"] not in categories:
        raise NotFound(f"结算ID{setl_id}不存在或不属于本机构")
    if row["mdtrt_id"] != mdtrt_id or row["psn_no"] != psn_no:
        raise Conflict(f"结算ID{setl_id}与就诊ID、人员编号不对应")
    if row["status"] != "settled":
        raise Conflict(f"结算ID{setl_id}已撤销，不能重复撤销")
    delta = Accumulators(**row["delta"])
    year = int(row["year"])
    acc = await persons.year_accumulators(conn, psn_no, year)
    await persons.write_accumulators(conn, psn_no, year, apply(acc, delta, -1))
    acct_pay = int(row["acct_pay"])
    balance_after = balance + acct_pay
    if acct_pay:
        await persons.set_balance(conn, psn_no, balance_after)
    await conn.execute(
        "UPDATE settlements SET status = 'cancelled', cancel_setl_time = $2, cancel_msgid = $3"
        " WHERE setl_id = $1",
        setl_id,
        now,
        msgid,
    )
    await fees.release(conn, setl_id)
    if row["category"] == Category.INPATIENT.value:
        enc = await encounters.get(conn, mdtrt_id, fixmedins_code, lock=True)
        left = await encounters.settled_count(conn, mdtrt_id)
        # The admission's deductible is forgotten once none of its settlements is in force.
        await encounters.update(
            conn,
            mdtrt_id,
            adm_dedc_fen=enc.adm_dedc_fen if left else None,
            adm_dedc_used_fen=enc.adm_dedc_used_fen - int(row["act_pay_dedc"]) if left else 0,
        )
    return _record_of_row(row, person, await _funds(conn, setl_id)), balance_after
