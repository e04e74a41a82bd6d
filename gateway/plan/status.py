"""What the emergency team sees: every scope's state, windows, breakers, deferred claims, replay.

One function feeds the console page, its JSON API and `plan show`, so they never disagree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from gateway.plan import store
from gateway.plan.rules import Plan

REPLAY_LOCK = 0x2E91A7  # held by a running `deferred replay`; its presence means "replaying"


async def deferred_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Deferred claims and journaled calls by status, and the reimbursements recorded (fen)."""
    rows = await conn.fetch(
        "SELECT kind, status, count(*) AS n, coalesce(sum(reimbursement_fen), 0) AS r"
        " FROM deferred GROUP BY kind, status"
    )
    out = {
        "claims_pending": 0,
        "claims_settled": 0,
        "claims_failed": 0,
        "claims_withdrawn": 0,
        "calls_pending": 0,
        "calls_failed": 0,
        "reimbursement_fen": 0,
    }
    for r in rows:
        key = f"{r['kind']}s_{r['status']}"
        if key in out:
            out[key] = int(r["n"])
        out["reimbursement_fen"] += int(r["r"])
    return out


async def replay_running(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
            " AND ((classid::bigint << 32) | objid::bigint) = $1 AND granted)",
            REPLAY_LOCK,
        )
    )


def _iso(t: dt.datetime) -> str:
    return t.isoformat(sep=" ", timespec="seconds")


def plan_view(plan: Plan, now: dt.datetime) -> dict[str, Any]:
    """Rules in force, and windows active and coming, as plain values."""
    return {
        "version": plan.version,
        "rules": [
            {
                "scope": r.scope,
                "class": r.klass,
                "action": r.action,
                "reason": r.reason,
                "operator": r.operator,
                "set_at": _iso(r.set_at),
                "state": "degraded",
            }
            for r in plan.rules
        ],
        "windows_active": [store.window_dict(w) for w in plan.windows if w.active(now)],
        "windows_coming": [store.window_dict(w) for w in plan.windows if w.begins > now],
    }


async def overview(
    conn: asyncpg.Connection, plan: Plan, breakers: list[dict[str, Any]], now: dt.datetime
) -> dict[str, Any]:
    """Everything on the console page, from one connection."""
    view = plan_view(plan, now)
    counts = await deferred_counts(conn)
    replaying = await replay_running(conn)
    view["breakers"] = breakers
    view["deferred"] = counts
    view["replay"] = {
        "running": replaying,
        "done": counts["claims_settled"] + counts["claims_failed"],
        "total": counts["claims_settled"] + counts["claims_failed"] + counts["claims_pending"],
        "failed": counts["claims_failed"],
    }
    view["state"] = (
        "recovering"
        if replaying
        else ("degraded" if view["rules"] or view["windows_active"] else "normal")
    )
    return view
