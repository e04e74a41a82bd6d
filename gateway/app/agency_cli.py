"""`python -m gateway claims|payouts …`: the agency's commands (零星报销 and 拨付).

Every command opens the database, runs one step of gateway.services.manual_claims or
gateway.services.payouts, and prints the result (JSON with --json); a refusal prints its
Chinese message and exits 2. Account numbers are masked in everything printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gateway.app.cli_args import config_arg, month_arg
from gateway.app.cli_database import (
    NOT_UTF8,
    OUTPUT_CLOSED,
    UNREACHABLE,
    database_url,
    ledger_databases,
    output_closed,
    unreachable,
)
from gateway.app.config import DEFAULT_CONFIG, DEFAULT_REFERENCE, load_config
from gateway.app.reference import load_reference
from gateway.core.catalog import Snapshot
from gateway.core.dates import DateRules
from gateway.core.money import fen_text
from gateway.jobs import clearing
from gateway.ledger import db, reference_store
from gateway.ledger import manual_claims as claim_store
from gateway.ledger import payouts as payout_store
from gateway.ledger.partitions import Partitions
from gateway.protocol.errors import BadRequest, GatewayError
from gateway.services import agency_ledgers, claim_form, manual_claims, payouts


def _operator(args: argparse.Namespace) -> str:
    """Who did it, for the claim, the batch and the audit log: --operator, else the login."""
    return str(args.operator or f"cli:{getpass.getuser()}")


def _run(args: argparse.Namespace, work: Callable[[Partitions], Awaitable[int]]) -> int:
    """`work` over the ledger databases: the main one, and the clusters `--config` names."""

    async def go() -> int:
        pool = await db.create_pool(database_url(args), min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await db.migrate(conn)
            async with ledger_databases(pool, Path(args.config)) as ledgers:
                return await work(ledgers)
        finally:
            await pool.close()

    try:
        return asyncio.run(go())
    except GatewayError as exc:
        print(f"refused: {exc.err_msg}", file=sys.stderr)
        return 2
    except UNREACHABLE as exc:
        if output_closed(exc):
            return OUTPUT_CLOSED
        print(f"refused: {unreachable(exc)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"refused: {NOT_UTF8}", file=sys.stderr)
        return 2


async def _snapshot(ledgers: Partitions, args: argparse.Namespace) -> Snapshot:
    reference = await asyncio.to_thread(load_reference, Path(args.reference_dir))
    async with agency_ledgers.connection(ledgers.main) as conn:
        return await reference_store.read_snapshot(conn, reference)


@contextlib.asynccontextmanager
async def _on_claim(ledgers: Partitions, claim_no: str) -> AsyncIterator[asyncpg.Connection]:
    async with agency_ledgers.connection(await agency_ledgers.of_claim(ledgers, claim_no)) as c:
        yield c


@contextlib.asynccontextmanager
async def _on_batch(ledgers: Partitions, batch_no: str) -> AsyncIterator[asyncpg.Connection]:
    async with agency_ledgers.connection(await agency_ledgers.of_batch(ledgers, batch_no)) as c:
        yield c


def _when(text: str | None, what: str) -> dt.datetime | None:
    return None if text is None else manual_claims.claim_time(text, what)


def _print(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, ensure_ascii=False, indent=2) if args.json else text)


def _claim_line(c: claim_store.Claim) -> str:
    owed = "" if c.reimbursement_fen is None else f" 应报销 {fen_text(c.reimbursement_fen)}"
    return (
        f"{c.claim_no} {c.psn_no} {c.fixmedins_code} {c.med_type}"
        f" {c.begntime:%Y-%m-%d} {manual_claims.STATUS_NAMES[c.status]}{owed}"
    )


# ---------------------------------------------------------------------------------- claims


def claims_register(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        begntime = _when(args.begntime, "就诊（入院）时间")
        assert begntime is not None  # required by the parser
        reg = manual_claims.Registration(
            cert_type=args.cert_type,
            cert_no=args.cert_no,
            fixmedins_code=args.institution,
            med_type=args.med_type,
            begntime=begntime,
            endtime=_when(args.endtime, "出院时间"),
            dise_codg=args.dise_codg or "",
            acct_used=args.acct_used,
            invoice_nos=tuple(args.invoice),
        )
        snapshot = await _snapshot(ledgers, args)
        home = await agency_ledgers.of_person(ledgers, "", reg.cert_type, reg.cert_no)
        async with (
            agency_ledgers.invoice_registry(ledgers, home) as invoices_held,
            agency_ledgers.connection(home) as conn,
        ):
            c = await manual_claims.register(
                conn,
                snapshot,
                reg,
                _operator(args),
                dt.datetime.now(),
                dates=_dates(),
                invoices_held=invoices_held,
            )
        _print(args, manual_claims.view(c), _claim_line(c))
        return 0

    return _run(args, work)


def _dates() -> DateRules:
    """The service-date bounds the gateway is configured with (config/gateway.toml [dates])."""
    return load_config(DEFAULT_CONFIG).dates


def _lines_of(text: str) -> list[claim_store.Line]:
    """Fee lines from JSON: a list of objects with the national field names (feedetail)."""
    try:
        rows = json.loads(text, parse_float=str, parse_int=str)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"费用明细不是有效的JSON：{exc.msg}") from exc
    return manual_claims.lines_from_rows(rows)


def claims_lines(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        text = await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8")
        lines = _lines_of(text)
        snapshot = await _snapshot(ledgers, args)
        async with _on_claim(ledgers, args.claim_no) as conn:
            c = await manual_claims.enter_lines(
                conn, snapshot, args.claim_no, lines, _operator(args), dates=_dates()
            )
        _print(args, manual_claims.view(c), _claim_line(c))
        return 0

    return _run(args, work)


def claims_review(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        async with _on_claim(ledgers, args.claim_no) as conn:
            c = await manual_claims.review(conn, args.claim_no, _operator(args), refuse=args.refuse)
        _print(args, manual_claims.view(c), _claim_line(c))
        return 0

    return _run(args, work)


def claims_settle(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        snapshot = await _snapshot(ledgers, args)
        async with _on_claim(ledgers, args.claim_no) as conn:
            c = await manual_claims.settle(
                conn, snapshot, args.claim_no, _operator(args), dt.datetime.now()
            )
        _print(args, manual_claims.view(c), _claim_line(c))
        return 0

    return _run(args, work)


def claims_batch_review(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        done = await agency_ledgers.batch_review(ledgers, args.claim_nos, _operator(args))
        _print(
            args,
            [manual_claims.view(c) for c in done],
            "\n".join(_claim_line(c) for c in done),
        )
        return 0

    return _run(args, work)


def claims_withdraw(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        async with _on_claim(ledgers, args.claim_no) as conn:
            c = await manual_claims.withdraw(conn, args.claim_no, _operator(args), args.reason)
        _print(args, manual_claims.view(c), _claim_line(c))
        return 0

    return _run(args, work)


def claims_list(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        found = await agency_ledgers.claims(ledgers, args.status)
        _print(
            args,
            [manual_claims.view(c) for c in found],
            "\n".join(_claim_line(c) for c in found) or "没有零星报销",
        )
        return 0

    return _run(args, work)


def claims_print(args: argparse.Namespace) -> int:
    """The settled claim's form (零星报销结算单): HTML, and PDF through headless Chromium."""

    async def work(ledgers: Partitions) -> int:
        snapshot = await _snapshot(ledgers, args)
        async with _on_claim(ledgers, args.claim_no) as conn:
            form = await claim_form.gather(conn, snapshot, args.claim_no)
        html = claim_form.to_html(form)
        if args.html:
            await asyncio.to_thread(Path(args.html).write_text, html, encoding="utf-8")
        if args.pdf:
            await asyncio.to_thread(claim_form.print_pdf, html, Path(args.pdf))
        if not args.html and not args.pdf:
            print(html)
            return 0
        made = [p for p in (args.html, args.pdf) if p]
        _print(args, {"files": made}, "结算单 " + " ".join(made))
        return 0

    return _run(args, work)


