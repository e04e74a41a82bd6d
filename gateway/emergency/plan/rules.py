"""Which action applies to a request: pure functions over the rules and windows in force.

Scopes are `global`, `region:<admdvs>` and `institution:<fixmedins_code>`; the most specific
matching scope wins, and at the same scope a rule set by a person wins over a scheduled window
(the team can always override a timetable).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass

from gateway.protocol.errors import BadRequest


class TxClass(enum.StrEnum):
    """A transaction's class (`register(klass=...)`): what a plan rule or window names.

    The values are stored (plan_rules.class, plan_windows.classes) and written in timetables."""

    SETTLEMENT = "settlement"
    ENCOUNTER = "encounter"
    CATALOG = "catalog"
    RECONCILE = "reconcile"
    QUERY = "query"  # reads of settled records: never under the plan


class Action(enum.StrEnum):
    """What the plan does to a request of a degraded class (gateway.emergency.hook).

    The values are stored (the `action` CHECK of plan_rules and plan_windows), written in
    timetables and `[breakers.*] action`, and typed at the CLI."""

    REJECT = "reject"  # refused: the counter settles as self-pay
    DEFER = "defer"  # settlements become claims (主动报) replayed later; pre-settlements all-cash
    SELFPAY = "selfpay"  # admissions open as self-pay (encounter class only)
    ROUTE_LEGACY = "route_legacy"  # forwarded unchanged to the old system
    # A parallel run (docs/emergency.md "Parallel run"): the counter's answer comes from one
    # system, and the same request is priced by the other as a pre-settlement off the request
    # path, the two answers compared (gateway.emergency.shadow). An action, not a separate
    # setting, because a cut-over moves a scope through exactly these states in order, each
    # set, scheduled (windows) and audited like any other: route_legacy_shadow before go-live
    # (the old system answers, this gateway prices in its shadow, writing nothing), shadow after
    # it (this gateway answers, the old system prices in its shadow), then no rule.
    SHADOW = "shadow"  # this gateway answers; the old system ([legacy] url) is the shadow
    ROUTE_LEGACY_SHADOW = "route_legacy_shadow"  # the old system answers; this gateway shadows


# The classes a rule or window may name, in the order the console and metrics list them.
CLASSES = tuple(c for c in TxClass if c is not TxClass.QUERY)
ACTIONS = tuple(Action)
# The actions under which settlements are priced twice, and the classes they may name.
SHADOW_ACTIONS = (Action.SHADOW, Action.ROUTE_LEGACY_SHADOW)
_SCOPE = re.compile(r"^(global|region:\d{6}|institution:[0-9A-Za-z]{1,30})$")


def check_scope(scope: str) -> str:
    if not _SCOPE.match(scope):
        raise BadRequest(f"范围{scope}无效：应为global、region:<6位区划>或institution:<机构编号>")
    return scope


def check_class(klass: str) -> TxClass:
    """The plan class this text names; BadRequest when it names none."""
    if klass not in CLASSES:
        raise BadRequest(f"交易类别{klass}无效：应为{'、'.join(CLASSES)}之一")
    return TxClass(klass)


def check_action(action: str) -> Action:
    """The action this text names; BadRequest when it names none."""
    if action not in ACTIONS:
        raise BadRequest(f"处置方式{action}无效：应为{'、'.join(ACTIONS)}之一")
    return Action(action)


@dataclass(frozen=True, slots=True)
class Rule:
    scope: str
    klass: TxClass
    action: Action
    reason: str
    operator: str
    set_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Window:
    window_id: int
    name: str
    scope: str
    classes: tuple[TxClass, ...]
    action: Action
    begins: dt.datetime  # local time, as the cut-over notices give it
    ends: dt.datetime

    def active(self, now: dt.datetime) -> bool:
        return self.begins <= now < self.ends


@dataclass(frozen=True, slots=True)
class Decision:
    """The action in force for one request, and where it came from (for the answer and logs)."""

    action: Action
    scope: str
    klass: TxClass
    source: str  # "rule" | "window:<name>" | "breaker:<dependency>"
    reason: str


def scopes_of(fixmedins_code: str, admdvs: str) -> tuple[str, str, str]:
    """The scopes a request belongs to, most specific first."""
    return (f"institution:{fixmedins_code}", f"region:{admdvs}", "global")


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules and windows as loaded; `version` follows plan_version in the database."""

    version: int
    rules: tuple[Rule, ...] = ()
    windows: tuple[Window, ...] = ()

    def decide(
        self, fixmedins_code: str, admdvs: str, klass: TxClass, now: dt.datetime
    ) -> Decision | None:
        """The action for a request of this class at this institution now; None: normal."""
        if not self.rules and not self.windows:
            return None
        for scope in scopes_of(fixmedins_code, admdvs):
            for rule in self.rules:
                if rule.scope == scope and rule.klass == klass:
                    return Decision(rule.action, scope, klass, "rule", rule.reason)
            for window in self.windows:
                if window.scope == scope and klass in window.classes and window.active(now):
                    return Decision(
                        window.action, scope, klass, f"window:{window.name}", window.name
                    )
        return None

    def state_of(self, scope: str, klass: TxClass, now: dt.datetime) -> Decision | None:
        """What is in force at exactly this scope (no inheritance), for the console and metrics."""
        for rule in self.rules:
            if rule.scope == scope and rule.klass == klass:
                return Decision(rule.action, scope, klass, "rule", rule.reason)
        for window in self.windows:
            if window.scope == scope and klass in window.classes and window.active(now):
                return Decision(window.action, scope, klass, f"window:{window.name}", window.name)
        return None
