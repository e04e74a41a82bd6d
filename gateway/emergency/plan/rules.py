"""Which action applies to a request: pure functions over the rules and windows in force.

Scopes are `global`, `region:<admdvs>` and `institution:<fixmedins_code>`, each optionally
narrowed to one medical category (`global:inpatient`, `region:441800:chronic`,
`institution:H44180000001:outpatient`: the values of gateway.core.model.Category). The most
specific matching scope wins — institution+category, institution, region+category, region,
global+category, global — and at the same scope a rule set by a person wins over a scheduled
window (the team can always override a timetable). A request whose category is not known from
its input sees only the plain scopes.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field

from gateway.core.model import Category
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
CATEGORIES = tuple(c.value for c in Category)
# The base scope, then optionally ":<category>" (a category the grammar knows; checked below).
_SCOPE = re.compile(r"^(global|region:\d{6}|institution:[0-9A-Za-z]{1,30})(?::([a-z]{1,20}))?$")


def check_scope(scope: str) -> str:
    """The scope as written, when it is one; BadRequest otherwise."""
    found = _SCOPE.fullmatch(scope)
    if not found:
        raise BadRequest(
            f"范围{scope}无效：应为global、region:<6位区划>或institution:<机构编号>，"
            f"可再加:<医疗类别>（{'、'.join(CATEGORIES)}）"
        )
    if found.group(2) is not None and found.group(2) not in CATEGORIES:
        raise BadRequest(
            f"范围{scope}无效：医疗类别{found.group(2)}应为{'、'.join(CATEGORIES)}之一"
        )
    return scope


def split_scope(scope: str) -> tuple[str, str | None]:
    """A checked scope's base (`region:441800`) and its medical category, if it names one."""
    found = _SCOPE.fullmatch(scope)
    if found is None or found.group(2) not in CATEGORIES:
        return scope, None
    return found.group(1), found.group(2)


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


def scopes_of(fixmedins_code: str, admdvs: str, category: str | None = None) -> tuple[str, ...]:
    """The scopes a request belongs to, most specific first: each base scope narrowed to the
    request's medical category comes just before the base scope itself."""
    institution, region = f"institution:{fixmedins_code}", f"region:{admdvs}"
    if category is None:
        return (institution, region, "global")
    return (
        f"{institution}:{category}",
        institution,
        f"{region}:{category}",
        region,
        f"global:{category}",
        "global",
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules and windows as loaded; `version` follows plan_version in the database.

    `categorized`: some rule or window names a medical category. Only then is a request's
    category worth finding out (it costs a look into the request's input), so callers ask this
    first and the plain path pays nothing."""

    version: int
    rules: tuple[Rule, ...] = ()
    windows: tuple[Window, ...] = ()
    categorized: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        named = any(split_scope(r.scope)[1] for r in self.rules) or any(
            split_scope(w.scope)[1] for w in self.windows
        )
        object.__setattr__(self, "categorized", named)

    def decide(
        self,
        fixmedins_code: str,
        admdvs: str,
        klass: TxClass,
        now: dt.datetime,
        category: str | None = None,
    ) -> Decision | None:
        """The action for a request of this class (and medical category, when known) at this
        institution now; None: normal."""
        if not self.rules and not self.windows:
            return None
        if not self.categorized:
            category = None  # no scope names one: the three plain scopes are all there is
        for scope in scopes_of(fixmedins_code, admdvs, category):
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