# --------------------------------------------------------------------------------- payouts


def payouts_account(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        # An institution's account beside its clearing amounts; a person's beside their money.
        where = (
            ledgers.main
            if args.institution
            else await agency_ledgers.of_person(ledgers, args.psn_no)
        )
        async with agency_ledgers.connection(where) as conn:
            shown = await _account(conn, args)
        text = (
            f"{args.psn_no}: 未登记收款账户"
            if shown is None
            else f"{args.psn_no}: {shown['bank_name']} {shown['account_no']} {shown['holder']}"
        )
        _print(args, shown, text)
        return 0

    return _run(args, work)


async def _account(conn: asyncpg.Connection, args: argparse.Namespace) -> dict[str, str] | None:
    """The account shown, or changed when the bank's fields are given."""
    given = (args.bank_code, args.bank_name, args.account_no, args.holder)
    if any(v is not None for v in given):
        if any(v is None for v in given) or args.reason is None:
            raise BadRequest(
                "变更收款账户须同时填写--bank-code、--bank-name、--account-no、--holder和--reason"
            )
        setter = payouts.set_institution_account if args.institution else payouts.set_account
        shown = await setter(
            conn,
            args.psn_no,
            bank_code=args.bank_code,
            bank_name=args.bank_name,
            account_no=args.account_no,
            holder=args.holder,
            operator=_operator(args),
            reason=args.reason,
        )
        return shown
    if args.institution:
        return await payouts.institution_account_of(conn, args.psn_no)
    return await payouts.account_of(conn, args.psn_no)


def payouts_gather_clearing(args: argparse.Namespace) -> int:
    """The month's clearing amounts (the monthly clearing report's declared totals) recorded as
    owed to the institutions, once per institution and month."""

    async def work(ledgers: Partitions) -> int:
        payouts.check_month_closed(args.month)  # before the report reads it
        others = [c.pool for c in ledgers.clusters]
        async with agency_ledgers.connection(ledgers.main) as conn:
            # Found from outside: a mistyped code was answered "recorded 0", as if the
            # institution had nothing to be paid (the report refuses an unknown code).
            report = await clearing.monthly(conn, args.month, args.institution, others)
            amounts = [(r.fixmedins_code, r.total.declared) for r in report.institutions]
            done = await payouts.gather_clearing(conn, args.month, amounts, _operator(args))
        n = done.recorded
        # A month whose cancellations of earlier months' settlements outweigh its own: nothing
        # is owed, what the institution owes back is recorded and kept back from its next
        # months (found from outside: said, recorded nowhere, and the next month paid whole).
        doc = {
            "month": args.month,
            "recorded": n,
            "amounts": {code: fen_text(fen) for code, fen in amounts if fen > 0},
            "netted": {code: fen_text(fen) for code, fen in done.netted.items()},
            "owed_back": {code: fen_text(fen) for code, fen in done.owed_back.items()},
        }
        # A month with nothing declared says so (found from outside: the sentence ended at its
        # colon).
        text = "\n".join(f"{code} {fen_text(fen)}" for code, fen in amounts if fen > 0) or "无"
        back = "\n".join(
            [
                *(
                    f"{code} 已抵扣以前月份应退回款{fen_text(fen)}元"
                    for code, fen in done.netted.items()
                ),
                *(
                    f"{code} 尚应退回{fen_text(fen)}元，将从其以后月份的月结算拨付中抵扣"
                    for code, fen in done.owed_back.items()
                ),
            ]
        )
        # The month's amounts, whether recorded now or before (found from outside: a second
        # run said "登记0家" above amounts that read as recorded now).
        head = f"{args.month} 月结算拨付本次登记{n}家（已登记的不再登记）；本月申报金额："
        _print(args, doc, f"{head}\n{text}\n{back}".strip())
        return 0

    return _run(args, work)


def payouts_owed(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        async def owed(conn: asyncpg.Connection) -> list[dict[str, Any]]:
            await payouts.gather(conn)
            return await payout_store.owed_rows(conn, args.status)

        rows = [r for found in await agency_ledgers.across(ledgers, owed) for r in found]
        doc = [
            {
                **r,
                "amount": fen_text(r.pop("amount_fen")),
                "created_at": r["created_at"].astimezone().isoformat(),
            }
            for r in rows
        ]
        text = "\n".join(
            f"{d['owed_id']} {d['source']}:{d['source_ref']} {d['psn_no']} {d['amount']} {d['status']}"
            for d in doc
        )
        _print(args, doc, text or "没有待付款项")
        return 0

    return _run(args, work)


def _batch_text(view: dict[str, Any]) -> str:
    head = (
        f"{view['batch_no']} {view['status_name']} {view['count']}笔 {view['total']}元"
        f" 制单 {view['created_by']}"
    )
    steps = [
        f"  {a['name']} {a['operator']} {a['decision']} {a['reason']}" for a in view["approvals"]
    ]
    items = [
        f"  {i['seq']:>4} {i['psn_no']} {i['holder']} {i['account_no']} {i['amount']}"
        f" {i['status']} {i['bank_reason']}".rstrip()
        for i in view["items"]
    ]
    return "\n".join([head, *steps, *items])


def payouts_batch(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        made = await agency_ledgers.make_batches(
            ledgers, _operator(args), dt.datetime.now(), args.limit, args.source
        )
        if made.unreachable:
            print(made.note(), file=sys.stderr)
        views = [view for _, view in made.batches]
        _print(args, views[0] if len(views) == 1 else views, "\n".join(map(_batch_text, views)))
        return 0

    return _run(args, work)


def payouts_approve(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        async with _on_batch(ledgers, args.batch_no) as conn:
            if args.reject is not None:
                b = await payouts.reject(
                    conn, args.batch_no, args.level, _operator(args), args.reject
                )
            else:
                b = await payouts.approve(conn, args.batch_no, args.level, _operator(args))
            view = await payouts.batch_view(conn, b.batch_no)
        _print(args, view, _batch_text(view))
        return 0

    return _run(args, work)


def payouts_show(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        if args.batch_no is None:
            found = await agency_ledgers.batches(ledgers)
            doc = [
                {
                    "batch_no": b.batch_no,
                    "status": b.status,
                    "count": b.line_count,
                    "total": fen_text(b.total_fen),
                }
                for b in found
            ]
            text = "\n".join(
                f"{b.batch_no} {payouts.STATUS_NAMES[b.status]} {b.line_count}笔"
                f" {fen_text(b.total_fen)}元"
                for b in found
            )
            _print(args, doc, text or "没有支付批次")
            return 0
        async with _on_batch(ledgers, args.batch_no) as conn:
            view = await payouts.batch_view(conn, args.batch_no)
        _print(args, view, _batch_text(view))
        return 0

    return _run(args, work)


def payouts_export(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        async with _on_batch(ledgers, args.batch_no) as conn:
            name, body = await payouts.export(conn, args.batch_no, _operator(args))
        out = Path(args.out)
        target = out / name if await asyncio.to_thread(out.is_dir) else out
        await asyncio.to_thread(target.write_bytes, body)
        _print(args, {"file": str(target), "bytes": len(body)}, f"报盘文件 {target}")
        return 0

    return _run(args, work)


def payouts_import(args: argparse.Namespace) -> int:
    async def work(ledgers: Partitions) -> int:
        body = await asyncio.to_thread(Path(args.file).read_bytes)
        returned = await payouts.read_return(body)
        async with _on_batch(ledgers, returned.batch_no) as conn:
            s = await payouts.apply_return(conn, returned, _operator(args))
        doc = msgspec.to_builtins(s)
        doc["paid"] = fen_text(doc.pop("paid_fen"))
        doc["failed"] = fen_text(doc.pop("failed_fen"))
        again = "（同一回盘文件已导入，未作变更）" if s.again else ""
        _print(
            args,
            doc,
            f"{s.batch_no} 回盘：成功{s.paid_count}笔{doc['paid']}元，"
            f"失败{s.failed_count}笔{doc['failed']}元{again}",
        )
        return 0

    return _run(args, work)


# ------------------------------------------------------------------------------- the parser


def add_commands(sub: Any, add_database: Callable[[argparse.ArgumentParser], None]) -> None:
    """The claims and payouts command groups."""

    def common(p: argparse.ArgumentParser, *, reference: bool = False) -> None:
        add_database(p)
        p.add_argument(
            "--config",
            default=str(DEFAULT_CONFIG),
            type=config_arg,
            help="gateway.toml: its [[ledger_clusters]], where claims and payouts live",
        )
        p.add_argument("--operator", help="recorded with the step (default cli:<login>)")
        p.add_argument("--json", action="store_true")
        if reference:
            p.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))

    c = sub.add_parser("claims", help="manual claims (零星报销)")
    csub = c.add_subparsers(dest="claims_command", required=True)
    cr = csub.add_parser("register", help="零星报销登记")
    cr.add_argument("--cert-type", required=True, choices=("01", "02", "03"))
    cr.add_argument("--cert-no", required=True)
    cr.add_argument("--institution", required=True, help="fixmedins_code where treated")
    cr.add_argument("--med-type", required=True)
    cr.add_argument("--begntime", required=True)
    cr.add_argument("--endtime", help="a stay's discharge time")
    cr.add_argument("--dise-codg")
    cr.add_argument("--acct-used", action="store_true", help="use the personal account")
    cr.add_argument("--invoice", action="append", required=True, help="invoice number (repeat)")
    common(cr, reference=True)
    cr.set_defaults(func=claims_register)
    cl = csub.add_parser("lines", help="明细录入 from a JSON feedetail list")
    cl.add_argument("claim_no")
    cl.add_argument(
        "--file",
        required=True,
        help="a JSON array of fee lines with the national field names (feedetl_sn,"
        " medins_list_codg, pric, cnt, det_item_fee_sumamt, fee_ocur_time, optional"
        " hosp_appr_flag), amounts as decimal text; the console takes one line a row instead",
    )
    common(cl, reference=True)
    cl.set_defaults(func=claims_lines)
    cv = csub.add_parser("review", help="明细审核 (or --refuse REASON)")
    cv.add_argument("claim_no")
    cv.add_argument("--refuse")
    common(cv)
    cv.set_defaults(func=claims_review)
    cs = csub.add_parser("settle", help="结算 through the counter's settlement")
    cs.add_argument("claim_no")
    common(cs, reference=True)
    cs.set_defaults(func=claims_settle)
    cb = csub.add_parser("batch-review", help="结算审核 of settled claims")
    cb.add_argument("claim_nos", nargs="+")
    common(cb)
    cb.set_defaults(func=claims_batch_review)
    cw = csub.add_parser("withdraw", help="withdraw a claim not yet settled")
    cw.add_argument("claim_no")
    cw.add_argument("--reason", required=True)
    common(cw)
    cw.set_defaults(func=claims_withdraw)
    cls = csub.add_parser("list", help="every claim and its state")
    cls.add_argument("--status", choices=sorted(manual_claims.STATUS_NAMES))
    common(cls)
    cls.set_defaults(func=claims_list)
    cp = csub.add_parser(
        "print", help="单据打印: a settled claim's form (HTML, or PDF by Chromium)"
    )
    cp.add_argument("claim_no")
    cp.add_argument("--pdf", help="print to this PDF file (headless Chromium)")
    cp.add_argument("--html", help="write the printable page here")
    common(cp, reference=True)
    cp.set_defaults(func=claims_print)

    p = sub.add_parser("payouts", help="payouts to patients' bank accounts (拨付)")
    psub = p.add_subparsers(dest="payouts_command", required=True)
    pa = psub.add_parser("account", help="show or change a person's payout account")
    pa.add_argument("psn_no")
    pa.add_argument("--bank-code")
    pa.add_argument("--bank-name")
    pa.add_argument("--account-no")
    pa.add_argument("--holder")
    pa.add_argument("--reason")
    pa.add_argument(
        "--institution", action="store_true", help="psn_no is an institution's code (clearing)"
    )
    common(pa)
    pa.set_defaults(func=payouts_account)
    pg = psub.add_parser(
        "gather-clearing", help="record the month's clearing amounts as owed to the institutions"
    )
    pg.add_argument("--month", required=True, type=month_arg, help="yyyy-MM")
    pg.add_argument("--institution", help="one institution only")
    common(pg)
    pg.set_defaults(func=payouts_gather_clearing)
    po = psub.add_parser("owed", help="what is owed, in a batch or paid")
    po.add_argument("--status", choices=("owed", "batched", "paid", "withdrawn"))
    common(po)
    po.set_defaults(func=payouts_owed)
    pb = psub.add_parser("batch", help="银行报盘制单: a batch of what is owed")
    pb.add_argument("--limit", type=int)
    pb.add_argument(
        "--source",
        choices=("manual", "deferred", "clearing"),
        help="one source; clearing (the institutions' amounts) is always a batch of its own",
    )
    common(pb)
    pb.set_defaults(func=payouts_batch)
    pp = psub.add_parser("approve", help="初审 (1), 一级/二级/三级复核 (2-4); --reject REASON")
    pp.add_argument("batch_no")
    pp.add_argument("--level", type=int, required=True, choices=(1, 2, 3, 4))
    pp.add_argument("--reject")
    common(pp)
    pp.set_defaults(func=payouts_approve)
    ps = psub.add_parser("show", help="a batch (or every batch)")
    ps.add_argument("batch_no", nargs="?")
    common(ps)
    ps.set_defaults(func=payouts_show)
    pe = psub.add_parser("export", help="the approved batch's bank payment file (报盘)")
    pe.add_argument("batch_no")
    pe.add_argument("--out", required=True, help="a file, or a directory for <batch_no>.txt")
    common(pe)
    pe.set_defaults(func=payouts_export)
    pi = psub.add_parser("import-return", help="银行回盘处理: the bank's return file")
    pi.add_argument("file")
    common(pi)
    pi.set_defaults(func=payouts_import)
