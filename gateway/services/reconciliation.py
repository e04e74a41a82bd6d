"""Reconciliation (对账) with an institution: 3201 its totals for a period against the ledger's,
3202 its settlements one by one from a detail file, and the file exchange they use (9101 upload,
9102 download). The file work itself (reading, comparing, the result zip) is
`gateway.jobs.reconcile`, run off the event loop within its bounds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Sequence

import asyncpg
import msgspec

from gateway.jobs import reconcile
from gateway.jobs.reconcile import FileLimits
from gateway.ledger import db, deferred, exchange_files, reconciliations
from gateway.ledger.settlements import CLR_TYPE
from gateway.protocol.errors import NotFound
from gateway.protocol.origin import Origin

# The clearing types the ledger's settlements carry: a 3201/3202 declaring settlements under
# another names none the centre holds.
SETTLED_CLR_TYPES: tuple[str, ...] = tuple(sorted(set(CLR_TYPE.values())))

MAX_FILE_BYTES = 20 * 1024 * 1024
# How long a reconciliation waits for a connection to another ledger database (the request's
# own deadline bounds the whole).
OTHERS_WAIT = 5.0


class StatementPeriod(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Which settlements a 3201/3202 counts (its dates read and in order); "" where not sent."""

    setl_optins: str
    stmt_begndate: dt.date
    stmt_enddate: dt.date
    insutype: str
    clr_type: str
    refd_setl_flag: bool  # refunds counted too


