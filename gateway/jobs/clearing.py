"""Monthly clearing (月结算): per institution, by 医疗类别, what the funds owe it for the month.

Catalog corrections applied in the month are listed per institution with their fund, account and
patient deltas (the refund and recovery records). The table follows the Guizhou guide's 定点医药机构费用月结算 form: 人次, 实际费用总额, 统筹基金,
大额保险, 大病保险, 公务员补助, 医疗救助, 个人账户, 现金, 范围内, 范围外, and the declared amount
(申报金额 = everything the funds and accounts pay, i.e. all but cash) in figures and in words.
A month holds the settlements settled in it and still in force when the report is made.

The agency's side shows beside it: per institution the manual claims (零星报销) of its patients
settled in the month (paid back to the patients, not cleared to the institution), and for the
month the payouts to patients batched, paid and failed (the bank's return files imported in it).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec

from gateway.core import dictionaries
from gateway.core.money import fen_text
from gateway.ledger import clearing
from gateway.ops import spreadsheet
from gateway.protocol.errors import BadRequest

MED_TYPE_NAMES = dictionaries.labels("med_type")
MONEY_COLUMNS = (
    ("medfee_sumamt", "实际费用总额"),
    ("hifp_pay", "统筹基金"),
    ("hifob_pay", "大额保险"),
    ("hifmi_pay", "大病保险"),
    ("cvlserv_pay", "公务员补助"),
    ("maf_pay", "医疗救助"),
    ("acct_pay", "个人账户"),
    ("psn_cash_pay", "现金"),
    ("inscp_scp_amt", "范围内"),
    ("out_of_scope", "范围外"),
    ("declared", "申报金额"),
)


@dataclass(slots=True)
class Line:
    med_type: str
    name: str
    # The insured's region of the line's settlements (3201's setl_optins): a hospital's 异地
    # patients are a line of their own, cleared with their region's pool, not with the
    # institution's (found from outside: they were summed into the institution's region's line,
    # which no 3201 under that region could match). "" on totals.
    clr_optins: str = ""
    visits: int = 0
    medfee_sumamt: int = 0
    hifp_pay: int = 0
    hifob_pay: int = 0
    hifmi_pay: int = 0
    cvlserv_pay: int = 0
    maf_pay: int = 0
    acct_pay: int = 0
    psn_cash_pay: int = 0
    inscp_scp_amt: int = 0
    out_of_scope: int = 0
    declared: int = 0

    def add(self, other: Line) -> None:
        for name in ("visits", *(c for c, _ in MONEY_COLUMNS)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class Corrections:
    """Catalog corrections applied in the month (refund and recovery records)."""

    settlements: int = 0
    fund_delta: int = 0  # new minus old fund payments: negative means money back to the funds
    acct_delta: int = 0
    patient_cash_delta: int = 0  # positive: patients owe; negative: refunds to patients


@dataclass(slots=True)
class Reimbursements:
    """Deferred claims (主动报) settled by replay in the month: the patient paid the whole bill
    at the counter, so the fund's share is paid to the patient, not to the institution."""

    claims: int = 0
    medfee_sumamt: int = 0
    to_patients: int = 0


@dataclass(slots=True)
class ManualClaims:
    """Manual claims (零星报销) of patients treated here, settled in the month: the patient paid
    in full, the agency pays the fund's share back to the patient (not cleared here)."""

    claims: int = 0
    medfee_sumamt: int = 0
    to_patients: int = 0


@dataclass(slots=True)
class Payouts:
    """The agency's payouts to patients in the month (every institution's claims together)."""

    batches: int = 0
    batched_lines: int = 0
    batched: int = 0
    paid_lines: int = 0
    paid: int = 0
    failed_lines: int = 0
    failed: int = 0


@dataclass(slots=True)
class InstitutionReport:
    fixmedins_code: str
    fixmedins_name: str
    admdvs: str
    lines: list[Line] = field(default_factory=list)
    total: Line = field(default_factory=lambda: Line("", "合计"))
    corrections: Corrections = field(default_factory=Corrections)
    reimbursements: Reimbursements = field(default_factory=Reimbursements)
    manual_claims: ManualClaims = field(default_factory=ManualClaims)


