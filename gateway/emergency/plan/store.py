"""Changes to the plan: rules and windows checked, written with their audit rows.

Every change bumps `plan_version` and appends an audit row in the same transaction, so a change
is either visible everywhere with its audit row or not at all. The rows themselves are
gateway.ledger.plan's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gateway.core.model import PHARMACY_TYPE
from gateway.emergency.plan.rules import (
    SHADOW_ACTIONS,
    Action,
    Rule,
    TxClass,
    Window,
    check_action,
    check_class,
    check_scope,
    split_scope,
)
from gateway.ledger import plan, reference_store
from gateway.ops import audit
from gateway.protocol.errors import BadRequest, Conflict, NotFound, Unavailable


async def check_known_scope(conn: asyncpg.Connection, scope: str) -> str:
    """A scope that names something the reference data holds: a rule or window for a code no
    institution has would match no request while the console shows the plan degraded, so a typo
    made during an emergency is refused here rather than silently doing nothing. A scope
    narrowed to a medical category is checked on its base (the category is the grammar's)."""
    check_scope(scope)
    base, category = split_scope(scope)
    kind, _, code = base.partition(":")
    if kind == "institution":
        found = await reference_store.institution_type(conn, code)
        if found is None:
            raise BadRequest(f"范围{scope}无效：定点医药机构编号{code}未登记，请核对机构编号")
        if found == PHARMACY_TYPE and category not in (None, "pharmacy"):
            # Found from outside: a pharmacy's inpatient rule was taken and listed, matching
            # nothing ever (a pharmacy is refused every visit's transaction).
            raise BadRequest(
                f"范围{scope}无效：{code}是定点零售药店，只有pharmacy（药店购药）类业务"
            )
    elif kind == "region" and not await reference_store.region_known(conn, code):
        raise BadRequest(f"范围{scope}无效：医保区划{code}下没有登记的定点医药机构，请核对区划代码")
    return scope


def _reason(reason: str) -> str:
    """Why, in words: every counter the rule touches is told it, and the audit keeps it."""
    # Found from outside: "x" was refused as if no reason had been given, and one with a
    # control character was stored and shown to counters.
    return audit.reason_given(reason, "请填写变更原因")


# A window is a cut-over's timetable: the longest seed is nine days. A stop longer than a month
# is a rule, set and cleared by a person; a window of years (found from outside: 0001 to 9999
# was taken, and refused every sale of its scope) is a typo.
LONGEST_WINDOW = dt.timedelta(days=31)


def _check_pairing(action: Action, klass: TxClass) -> None:
    """The actions that mean something for one class of transactions only, whether a rule or a
    window asks for them."""
    if action is Action.SELFPAY and klass is not TxClass.ENCOUNTER:
        raise BadRequest("selfpay（自费入院）只适用于encounter类交易")
    if action in SHADOW_ACTIONS and klass is not TxClass.SETTLEMENT:
        raise BadRequest(f"{action}（并行比对）只适用于settlement类交易")
    if action is Action.DEFER and klass not in (TxClass.SETTLEMENT, TxClass.ENCOUNTER):
        # Found from outside: taken for the catalog's and reconciliation's transactions, which
        # nothing keeps for later: the console said "暂存（主动报）" while counters were refused.
        raise BadRequest(
            f"defer（暂存，主动报）只适用于settlement和encounter类交易；{klass}类交易无法暂存，"
            "请改用reject"
        )


# What each action needing the old system asks of it, for the refusal.
_NEEDS_LEGACY = {
    Action.ROUTE_LEGACY.value: "转原系统",
    Action.ROUTE_LEGACY_SHADOW.value: "转原系统",
    # The old system prices every settlement in its shadow (found from outside: it was taken
    # without the address while the two routes were refused).
    Action.SHADOW.value: "原系统并行比对",
}


def _an_address(url: str) -> bool:
    """Whether `url` is an http(s) address with a host."""
    parts = urlsplit(url.strip())
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# How long a change of the plan waits for the locks it takes (a rule's row, the audit chain's
# head, the version): found from outside, a rule set through the console while the plan's
# tables were locked waited the whole 23 s of the lock, where reads answer 503 after 10 s.
CHANGE_WAIT_SECONDS = 10.0
CHANGE_BUSY = (
    "应急预案数据正被占用（等待数据库锁超过{seconds:g}秒），本次变更未执行，请稍后重试；"
    "各网关的熔断器按配置自动执行保护动作"
)


@contextlib.asynccontextmanager
async def _changing(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A change of the plan in one transaction, its lock waits bounded: done whole, or not at
    all and said so (Unavailable)."""
    try:
        async with conn.transaction():
            await plan.bound_waits(conn, CHANGE_WAIT_SECONDS)
            yield
    except asyncpg.LockNotAvailableError as exc:
        raise Unavailable(CHANGE_BUSY.format(seconds=CHANGE_WAIT_SECONDS)) from exc


def check_routable(action: str, legacy_url: str, klass: str | None = None) -> None:
    """A rule that needs the old system (forwards to it, or has it price in the shadow) needs
    its address (`[legacy] url`): found from outside, one was taken without it and every sale
    of its scope was refused until it was cleared. Checked where the setter has the gateway's
    configuration (the CLI's `--config`, the console's own). With the rule's `klass`, an action
    that class cannot take is told so first (found from outside: `shadow` on encounter was sent
    to configure the old system's address, which would not have made it valid)."""
    if klass is not None:
        try:
            paired = (check_action(action), check_class(klass))
        except BadRequest:
            paired = None  # `set_rule` names what is wrong with either
        if paired is not None:
            _check_pairing(*paired)
    if action in _NEEDS_LEGACY and not _an_address(legacy_url):
        # Blank or not an address at all is none either (found from outside: "  " and "not a
        # url" were taken, and every request of the scope would then have failed).
        raise BadRequest(
            f"{action}（{_NEEDS_LEGACY[action]}）需要原系统地址，配置文件的[legacy] url未填写："
            "请先配置并重启网关"
        )


def rule_dict(rule: Rule | None) -> dict[str, Any] | None:
    if rule is None:
        return None
    return {"scope": rule.scope, "class": rule.klass, "action": rule.action, "reason": rule.reason}


async def set_rule(
    conn: asyncpg.Connection, *, scope: str, klass: str, action: str, reason: str, operator: str
) -> int:
    """Put a scope/class into degraded mode with this action; returns the new plan version."""
    await check_known_scope(conn, scope)
    tx_class = check_class(klass)
    rule_action = check_action(action)
    reason = _reason(reason)
    _check_pairing(rule_action, tx_class)
    async with _changing(conn):
        before = await plan.lock_rule(conn, scope, tx_class)
        if before is not None and (before.action, before.reason) == (rule_action, reason):
            # Set again as it is: no change, so no new version, audit row or page (found from
            # outside: the same rule posted twice counted two changes and paged for one).
            return await plan.version(conn)
        await plan.put_rule(
            conn, scope=scope, klass=tx_class, action=rule_action, reason=reason, operator=operator
        )
        after = {"scope": scope, "class": tx_class, "action": rule_action, "reason": reason}
        await audit.append(
            conn,
            operator=operator,
            action="plan.set",
            target=f"{scope}/{klass}",
            reason=reason,
            before=rule_dict(before),
            after=after,
        )
        return await plan.bump(conn)


def shown_at(set_at: dt.datetime) -> str:
    """A rule's time of setting as the console's API gives it and its form sends it back
    (`clear_rule`'s `shown_set_at`): to the microsecond, as stored (found from outside: to the
    second, a rule cleared and set again within one second read as the one the page showed). In
    the process's local time with its offset, as the pages show it (found from outside: UTC from a
    gateway running on Beijing time); any offset is read back as the same moment."""
    return set_at.astimezone().isoformat(sep=" ", timespec="microseconds")


def _same_moment(text: str, set_at: dt.datetime) -> bool:
    """Whether `text` names the moment `set_at`, however it is written (a `T` or a space, any
    offset; without one, local time): to the microsecond, or to the second where it is written
    to the second. Found from outside: the same moment written with a `T` was told another
    operator had changed the rule."""
    try:
        named = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"set_at“{text[:40]}”不是时间：请按GET /api/plan所示原样填写（如{shown_at(set_at)}）"
        ) from None
    if named.tzinfo is None:
        named = named.astimezone()
    if named.microsecond or "." in text:
        return named == set_at
    return named == set_at.replace(microsecond=0)


async def clear_rule(
    conn: asyncpg.Connection,
    *,
    scope: str,
    klass: str,
    reason: str,
    operator: str,
    shown_action: str | None = None,
    shown_set_at: str | None = None,
) -> int:
    """Back to normal for this scope/class; returns the new plan version. `shown_action`,
    `shown_set_at`: the rule as the operator's page showed it, each where given; cleared only if
    it is still that rule (found from outside: a page left open cleared the `reject` another
    operator had just set in place of the `defer` it showed, and said only "已恢复正常"; and a
    clear naming only the action it meant was taken whatever the rule's action)."""
    check_scope(scope)
    tx_class = check_class(klass)
    reason = _reason(reason)
    async with _changing(conn):
        before = await plan.lock_rule(conn, scope, tx_class)
        if before is None:
            raise NotFound(f"{scope}/{klass}没有生效的应急规则")
        other_action = shown_action is not None and shown_action != before.action.value
        if other_action or (
            shown_set_at is not None and not _same_moment(shown_set_at, before.set_at)
        ):
            local = before.set_at.astimezone().isoformat(sep=" ", timespec="seconds")
            raise Conflict(
                f"{scope}/{klass}的应急规则已于{local}由{before.operator}设为{before.action.value}"
                f"（原因：{before.reason}），与页面所示不同，未作变更：请刷新页面核对后再操作"
            )
        await plan.delete_rule(conn, scope, tx_class)
        await audit.append(
            conn,
            operator=operator,
            action="plan.clear",
            target=f"{scope}/{klass}",
            reason=reason,
            before=rule_dict(before),
            after=None,
        )
        return await plan.bump(conn)


async def add_window(
    conn: asyncpg.Connection,
    *,
    name: str,
    scope: str,
    classes: list[str],
    action: str,
    begins: dt.datetime,
    ends: dt.datetime,
    operator: str,
    reason: str,
) -> int:
    """Schedule (or reschedule, by name and scope) a cut-over window; returns the new version."""
    await check_known_scope(conn, scope)
    window_classes = [check_class(klass) for klass in classes]
    window_action = check_action(action)
    if not classes:
        raise BadRequest("时间窗至少包含一类交易")
    if ends <= begins:
        raise BadRequest("时间窗结束时间须晚于开始时间")
    if ends - begins > LONGEST_WINDOW:
        raise BadRequest(
            f"时间窗最长{LONGEST_WINDOW.days}天（{begins:%Y-%m-%d %H:%M} – {ends:%Y-%m-%d %H:%M}），"
            "更长的停用请设置应急规则（plan set）"
        )
    for window_class in window_classes:
        _check_pairing(window_action, window_class)
    reason = _reason(reason)
    async with _changing(conn):
        before = await plan.lock_window(conn, name, scope)
        await plan.put_window(
            conn,
            name=name,
            scope=scope,
            classes=window_classes,
            action=window_action,
            begins=begins,
            ends=ends,
            operator=operator,
        )
        after = _window_dict(name, scope, window_classes, window_action, begins, ends)
        await audit.append(
            conn,
            operator=operator,
            action="window.set",
            target=f"{scope}/{name}",
            reason=reason,
            before=None if before is None else _row_dict(before),
            after=after,
        )
        return await plan.bump(conn)


async def remove_window(
    conn: asyncpg.Connection, *, window_id: int, operator: str, reason: str
) -> int:
    reason = _reason(reason)
    async with _changing(conn):
        before = await plan.delete_window(conn, window_id)
        if before is None:
            raise NotFound(f"没有编号为{window_id}的时间窗")
        await audit.append(
            conn,
            operator=operator,
            action="window.remove",
            target=f"{before.scope}/{before.name}",
            reason=reason,
            before=_row_dict(before),
        )
        return await plan.bump(conn)


def _window_dict(
    name: str,
    scope: str,
    classes: list[TxClass],
    action: Action,
    begins: dt.datetime,
    ends: dt.datetime,
) -> dict[str, Any]:
    return {
        "name": name,
        "scope": scope,
        "classes": classes,
        "action": action,
        "begins": begins.isoformat(sep=" "),
        "ends": ends.isoformat(sep=" "),
    }


def _row_dict(w: Window) -> dict[str, Any]:
    return _window_dict(w.name, w.scope, list(w.classes), w.action, w.begins, w.ends)


def window_dict(w: Window) -> dict[str, Any]:
    out = _window_dict(w.name, w.scope, list(w.classes), w.action, w.begins, w.ends)
    out["window_id"] = w.window_id
    return out
