"""Plan decisions, breakers and institution triggers, on a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from adapters.national.category import request_category
from adapters.national.envelope import Request
from gateway.app.config import DEFAULT_CONFIG, load_config
from gateway.emergency.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerConfig,
    SharedStoreGate,
)
from gateway.emergency.console.pages import ACTION_NAMES
from gateway.emergency.plan.rules import (
    ACTIONS,
    CLASSES,
    Action,
    Plan,
    Rule,
    TxClass,
    Window,
    check_action,
    check_class,
    check_scope,
    scopes_of,
    split_scope,
)
from gateway.emergency.triggers import InstitutionTriggers
from gateway.protocol.errors import BadRequest

NOW = dt.datetime(2022, 3, 5, 12, 0)
MIGRATION = Path(__file__).resolve().parents[2] / "gateway/ledger/migrations/006_emergency.sql"


def rule(scope: str, klass: str, action: str) -> Rule:
    return Rule(scope, klass, action, "why", "duty", NOW)


def window(scope: str, classes: tuple[str, ...], action: str, begins: str, ends: str) -> Window:
    return Window(1, "w", scope, classes, action, dt.datetime.fromisoformat(begins), dt.datetime.fromisoformat(ends))  # fmt: skip


def test_most_specific_scope_wins_and_a_rule_beats_a_window() -> None:
    plan = Plan(
        2,
        rules=(rule("global", "settlement", "reject"), rule("institution:H1", "settlement", "defer")),
        windows=(window("region:330300", ("settlement", "encounter"), "route_legacy", "2022-03-04", "2022-03-07"),),
    )  # fmt: skip
    assert plan.decide("H1", "330300", "settlement", NOW).action == "defer"  # type: ignore[union-attr]
    assert plan.decide("H2", "330300", "settlement", NOW).action == "route_legacy"  # type: ignore[union-attr]
    assert plan.decide("H2", "441800", "settlement", NOW).action == "reject"  # type: ignore[union-attr]
    assert plan.decide("H2", "330300", "encounter", NOW).source == "window:w"  # type: ignore[union-attr]
    assert plan.decide("H2", "441800", "encounter", NOW) is None
    # Windows are [begins, ends): 03-06 24:00 is 03-07 00:00, no longer in force.
    assert plan.decide("H2", "330300", "encounter", dt.datetime(2022, 3, 7)) is None
    assert plan.decide("H2", "330300", "encounter", dt.datetime(2022, 3, 4)) is not None


def test_scopes_are_checked() -> None:
    assert check_scope("region:330300") == "region:330300"
    for bad in ("region:33", "everything", "institution:", "global;drop"):
        with pytest.raises(BadRequest):
            check_scope(bad)


def test_a_scope_may_name_a_medical_category() -> None:
    for good in ("global:inpatient", "region:441800:chronic", "institution:H44180000001:outpatient",
                 "institution:P44180000001:pharmacy"):  # fmt: skip
        assert check_scope(good) == good
    assert split_scope("region:441800:inpatient") == ("region:441800", "inpatient")
    assert split_scope("global:outpatient") == ("global", "outpatient")
    assert split_scope("region:441800") == ("region:441800", None)
    # An institution code that happens to spell a category is an institution, not a category.
    assert split_scope("institution:inpatient") == ("institution:inpatient", None)
    for bad in ("region:441800:surgery", "global:", "region:441800:inpatient:chronic",
                "institution:H1:Inpatient", "inpatient", "global:inpatient\n", "region:inpatient"):  # fmt: skip
        with pytest.raises(BadRequest):
            check_scope(bad)


def test_categories_interleave_with_the_scopes_most_specific_first() -> None:
    assert scopes_of("H1", "441800") == ("institution:H1", "region:441800", "global")
    assert scopes_of("H1", "441800", "inpatient") == (
        "institution:H1:inpatient", "institution:H1", "region:441800:inpatient",
        "region:441800", "global:inpatient", "global",
    )  # fmt: skip


def _action(plan: Plan, code: str, category: str | None, klass: str = "settlement") -> str | None:
    decision = plan.decide(code, "441800", klass, NOW, category)  # type: ignore[arg-type]
    return None if decision is None else decision.action


def test_the_most_specific_of_scope_and_category_wins() -> None:
    rules = [
        rule("global", "settlement", "reject"),
        rule("global:chronic", "settlement", "defer"),
        rule("region:441800", "settlement", "shadow"),
        rule("region:441800:outpatient", "settlement", "reject"),
        rule("institution:H1", "settlement", "route_legacy_shadow"),
        rule("institution:H1:inpatient", "settlement", "route_legacy"),
    ]
    plan = Plan(3, rules=tuple(rules))
    assert plan.categorized
    assert _action(plan, "H1", "inpatient") == "route_legacy"  # institution+category
    assert _action(plan, "H1", "outpatient") == "route_legacy_shadow"  # institution over region+cat
    assert _action(plan, "H2", "outpatient") == "reject"  # region+category
    assert _action(plan, "H2", "inpatient") == "shadow"  # region
    assert _action(plan, "H2", "chronic") == "shadow"  # region over global+category
    assert _action(plan, "H2", None) == "shadow"  # no category known: the plain scopes only
    assert _action(plan, "H1", None) == "route_legacy_shadow"
    other = Plan(4, rules=(rule("global", "settlement", "reject"), rule("global:chronic", "settlement", "defer")))  # fmt: skip
    assert _action(other, "H2", "chronic") == "defer"  # global+category over global
    assert _action(other, "H2", "pharmacy") == "reject"
    assert _action(other, "H2", None) == "reject"
    # A rule narrowed to a category is of its class only.
    assert _action(plan, "H1", "inpatient", "encounter") is None
    decision = plan.decide("H1", "441800", TxClass.SETTLEMENT, NOW, "inpatient")
    assert decision is not None and decision.scope == "institution:H1:inpatient"


def test_windows_may_name_a_category_and_a_rule_still_beats_a_window_at_one_scope() -> None:
    plan = Plan(
        5,
        rules=(rule("region:330300:inpatient", "settlement", "route_legacy"),),
        windows=(window("region:330300:inpatient", ("settlement", "encounter"), "defer", "2022-03-04", "2022-03-07"),),
    )  # fmt: skip
    assert plan.categorized
    assert plan.decide("H1", "330300", "settlement", NOW, "inpatient").action == "route_legacy"  # type: ignore[union-attr,arg-type]
    assert plan.decide("H1", "330300", "encounter", NOW, "inpatient").source == "window:w"  # type: ignore[union-attr,arg-type]
    assert plan.decide("H1", "330300", "encounter", NOW, "outpatient") is None  # type: ignore[arg-type]


def test_a_plan_without_categories_ignores_the_category_it_is_told() -> None:
    plan = Plan(6, rules=(rule("region:441800", "settlement", "reject"),))
    assert not plan.categorized and not Plan(0).categorized
    assert _action(plan, "H1", "inpatient") == _action(plan, "H1", None) == "reject"


def _checked(column: str) -> set[str]:
    """The values the plan tables' CHECK allows in a column, as the latest migration that
    writes it has it (013 relaxed the action CHECK for the parallel run's actions)."""
    found: list[str] = []
    for path in sorted(MIGRATION.parent.glob("*.sql")):
        text = path.read_text("utf-8")
        found += re.findall(rf"CHECK \(\s*{column} IN \(([^)]*)\)\s*\)", text)
    assert found, column
    return {v.strip().strip("'") for v in found[-1].split(",")}


def test_the_enums_hold_the_values_the_ledger_stores() -> None:
    assert {a.value for a in ACTIONS} == {a.value for a in Action} == _checked("action")
    assert {c.value for c in CLASSES} == _checked("class")
    assert set(TxClass) - set(CLASSES) == {TxClass.QUERY}  # a query is never degraded


def test_text_is_checked_into_the_enums() -> None:
    assert check_class("encounter") is TxClass.ENCOUNTER
    assert check_action("route_legacy") is Action.ROUTE_LEGACY
    for bad_class in ("query", "Settlement", ""):
        with pytest.raises(BadRequest, match="交易类别"):
            check_class(bad_class)
    for bad_action in ("none", "deny", ""):
        with pytest.raises(BadRequest, match="处置方式"):
            check_action(bad_action)


def test_every_action_has_its_console_label() -> None:
    assert set(ACTION_NAMES) == set(Action) and all(ACTION_NAMES.values())


def test_a_breaker_action_is_a_plan_action_or_none() -> None:
    assert BreakerConfig().plan_action is Action.DEFER
    assert BreakerConfig(action="route_legacy").plan_action is Action.ROUTE_LEGACY
    assert BreakerConfig(action="none").plan_action is None
    with pytest.raises(ValueError, match="breaker action 'deferr'"):
        BreakerConfig(action="deferr")
    for parallel_run in ("shadow", "route_legacy_shadow"):  # no protection: refused
        with pytest.raises(ValueError, match=f"breaker action '{parallel_run}'"):
            BreakerConfig(action=parallel_run)
    shipped = load_config(DEFAULT_CONFIG)
    breakers = shipped.breakers
    assert {n: getattr(breakers, n).plan_action for n in ("postgres", "redis", "legacy")} == {
        "postgres": Action.DEFER,
        "redis": None,
        "legacy": Action.REJECT,
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


CFG = BreakerConfig(window_seconds=10, min_calls=10, error_ratio=0.5, timeout_ratio=0.3,
                    consecutive_failures=5, latency_target_seconds=1.0, slow_ratio=0.8,
                    min_open_seconds=5, half_open_probes=3, healthy_seconds=4)  # fmt: skip


def test_breaker_trips_on_consecutive_failures_and_never_flaps() -> None:
    clock = Clock()
    b = Breaker("postgres", CFG, clock)
    for _ in range(4):
        b.record(False)
    assert b.state == CLOSED
    b.record(False)
    assert b.state == OPEN and "连续5次" in b.reason
    assert not b.probe_due()  # minimum open time
    clock.t += 5
    assert b.probe_due()
    b.probe_result(True)
    assert b.state == HALF_OPEN and b.is_open and not b.ready_to_close()
    b.probe_result(False)  # one bad probe: open again, the healthy period starts over
    assert b.state == OPEN
    for _ in range(3):
        b.probe_result(True)
        clock.t += 1
    assert not b.ready_to_close()  # 3 probes, but healthy for 2 s only
    clock.t += 2
    b.probe_result(True)
    assert b.ready_to_close()
    b.close("ok")
    assert b.state == CLOSED and not b.is_open


def _pool_wait_out() -> Exception:
    """What redis-py's BlockingConnectionPool raises when no connection frees up in time."""
    try:
        try:
            raise TimeoutError
        except TimeoutError as err:
            raise RedisConnectionError("No connection available.") from err
    except RedisConnectionError as exc:
        return exc


def _redis_gate(clock: Clock) -> tuple[SharedStoreGate, Breaker]:
    config = BreakerConfig(consecutive_failures=3, min_open_seconds=5.0, action="none")
    gate = SharedStoreGate()
    gate.breaker = Breaker("redis", config, clock)
    return gate, gate.breaker


def test_a_redis_use_begun_before_the_breaker_opened_is_not_its_probe() -> None:
    """Found from outside: uses of Redis in flight when its breaker opened, ending after,
    were taken as probes and moved it to half-open in 7–109 ms, past a 5 s minimum."""
    clock = Clock()
    gate, breaker = _redis_gate(clock)
    for _ in range(3):
        gate.note(False, ConnectionError("reset"))
    assert breaker.state == OPEN
    for _ in range(20):  # the requests that were waiting on Redis meanwhile
        gate.note(True)
    clock.t += 4.9
    gate.note(True)
    assert breaker.state == OPEN
    clock.t += 0.1
    assert gate.usable()  # the probe, once the minimum open time is past
    gate.note(True)
    assert breaker.state == HALF_OPEN


@pytest.mark.parametrize(
    "shortage",
    [
        MaxConnectionsError("Too many connections"),
        _pool_wait_out(),
    ],
    ids=["past-the-pool", "no-connection-in-time"],
)
def test_a_use_that_found_no_connection_in_this_process_is_not_redis_failing(
    shortage: Exception,
) -> None:
    """Found from outside: a burst past the pool's connections failed every use beyond them at
    once, and a healthy Redis's breaker opened and paged. A real failure still counts."""
    gate, breaker = _redis_gate(Clock())
    for _ in range(10):
        gate.note(False, shortage)
    assert breaker.state == CLOSED
    for _ in range(3):
        gate.note(False, RedisConnectionError("Connection refused"))
    assert breaker.state == OPEN


def test_breaker_ratios_need_the_minimum_count_within_the_window() -> None:
    clock = Clock()
    b = Breaker("postgres", CFG, clock)
    for i in range(9):  # 4 failures in 9 calls, never 5 in a row: below the minimum count
        b.record(i % 2 == 0)
    assert b.state == CLOSED
    clock.t += 11  # the window slides past them
    for i in range(10):
        b.record(i % 3 != 0, timeout=i % 3 == 0)  # 4 timeouts of 10 ≥ 30 %
    assert b.state == OPEN and "超时" in b.reason
    slow = Breaker("postgres", CFG, Clock())
    for _ in range(10):
        slow.record(True, seconds=2.0)
    assert slow.state == OPEN and "慢于" in slow.reason


def test_a_call_answered_well_does_not_open_the_breaker() -> None:
    """Found from outside: a healed old system's first answer, the window's fifth call beside
    four failures, opened its breaker for half a minute. The next failure still does."""
    config = BreakerConfig(window_seconds=30, min_calls=5, error_ratio=0.5, consecutive_failures=9)
    b = Breaker("legacy", config, Clock())
    for _ in range(4):
        b.record(False)
    b.record(True)
    assert b.state == CLOSED
    b.record(False)
    assert b.state == OPEN and "失败5/6" in b.reason


async def test_institution_trigger_writes_one_rule_and_rearms_after_it_is_cleared() -> None:
    clock = Clock()
    written: list[tuple[str, str]] = []
    rules: set[str] = set()

    async def apply(code: str, reason: str) -> None:
        written.append((code, reason))
        rules.add(code)

    triggers = InstitutionTriggers(CFG, apply, lambda code: code in rules, clock)
    for _ in range(5):
        triggers.record("H44180000001", False, True, 5.0)
        triggers.record("H44180000002", True, False, 0.01)
    for _ in range(20):
        triggers.record("H44180000001", False, True, 5.0)
    await asyncio.sleep(0)
    assert [code for code, _ in written] == ["H44180000001"]
    assert "自动触发" in written[0][1]
    assert [s["dependency"] for s in triggers.states()] == ["institution:H44180000001"]
    rules.clear()  # the team cleared it
    clock.t += CFG.min_open_seconds
    triggers.record("H44180000001", True, False, 0.01)
    assert triggers.states() == []


def _req(infno: str, node: dict[str, object]) -> Request:
    return Request(infno, "M1", "H1", "441800", "441800", "o", "o", "1", "d", "", msgspec.json.encode(node))  # fmt: skip


def test_a_requests_category_comes_from_its_kind_or_its_med_type() -> None:
    # Inpatient stays and pharmacy purchases admit one category each: no med_type needed (2304
    # carries none).
    assert request_category("inpatient", _req("2304", {"data": {"mdtrt_id": "1"}})) == "inpatient"
    assert request_category("pharmacy", _req("2102", {"druginfo": {}})) == "pharmacy"
    # An outpatient settlement is outpatient or chronic: its data.med_type says which.
    assert (
        request_category("outpatient", _req("2207", {"data": {"med_type": "11"}})) == "outpatient"
    )
    assert request_category("outpatient", _req("2207", {"data": {"med_type": "14"}})) == "chronic"
    assert request_category("outpatient", _req("2207", {"data": {"med_type": 14}})) == "chronic"
    # Calls of no kind: where their input names it (2203 mdtrtinfo, 2204/2301 feedetail rows).
    assert request_category(None, _req("2203", {"mdtrtinfo": {"med_type": "14"}})) == "chronic"
    rows = {"feedetail": [{"med_type": "21"}, {"med_type": "22"}]}
    assert request_category(None, _req("2301", rows)) == "inpatient"
    assert request_category(None, _req("2204", {"feedetail": {"med_type": "11"}})) == "outpatient"
    # Not known: nothing named, rows of two categories, a med_type not settled or not of this
    # kind of visit, input that does not decode (the handler refuses those itself).
    for kind, node in [
        ("outpatient", {"data": {"mdtrt_id": "1"}}),
        (None, {"data": {"mdtrt_id": "1"}}),
        (None, {"feedetail": [{"med_type": "11"}, {"med_type": "21"}]}),
        ("outpatient", {"data": {"med_type": "99"}}),
        ("outpatient", {"data": {"med_type": "21"}}),
        ("outpatient", {"data": [1, 2]}),
        ("outpatient", {"data": {"med_type": {"x": 1}}}),
    ]:
        assert request_category(kind, _req("2207", node)) is None, node
    assert request_category("outpatient", Request("2207", "M1", "H1", "", "", "", "", "", "", "", b"[")) is None  # fmt: skip


def test_a_run_of_failed_settlements_opens_the_ledger_breaker_whatever_the_reads_did() -> None:
    """Found from outside: the settlements table locked for 90 s timed out every sale while the
    reads of other tables answered; they broke every run and kept the window's timeout ratio
    low, so the ledger breaker never opened and institution triggers deferred two pharmacies
    until a person cleared them. A run of failed settlement writes from two institutions opens
    it; one institution's own, however many, does not (an upload too large for its deadline is
    not the ledger's failure)."""
    config = msgspec.structs.replace(CFG, write_run_institutions=2)

    def hung_write(b: Breaker, who: str) -> None:
        for _ in range(4):  # 1101s answering beside it: the window's ratio stays at 20 %
            b.record(True)
        b.record(False, timeout=True, write=True, who=who)

    b = Breaker("postgres", config, Clock())
    for n in range(5):
        assert b.state == CLOSED, n
        hung_write(b, "P1" if n % 3 else "P2")
    assert b.state == OPEN and "写入连续5次失败（2家机构）" in b.reason, b.reason
    alone = Breaker("postgres", config, Clock())
    for _ in range(20):
        hung_write(alone, "P1")
    assert alone.state == CLOSED
    # A settlement answered ends the run; reads between never do; 0 turns the rule off.
    again = Breaker("postgres", config, Clock())
    for n in range(4):
        hung_write(again, f"P{n}")
    again.record(True, write=True, who="P9")
    for n in range(4):
        hung_write(again, f"P{n}")
    assert again.state == CLOSED
    off = Breaker("postgres", CFG, Clock())
    for n in range(10):
        hung_write(off, f"P{n}")
    assert off.state == CLOSED


def test_the_ledger_breaker_opens_on_a_verdict_only_if_its_probe_fails() -> None:
    """Found from outside: one person's rows locked (a patient who buys at two pharmacies, or
    one pharmacy's patient), their sales failed in a row and opened the ledger's breaker; every
    other institution's sales became cash claims, and it flapped while the lock lasted. A
    verdict asks for a probe of the database first (once, however many more fail meanwhile)
    and opens only if the probe fails; without a probe to ask (Redis, the old system) it opens
    at once, as before."""
    asked: list[str] = []
    b = Breaker("postgres", CFG, Clock())
    b.suspect = lambda breaker: asked.append(breaker.suspected)
    for n in range(9):
        b.record(False, who=f"P{n % 2}")
    assert b.state == CLOSED and asked == ["连续5次失败"], asked
    b.confirmed(True)  # the database answered: the failures were the rows', not its own
    assert b.state == CLOSED and not b.suspected
    for _ in range(4):
        b.record(False, who="P1")
    assert b.state == CLOSED and len(asked) == 1  # counted afresh
    b.record(False, who="P1")
    assert len(asked) == 2
    b.confirmed(False)  # the probe failed too: the database's
    assert b.state == OPEN and b.reason == "连续5次失败，数据库探测失败"
    b.confirmed(False)  # an answer with nothing asked changes nothing
    assert b.state == OPEN
    plain = Breaker("redis", CFG, Clock())
    for _ in range(5):
        plain.record(False, who="P1")
    assert plain.state == OPEN


def test_a_call_past_its_deadline_asks_the_probe_at_once() -> None:
    """Found from outside: one till alone on a hung ledger waited out five deadlines (28 s)
    before its sales were deferred, against R5's 10 s. A timeout asks the probe at once: the
    breaker opens if the database fails it, and the counts stand as they were if it answers
    (one person's locked row)."""
    asked: list[str] = []
    b = Breaker("postgres", CFG, Clock())
    b.suspect = lambda breaker: asked.append(breaker.suspected)
    b.record(False, timeout=True, who="P1")
    assert asked == ["调用超时"] and b.state == CLOSED
    b.record(False, timeout=True, who="P1")
    assert len(asked) == 1  # one probe at a time
    b.confirmed(True)
    assert b.state == CLOSED and b._consecutive == 2  # counted on
    b.record(False, timeout=True, who="P1")
    assert len(asked) == 2
    b.confirmed(False)
    assert b.state == OPEN and b.reason == "调用超时，数据库探测失败"
    # A failure that is not a timeout waits for the thresholds, as before.
    quiet = Breaker("postgres", CFG, Clock())
    quiet.suspect = lambda breaker: asked.append(breaker.suspected)
    quiet.record(False, who="P1")
    assert len(asked) == 2 and quiet.state == CLOSED


async def test_an_institution_answered_slowly_is_not_tripped() -> None:
    """Found from outside: a healthy ledger 100 ms away answered every sale in 1.2–2.0 s, and
    every pharmacy's trigger tripped on "20/20次慢于1秒", putting them all into `defer` for good
    (an institution rule is cleared by hand). Slowness is the ledger's or the network's, shared
    by every institution, for the ledger's breaker to judge; an institution's trigger counts its
    failures and timeouts."""
    written: list[str] = []

    async def apply(code: str, reason: str) -> None:
        written.append(reason)

    triggers = InstitutionTriggers(CFG, apply, lambda code: False, Clock())
    for _ in range(50):
        triggers.record("P44180000001", True, False, 2.0)  # answered, in two seconds
    await asyncio.sleep(0)
    assert written == [] and triggers.states() == []
    for _ in range(CFG.consecutive_failures):
        triggers.record("P44180000001", False, True, 5.0)
    await asyncio.sleep(0)
    assert len(written) == 1 and "连续" in written[0], written
