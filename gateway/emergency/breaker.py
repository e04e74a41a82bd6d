"""Circuit breakers for the dependencies the emergency plan watches (ledger, Redis, legacy).

A breaker opens when, over a sliding window with a minimum number of calls, the error or timeout
ratio or the share of calls slower than the latency target crosses its threshold, or after a run
of consecutive failures. It then stays open at least `min_open_seconds` (no flapping), lets a few
probes through (half-open), and closes after the probes succeed and the dependency has been
healthy for `healthy_seconds`; with `recover = "manual"` it waits for a person instead.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from gateway.emergency.plan.rules import ACTIONS, SHADOW_ACTIONS, Action

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the sgw_breaker_state gauge
NO_ACTION = "none"  # a breaker the plan does not act on (Redis: settlement never waits for it)


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[breakers.<dependency>]` (and `[triggers.institution]`) in config/gateway.toml."""

    window_seconds: float = 10.0
    min_calls: int = 10
    error_ratio: float = 0.5
    timeout_ratio: float = 0.3
    consecutive_failures: int = 5
    latency_target_seconds: float = 1.0
    slow_ratio: float = 0.8
    min_open_seconds: float = 5.0
    half_open_probes: int = 3
    healthy_seconds: float = 5.0
    recover: Literal["auto", "manual"] = "auto"
    # A run of `consecutive_failures` failed writes, from at least this many institutions, with
    # no write answered between them, opens the breaker whatever the reads beside them did
    # (0: not judged). Found from outside: a ledger table locked for 90 s timed out every
    # settlement while the reads of other tables answered, the timeouts never reached the
    # window's ratio, and institution triggers put two pharmacies into `defer` until a person
    # cleared them. Two institutions: one institution's own slow writes (an upload too large
    # for its deadline) never open the shared ledger's breaker for everyone.
    write_run_institutions: int = 0
    # With a probe to ask (the ledger's breaker), a call past its deadline asks it at once, and
    # a failed probe opens the breaker whatever the counts (false: the counts alone decide).
    probe_on_timeout: bool = True
    # What the plan applies while open (settlement/encounter classes): an Action's value, or
    # NO_ACTION ("none" is no Action); `plan_action` is the Action.
    action: str = Action.DEFER.value

    def __post_init__(self) -> None:
        # A parallel run is no protection: the request would go its normal way to what failed.
        protective = [a for a in ACTIONS if a not in SHADOW_ACTIONS]
        if self.action != NO_ACTION and self.action not in protective:
            raise ValueError(
                f"breaker action {self.action!r}: one of {', '.join(protective)} or {NO_ACTION}"
            )

    @property
    def plan_action(self) -> Action | None:
        """The plan's action while the breaker is open; None when it applies none."""
        return None if self.action == NO_ACTION else Action(self.action)


