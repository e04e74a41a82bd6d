"""The console's parallel-run view (docs/emergency.md "Parallel run"): the difference rates by
medical category and institution, hour by hour, the items that differ most, and each recent
difference with both systems' answers side by side. A page for the duty team and the same as
JSON (`GET /api/parallel-run?from=…&to=…`), read-only for every role."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

import msgspec
from aiohttp import web

from gateway.app.appkeys import GATEWAY
from gateway.core.shadow_diff import CAUSE_NAMES, Cause
from gateway.emergency import shadow_period
from gateway.emergency.console.pages import style_hash
from gateway.ledger import shadow as store

DEFAULT_HOURS = 24
RECENT = 50  # differences shown with their answers


class PeriodRefused(ValueError):
    """A period the clerk typed that cannot be read."""


def period(query: Any, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[from, to) from the query (ISO dates or times, local), the last 24 hours by default."""

    def moment(name: str, default: dt.datetime) -> dt.datetime:
        text = query.get(name, "").strip()
        if not text:
            return default
        try:
            return shadow_period.moment(text)
        except shadow_period.MomentRefused as exc:
            raise PeriodRefused(str(exc)) from None

    ends = moment("to", now)
    begins = moment("from", ends - dt.timedelta(hours=DEFAULT_HOURS))
    if begins >= ends:
        raise PeriodRefused("开始时间应早于结束时间")
    return begins, ends


def _cause_name(cause: str) -> str:
    try:
        return CAUSE_NAMES[Cause(cause)]
    except ValueError:
        return cause


def _rate(r: store.Rate) -> dict[str, Any]:
    return {
        "key": r.key,
        "compared": r.compared,
        "differing": r.differing,
        "rate": f"{r.rate_bp / 100:.2f}%",
    }


async def view(request: web.Request, begins: dt.datetime, ends: dt.datetime) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
        by_category = await store.rates(conn, begins, ends, "category")
        by_institution = await store.rates(conn, begins, ends, "fixmedins_code")
        by_cause = await store.rates(conn, begins, ends, "cause")
        hours = await store.rates_by_hour(conn, begins, ends)
        items = await store.worst_items(conn, begins, ends, 20)
        # The latest, newest first: what a desk watching the run looks for (found from
        # outside: the oldest 50 were shown, the newest missing).
        recent = await store.differing(conn, begins, ends, RECENT, newest_first=True)
    return {
        "from": begins.isoformat(),
        "to": ends.isoformat(),
        "by_category": [_rate(r) for r in by_category],
        "by_institution": [_rate(r) for r in by_institution],
        # A cause's count only, as the CLI's report gives it: its rows hold differing
        # settlements alone, so their own "compared" and rate read 100% (found from outside).
        "by_cause": [
            {"key": r.key, "differing": r.differing, "name": _cause_name(r.key)} for r in by_cause
        ],
        "by_hour": [
            {
                # In local time, as the CLI's report and the query's from/to (found from
                # outside: the API's hours were UTC).
                "hour": b.hour.astimezone().isoformat(),
                "category": b.category,
                "compared": b.compared,
                "differing": b.differing,
            }
            for b in hours
        ],
        "worst_items": [
            {
                "fixmedins_code": i.fixmedins_code,
                "item": i.item,
                "cause": i.cause,
                "cause_name": _cause_name(i.cause),
                "settlements": i.settlements,
                "field": i.field,
                "answered": i.answered,
                "shadowed": i.shadowed,
            }
            for i in items
        ],
        "differences": [
            {
                "compared_at": d["compared_at"].astimezone().isoformat(),  # local, as by_hour
                "answered_by": d["answered_by"],
                "fixmedins_code": d["fixmedins_code"],
                "msgid": d["msgid"],
                "infno": d["infno"],
                "shadow_infno": d["shadow_infno"],
                "category": d["category"],
                "cause": d["cause"],
                "item": d["item"],
                "answer": d["answer"],
                "shadow_answer": d["shadow_answer"],
            }
            for d in recent
        ],
    }


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return "<p>（无）</p>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(str(v if v is not None else ''))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _answer(text: str | None) -> str:
    """An answer as sent, laid out when it is JSON: its numbers written as they were (found
    from outside: decoded and written again, 19.80 showed as 19.8, an amount the clerk could
    not find in the stored text)."""
    if not text:
        return ""
    try:
        return msgspec.json.format(text, indent=1)
    except msgspec.DecodeError:
        return text


_CSS = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #999;padding:.2em .5em;text-align:left}"
    ".pair{display:flex;gap:1em}.pair pre{flex:1;max-height:24em;overflow:auto;background:#f4f4f4;"
    "padding:.5em;font-size:.8em}"
)
# Allowed by the console's CSP (found from outside: it was not, and a browser showed the page
# without its style).
STYLE_HASH = style_hash(_CSS)


def render(v: dict[str, Any]) -> str:
    rate_head = ("分组", "比对笔数", "不一致笔数", "不一致率")

    def rates(key: str) -> str:
        return _table(
            rate_head, [(r["key"], r["compared"], r["differing"], r["rate"]) for r in v[key]]
        )

    parts = [
        f"<h1>并行比对（新旧系统结算比对）</h1><p>{escape(v['from'])} 至 {escape(v['to'])}</p>",
        '<form method="get"><label>开始 <input name="from"></label> '
        '<label>结束 <input name="to"></label> <button>查询</button></form>',
        "<h2>按医疗类别</h2>",
        rates("by_category"),
        "<h2>按定点医药机构</h2>",
        rates("by_institution"),
        "<h2>按原因</h2>",
        _table(("原因", "不一致笔数"), [(r["name"], r["differing"]) for r in v["by_cause"]]),
        "<h2>逐小时</h2>",
        _table(
            ("小时", "医疗类别", "比对笔数", "不一致笔数"),
            [(b["hour"], b["category"], b["compared"], b["differing"]) for b in v["by_hour"]],
        ),
        "<h2>不一致最多的项目</h2>",
        _table(
            ("机构", "项目", "原因", "笔数", "字段", "本系统", "对方系统"),
            [
                (
                    i["fixmedins_code"],
                    i["item"],
                    i["cause_name"],
                    i["settlements"],
                    i["field"],
                    i["answered"],
                    i["shadowed"],
                )
                for i in v["worst_items"]
            ],
        ),
        f"<h2>最近的不一致（最新的{RECENT}笔，新的在前，两边应答对照）</h2>",
    ]
    for d in v["differences"]:
        mine, theirs = (
            ("本系统应答", "旧系统比对应答")
            if d["answered_by"] == "gateway"
            else ("旧系统应答", "本系统比对应答")
        )
        parts.append(
            f"<h3>{escape(d['compared_at'])} {escape(d['fixmedins_code'])} 报文{escape(d['msgid'])}"
            f" {escape(d['infno'])}/{escape(d['shadow_infno'])} {escape(_cause_name(d['cause'] or ''))}"
            f" {escape(d['item'] or '')}</h3>"
            f'<div class="pair"><div><b>{mine}</b><pre>{escape(_answer(d["answer"]))}</pre></div>'
            f"<div><b>{theirs}</b><pre>{escape(_answer(d['shadow_answer']))}</pre></div></div>"
        )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>并行比对</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}"
        '<p><a href="/console">返回应急控制台</a></p></body></html>'
    )
