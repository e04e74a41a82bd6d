"""`python -m gateway shadow report --from … --to … [--csv F] [--json]`: the parallel run for the
cut-over meeting (docs/emergency.md "Parallel run"): how many settlements both systems priced,
how many differ, per medical category, institution and cause, the items that differ most, and
each difference with both answers."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.app.cli_args import count_arg
from gateway.app.cli_database import database_url
from gateway.core.money import bp_text
from gateway.core.shadow_diff import CAUSE_NAMES, Cause
from gateway.emergency import shadow_period
from gateway.ledger import db
from gateway.ledger import shadow as shadow_store
from gateway.ops import spreadsheet

CSV_COLUMNS = (
    "compared_at",
    "answered_by",
    "admdvs",
    "fixmedins_code",
    "infno",
    "msgid",
    "med_type",
    "category",
    "cause",
    "item",
    "summary",
)


def _moment(text: str) -> dt.datetime:
    """A local time as the team writes it (2026-05-08 or 2026-05-08T10:00), as the console reads
    its period."""
    try:
        return shadow_period.moment(text)
    except shadow_period.MomentRefused as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _report(url: str, begins: dt.datetime, ends: dt.datetime, limit: int) -> dict[str, Any]:
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            by = {
                key: await shadow_store.rates(conn, begins, ends, key)
                for key in ("category", "fixmedins_code", "admdvs", "cause")
            }
            items = await shadow_store.worst_items(conn, begins, ends)
            differing = await shadow_store.differing(conn, begins, ends, limit)
    finally:
        await pool.close()
    compared = sum(r.compared for r in by["category"])
    differs = sum(r.differing for r in by["category"])

    def rates(rows: list[shadow_store.Rate]) -> list[dict[str, Any]]:
        return [
            {
                "key": r.key,
                "compared": r.compared,
                "differing": r.differing,
                "rate": bp_text(r.rate_bp),
            }
            for r in rows
        ]

    return {
        "from": begins.isoformat(),
        "to": ends.isoformat(),
        "compared": compared,
        "differing": differs,
        # Rounded as every row is (found from outside: 4 of 6 read 0.6666 above rows of 0.6667).
        "rate": bp_text(shadow_store.Rate("", compared, differs).rate_bp),
        "by_category": rates(by["category"]),
        "by_institution": rates(by["fixmedins_code"]),
        "by_region": rates(by["admdvs"]),
        "by_cause": [{"cause": r.key, "settlements": r.differing} for r in by["cause"]],
        "worst_items": [
            {
                "fixmedins_code": i.fixmedins_code,
                "item": i.item,
                "cause": i.cause,
                "settlements": i.settlements,
                "field": i.field,
                "answered": i.answered,
                "shadowed": i.shadowed,
            }
            for i in items
        ],
        "differences": [
            {
                **{k: v for k, v in row.items() if k not in ("compared_at", "diagnosis")},
                # Local, as the report's period (found from outside: they were UTC).
                "compared_at": row["compared_at"].astimezone().isoformat(),
                "summary": (row["diagnosis"] or {}).get("summary", ""),
                "diagnosis": row["diagnosis"],
            }
            for row in differing
        ],
    }


def _cause_name(cause: str) -> str:
    return CAUSE_NAMES.get(Cause(cause), cause) if cause in Cause._value2member_map_ else cause


def _print(report: dict[str, Any], out: Callable[[str], None]) -> None:
    out(f"并行比对 {report['from']} — {report['to']}")
    out(
        f"比对结算 {report['compared']} 笔，不一致 {report['differing']} 笔"
        f"（差异率 {report['rate']}）"
    )
    for title, key in (
        ("医疗类别", "by_category"),
        ("定点机构", "by_institution"),
        ("统筹区", "by_region"),  # found from outside: the JSON had it, the text did not
    ):
        out(f"\n按{title}：")
        for r in report[key]:
            out(
                f"  {r['key'] or '-':<16} 比对 {r['compared']:>7}  不一致 {r['differing']:>6}  差异率 {r['rate']}"
            )
    out("\n按原因：")
    for r in report["by_cause"]:
        out(f"  {r['cause']:<14} {_cause_name(r['cause'])}  {r['settlements']} 笔")
    out("\n差异最多的项目：")
    for i in report["worst_items"]:
        out(
            f"  {i['fixmedins_code']} {i['item']:<12} {i['cause']:<14} {i['settlements']} 笔"
            f"  例：{i['field']} 结算方 {i['answered']} / 影子方 {i['shadowed']}"
        )


def report(args: argparse.Namespace) -> int:
    begins, ends = args.date_from, args.date_to
    if ends <= begins:
        print("refused: 结束时间须晚于开始时间", file=sys.stderr)
        return 2
    result = asyncio.run(_report(database_url(args), begins, ends, args.limit))
    if args.csv:
        with open(args.csv, "w", encoding="utf-8-sig", newline="") as f:
            writer = spreadsheet.Writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in result["differences"]:
                writer.writerow([row[c] if row[c] is not None else "" for c in CSV_COLUMNS])
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        _print(result, print)
    return 0


def add_commands(sub: Any, add_database: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("shadow", help="the parallel run of a cut-over: both systems compared")
    ssub = s.add_subparsers(dest="shadow_command", required=True)
    r = ssub.add_parser("report", help="rates, causes, worst items and each difference")
    r.add_argument("--from", dest="date_from", required=True, type=_moment, help="local time")
    r.add_argument("--to", dest="date_to", required=True, type=_moment, help="local time, excluded")
    r.add_argument("--csv", help="write each difference here (UTF-8 with BOM, for spreadsheets)")
    r.add_argument("--json", action="store_true", help="everything, both answers included")
    # A count of one or more, refused in one line as `corrections --limit` (found from outside:
    # -1 died in a traceback from PostgreSQL).
    r.add_argument("--limit", type=count_arg, default=1000, help="differences listed at most")
    add_database(r)
    r.set_defaults(func=report)
