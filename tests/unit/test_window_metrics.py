"""A cut-over window opening and closing is a change of the plan in force, counted like a rule
set or cleared (`sgw_plan_changes_total`, which the plan-state alert pages on): found from
outside, a window opened and closed with the degraded gauge moving and the count not, because
the plan's object stays the same while its window's time comes and goes."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import REGISTRY

from gateway.app import runtime
from gateway.app.runtime import Gateway
from gateway.emergency.plan.rules import Action, Plan, Window
from gateway.protocol.transaction import TxClass

T0 = dt.datetime(2026, 12, 4, 8, 0, 0)
SCOPE = "region:520500"
WINDOW = Window(
    window_id=1,
    name="毕节切换",
    scope=SCOPE,
    classes=(TxClass.SETTLEMENT,),
    action=Action.REJECT,
    begins=T0 + dt.timedelta(seconds=10),
    ends=T0 + dt.timedelta(seconds=20),
)


def _changes(action: str) -> float:
    labels = {"scope": SCOPE, "class": "settlement", "action": action}
    return REGISTRY.get_sample_value("sgw_plan_changes_total", labels) or 0.0


def _degraded() -> float | None:
    labels = {"scope": SCOPE, "class": "settlement"}
    return REGISTRY.get_sample_value("sgw_plan_degraded", labels)


def test_a_window_opening_and_closing_is_counted_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = object.__new__(Gateway)
    gw._plan_states = None  # as a new process starts
    clock = [T0]
    monkeypatch.setattr(runtime, "_now", lambda: clock[0])
    plan = Plan(version=3, windows=(WINDOW,))
    rejects, normals = _changes("reject"), _changes("normal")

    gw.set_plan(plan)  # the process's first plan: what it finds is not a change
    assert (_degraded(), _changes("reject")) == (0.0, rejects)

    for at, degraded, opened, closed in [
        (5, 0.0, 0, 0),
        (10, 1.0, 1, 0),  # the window opens: the same plan, polled again
        (15, 1.0, 1, 0),
        (20, 0.0, 1, 1),  # and closes
        (25, 0.0, 1, 1),
    ]:
        clock[0] = T0 + dt.timedelta(seconds=at)
        gw.set_plan(plan)
        assert _degraded() == degraded, at
        assert _changes("reject") - rejects == opened, at
        assert _changes("normal") - normals == closed, at

    # A new plan without the window, after it closed, changes nothing more.
    gw.set_plan(Plan(version=4))
    assert (_changes("reject") - rejects, _changes("normal") - normals) == (1, 1)
