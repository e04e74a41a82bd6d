"""Day-end reconciliation: the institution's totals and detail against the ledger (3201/3202).

Which settlements count: the institution's settlements with `clr_optins` = the requested
`setl_optins`, settled on a day of [stmt_begndate, stmt_enddate]. With `refd_setl_flag` 0 (the
default) only settlements in force count; with 1, refunded (cancelled) ones are counted too, with
their original amounts, as the Hunan centre's REFD_SETL_FLAG does.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from dataclasses import dataclass

import asyncpg

from gateway.errors import BadRequest
from gateway.money import AmountError, fen_text, to_fen

BALANCED, CENTRE_MORE, INSTITUTION_MORE, INCONSISTENT = "0", "1", "2", "3"
RESULT_NAMES = {
    BALANCED: "对平",
    CENTRE_MORE: "中心多",
    INSTITUTION_MORE: "医药机构多",
    INCONSISTENT: "数据不一致",
}
DETAIL_COLUMNS = (
    "setl_id",
    "mdtrt_id",
    "psn_no",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "refd_setl_flag",
)
RESULT_COLUMNS = (
    "psn_no",
    "mdtrt_id",
    "setl_id",
    "msgid",
    "stmt_rslt",
    "refd_setl_flag",
    "memo",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
)


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    cash_payamt: int

    def describe(self) -> str:
        return (
            f"{self.count}笔，医疗费总额{fen_text(self.medfee_sumamt)}，基金支付{fen_text(self.fund_pay_sumamt)}，"
            f"个人账户{fen_text(self.acct_pay)}"
        )


@dataclass(frozen=True, slots=True)
class Period:
    fixmedins_code: str
    setl_optins: str
    begndate: dt.date
    enddate: dt.date
    insutype: str = ""
    clr_type: str = ""
    include_refunded: bool = False


@dataclass(frozen=True, slots=True)
class CentreRow:
    setl_id: str
    mdtrt_id: str
    psn_no: str
    msgid: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    refunded: bool


@dataclass(frozen=True, slots=True)
class DetailRow:
    setl_id: str
    mdtrt_id: str
    psn_no: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    refd_setl_flag: str


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
    return " AND ".join(where), args


async def centre_totals(conn: asyncpg.Connection, p: Period) -> Totals:
    """The ledger's totals for the period."""
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
    """The ledger's settlements of the period, one row each."""
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


def compare_totals(declared: Totals, centre: Totals, *, with_cash: bool = False) -> tuple[str, str]:
    """stmt_rslt and its explanation for a totals check (3201, and 3202's header)."""
    same_amounts = (
        declared.medfee_sumamt == centre.medfee_sumamt
        and declared.fund_pay_sumamt == centre.fund_pay_sumamt
        and (
            declared.cash_payamt == centre.cash_payamt
            if with_cash
            else declared.acct_pay == centre.acct_pay
        )
    )
    if declared.count == centre.count and same_amounts:
        return BALANCED, f"对平：{centre.describe()}"
    if centre.count > declared.count:
        rslt = CENTRE_MORE
    elif centre.count < declared.count:
        rslt = INSTITUTION_MORE
    else:
        rslt = INCONSISTENT
    return (
        rslt,
        f"{RESULT_NAMES[rslt]}：中心{centre.describe()}；医药机构上报{declared.describe()}。请下载明细对账（3202）核对",
    )