@dataclass(slots=True)
class MonthlyReport:
    month: str
    begndate: dt.date
    enddate: dt.date
    institutions: list[InstitutionReport]
    payouts: Payouts = field(default_factory=Payouts)
    # Whether the month had ended when the report was made: a running month's figures still
    # change (found from outside: printed with nothing to say so, while the payouts refuse to
    # record it until it ends).
    ended: bool = True


# Years 1900-2999: a month past 9998 has no following month to bound it (found from outside:
# 9999-12 ended in a traceback), and the ledger holds nothing before 1900.
_MONTH = re.compile(r"^(19|2[0-9])[0-9]{2}-(0[1-9]|1[0-2])$")


def check_month(month: str) -> str:
    """A month (费款所属期) as the clearing reports and the payouts take it (YYYY-MM); ValueError
    in words otherwise. The one grammar of a month: gateway.services.payouts refuses with it."""
    if not _MONTH.match(month):
        raise ValueError(f"费款所属期“{month}”格式不正确：应为YYYY-MM（如2026-06）")
    return month


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """'2026-03' -> (2026-03-01, 2026-03-31)."""
    first = dt.date.fromisoformat(check_month(month) + "-01")
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, following - dt.timedelta(days=1)


def month_ended(month: str, today: dt.date | None = None) -> bool:
    """Whether the month's last day has passed: its figures no longer change, and its clearing
    amounts may be recorded (gateway.services.payouts)."""
    return month_bounds(month)[1] < (today or dt.date.today())


OTHERS_WAIT = 10.0  # seconds to wait for a connection to a ledger cluster
_S = TypeVar("_S", clearing.Settled, clearing.Corrected, clearing.Reimbursed)


def _merged(found: list[list[_S]], key: Callable[[_S], tuple[str, ...]]) -> list[_S]:
    """Rows of the same key read from several ledger databases, summed (their numbers; their
    names are the same), in the first database's order, then the others'."""
    out: dict[tuple[str, ...], _S] = {}
    for rows in found:
        for row in rows:
            k = key(row)
            had = out.get(k)
            if had is None:
                out[k] = row
                continue
            summed = {
                f: getattr(had, f) + getattr(row, f)
                for f in row.__struct_fields__
                if isinstance(getattr(row, f), int)
            }
            out[k] = msgspec.structs.replace(had, **summed)
    return list(out.values())