@dataclass(slots=True)
class Breaker:
    name: str
    config: BreakerConfig
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    reason: str = ""
    opened_at: float = 0.0
    changed_at: float = 0.0
    _events: deque[tuple[float, bool, bool, bool]] = field(default_factory=deque)
    # Running totals over _events (failures, timeouts, slow calls): every request records an
    # outcome, so the verdict must not rescan a window that holds thousands of them.
    _failures: int = 0
    _timeouts: int = 0
    _slow: int = 0
    _consecutive: int = 0
    # A verdict is confirmed by a probe of the dependency before it opens the breaker for
    # everyone: `suspect` is called once (it probes), and the probe's answer comes back through
    # `confirmed`. Found from outside: one person's rows locked (a patient buying at two
    # pharmacies, or at one), their sales timed out in a row and opened the ledger's breaker,
    # every other institution's sales became cash claims, and it flapped while the lock lasted.
    # None: opens at once (Redis, the old system, an institution's own trigger).
    suspect: Callable[[Breaker], None] | None = None
    suspected: str = ""  # the verdict a probe out now is to confirm
    # A call past its deadline is asked about at once too (found from outside: one till alone on
    # a hung ledger waited five deadlines, 28 s, before its sales were deferred); the probe's
    # "it answers" then leaves the counts as they were.
    _counted_on: bool = False
    # Failed writes in a row (reads between them do not break the run), and whose they were.
    _write_run: int = 0
    _write_run_by: set[str] = field(default_factory=set)
    _probes_ok: int = 0
    _healthy_since: float | None = None
    probe_failed: bool = False  # the last probe found the dependency unreachable
    on_change: Callable[[Breaker], None] | None = None

    def _set(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason
        self.changed_at = self.clock()
        if state == OPEN:
            self.opened_at = self.changed_at
        if self.on_change is not None:
            self.on_change(self)

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._events and self._events[0][0] < horizon:
            _, ok, timeout, slow = self._events.popleft()
            self._failures -= not ok
            self._timeouts -= timeout
            self._slow -= slow

    def record(
        self,
        ok: bool,
        *,
        timeout: bool = False,
        seconds: float = 0.0,
        write: bool = False,
        who: str = "",
    ) -> None:
        """One call's outcome as seen by a request (not a probe); `write`: the call was to
        write (`who`: the institution), for the run of failed writes."""
        now = self.clock()
        slow = seconds > self.config.latency_target_seconds
        if self.state != CLOSED:
            if not ok:
                self._healthy_since = None
            return  # while open, only probes decide
        self._events.append((now, ok, timeout, slow))
        self._failures += not ok
        self._timeouts += timeout
        self._slow += slow
        self._consecutive = 0 if ok else self._consecutive + 1
        if (
            timeout
            and not ok
            and self.suspect is not None
            and not self.suspected
            and self.config.probe_on_timeout
        ):
            self.suspected = "调用超时"
            self._counted_on = True
            self.suspect(self)
        if write:
            if ok:
                self._write_run = 0
                self._write_run_by.clear()
            else:
                self._write_run += 1
                if who:  # a call past its deadline is answered without knowing whose it was
                    self._write_run_by.add(who)
        self._trim(now)
        if ok and not slow:
            # A call answered well does not open the breaker, whatever the window held before
            # it (found from outside: a healed old system's first answer, the window's fifth
            # call beside four failures, opened it for half a minute).
            return
        reason = self._verdict()
        if not reason:
            return
        if self.suspect is None:
            self._trip(reason)
        elif not self.suspected:
            self.suspected = reason
            self._counted_on = False
            self.suspect(self)
        elif self._counted_on:
            # A timeout's probe is out: its answer decides the verdict too, and "it answers"
            # then starts the count afresh.
            self.suspected = reason
            self._counted_on = False

    def _verdict(self) -> str:
        c = self.config
        if self._consecutive >= c.consecutive_failures:
            return f"连续{self._consecutive}次失败"
        if (
            c.write_run_institutions
            and self._write_run >= c.consecutive_failures
            and len(self._write_run_by) >= c.write_run_institutions
        ):
            return f"写入连续{self._write_run}次失败（{len(self._write_run_by)}家机构）"
        n = len(self._events)
        if n < c.min_calls:
            return ""
        errors, timeouts, slow = self._failures, self._timeouts, self._slow
        if timeouts / n >= c.timeout_ratio:
            return f"{c.window_seconds:g}秒内超时{timeouts}/{n}"
        if errors / n >= c.error_ratio:
            return f"{c.window_seconds:g}秒内失败{errors}/{n}"
        if slow / n >= c.slow_ratio:
            return f"{c.window_seconds:g}秒内{slow}/{n}次慢于{c.latency_target_seconds:g}秒"
        return ""

    def confirmed(self, ok: bool) -> None:
        """The answer of the probe `suspect` started: the dependency failed it too (open), or it
        answered, and the failures were the institution's own, not the dependency's (the count
        starts afresh; the institution's trigger has seen them)."""
        reason, self.suspected = self.suspected, ""
        counted_on, self._counted_on = self._counted_on, False
        if not reason or self.state != CLOSED:
            return
        if not ok:
            self._trip(f"{reason}，数据库探测失败")
        elif not counted_on:
            self._reset()

    def _reset(self) -> None:
        """A state change starts the counting afresh."""
        self._events.clear()
        self._failures = self._timeouts = self._slow = 0
        self._consecutive = 0
        self.suspected = ""
        self._write_run = 0
        self._write_run_by.clear()
        self._probes_ok = 0
        self._healthy_since = None
        self.probe_failed = False

    def _trip(self, reason: str) -> None:
        self._reset()
        self._set(OPEN, reason)

    @property
    def is_open(self) -> bool:
        """Requests take the protective path (open or half-open: probes are not requests)."""
        return self.state != CLOSED

    def probe_due(self) -> bool:
        """Whether the prober should try the dependency now (only after the minimum open time)."""
        if self.state == CLOSED:
            return False
        return self.clock() - self.opened_at >= self.config.min_open_seconds

    def probe_result(self, ok: bool) -> None:
        """A probe's outcome. Closing is the watcher's call (`ready_to_close`): it may have work
        to finish first, such as draining the local journal into the ledger."""
        now = self.clock()
        if self.state == CLOSED:
            return
        self.probe_failed = not ok
        if not ok:
            self._probes_ok = 0
            self._healthy_since = None
            if self.state == HALF_OPEN:
                self._set(OPEN, "探测失败：" + self.reason.removeprefix("探测失败："))
            return
        if self.state == OPEN:
            self._set(HALF_OPEN, self.reason)
        self._probes_ok += 1
        if self._healthy_since is None:
            self._healthy_since = now

    def ready_to_close(self) -> bool:
        """Healthy long enough; with manual recovery the person decides."""
        return (
            self.state == HALF_OPEN
            and self._probes_ok >= self.config.half_open_probes
            and self._healthy_since is not None
            and self.clock() - self._healthy_since >= self.config.healthy_seconds
        )

    def close(self, reason: str) -> None:
        self._reset()
        self._set(CLOSED, reason)


class LoopStalls:
    """When the event loop stood still, measured by a ticker that should wake every `tick`.

    Latency is measured around awaits; a request that waited on a blocked loop (a parse run on
    it by mistake, a long C call) looks slow to its dependency. Breakers subtract the stall
    (`stalled`), so that only the dependency's own slowness and failures count against it.
    """

    def __init__(self, tick: float = 0.02, keep_seconds: float = 120.0) -> None:
        self.tick = tick
        self.keep_seconds = keep_seconds
        self.noticed = 2 * tick  # shorter gaps are scheduling jitter, not stalls
        self._last = time.perf_counter()
        self._stalls: deque[tuple[float, float]] = deque()
        self._tickers = 0  # without a ticker nothing is known, and nothing is subtracted
        # Told the seconds of each stall as it is recorded (the exported total; ops sees a loop
        # that stands still, and why the breakers did not count a dependency's timeouts).
        self.on_stall: Callable[[float], None] | None = None

    async def run(self) -> None:
        """The ticker; several may run on one loop (their stalls merge)."""
        self._last = time.perf_counter()
        self._tickers += 1
        try:
            while True:
                await asyncio.sleep(self.tick)
                now = time.perf_counter()
                expected = self._last + self.tick
                if now - expected > self.noticed:
                    self._note(expected, now)
                self._last = max(self._last, now)
        finally:
            self._tickers -= 1

    def _note(self, start: float, end: float) -> None:
        if self._stalls and start <= self._stalls[-1][1]:
            s, e = self._stalls[-1]
            added = max(0.0, end - e)
            self._stalls[-1] = (min(s, start), max(e, end))
        else:
            added = end - start
            self._stalls.append((start, end))
        if self.on_stall is not None and added > 0.0:
            self.on_stall(added)
        while self._stalls and self._stalls[0][1] < end - self.keep_seconds:
            self._stalls.popleft()

    def stalled(self, since: float, now: float) -> float:
        """Seconds of [since, now] the loop stood still, including a stall that is just ending
        (the ticker has not run yet to record it)."""
        total = 0.0
        for s, e in reversed(self._stalls):
            if e <= since:
                break
            total += max(0.0, min(e, now) - max(s, since))
        ongoing = self._last + self.tick
        if self._tickers and now - ongoing > self.noticed:
            total += max(0.0, now - max(ongoing, since))
        return total


_STALLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopStalls] = (
    weakref.WeakKeyDictionary()
)


