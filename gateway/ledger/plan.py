"""The emergency plan's rows: rules, cut-over windows, and the version every process polls."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from gateway.emergency.plan.rules import Action, Plan, Rule, TxClass, Window


def _rule_of(r: Any) -> Rule:
    return Rule(
        r["scope"],
        TxClass(r["class"]),
        Action(r["action"]),
        r["reason"],
        r["operator"],
        r["set_at"],
    )


def _window_of(w: Any) -> Window:
    return Window(
        int(w["window_id"]),
        w["name"],
        w["scope"],
        tuple(TxClass(c) for c in w["classes"]),
        Action(w["action"]),
        w["begins"],
        w["ends"],
    )


async def version(conn: asyncpg.Connection) -> int:
    """Reads the plan's version."""
    return int(await conn.fetchval("SELECT version FROM plan_version"))


async def load(conn: asyncpg.Connection) -> Plan:
    """Reads the whole plan (version, rules, windows) as one consistent read."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        v = await version(conn)
        rules = await conn.fetch("SELECT * FROM plan_rules ORDER BY scope, class")
        windows = await conn.fetch("SELECT * FROM plan_windows ORDER BY begins, window_id")
    return Plan(
        version=v,
        rules=tuple(_rule_of(r) for r in rules),
        windows=tuple(_window_of(w) for w in windows),
    )


async def bound_waits(conn: asyncpg.Connection, seconds: float) -> None:
    """This transaction waits at most `seconds` for any lock (then fails, changing nothing)."""
    await conn.execute(f"SET LOCAL lock_timeout = '{max(1, int(seconds * 1000))}ms'")


async def bump(conn: asyncpg.Connection) -> int:
    """Writes the next plan version; returns it."""
    return int(
        await conn.fetchval("UPDATE plan_version SET version = version + 1 RETURNING version")
    )


async def lock_rule(conn: asyncpg.Connection, scope: str, klass: TxClass) -> Rule | None:
    """Reads and locks the rule of a scope/class, if there is one."""
    r = await conn.fetchrow(
        "SELECT * FROM plan_rules WHERE scope = $1 AND class = $2 FOR UPDATE", scope, klass
    )
    return None if r is None else _rule_of(r)


async def put_rule(
    conn: asyncpg.Connection,
    *,
    scope: str,
    klass: TxClass,
    action: Action,
    reason: str,
    operator: str,
) -> None:
    """Writes the rule of a scope/class, replacing the one in force."""
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


async def delete_rule(conn: asyncpg.Connection, scope: str, klass: TxClass) -> None:
    """Deletes the rule of a scope/class."""
    await conn.execute("DELETE FROM plan_rules WHERE scope = $1 AND class = $2", scope, klass)


async def lock_window(conn: asyncpg.Connection, name: str, scope: str) -> Window | None:
    """Reads and locks the window of that name and scope, if there is one."""
    w = await conn.fetchrow(
        "SELECT * FROM plan_windows WHERE name = $1 AND scope = $2 FOR UPDATE", name, scope
    )
    return None if w is None else _window_of(w)


async def put_window(
    conn: asyncpg.Connection,
    *,
    name: str,
    scope: str,
    classes: list[TxClass],
    action: Action,
    begins: dt.datetime,
    ends: dt.datetime,
    operator: str,
) -> None:
    """Writes a window, replacing the one of the same name and scope."""
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


async def delete_window(conn: asyncpg.Connection, window_id: int) -> Window | None:
    """Deletes a window; returns it as it was, or None when there was none."""
    w = await conn.fetchrow("DELETE FROM plan_windows WHERE window_id = $1 RETURNING *", window_id)
    return None if w is None else _window_of(w)