async def monthly(
    conn: asyncpg.Connection,
    month: str,
    institution: str | None = None,
    others: Sequence[asyncpg.Pool] = (),
) -> MonthlyReport:
    """The month's clearing table for every institution (or one). `conn` is the main database's;
    `others` the ledger clusters' pools when the ledger is split by region: an institution's
    settlements, corrections and claims are summed over every database."""
    begn, end = month_bounds(month)
    since = dt.datetime.combine(begn, dt.time())
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    reports: dict[str, InstitutionReport] = {}
    names = await clearing.institution_names(conn)
    if institution is not None and institution not in names:
        # Found from outside: a mistyped code printed an empty month, as if the institution had
        # settled nothing.
        raise BadRequest(f"定点医药机构{institution}不存在")
    settled: list[list[clearing.Settled]] = []
    taken_back: list[list[clearing.Settled]] = []  # earlier months' settlements cancelled in this
    put_back: list[list[clearing.Settled]] = []  # earlier months' cancellations undone in this
    corrected: list[list[clearing.Corrected]] = []
    reimbursed: list[list[clearing.Reimbursed]] = []
    claimed: list[list[clearing.Reimbursed]] = []
    paid: list[clearing.PaidOut] = []  # each database pays its own region group's patients

    async def read(db_conn: asyncpg.Connection) -> None:
        paid.append(await clearing.paid_out(db_conn, since, until))
        settled.append(await clearing.settled(db_conn, since, until, institution, names))
        for change, into in (
            (clearing.Change.TAKEN_BACK, taken_back),
            (clearing.Change.PUT_BACK, put_back),
        ):
            into.append(
                await clearing.settled(db_conn, since, until, institution, names, change=change)
            )
        corrected.append(await clearing.corrected(db_conn, since, until, institution, names))
        reimbursed.append(await clearing.reimbursed(db_conn, since, until, institution, names))
        claimed.append(await clearing.claimed(db_conn, since, until, institution, names))

    await read(conn)
    for pool in others:
        async with pool.acquire(timeout=OTHERS_WAIT) as other:
            await read(other)

    def report_of(code: str, name: str, admdvs: str) -> InstitutionReport:
        return reports.setdefault(code, InstitutionReport(code, name, admdvs))

    by_code: Callable[[Any], tuple[str, ...]] = lambda r: (r.fixmedins_code,)  # noqa: E731
    by_type: Callable[[Any], tuple[str, ...]] = lambda r: (  # noqa: E731
        r.fixmedins_code,
        r.med_type,
        r.clr_optins,
    )
    # (rows, sign, what the line's name adds, its order within a med_type)
    parts = (
        (settled, 1, "", 0),
        (put_back, 1, "（前月撤销本月恢复，补记）", 1),
        (taken_back, -1, "（前月结算本月撤销，冲减）", 2),
    )
    lines = [
        (r, sign, tag, order) for rows, sign, tag, order in parts for r in _merged(rows, by_type)
    ]

    def elsewhere(r: Any) -> bool:
        return bool(r.clr_optins) and r.clr_optins != r.admdvs

    # Within a med_type: the institution's own region's patients first, then each other region's.
    order = lambda x: (  # noqa: E731
        x[0].fixmedins_code,
        x[0].med_type,
        elsewhere(x[0]),
        x[0].clr_optins,
        x[3],
    )
    for r, sign, tag, _ in sorted(lines, key=order):
        rep = report_of(r.fixmedins_code, r.fixmedins_name, r.admdvs)
        insured = f"（异地就医，参保地{r.clr_optins}）" if elsewhere(r) else ""
        line = Line(
            med_type=r.med_type,
            name=MED_TYPE_NAMES.get(r.med_type, r.med_type) + insured + tag,
            clr_optins=r.clr_optins,
            visits=sign * r.visits,
            medfee_sumamt=sign * r.medfee_sumamt,
            hifp_pay=sign * r.hifp_pay,
            hifob_pay=sign * r.hifob_pay,
            hifmi_pay=sign * r.hifmi_pay,
            cvlserv_pay=sign * r.cvlserv_pay,
            maf_pay=sign * r.maf_pay,
            acct_pay=sign * r.acct_pay,
            psn_cash_pay=sign * r.psn_cash_pay,
            inscp_scp_amt=sign * r.inscp_scp_amt,
            out_of_scope=sign * (r.medfee_sumamt - r.inscp_scp_amt),
            declared=sign * (r.fund_pay_sumamt + r.acct_pay),
        )
        rep.lines.append(line)
        rep.total.add(line)
    for c in _merged(corrected, by_code):
        rep = report_of(c.fixmedins_code, c.fixmedins_name, c.admdvs)
        rep.corrections = Corrections(
            c.settlements, c.fund_delta, c.acct_delta, c.patient_cash_delta
        )
    for d in _merged(reimbursed, by_code):
        rep = report_of(d.fixmedins_code, d.fixmedins_name, d.admdvs)
        rep.reimbursements = Reimbursements(d.claims, d.medfee_sumamt, d.to_patients)
    for m in _merged(claimed, by_code):
        rep = report_of(m.fixmedins_code, m.fixmedins_name, m.admdvs)
        rep.manual_claims = ManualClaims(m.claims, m.medfee_sumamt, m.to_patients)
    return MonthlyReport(
        month,
        begn,
        end,
        sorted(reports.values(), key=lambda r: r.fixmedins_code),
        Payouts(
            sum(p.batches for p in paid),
            sum(p.batched_lines for p in paid),
            sum(p.batched_fen for p in paid),
            sum(p.paid_lines for p in paid),
            sum(p.paid_fen for p in paid),
            sum(p.failed_lines for p in paid),
            sum(p.failed_fen for p in paid),
        ),
        ended=month_ended(month),
    )


