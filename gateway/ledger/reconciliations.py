"""Day-end reconciliation's rows: the settlements a period counts, and each check's result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from gateway.core.money import fen_text
from gateway.ledger import db, settlements


@dataclass(frozen=True, slots=True)
class Totals:
    """A count of settlements and their amounts (fen), declared or the ledger's."""

    count: int
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    cash_payamt: int

    def describe(self, *, with_cash: bool = False) -> str:
        """In words, with the figure compared besides the two totals: the account's (3201), or
        the cash (3202 declares `cash_payamt`, no account: found from outside, its answer said
        the institution reported an account total of 0.00 it never sent)."""
        last = (
            f"现金支付{fen_text(self.cash_payamt)}"
            if with_cash
            else f"个人账户{fen_text(self.acct_pay)}"
        )
        return (
            f"{self.count}笔，医疗费总额{fen_text(self.medfee_sumamt)}，"
            f"基金支付{fen_text(self.fund_pay_sumamt)}，{last}"
        )


@dataclass(frozen=True, slots=True)
class Period:
    """Which settlements a reconciliation counts (see gateway.jobs.reconcile)."""

    fixmedins_code: str
    setl_optins: str
    begndate: dt.date
    enddate: dt.date
    insutype: str = ""
    clr_type: str = ""
    include_refunded: bool = False


@dataclass(frozen=True, slots=True)
class CentreRow:
    """One settlement the period counts, as 3202 compares it."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    msgid: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    refunded: bool


@dataclass(frozen=True, slots=True)
class Uncounted:
    """A settlement (or claim number) of the institution's own that a detail file lists and the
    period does not count: why not, in the clerk's words, and what the centre holds for it (a
    claim number has no settlement: no msgid, no amounts)."""

    memo: str
    msgid: str = ""
    medfee_sumamt: int = 0
    fund_pay_sumamt: int = 0
    acct_pay: int = 0


_REVERSED = settlements.REVERSED


def _where(p: Period) -> tuple[str, list[object]]:
    where = [
        "fixmedins_code = $1",
        "clr_optins = $2",
        "setl_time >= $3",
        "setl_time < $4",
    ]
    args: list[object] = [
        p.fixmedins_code,
        p.setl_optins,
        dt.datetime.combine(p.begndate, dt.time()),
        dt.datetime.combine(p.enddate + dt.timedelta(days=1), dt.time()),
    ]
    if p.insutype:
        args.append(p.insutype)
        where.append(f"insutype = ${len(args)}")
    if p.clr_type:
        args.append(p.clr_type)
        where.append(f"clr_type = ${len(args)}")
    if not p.include_refunded:
        where.append("status = 'settled'")
    else:
        # A settlement a 2601 reversed never happened for the institution (冲正 puts both sides
        # back as they were: its HIS keeps no record of it), so it is not a refunded settlement
        # either (found from outside: with refd_setl_flag 1 it was counted, "中心多").
        where.append(f"NOT {_REVERSED}")
    # A manual claim's settlement (零星报销) is the agency's with the patient, not the
    # institution's: the institution never made it and is not cleared for it.
    where.append("NOT EXISTS (SELECT 1 FROM manual_claims c WHERE c.setl_id = settlements.setl_id)")
    # Nor is a deferred claim's settlement made by replay: the institution answered the patient
    # all-cash under the claim's number and never saw the settlement the fund pays the patient.
    where.append(
        "NOT EXISTS (SELECT 1 FROM deferred d WHERE d.kind = 'claim'"
        " AND d.setl_id = settlements.setl_id)"
    )
    return " AND ".join(where), args


async def centre_totals_everywhere(
    conn: asyncpg.Connection, p: Period, others: Sequence[asyncpg.Pool], wait: float
) -> Totals:
    """`centre_totals` over the caller's database and every other ledger database (the ledger
    split by region, gateway.ledger.partitions: an institution's patients of other regions are
    settled there)."""
    found = [await centre_totals(conn, p)]
    for pool in others:
        async with db.elsewhere(pool, wait) as other:
            found.append(await centre_totals(other, p))
    return Totals(
        count=sum(t.count for t in found),
        medfee_sumamt=sum(t.medfee_sumamt for t in found),
        fund_pay_sumamt=sum(t.fund_pay_sumamt for t in found),
        acct_pay=sum(t.acct_pay for t in found),
        cash_payamt=sum(t.cash_payamt for t in found),
    )


async def centre_rows_everywhere(
    conn: asyncpg.Connection, p: Period, others: Sequence[asyncpg.Pool], wait: float
) -> list[CentreRow]:
    """`centre_rows` over every ledger database: the caller's first, then each other's, each in
    settlement order."""
    rows = await centre_rows(conn, p)
    for pool in others:
        async with db.elsewhere(pool, wait) as other:
            rows += await centre_rows(other, p)
    return rows


async def why_not_counted(
    conn: asyncpg.Connection, p: Period, setl_ids: Sequence[str]
) -> dict[str, Uncounted]:
    """For the institution's own settlement ids (and deferred claim numbers) a detail file
    lists but the period does not count, why not, in the clerk's words (found from outside:
    every such row read "中心没有" although the centre held it, cancelled, of another day or
    group, or replayed from a claim). Ids the ledger does not hold for the institution are
    left out: they are the centre's "没有", and another institution's stay unnamed.
    A settlement's msgid and amounts come with it (found from outside: its result row had an
    empty msgid and 0.00s, though protocol §2.7's rows carry both and the centre holds them)."""
    why: dict[str, Uncounted] = {}
    for r in await conn.fetch(
        "SELECT setl_id, status, setl_time::date AS day, insutype, clr_type, clr_optins,"
        " medins_setl_id, medfee_sumamt, fund_pay_sumamt, acct_pay,"
        f" {_REVERSED} AS reversed"
        " FROM settlements WHERE fixmedins_code = $1 AND setl_id = ANY($2::text[])",
        p.fixmedins_code,
        list(setl_ids),
    ):
        if r["reversed"]:
            memo = "中心此结算已冲正（2601），视为未发生，不计入对账"
        elif r["status"] != "settled" and not p.include_refunded:
            # The request's flag, named as such: found from outside, the row's own flag read 1
            # beside words saying 0.
            memo = "中心此结算已撤销，本次对账请求的退费结算标志（refd_setl_flag）为0，不计入已撤销的结算"
        elif not p.begndate <= r["day"] <= p.enddate:
            memo = f"中心此结算的结算日期为{r['day']:%Y-%m-%d}，不在本次对账期间"
        else:
            memo = (
                f"中心此结算为险种{r['insutype']}、清算类别{r['clr_type']}、清算经办机构"
                f"{r['clr_optins']}，不在本次对账范围"
            )
        why[r["setl_id"]] = Uncounted(
            memo,
            r["medins_setl_id"] or "",
            int(r["medfee_sumamt"]),
            int(r["fund_pay_sumamt"]),
            int(r["acct_pay"]),
        )
    for r in await conn.fetch(
        "SELECT d.claim_id, d.status, d.setl_id, s.status AS replayed_status FROM deferred d"
        " LEFT JOIN settlements s ON s.setl_id = d.setl_id WHERE d.kind = 'claim'"
        " AND d.fixmedins_code = $1 AND d.claim_id = ANY($2::text[])",
        p.fixmedins_code,
        list(setl_ids),
    ):
        # What became of it, as 5203 tells it (found from outside: a withdrawn claim's row said
        # the patient had paid in cash, a replayed-then-cancelled one that the agency pays).
        if r["status"] == "withdrawn":
            since = "，已撤销，现金已全额退还"
        elif r["status"] == "settled" and r["replayed_status"] == "cancelled":
            since = f"；已补结算为{r['setl_id']}，该结算已撤销，现金已全额退还，报销款已取消"
        elif r["status"] == "settled":
            since = f"；已补结算为{r['setl_id']}，基金支付部分由经办机构报销给参保人"
        else:
            since = "，参保人已现金全额支付"
        why[r["claim_id"]] = Uncounted(
            f"{r['claim_id']}是应急期间的暂存结算（主动报）号，不是医药机构的医保结算，"
            f"不计入对账{since}"
        )
    return why


