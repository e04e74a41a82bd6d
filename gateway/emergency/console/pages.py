"""The console's HTML: server-rendered, no scripts, no external assets, every value escaped."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Mapping
from html import escape
from typing import Any, TypeVar

from gateway.core.money import fen_text
from gateway.emergency.plan.rules import ACTIONS, CLASSES, Action

# Every role as the pages name it (found from outside: the emergency page said "clerk" where the
# agency's pages said 经办员).
ROLE_NAMES = {
    "viewer": "观察员",
    "operator": "应急值班员",
    "clerk": "经办员",
    "reviewer": "审核员",
    "approver": "审批员",
}

_CSS = """
body { font-family: "Noto Sans CJK SC", "Noto Sans SC", sans-serif; margin: 20px; color: #111; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid #999; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #eee; } .state { font-weight: bold; padding: 2px 8px; border-radius: 3px; }
.normal { background: #d8f0d8; } .degraded { background: #f7d7a8; } .recovering { background: #cde; }
.open, .half_open { background: #f3c0c0; } .closed { background: #d8f0d8; }
.flash { padding: 6px 10px; margin: 8px 0; } .ok { background: #e4f4e4; } .err { background: #f8dada; }
form.inline { display: inline; } input[type=text] { width: 14em; } .who { float: right; }
"""


def style_hash(css: str) -> str:
    """An inline style as the Content-Security-Policy allows it: by the hash of its text."""
    return "sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()


# The Content-Security-Policy allows exactly this inline style and the other pages' own.
STYLE_HASH = style_hash(_CSS)

# Log-in throttle rows (gateway.emergency.operators): a name from one address is locked, a name guessed
# at from many addresses is only slowed down.
LOCK_KINDS = {"operator": "账号（限速）", "address": "地址", "pair": "账号@地址"}
ACTION_NAMES = {
    Action.REJECT: "拒绝（按自费结算）",
    Action.DEFER: "暂存（主动报）",
    Action.SELFPAY: "自费入院",
    Action.ROUTE_LEGACY: "转原系统",
    Action.SHADOW: "并行比对（本系统结算，原系统影子试算）",
    Action.ROUTE_LEGACY_SHADOW: "转原系统并比对（本系统影子试算）",
}
STATE_NAMES = {"normal": "正常", "degraded": "降级", "recovering": "恢复中（补结算）"}


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )


def login(error: str = "") -> str:
    flash = f'<p class="flash err" id="error">{escape(error)}</p>' if error else ""
    return _page(
        "应急控制台 · 登录",
        "<h1>医保结算网关 · 应急控制台</h1>"
        f"{flash}"
        '<form method="post" action="/console/login" id="login-form">'
        '<p><label>账号 <input type="text" name="operator" id="operator" autocomplete="username"></label></p>'
        '<p><label>密码 <input type="password" name="password" id="password" autocomplete="current-password"></label></p>'
        '<p><button type="submit" id="login">登录</button></p></form>',
    )


def ledger_down(words: str, breakers: list[dict[str, Any]]) -> str:
    """What the console can still say while the database holding the plan, the sessions and the
    audit cannot be reached: why, and this process's own breakers."""
    rows = "".join(
        f"<tr><td>{escape(str(b.get('dependency') or b.get('fixmedins_code') or ''))}</td>"
        f'<td><span class="state {escape(str(b.get("state", "")))}">'
        f"{escape(str(b.get('state', '')))}</span></td>"
        f"<td>{escape(str(b.get('action', '')))}</td><td>{escape(str(b.get('reason') or ''))}</td></tr>"
        for b in breakers
    )
    return _page(
        "应急控制台 · 数据库不可用",
        "<h1>医保结算网关 · 应急控制台</h1>"
        f'<p class="flash err" id="ledger-down">{escape(words)}</p>'
        "<h2>本进程的熔断状态</h2>"
        '<table id="breakers"><tr><th>依赖</th><th>状态</th><th>保护动作</th><th>原因</th></tr>'
        f"{rows}</table>",
    )


_V = TypeVar("_V", bound=str)  # a class or an action: text, whatever its enum


def _options(values: tuple[_V, ...], names: Mapping[_V, str] | None = None) -> str:
    return "".join(
        f'<option value="{escape(v)}">{escape(v)}{" · " + escape(names[v]) if names and v in names else ""}</option>'
        for v in values
    )


def console(
    view: dict[str, Any],
    audit: list[dict[str, Any]],
    *,
    login_name: str,
    role: str,
    csrf: str,
    message: str = "",
    error: str = "",
    lockouts: list[dict[str, Any]] | None = None,
) -> str:
    """The whole page: state, rules (with clear forms), windows, breakers, claims, audit."""
    may_change = role == "operator"
    state = view["state"]
    parts = [
        '<form class="inline who" method="post" action="/console/logout">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f"{escape(login_name)}（{escape(ROLE_NAMES.get(role, role))}）"
        ' <button type="submit">退出</button></form>',
        "<h1>医保结算网关 · 应急控制台</h1>",
        f'<p>总体状态：<span id="state" class="state {escape(state)}">{escape(state)}'
        f" · {escape(STATE_NAMES.get(state, state))}</span>　预案版本 {int(view['version'])}</p>",
        '<p><a href="/console/parallel-run">并行比对（新旧系统结算比对）</a></p>',
    ]
    if message:
        parts.append(f'<p class="flash ok" id="message">{escape(message)}</p>')
    if error:
        parts.append(f'<p class="flash err" id="error">{escape(error)}</p>')

    parts.append("<h2>生效中的应急规则</h2>")
    rows = []
    for r in view["rules"]:
        clear = ""
        if may_change:
            clear = (
                '<form class="inline clear-form" method="post" action="/console/rules/clear">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<input type="hidden" name="scope" value="{escape(r["scope"])}">'
                f'<input type="hidden" name="class" value="{escape(r["class"])}">'
                f'<input type="hidden" name="action" value="{escape(r["action"])}">'
                f'<input type="hidden" name="set_at" value="{escape(r["set_at"])}">'
                '<input type="text" name="reason" placeholder="恢复原因（必填）">'
                ' <button type="submit">恢复正常</button></form>'
            )
        rows.append(
            f'<tr class="rule" data-scope="{escape(r["scope"])}" data-class="{escape(r["class"])}">'
            f"<td>{escape(r['scope'])}</td><td>{escape(r['class'])}</td>"
            f"<td>{escape(r['action'])} · {escape(ACTION_NAMES.get(r['action'], ''))}</td>"
            f"<td>{escape(r['reason'])}</td><td>{escape(r['operator'])}</td>"
            f"<td>{escape(local_time(r['set_at']))}</td><td>{clear}</td></tr>"
        )
    parts.append(
        '<table id="rules"><thead><tr><th>范围</th><th>交易类别</th><th>处置</th><th>原因</th>'
        "<th>操作人</th><th>时间</th><th></th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="7">无（全部正常）</td></tr>')
        + "</tbody></table>"
    )
    if may_change:
        parts.append(
            '<h2>设置应急规则</h2><form method="post" action="/console/rules/set" id="set-form">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            '范围 <input type="text" name="scope" id="scope" placeholder="global / region:330300 / institution:H…，可加:inpatient等医疗类别"> '
            f'类别 <select name="class" id="class">{_options(CLASSES)}</select> '
            f'处置 <select name="action" id="action">{_options(ACTIONS, ACTION_NAMES)}</select> '
            '原因 <input type="text" name="reason" id="reason" placeholder="必填"> '
            '<button type="submit" id="set">生效</button></form>'
        )

    def windows(title: str, items: list[dict[str, Any]], ident: str) -> None:
        parts.append(f"<h2>{title}</h2>")
        body = "".join(
            f"<tr><td>{escape(w['name'])}</td><td>{escape(w['scope'])}</td>"
            f"<td>{escape(','.join(w['classes']))}</td><td>{escape(w['action'])}</td>"
            f"<td>{escape(w['begins'])}</td><td>{escape(w['ends'])}</td></tr>"
            for w in items
        )
        parts.append(
            f'<table id="{ident}"><thead><tr><th>名称</th><th>范围</th><th>类别</th><th>处置</th>'
            "<th>开始</th><th>结束</th></tr></thead><tbody>"
            + (body or '<tr><td colspan="6">无</td></tr>')
            + "</tbody></table>"
        )

    windows("生效中的切换时间窗", view["windows_active"], "windows-active")
    windows("即将到来的时间窗", view["windows_coming"], "windows-coming")

    parts.append("<h2>熔断器（本进程）</h2>")
    parts.append(
        '<table id="breakers"><thead><tr><th>依赖</th><th>状态</th><th>原因</th><th>保护动作</th>'
        "<th>恢复方式</th></tr></thead><tbody>"
        + "".join(
            f'<tr><td>{escape(b["dependency"])}</td><td class="{escape(b["state"])}">{escape(b["state"])}</td>'
            f"<td>{escape(b.get('reason', ''))}</td><td>{escape(b.get('action', ''))}</td>"
            f"<td>{escape(b.get('recover', ''))}</td></tr>"
            for b in view["breakers"]
        )
        + "</tbody></table>"
    )

    d, rp = view["deferred"], view["replay"]
    parts.append(
        "<h2>暂存结算（主动报）与补结算</h2>"
        f'<p id="deferred">待补结算 {d["claims_pending"]} 笔，已补结算 {d["claims_settled"]} 笔，'
        f"失败 {d['claims_failed']} 笔，已撤销 {d['claims_withdrawn']} 笔；待补办业务 {d['calls_pending']} 笔；"
        # Found from outside: "应支付参保人" read as still owed, where the sum counts what the
        # payout batches have paid too; what is still to pay is the payouts page's.
        f"补结算报销参保人合计 {fen_text(d['reimbursement_fen'])} 元（含已支付；"
        '待支付见<a href="/console/payouts">支付批次</a>）。</p>'
        + (
            f'<p id="deferred-unreachable" class="err">账务库{escape("、".join(gone))}暂时无法连接，'
            "其暂存结算未计入以上数字。</p>"
            if (gone := view.get("deferred_unreachable"))
            else ""
        )
        + f'<p id="replay">补结算进度：{rp["done"]}/{rp["total"]}'
        f"{'（进行中）' if rp['running'] else ''}，失败 {rp['failed']} 笔。</p>"
    )

    parts.append("<h2>登录锁定</h2>")
    lock_rows = []
    for lock in lockouts or []:
        clear = ""
        if may_change:
            clear = (
                '<form class="inline unlock-form" method="post" action="/console/lockouts/clear">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<input type="hidden" name="kind" value="{escape(lock["kind"])}">'
                f'<input type="hidden" name="key" value="{escape(lock["key"])}">'
                '<input type="text" name="reason" placeholder="解锁原因（必填）">'
                ' <button type="submit">解除锁定</button></form>'
            )
        lock_rows.append(
            f'<tr class="lockout"><td>{escape(LOCK_KINDS.get(lock["kind"], lock["kind"]))}</td>'
            f"<td>{escape(lock['key'])}</td><td>{int(lock['failures'])}</td>"
            f"<td>{escape(local_time(lock['locked_until']) or '未锁定')}</td><td>{clear}</td></tr>"
        )
    parts.append(
        '<table id="lockouts"><thead><tr><th>类别</th><th>账号或地址</th><th>失败次数</th>'
        "<th>锁定或限速至</th><th></th></tr></thead><tbody>"
        + ("".join(lock_rows) or '<tr><td colspan="5">无</td></tr>')
        + "</tbody></table>"
    )

    parts.append("<h2>审计日志（最近）</h2>")
    parts.append(
        '<table id="audit"><thead><tr><th>#</th><th>时间</th><th>操作人</th><th>操作</th>'
        "<th>对象</th><th>原因</th><th>变更前</th><th>变更后</th></tr></thead><tbody>"
        + "".join(
            f'<tr class="audit-row"><td>{a["audit_id"]}</td><td>{escape(local_time(a["at"]))}</td>'
            f"<td>{escape(a['operator'])}</td><td>{escape(a['action'])}</td>"
            f"<td>{escape(a['target'])}</td><td>{escape(a['reason'])}</td>"
            f"<td>{escape(_brief(a['before']))}</td><td>{escape(_brief(a['after']))}</td></tr>"
            for a in audit
        )
        + "</tbody></table>"
    )
    return _page("应急控制台", "".join(parts))


def local_time(moment: Any) -> str:
    """A time as the page shows every time: the gateway's local time, as its windows and the
    lock-out refusals say it (found from outside: rules and audit rows read in UTC beside
    windows in local time). The API keeps the offset."""
    if not moment:
        return ""
    try:
        at = dt.datetime.fromisoformat(str(moment))
    except ValueError:
        return str(moment)
    if at.tzinfo is not None:
        at = at.astimezone()
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _brief(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "，".join(f"{k}={v}" for k, v in value.items())
    return str(value)