RUNNING_MONTH = "注意：本月尚未结束，表中数字截至出表时，月末之后请重新出表再申报"


_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_UNITS = ("", "拾", "佰", "仟")
_GROUPS = ("", "万", "亿", "万亿")


def yuan_in_words(fen: int) -> str:
    """An amount in Chinese financial capitals (大写), as printed on payment forms."""
    if fen == 0:
        return "零元整"
    sign = "负" if fen < 0 else ""
    yuan, rest = divmod(abs(fen), 100)
    jiao, cents = divmod(rest, 10)
    words = ""
    if yuan:
        groups = []
        g = 0
        while yuan:
            yuan, part = divmod(yuan, 10_000)
            groups.append((g, part))
            g += 1
        out = ""
        zero_pending = False
        for idx, part in reversed(groups):
            if part == 0:
                zero_pending = True
                continue
            chunk = ""
            digits = f"{part:04d}"
            started = False
            for pos, ch in enumerate(digits):
                d = int(ch)
                unit = _UNITS[3 - pos]
                if d == 0:
                    if started:
                        zero_pending = True
                    continue
                if zero_pending and (out or chunk):
                    chunk += "零"
                zero_pending = False
                chunk += _DIGITS[d] + unit
                started = True
            if part < 1000 and out and not chunk.startswith("零"):
                chunk = "零" + chunk
            out += chunk + _GROUPS[idx]
        words = out + "元"
    if jiao:
        words += _DIGITS[jiao] + "角"
    elif cents and words:
        words += "零"
    if cents:
        words += _DIGITS[cents] + "分"
    if not jiao and not cents:
        words += "整"
    return sign + words


def to_json(report: MonthlyReport) -> dict[str, object]:
    """Plain data; amounts as two-decimal text."""

    def line(ln: Line) -> dict[str, object]:
        d = asdict(ln)
        return {k: (fen_text(v) if k in dict(MONEY_COLUMNS) else v) for k, v in d.items()}

    return {
        "month": report.month,
        "begndate": report.begndate.isoformat(),
        "enddate": report.enddate.isoformat(),
        "ended": report.ended,
        "institutions": [
            {
                "fixmedins_code": r.fixmedins_code,
                "fixmedins_name": r.fixmedins_name,
                "admdvs": r.admdvs,
                "lines": [line(ln) for ln in r.lines],
                "total": line(r.total),
                "declared_in_words": yuan_in_words(r.total.declared),
                "corrections": {
                    "settlements": r.corrections.settlements,
                    "fund_delta": fen_text(r.corrections.fund_delta),
                    "acct_delta": fen_text(r.corrections.acct_delta),
                    "patient_cash_delta": fen_text(r.corrections.patient_cash_delta),
                },
                "deferred_reimbursements": {
                    "claims": r.reimbursements.claims,
                    "medfee_sumamt": fen_text(r.reimbursements.medfee_sumamt),
                    "to_patients": fen_text(r.reimbursements.to_patients),
                },
                "manual_claims": {
                    "claims": r.manual_claims.claims,
                    "medfee_sumamt": fen_text(r.manual_claims.medfee_sumamt),
                    "to_patients": fen_text(r.manual_claims.to_patients),
                },
            }
            for r in report.institutions
        ],
        "payouts": {
            "batches": report.payouts.batches,
            "batched": {
                "lines": report.payouts.batched_lines,
                "amount": fen_text(report.payouts.batched),
            },
            "paid": {"lines": report.payouts.paid_lines, "amount": fen_text(report.payouts.paid)},
            "failed": {
                "lines": report.payouts.failed_lines,
                "amount": fen_text(report.payouts.failed),
            },
        },
    }


