"""What the emergency team sees: every scope's state, windows, breakers, deferred claims, replay.

One function feeds the console page, its JSON API and `plan show`, so they never disagree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.emergency.plan import store
from gateway.emergency.plan.rules import Action, Plan
from gateway.ledger import deferred


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
                "set_at": store.shown_at(r.set_at),
                "state": _state_of(r.action),
            }
            for r in plan.rules
        ],
        "windows_active": [store.window_dict(w) for w in plan.windows if w.active(now)],
        "windows_coming": [store.window_dict(w) for w in plan.windows if w.begins > now],
    }


async def overview(
    conn: asyncpg.Connection,
    plan: Plan,
    breakers: list[dict[str, Any]],
    now: dt.datetime,
    clusters: Sequence[asyncpg.Connection] = (),
    unreachable: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything on the console page, from the main database's connection and, when the ledger
    is split by region, one to each cluster that answers (deferred claims are counted where
    they were drained: `unreachable` names the clusters left out)."""
    view = plan_view(plan, now)
    counts = await deferred.counts(conn)
    for other in clusters:
        for key, n in (await deferred.counts(other)).items():
            counts[key] += n
    replaying = await deferred.replay_running(conn)
    view["breakers"] = breakers
    view["deferred"] = counts
    if unreachable:
        view["deferred_unreachable"] = list(unreachable)
    view["replay"] = {
        "running": replaying,
        "done": counts["claims_settled"] + counts["claims_failed"],
        "total": counts["claims_settled"] + counts["claims_failed"] + counts["claims_pending"],
        "failed": counts["claims_failed"],
    }
    degrading = [
        r for r in [*view["rules"], *view["windows_active"]] if _state_of(r["action"]) != "normal"
    ]
    # Recovering while there is something to recover: the gateways' own sweep takes the replay
    # lock every few seconds to look for calls to apply (found from outside: `plan show` said
    # "recovering" just after a clear with nothing waiting).
    waiting = counts["claims_pending"] + counts["calls_pending"]
    recovering = replaying and waiting > 0
    view["state"] = "recovering" if recovering else ("degraded" if degrading else "normal")
    return view


def _state_of(action: str) -> str:
    """A parallel run where this gateway answers (`shadow`) is normal service, not degraded
    mode, as `sgw_plan_degraded` says (found from outside: `plan show` called it degraded)."""
    return "normal" if action == Action.SHADOW.value else "degraded"