def loop_stalls() -> LoopStalls:
    """The running loop's stall record (its ticker runs in gateway.emergency.hook.watch_ledger)."""
    loop = asyncio.get_running_loop()
    stalls = _STALLS.get(loop)
    if stalls is None:
        stalls = _STALLS[loop] = LoopStalls()
    return stalls


class SharedStoreGate:
    """Whether a request may use Redis now, by the gateway's Redis breaker: closed, yes; open,
    no (process-local memory instead), with one probe a second once the breaker's minimum open
    time is past. Every caller that talks to Redis on a request's path holds one, so that a
    Redis that hangs adds no latency once the breaker has opened (found from outside: the nonce
    store waited for a stalled Redis on every request while the rate limiter had moved on).

    With `ping` (the caller's Redis PING) the probe is that, in the background, and no request
    waits on it (found from outside: a request a second per worker was the probe, and waited the
    hung Redis's timeout, 0.2-0.4 s, throughout an outage); without, the request is the probe."""

    PROBE_EVERY_SECONDS = 1.0

    __slots__ = ("_last_probe", "_probing", "breaker", "ping")

    def __init__(self, ping: Callable[[], Awaitable[object]] | None = None) -> None:
        self.breaker: Breaker | None = None  # the gateway's Redis breaker, when it has one
        self.ping = ping
        self._last_probe = 0.0
        self._probing: asyncio.Task[None] | None = None

    def usable(self) -> bool:
        b = self.breaker
        if b is None or not b.is_open:
            return True
        now = time.monotonic()
        if b.probe_due() and now - self._last_probe >= self.PROBE_EVERY_SECONDS:
            self._last_probe = now
            if self.ping is None:
                return True
            if self._probing is None or self._probing.done():
                self._probing = asyncio.ensure_future(self._probe(self.ping))
        return False

    async def _probe(self, ping: Callable[[], Awaitable[object]]) -> None:
        try:
            await ping()
        except Exception as exc:
            self.note(False, exc)
        else:
            self.note(True)

    def note(self, ok: bool, failure: BaseException | None = None) -> None:
        """What a use of Redis came to (`failure`: what it raised): counted by the breaker, or,
        while the breaker is open and a probe is due, a probe's result. A use begun before the
        breaker opened and ending after is not a probe (found from outside: such uses moved the
        breaker from open to half-open in 7–109 ms, past `min_open_seconds` of 5 s); nor is a
        use that found no free connection in this process's pool Redis's failure (found from
        outside: a burst of 1,000 requests, 256 in flight, had every use past the pool's
        hundred connections fail at once, and a healthy Redis's breaker opened and paged)."""
        b = self.breaker
        if b is None or (failure is not None and pool_exhausted(failure)):
            return
        if b.is_open:
            if not b.probe_due():
                return
            b.probe_result(ok)
            if b.ready_to_close() and b.config.recover == "auto":
                b.close("Redis恢复")
        else:
            b.record(ok)


def pool_exhausted(failure: BaseException) -> bool:
    """Whether a Redis command failed for want of a connection in this process's own pool (all
    in use: a burst here, not Redis failing): past a pool's size, or its wait for one out."""
    if isinstance(failure, MaxConnectionsError):
        return True
    return (
        isinstance(failure, RedisConnectionError)
        and isinstance(failure.__cause__, asyncio.TimeoutError | TimeoutError)
        and "No connection available" in str(failure)
    )