def to_text(report: MonthlyReport) -> list[str]:
    """The clerk's reading of the month: what `--json` holds, in lines (found from outside: the
    manual claims, the reimbursements of deferred claims and the payouts were in the JSON only,
    and a month with nothing printed nothing at all)."""
    out = [f"费款所属期 {report.month}（{report.begndate:%Y-%m-%d}～{report.enddate:%Y-%m-%d}）"]
    if not report.ended:
        out.append(f"  {RUNNING_MONTH}")
    if not report.institutions:
        out.append("  本月没有结算、零星报销或目录更正")
    for r in report.institutions:
        out.append(
            f"{r.fixmedins_code} {r.fixmedins_name}: {r.total.visits} 人次, "
            f"申报金额 {fen_text(r.total.declared)}"
        )
        for ln in r.lines:
            out.append(
                f"  {ln.name}: {ln.visits} 人次, 实际费用 {fen_text(ln.medfee_sumamt)}, "
                f"统筹 {fen_text(ln.hifp_pay)}"
            )
        c = r.corrections
        if c.settlements:
            out.append(
                f"  目录更正: {c.settlements} 笔, 基金 {fen_text(c.fund_delta)}, "
                f"个人账户 {fen_text(c.acct_delta)}, 参保人现金 {fen_text(c.patient_cash_delta)}"
            )
        d = r.reimbursements
        if d.claims:
            out.append(
                f"  应急补结算（主动报）: {d.claims} 笔, 实际费用 {fen_text(d.medfee_sumamt)}, "
                f"应付参保人 {fen_text(d.to_patients)}"
            )
        m = r.manual_claims
        if m.claims:
            out.append(
                f"  零星报销: {m.claims} 笔, 实际费用 {fen_text(m.medfee_sumamt)}, "
                f"应付参保人 {fen_text(m.to_patients)}"
            )
    p = report.payouts
    if p.batches or p.paid_lines or p.failed_lines:
        out.append(
            # Every batch of the month, whichever institutions its lines are for: found from
            # outside, a report of one institution showed them as if they were its own.
            f"本月拨付（全部支付批次，不分机构）: {p.batches} 批, 批入 {p.batched_lines} 笔 {fen_text(p.batched)}"
            f"（{REBATCHED}）, "
            f"已付 {p.paid_lines} 笔 {fen_text(p.paid)}, 失败 {p.failed_lines} 笔 {fen_text(p.failed)}"
        )
    return out


# A line the bank failed goes back to owed and into a later batch: each batch counts it (found
# from outside: a desk read "批入" as money out, one 21,735.00 line counted twice). What went
# out is the bank's 已付.
REBATCHED = "支付失败后再次制单的款项每次制单各计一次，实付以银行回盘为准"


# The CSV's columns after the settlements' money: what the month holds besides them, on rows of
# their own (found from outside: the sheet left out the manual claims and the payouts that the
# text, JSON and HTML showed, and a desk reconciling from it saw nothing of them).
_EXTRA_COLUMNS = ("基金差额", "应付参保人", "拨付金额")