def read_detail_file(content: bytes) -> list[DetailRow]:
    """The 9101 detail file: a zip holding a tab-separated .txt, or the .txt itself."""
    if content[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                if not names:
                    raise BadRequest("明细文件压缩包为空")
                content = zf.read(names[0])
        except zipfile.BadZipFile as exc:
            raise BadRequest("明细文件不是有效的zip压缩包") from exc
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = content.decode("gbk", errors="strict")
    rows: list[DetailRow] = []
    for n, fields in enumerate(csv.reader(io.StringIO(text), delimiter="\t"), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if fields[0].strip() == "setl_id":
            continue  # a header line
        if len(fields) < len(DETAIL_COLUMNS) - 1:
            raise BadRequest(
                f"明细文件第{n}行字段数不足，应为{len(DETAIL_COLUMNS)}列（制表符分隔）"
            )
        f = [x.strip() for x in fields] + [""] * len(DETAIL_COLUMNS)
        try:
            rows.append(
                DetailRow(f[0], f[1], f[2], to_fen(f[3]), to_fen(f[4]), to_fen(f[5]), f[6] or "0")
            )
        except AmountError as exc:
            raise BadRequest(f"明细文件第{n}行金额格式错误：{exc}") from exc
    return rows


@dataclass(frozen=True, slots=True)
class ResultRow:
    psn_no: str
    mdtrt_id: str
    setl_id: str
    msgid: str
    stmt_rslt: str
    refd_setl_flag: str
    memo: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int


def compare_details(detail: list[DetailRow], centre: list[CentreRow]) -> list[ResultRow]:
    """One result row per settlement on either side, named by setl_id."""
    mine = {r.setl_id: r for r in detail}
    out: list[ResultRow] = []
    for c in centre:
        flag = "1" if c.refunded else "0"
        d = mine.pop(c.setl_id, None)
        if d is None:
            rslt, memo = CENTRE_MORE, "中心有此结算，医药机构明细中没有"
        elif (d.medfee_sumamt, d.fund_pay_sumamt, d.acct_pay) != (
            c.medfee_sumamt,
            c.fund_pay_sumamt,
            c.acct_pay,
        ):
            rslt = INCONSISTENT
            memo = (
                f"金额不一致：医药机构医疗费总额{fen_text(d.medfee_sumamt)}、基金{fen_text(d.fund_pay_sumamt)}、"
                f"账户{fen_text(d.acct_pay)}"
            )
        elif d.psn_no != c.psn_no or d.mdtrt_id != c.mdtrt_id:
            rslt, memo = INCONSISTENT, "人员编号或就诊ID不一致"
        else:
            rslt, memo = BALANCED, ""
        out.append(
            ResultRow(
                c.psn_no,
                c.mdtrt_id,
                c.setl_id,
                c.msgid,
                rslt,
                flag,
                memo,
                c.medfee_sumamt,
                c.fund_pay_sumamt,
                c.acct_pay,
            )
        )
    for d in mine.values():
        out.append(
            ResultRow(
                d.psn_no,
                d.mdtrt_id,
                d.setl_id,
                "",
                INSTITUTION_MORE,
                d.refd_setl_flag,
                "医药机构有此结算，中心没有",
                0,
                0,
                0,
            )
        )
    return out


def result_file(rows: list[ResultRow], filename: str) -> bytes:
    """The 3202 result: a zip holding one tab-separated .txt with a header line."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for r in rows:
        w.writerow(
            [
                r.psn_no,
                r.mdtrt_id,
                r.setl_id,
                r.msgid,
                r.stmt_rslt,
                r.refd_setl_flag,
                r.memo,
                fen_text(r.medfee_sumamt),
                fen_text(r.fund_pay_sumamt),
                fen_text(r.acct_pay),
            ]
        )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(filename.removesuffix(".zip") + ".txt", buf.getvalue().encode("utf-8"))
    return out.getvalue()


async def new_file_no(conn: asyncpg.Connection, on: dt.datetime) -> str:
    """A file query number: F + yyyyMMdd + serial."""
    serial = await conn.fetchval("SELECT nextval('file_seq')")
    return f"F{on:%Y%m%d}{int(serial):010d}"


async def store_file(
    conn: asyncpg.Connection,
    *,
    fixmedins_code: str,
    filename: str,
    kind: str,
    content: bytes,
    now: dt.datetime,
) -> tuple[str, dt.datetime]:
    """Keep a file for 7 days; returns its query number and download deadline."""
    file_no = await new_file_no(conn, now)
    deadline = (now + dt.timedelta(days=7)).replace(microsecond=0)
    await conn.execute(
        "INSERT INTO exchange_files (file_qury_no, fixmedins_code, filename, kind, content, created_at, dld_endtime)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        file_no,
        fixmedins_code,
        filename,
        kind,
        content,
        now,
        deadline,
    )
    return file_no, deadline


async def load_file(
    conn: asyncpg.Connection, fixmedins_code: str, file_qury_no: str
) -> tuple[str, bytes] | None:
    """The institution's own file, if it exists."""
    row = await conn.fetchrow(
        "SELECT filename, content FROM exchange_files WHERE file_qury_no = $1 AND fixmedins_code = $2",
        file_qury_no,
        fixmedins_code,
    )
    return None if row is None else (row["filename"], bytes(row["content"]))