async def centre_totals(conn: asyncpg.Connection, p: Period) -> Totals:
    """Reads the totals of the settlements the period counts."""
    where, args = _where(p)
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(medfee_sumamt), 0) AS medfee,"
        " coalesce(sum(fund_pay_sumamt), 0) AS fund, coalesce(sum(acct_pay), 0) AS acct,"
        f" coalesce(sum(psn_cash_pay), 0) AS cash FROM settlements WHERE {where}",
        *args,
    )
    return Totals(
        int(row["n"]), int(row["medfee"]), int(row["fund"]), int(row["acct"]), int(row["cash"])
    )


async def centre_rows(conn: asyncpg.Connection, p: Period) -> list[CentreRow]:
    """Reads the settlements the period counts, one row each, in settlement order."""
    where, args = _where(p)
    rows = await conn.fetch(
        "SELECT setl_id, mdtrt_id, psn_no, medins_setl_id, medfee_sumamt, fund_pay_sumamt, acct_pay,"
        f" status FROM settlements WHERE {where} ORDER BY setl_time, setl_id",
        *args,
    )
    return [
        CentreRow(
            r["setl_id"],
            r["mdtrt_id"],
            r["psn_no"],
            r["medins_setl_id"],
            int(r["medfee_sumamt"]),
            int(r["fund_pay_sumamt"]),
            int(r["acct_pay"]),
            r["status"] != "settled",
        )
        for r in rows
    ]


async def record(
    conn: asyncpg.Connection,
    p: Period,
    infno: str,
    rslt: str,
    dscr: str,
    declared: Totals,
    centre: Totals,
) -> None:
    """Writes one reconciliation check: its period, result, and both sides' totals."""
    await conn.execute(
        "INSERT INTO reconciliations (fixmedins_code, infno, setl_optins, insutype, clr_type, stmt_begndate,"
        " stmt_enddate, stmt_rslt, stmt_rslt_dscr, declared, centre) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
        p.fixmedins_code,
        infno,
        p.setl_optins,
        p.insutype,
        p.clr_type,
        p.begndate,
        p.enddate,
        rslt,
        dscr,
        msgspec.to_builtins(declared),
        msgspec.to_builtins(centre),
    )