def to_csv(report: MonthlyReport) -> str:
    """One row per institution, 医疗类别 and the patients' 参保地 (the institution's own region's
    patients, then each other region's: 异地就医), then its total; after it, on rows named in the
    医疗类别 column, the month's catalog corrections, reimbursements of deferred claims and manual
    claims of its patients (paid to them by the agency, not in its 申报金额); last, the month's
    payouts (every batch, not per institution)."""
    buf = io.StringIO()
    w = spreadsheet.Writer(buf)
    w.writerow(
        [
            "费款所属期",
            "机构编码",
            "机构名称",
            "清算统筹区",
            "参保地区划",
            "医疗类别",
            "人次",
            *(n for _, n in MONEY_COLUMNS),
            *_EXTRA_COLUMNS,
        ]
    )
    empty = [""] * len(MONEY_COLUMNS)
    at = {c: i for i, (c, _) in enumerate(MONEY_COLUMNS)}

    def money(**amounts: int) -> list[str]:
        cells = list(empty)
        for column, fen in amounts.items():
            cells[at[column]] = fen_text(fen)
        return cells

    def extra(fund_delta: str = "", to_patients: str = "", paid_out: str = "") -> list[str]:
        return [fund_delta, to_patients, paid_out]

    for r in report.institutions:
        institution = [report.month, r.fixmedins_code, r.fixmedins_name, r.admdvs]
        head = [*institution, ""]  # rows of the institution, not of one region's patients
        for ln in [*r.lines, r.total]:
            w.writerow(
                [
                    *institution,
                    ln.clr_optins,
                    ln.name,
                    ln.visits,
                    *(fen_text(getattr(ln, c)) for c, _ in MONEY_COLUMNS),
                    *extra(),
                ]
            )
        c, d, m = r.corrections, r.reimbursements, r.manual_claims
        if c.settlements:
            w.writerow(
                [
                    *head,
                    "目录更正（正数参保人应补缴，负数应退还）",
                    c.settlements,
                    *money(acct_pay=c.acct_delta, psn_cash_pay=c.patient_cash_delta),
                    *extra(fund_delta=fen_text(c.fund_delta)),
                ]
            )
        if d.claims:
            w.writerow(
                [
                    *head,
                    "应急补结算（主动报，经办机构支付给参保人）",
                    d.claims,
                    *money(medfee_sumamt=d.medfee_sumamt),
                    *extra(to_patients=fen_text(d.to_patients)),
                ]
            )
        if m.claims:
            w.writerow(
                [
                    *head,
                    "零星报销（经办机构支付给参保人）",
                    m.claims,
                    *money(medfee_sumamt=m.medfee_sumamt),
                    *extra(to_patients=fen_text(m.to_patients)),
                ]
            )
    p = report.payouts
    if p.batches or p.paid_lines or p.failed_lines:
        whole = [report.month, "", "全部支付批次（不分机构）", "", ""]
        for name, lines, fen in (
            (f"本月拨付：制单（{p.batches}个支付批次，{REBATCHED}）", p.batched_lines, p.batched),
            ("本月拨付：银行回盘支付成功", p.paid_lines, p.paid),
            ("本月拨付：银行回盘支付失败（退回待支付）", p.failed_lines, p.failed),
        ):
            w.writerow([*whole, name, lines, *empty, *extra(paid_out=fen_text(fen))])
    return buf.getvalue()


_CSS = """
body { font-family: "Noto Sans CJK SC", "Noto Sans SC", sans-serif; margin: 24px; color: #111; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.meta { color: #444; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin-top: 8px; }
th, td { border: 1px solid #888; padding: 4px 6px; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; background: #f2f2f2; }
.words { margin-top: 6px; font-size: 13px; }
svg text { font-size: 11px; }
@media print { body { margin: 10mm; } section { break-inside: avoid; } .noprint { display: none; } }
"""


def _chart(report: MonthlyReport) -> str:
    """A bar chart of what each fund pays, summed over the institutions (inline SVG, no CDN)."""
    funds = [
        ("hifp_pay", "统筹基金"),
        ("hifob_pay", "大额保险"),
        ("hifmi_pay", "大病保险"),
        ("cvlserv_pay", "公务员补助"),
        ("maf_pay", "医疗救助"),
        ("acct_pay", "个人账户"),
        ("psn_cash_pay", "现金"),
    ]
    totals = [
        (label, sum(getattr(r.total, key) for r in report.institutions)) for key, label in funds
    ]
    top = max((v for _, v in totals), default=0) or 1
    width, bar_h, gap, label_w = 640, 22, 8, 90
    rows = []
    for i, (label, value) in enumerate(totals):
        y = i * (bar_h + gap)
        w = int((width - label_w - 110) * value / top)
        rows.append(
            f'<text x="0" y="{y + 15}">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="#3b6ea5"/>'
            f'<text x="{label_w + w + 6}" y="{y + 15}">{fen_text(value)}</text>'
        )
    height = len(totals) * (bar_h + gap)
    return f'<svg role="img" aria-label="各基金支付" width="{width}" height="{height}">{"".join(rows)}</svg>'


