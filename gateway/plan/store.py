"""The plan in PostgreSQL: rules, windows, the version every process polls, and their audit rows.

Every change bumps `plan_version` and appends an audit row in the same transaction, so a change
is either visible everywhere with its audit row or not at all.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from gateway import audit
from gateway.errors import BadRequest, NotFound
from gateway.plan.rules import (
    Plan,
    Rule,
    Window,
    check_action,
    check_class,
    check_scope,
)


async def version(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT version FROM plan_version"))


async def load(conn: asyncpg.Connection) -> Plan:
    """The whole plan as one consistent read."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        v = await version(conn)
        rules = await conn.fetch("SELECT * FROM plan_rules ORDER BY scope, class")
        windows = await conn.fetch("SELECT * FROM plan_windows ORDER BY begins, window_id")
    return Plan(
        version=v,
        rules=tuple(
            Rule(r["scope"], r["class"], r["action"], r["reason"], r["operator"], r["set_at"])
            for r in rules
        ),
        windows=tuple(
            Window(
                int(w["window_id"]),
                w["name"],
                w["scope"],
                tuple(w["classes"]),
                w["action"],
                w["begins"],
                w["ends"],
            )
            for w in windows
        ),
    )


async def _bump(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval("UPDATE plan_version SET version = version + 1 RETURNING version")
    )


async def check_known_scope(conn: asyncpg.Connection, scope: str) -> str:
    """A scope that names something the reference data holds: a rule or window for a code no
    institution has would match no request while the console shows the plan degraded, so a typo
    made during an emergency is refused here rather than silently doing nothing."""
    check_scope(scope)
    kind, _, code = scope.partition(":")
    if kind == "institution":
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM institutions WHERE fixmedins_code = $1)", code
        ):
            raise BadRequest(f"范围{scope}无效：定点医药机构编号{code}未登记，请核对机构编号")
    elif kind == "region" and not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM institutions WHERE admdvs = $1)", code
    ):
        raise BadRequest(f"范围{scope}无效：医保区划{code}下没有登记的定点医药机构，请核对区划代码")
    return scope


def _reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) < 2:
        raise BadRequest("请填写变更原因")
    return reason


def rule_dict(rule: Rule | None) -> dict[str, Any] | None:
    if rule is None:
        return None
    return {"scope": rule.scope, "class": rule.klass, "action": rule.action, "reason": rule.reason}


async def _rule(conn: asyncpg.Connection, scope: str, klass: str) -> Rule | None:
    r = await conn.fetchrow(
        "SELECT * FROM plan_rules WHERE scope = $1 AND class = $2 FOR UPDATE", scope, klass
    )
    if r is None:
        return None
    return Rule(r["scope"], r["class"], r["action"], r["reason"], r["operator"], r["set_at"])


async def set_rule(
    conn: asyncpg.Connection, *, scope: str, klass: str, action: str, reason: str, operator: str
) -> int:
    """Put a scope/class into degraded mode with this action; returns the new plan version."""
    await check_known_scope(conn, scope)
    check_class(klass)
    check_action(action)
    reason = _reason(reason)
    if action == "selfpay" and klass != "encounter":
        raise BadRequest("selfpay（自费入院）只适用于encounter类交易")
    async with conn.transaction():
        before = await _rule(conn, scope, klass)
        await conn.execute(
            "INSERT INTO plan_rules (scope, class, action, reason, operator) VALUES ($1,$2,$3,$4,$5)"
            " ON CONFLICT (scope, class) DO UPDATE SET action = EXCLUDED.action,"
            " reason = EXCLUDED.reason, operator = EXCLUDED.operator, set_at = now()",
            scope,
            klass,
            action,
            reason,
            operator,
        )
        after = {"scope": scope, "class": klass, "action": action, "reason": reason}
        await audit.append(
            conn,
            operator=operator,
            action="plan.set",
            target=f"{scope}/{klass}",
            reason=reason,
            before=rule_dict(before),
            after=after,
        )
        return await _bump(conn)


async def clear_rule(
    conn: asyncpg.Connection, *, scope: str, klass: str, reason: str, operator: str
) -> int:
    """Back to normal for this scope/class; returns the new plan version."""
    check_scope(scope)
    check_class(klass)
    reason = _reason(reason)
    async with conn.transaction():
        before = await _rule(conn, scope, klass)
        if before is None:
            raise NotFound(f"{scope}/{klass}没有生效的应急规则")
        await conn.execute("DELETE FROM plan_rules WHERE scope = $1 AND class = $2", scope, klass)
        await audit.append(
            conn,
            operator=operator,
            action="plan.clear",
            target=f"{scope}/{klass}",
            reason=reason,
            before=rule_dict(before),
            after=None,
        )
        return await _bump(conn)


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
    for klass in classes:
        check_class(klass)
    check_action(action)
    if not classes:
        raise BadRequest("时间窗至少包含一类交易")
    if ends <= begins:
        raise BadRequest("时间窗结束时间须晚于开始时间")
    reason = _reason(reason)
    async with conn.transaction():
        before = await conn.fetchrow(
            "SELECT * FROM plan_windows WHERE name = $1 AND scope = $2 FOR UPDATE", name, scope
        )
        await conn.execute(
            "INSERT INTO plan_windows (name, scope, classes, action, begins, ends, operator)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (name, scope) DO UPDATE SET"
            " classes = EXCLUDED.classes, action = EXCLUDED.action, begins = EXCLUDED.begins,"
            " ends = EXCLUDED.ends, operator = EXCLUDED.operator",
            name,
            scope,
            classes,
            action,
            begins,
            ends,
            operator,
        )
        after = _window_dict(name, scope, classes, action, begins, ends)
        await audit.append(
            conn,
            operator=operator,
            action="window.set",
            target=f"{scope}/{name}",
            reason=reason,
            before=None if before is None else _row_dict(before),
            after=after,
        )
        return await _bump(conn)


async def remove_window(
    conn: asyncpg.Connection, *, window_id: int, operator: str, reason: str
) -> int:
    reason = _reason(reason)
    async with conn.transaction():
        before = await conn.fetchrow(
            "DELETE FROM plan_windows WHERE window_id = $1 RETURNING *", window_id
        )
        if before is None:
            raise NotFound(f"没有编号为{window_id}的时间窗")
        await audit.append(
            conn,
            operator=operator,
            action="window.remove",
            target=f"{before['scope']}/{before['name']}",
            reason=reason,
            before=_row_dict(before),
        )
        return await _bump(conn)


def _window_dict(
    name: str, scope: str, classes: list[str], action: str, begins: dt.datetime, ends: dt.datetime
) -> dict[str, Any]:
    return {
        "name": name,
        "scope": scope,
        "classes": classes,
        "action": action,
        "begins": begins.isoformat(sep=" "),
        "ends": ends.isoformat(sep=" "),
    }


def _row_dict(row: asyncpg.Record) -> dict[str, Any]:
    return _window_dict(
        row["name"], row["scope"], list(row["classes"]), row["action"], row["begins"], row["ends"]
    )


def window_dict(w: Window) -> dict[str, Any]:
    out = _window_dict(w.name, w.scope, list(w.classes), w.action, w.begins, w.ends)
    out["window_id"] = w.window_id
    return out