class StatementTotals(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What the institution declares for the period (fen; negative where refunds outweigh)."""

    fixmedins_setl_cnt: int
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int = 0  # 3201's
    cash_payamt: int = 0  # 3202's


class Statement(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A reconciliation's result: stmt_rslt (reconcile.BALANCED …) and its explanation."""

    stmt_rslt: str
    stmt_rslt_dscr: str

    @property
    def balanced(self) -> bool:
        return self.stmt_rslt == reconcile.BALANCED


class StoredFile(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A file kept for download: its query number, name and last day."""

    file_qury_no: str
    filename: str
    dld_endtime: dt.datetime


class DetailCompared(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 3202's detail file compared with the ledger's settlements, before its totals are read."""

    period: StatementPeriod
    mismatched: int  # settlements that differ
    filename: str  # the result zip's
    result: bytes


def _period(fixmedins_code: str, p: StatementPeriod) -> reconciliations.Period:
    return reconciliations.Period(
        fixmedins_code=fixmedins_code,
        setl_optins=p.setl_optins,
        begndate=p.stmt_begndate,
        enddate=p.stmt_enddate,
        insutype=p.insutype,
        clr_type=p.clr_type,
        include_refunded=p.refd_setl_flag,
    )


async def statement_total(
    conn: asyncpg.Connection,
    origin: Origin,
    p: StatementPeriod,
    declared: StatementTotals,
    others: Sequence[asyncpg.Pool] = (),
) -> Statement:
    """3201: the declared totals against the ledger's, recorded. `others`: the ledger databases
    besides the caller's, when the ledger is split by region (their settlements count too)."""
    period = _period(origin.fixmedins_code, p)
    totals = reconciliations.Totals(
        count=declared.fixmedins_setl_cnt,
        medfee_sumamt=declared.medfee_sumamt,
        fund_pay_sumamt=declared.fund_pay_sumamt,
        acct_pay=declared.acct_pay,
        cash_payamt=0,
    )
    centre = await reconciliations.centre_totals_everywhere(conn, period, others, OTHERS_WAIT)
    rslt, dscr = reconcile.compare_totals(totals, centre)
    if rslt != reconcile.BALANCED and (
        totals.count > centre.count or totals.medfee_sumamt > centre.medfee_sumamt
    ):
        # Only where the institution counts more than the centre could its DF… answers be
        # the difference (found from outside: told of them when it had counted less).
        dscr += await _claims_words(conn, period, others)
    await reconciliations.record(conn, period, origin.infno, rslt, dscr, totals, centre)
    return Statement(stmt_rslt=rslt, stmt_rslt_dscr=dscr)


async def _claims_words(
    conn: asyncpg.Connection, period: reconciliations.Period, others: Sequence[asyncpg.Pool]
) -> str:
    """A 3201 that does not balance, in a period the institution was answered deferred claims
    in: counted by a HIS that books its DF… answers, they are the difference (found from
    outside: every institution was told it disagreed on the first day after a 温州-style
    window, with nothing but "see 3202")."""

    def answered(c: asyncpg.Connection) -> Awaitable[int]:
        return deferred.claims_answered(
            c,
            period.fixmedins_code,
            period.begndate,
            period.enddate,
            insutype=period.insutype,
            clr_type=period.clr_type,
            setl_optins=period.setl_optins,
        )

    count = await answered(conn)
    for pool in others:
        async with db.elsewhere(pool, OTHERS_WAIT) as other:
            count += await answered(other)
    if not count:
        return ""
    return (
        f"；本机构该期间另有{count}笔应急预案暂存结算（结算ID以DF开头，参保人现金全额支付），"
        "不计入中心对账，如已计入请剔除后再对账"
    )


async def compare_detail(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    limits: FileLimits,
    p: StatementPeriod,
    file_qury_no: str,
    others: Sequence[asyncpg.Pool] = (),
) -> DetailCompared:
    """3202, first: the uploaded detail file (9101) against the ledger's settlements (those of
    `others` too, as for 3201)."""
    found = await exchange_files.load_file(conn, fixmedins_code, file_qury_no)
    if found is None:
        raise NotFound(f"文件查询号{file_qury_no}不存在或不属于本机构，请先上传明细文件（9101）")
    period = _period(fixmedins_code, p)
    centre_rows = await reconciliations.centre_rows_everywhere(conn, period, others, OTHERS_WAIT)
    filename = f"{fixmedins_code}_{period.begndate:%Y%m%d}_{period.enddate:%Y%m%d}_result.zip"
    # Files stored before uploads were bounded are read under the same bounds, off the loop.
    detail = await reconcile.off_loop(limits, reconcile.read_detail_file, found[1], limits)
    counted = {c.setl_id for c in centre_rows}
    unmatched = sorted({d.setl_id for d in detail} - counted)
    why = await reconciliations.why_not_counted(conn, period, unmatched) if unmatched else {}
    rows, result = await reconcile.off_loop(
        limits, reconcile.detail_result, detail, centre_rows, filename, why
    )
    mismatched = sum(1 for r in rows if r.stmt_rslt != reconcile.BALANCED)
    return DetailCompared(period=p, mismatched=mismatched, filename=filename, result=result)


async def conclude_detail(
    conn: asyncpg.Connection,
    origin: Origin,
    now: dt.datetime,
    compared: DetailCompared,
    declared: StatementTotals,
    others: Sequence[asyncpg.Pool] = (),
) -> tuple[Statement, StoredFile]:
    """3202, then: the declared totals against the ledger's (balanced only if every settlement
    is too), recorded; the result zip kept for download."""
    period = _period(origin.fixmedins_code, compared.period)
    totals = reconciliations.Totals(
        count=declared.fixmedins_setl_cnt,
        medfee_sumamt=declared.medfee_sumamt,
        fund_pay_sumamt=declared.fund_pay_sumamt,
        acct_pay=0,
        cash_payamt=declared.cash_payamt,
    )
    centre = await reconciliations.centre_totals_everywhere(conn, period, others, OTHERS_WAIT)
    rslt, dscr = reconcile.compare_totals(
        totals, centre, with_cash=True, mismatched=compared.mismatched
    )
    await reconciliations.record(conn, period, origin.infno, rslt, dscr, totals, centre)
    result_no, deadline = await exchange_files.store_file(
        conn,
        fixmedins_code=origin.fixmedins_code,
        filename=compared.filename,
        kind="result",
        content=compared.result,
        now=now,
    )
    return (
        Statement(stmt_rslt=rslt, stmt_rslt_dscr=dscr),
        StoredFile(file_qury_no=result_no, filename=compared.filename, dld_endtime=deadline),
    )


async def upload_file(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    limits: FileLimits,
    now: dt.datetime,
    filename: str,
    encoded: str,
) -> StoredFile:
    """9101: a Base64 file, read through in a reader process (bounded: a file that cannot be
    read is refused now, not at 3202, and never at the event loop's expense), then kept."""
    content = await reconcile.off_process(
        limits, fixmedins_code, reconcile.read_upload, encoded, limits, MAX_FILE_BYTES
    )
    file_no, deadline = await exchange_files.store_file(
        conn,
        fixmedins_code=fixmedins_code,
        filename=filename,
        kind="upload",
        content=content,
        now=now,
    )
    return StoredFile(file_qury_no=file_no, filename=filename, dld_endtime=deadline)


async def download_file(conn: asyncpg.Connection, fixmedins_code: str, file_qury_no: str) -> bytes:
    """9102: the institution's own file, as stored."""
    found = await exchange_files.load_file(conn, fixmedins_code, file_qury_no)
    if found is None:
        raise NotFound(f"文件查询号{file_qury_no}不存在或不属于本机构")
    return found[1]