def to_html(report: MonthlyReport) -> str:
    """A printable page: one table per institution and a chart of the funds' shares."""
    parts = [
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>定点医药机构费用月结算 {report.month}</title><style>{_CSS}</style></head><body>",
        f"<h1>定点医药机构费用月结算汇总（{report.month}）</h1>",
        f'<p class="meta">费款所属期：{report.begndate:%Y年%m月%d日}～{report.enddate:%Y年%m月%d日}　单位：元、人次</p>',
        "" if report.ended else f'<p class="meta running">{RUNNING_MONTH}</p>',
        "<h2>各基金支付</h2>",
        _chart(report),
    ]
    header = "".join(f"<th>{n}</th>" for _, n in MONEY_COLUMNS)
    for r in report.institutions:
        parts.append(
            f"<section><h2>{html.escape(r.fixmedins_name)}（{r.fixmedins_code}）</h2>"
            f'<p class="meta">机构编码：{r.fixmedins_code}　清算统筹区代码：{r.admdvs}</p>'
            f"<table><thead><tr><th>序号</th><th>医疗类别</th><th>人次</th>{header}</tr></thead><tbody>"
        )
        for i, ln in enumerate(r.lines, start=1):
            cells = "".join(
                f'<td class="n">{fen_text(getattr(ln, c))}</td>' for c, _ in MONEY_COLUMNS
            )
            parts.append(
                f'<tr><td>{i}</td><td>{html.escape(ln.name)}</td><td class="n">{ln.visits}</td>{cells}</tr>'
            )
        cells = "".join(
            f'<td class="n">{fen_text(getattr(r.total, c))}</td>' for c, _ in MONEY_COLUMNS
        )
        parts.append(
            f'<tr class="total"><td></td><td>合计</td><td class="n">{r.total.visits}</td>{cells}</tr>'
        )
        parts.append(
            "</tbody></table>"
            f'<p class="words">申报金额合计（小写）：{fen_text(r.total.declared)}　'
            f"申报金额合计（大写）：{yuan_in_words(r.total.declared)}</p>"
        )
        c = r.corrections
        if c.settlements:
            parts.append(
                f'<p class="words">本月目录对照纠错重结算{c.settlements}笔：基金差额{fen_text(c.fund_delta)}，'
                f"个人账户差额{fen_text(c.acct_delta)}，参保人现金差额{fen_text(c.patient_cash_delta)}"
                "（正数为参保人应补缴，负数为应退还参保人）</p>"
            )
        d = r.reimbursements
        if d.claims:
            parts.append(
                f'<p class="words">本月补结算暂存（主动报）结算{d.claims}笔，医疗费用{fen_text(d.medfee_sumamt)}，'
                f"基金应支付部分{fen_text(d.to_patients)}直接支付给参保人（参保人已在机构全额现金支付）</p>"
            )
        m = r.manual_claims
        if m.claims:
            parts.append(
                f'<p class="words manual-claims">本月零星报销结算{m.claims}笔，医疗费用{fen_text(m.medfee_sumamt)}，'
                f"应报销{fen_text(m.to_patients)}由经办机构支付给参保人（不计入本机构申报金额）</p>"
            )
        parts.append("</section>")
    if not report.institutions:
        parts.append("<p>本月没有结算。</p>")
    p = report.payouts
    parts.append(
        '<section id="payouts"><h2>本月拨付（全部支付批次：参保人报销款与机构清算款，不分机构）</h2>'
        "<table><thead><tr><th>项目</th><th>笔数</th><th>金额</th></tr></thead><tbody>"
        f'<tr><td>制单（{p.batches}个支付批次，{REBATCHED}）</td><td class="n">{p.batched_lines}</td>'
        f'<td class="n">{fen_text(p.batched)}</td></tr>'
        f'<tr><td>银行回盘：支付成功</td><td class="n">{p.paid_lines}</td>'
        f'<td class="n">{fen_text(p.paid)}</td></tr>'
        f'<tr><td>银行回盘：支付失败（退回待支付）</td><td class="n">{p.failed_lines}</td>'
        f'<td class="n">{fen_text(p.failed)}</td></tr>'
        "</tbody></table></section>"
    )
    parts.append("</body></html>")
    return "".join(parts)
