"""What one gateway process holds: the pool, the catalog snapshot, the reference files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.app.catalog_versions import CatalogVersions
from gateway.app.config import Settings
from gateway.app.redis_link import close_redis, open_redis
from gateway.app.reference import Reference, load_reference
from gateway.core.catalog import Snapshot
from gateway.core.timestamps import as_beijing
from gateway.emergency import triggers
from gateway.emergency.breaker import OPEN, STATE_VALUE, Breaker
from gateway.emergency.deferred.journal import Journal
from gateway.emergency.plan import store as plan_store
from gateway.emergency.plan.rules import CLASSES, Action, Decision, Plan
from gateway.emergency.triggers import InstitutionTriggers
from gateway.ledger import db, idempotency, reference_store
from gateway.ledger import plan as ledger_plan
from gateway.ledger.partitions import MAIN, Partition, Partitions
from gateway.ops import metrics
from gateway.ops.keys import CATALOG_CHANNEL, PLAN_CHANNEL
from gateway.pipeline.attempts import Attempts
from gateway.pipeline.grouped import Batches, Reads
from gateway.pipeline.ledger_shares import LedgerShares, share_of
from gateway.pipeline.ledger_waits import LedgerWaits
from gateway.pipeline.ratelimit import Limiter
from gateway.pipeline.recent_answers import RecentAnswers
from gateway.pipeline.shared_doubts import SharedDoubts
from gateway.pipeline.shared_nonces import SharedNonces, memory_dir

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway.catalog")
breaker_log = logging.getLogger("gateway.emergency.breaker")

# Builds the process's group commit from its pool and settings; None: no writers configured.
GroupCommitFactory = Callable[[asyncpg.Pool, Settings], Batches | None]
GroupReadFactory = Callable[[asyncpg.Pool, Settings], Reads | None]
HELPER_THREAD_SLICE_SECONDS = 0.001


def ledger_breaker_name(ledger: str) -> str:
    """ "postgres" for the main database (as before the ledger could be split), else
    "postgres:<cluster>"."""
    return "postgres" if ledger == MAIN else f"postgres:{ledger}"


# How long a stop waits for the ledger connections still held (a settlement's work outlives its
# HTTP handler by up to its deadline) before closing them: past that, a stop would hang.
POOL_CLOSE_SECONDS = 15.0
# A catch-up with another worker's catalog change that failed (the ledger unreadable) is not
# tried again by every request meanwhile, only after this pause.
CATCH_UP_PAUSE_SECONDS = 1.0
plan_log = logging.getLogger("gateway.emergency.plan")


def _now() -> dt.datetime:
    return dt.datetime.now()


# Failures held for one probe's verdict, at most (a probe answers within seconds).
UNJUDGED_LIMIT = 10_000
# The plan's page (SgwPlanStateChanged) looks back this far: a process that starts finds a rule
# set, or a window opened, within it and counts the change as if it had seen it.
PLAN_PAGE_WINDOW = dt.timedelta(minutes=15)


def _changed_lately(plan: Plan, state: Decision | None, now: dt.datetime) -> bool:
    """Whether what applies (`state`) began within PLAN_PAGE_WINDOW of `now` (local time)."""
    if state is None:
        return False
    if state.source == "rule":
        began = next(
            as_beijing(r.set_at)
            for r in plan.rules
            if r.scope == state.scope and r.klass == state.klass
        )
    else:
        began = next(
            w.begins
            for w in plan.windows
            if f"window:{w.name}" == state.source and w.scope == state.scope and w.active(now)
        )
    return now - began < PLAN_PAGE_WINDOW


def _retire(holder: list[Snapshot], wait_seconds: float) -> None:
    """Free a swapped-out snapshot off the loop, in pieces (runs in a thread).

    Dropping half a million mappings at once is one C-level cascade that holds the interpreter
    for ~25 ms; freed a few thousand at a time, the loop gets the interpreter back between
    pieces. A snapshot still held by a request in flight is waited for (requests finish within
    their deadline); if one still holds it then, it is left to be freed by its last user.
    """
    deadline = time.monotonic() + wait_seconds
    while sys.getrefcount(holder[0]) > 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # 2 = the holder list and getrefcount's own argument
    snapshot = holder.pop()
    if sys.getrefcount(snapshot) > 2:
        return
    pieces = snapshot.dismantle()
    del snapshot
    while pieces:
        del pieces[-2000:]


def _breaker_changed(b: Breaker) -> None:
    """Every breaker transition is a plan-state change: a gauge, a counter and a log line."""
    metrics.BREAKER_STATE.labels(b.name).set(STATE_VALUE[b.state])
    metrics.PLAN_CHANGES.labels(f"breaker:{b.name}", "*", b.state).inc()
    plan_log.warning(
        "breaker %s", b.state, extra={"dependency": b.name, "state": b.state, "reason": b.reason}
    )


class Gateway:
    """Process state shared by all requests; the snapshot is swapped, never mutated.

    Built whole by `start` (the HTTP server and the CLI alike) and released by `close`: nothing
    is set on it from outside.
    """

    __slots__ = (
        "_catch_up",
        "_catch_up_after",
        "_confirming",
        "_plan_states",
        "_refresh_lock",
        "_unjudged",
        "attempts",
        "breakers",
        "catalog_poll_seconds",
        "catalog_versions",
        "config",
        "groups",
        "institution_secrets",
        "journal",
        "ledger_claims",
        "ledgers",
        "limiter",
        "nonces",
        "plan",
        "pool",
        "reads",
        "recent",
        "redis",
        "reference",
        "region",
        "shares",
        "snapshot",
        "triggers",
        "waits",
    )

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        reference: Reference,
        snapshot: Snapshot,
        redis: Redis | None,
        group_commit: GroupCommitFactory | None,
        group_read: GroupReadFactory | None = None,
        ledgers: Partitions | None = None,
    ) -> None:
        config = settings.config
        self.config = config
        self.pool = pool  # the main database: reference data, the plan, and the main ledger
        # Which database holds a request's money (gateway.ledger.partitions); one, unless split.
        self.ledgers = ledgers if ledgers is not None else Partitions(Partition(MAIN, pool))
        # Each institution's share of this pool's connections (gateway.pipeline.ledger_shares).
        share = config.ledger_pool.institution_share_percent
        self.shares = LedgerShares(share_of(pool.get_max_size(), share))
        self.reference = reference
        self.snapshot = snapshot
        self.region = settings.region  # receiver region, the first six digits of inf_refmsgid
        self.redis = redis  # shared fan-out when configured; never required
        self.catalog_poll_seconds = settings.catalog_poll_seconds
        self._refresh_lock = asyncio.Lock()
        # The catalog versions the host's workers ask of each other (gateway.app.catalog_versions)
        # and this process's catching up with them: one refresh at a time, none again within
        # CATCH_UP_PAUSE_SECONDS of one that failed.
        self.catalog_versions = CatalogVersions(settings.journal_dir, settings.database_url)
        # The institutions' secrets, where requests are signed: what the gateway forwards to the
        # old system goes signed as the institution would sign it (gateway.emergency.hook).
        self.institution_secrets: dict[str, str] = {}
        # Signed requests' nonces, shared with the host's other workers (gateway.pipeline.auth)
        self.nonces = SharedNonces(
            memory_dir(settings.journal_dir),
            f"{settings.journal_dir.resolve()}\n{settings.database_url}",
        )
        self._catch_up: asyncio.Future[bool] | None = None
        self._catch_up_after = 0.0
        self.plan = Plan(version=0)
        # What each scope/class was last exported as (None before the first plan is set): a
        # window opens and closes while the plan stays the same object, so a change is told
        # against what was exported, not against the plan before.
        self._plan_states: dict[tuple[str, str], tuple[str, str] | None] | None = None
        # Deferred claims while the ledger is unreachable; the segment is opened on first use.
        self.journal = Journal(settings.journal_dir)
        # Answers the ledger committed lately, for retries while it is out of reach.
        self.recent = RecentAnswers(config.journal.recent_answers)
        # The writes at work against a ledger here, by message (gateway.pipeline.attempts), and
        # those the host's other workers hold (gateway.pipeline.shared_doubts), beside the
        # journal all of them share.
        doubts = SharedDoubts(settings.journal_dir)
        doubts.sweep()
        self.attempts = Attempts(doubts)
        # Settlements committed in batches (None: each on its own, as the commands run them).
        # One group commit per ledger database: a batch is one transaction, in one database.
        self.groups = {
            p.name: group
            for p in self.ledgers.all
            if group_commit is not None and (group := group_commit(p.pool, settings)) is not None
        }
        # Pre-settlements and msgid look-ups read in batches, one reader set per ledger
        # database (none: each reads on its own connection).
        self.reads = {
            p.name: reads
            for p in self.ledgers.all
            if group_read is not None and (reads := group_read(p.pool, settings)) is not None
        }
        # Per ledger database, whether it held a claim at the watcher's last count (absent:
        # not counted yet, or a claim taken since): pre-settlements read claims only then.
        self.ledger_claims: dict[str, bool] = {}
        for name, reads in self.reads.items():
            reads.claims_held = functools.partial(self.may_hold_claims, name)
        breakers = config.breakers
        self.breakers: dict[str, Breaker] = {}
        for name, cfg in (
            ("postgres", breakers.postgres),
            ("redis", breakers.redis),
            ("legacy", breakers.legacy),
        ):
            breaker = Breaker(name, cfg, on_change=_breaker_changed)
            metrics.prime_breaker(name)
            self.breakers[name] = breaker
        # A breaker per ledger cluster, as for the main database: a cluster down takes only its
        # regions off the normal path.
        for cluster in self.ledgers.clusters:
            name = ledger_breaker_name(cluster.name)
            self.breakers[name] = Breaker(name, breakers.postgres, on_change=_breaker_changed)
            metrics.prime_breaker(name)
        # The requests at the edge waiting on a ledger are answered when its breaker opens.
        self.waits = LedgerWaits()
        for partition in self.ledgers.all:
            self.ledger_breaker(partition.name).on_change = functools.partial(
                self._ledger_breaker_changed, partition.name
            )
        # A ledger breaker's verdict on one institution's failures is confirmed by the probe;
        # the failures seen meanwhile wait for it (per breaker), for the institutions' triggers.
        self._confirming: set[asyncio.Task[None]] = set()
        self._unjudged: dict[str, list[tuple[str, bool, float]]] = {}
        for partition in self.ledgers.all:
            self.ledger_breaker(partition.name).suspect = functools.partial(
                self._suspect, partition.pool
            )
        self.limiter = Limiter(config.rate_limit, redis)
        self.limiter.gate.breaker = self.breakers["redis"]
        # Per institution: tripping writes its protective action as a plan rule.
        self.triggers = InstitutionTriggers(
            config.triggers.institution, self._trigger_rule, self._has_trigger_rule
        )

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        group_commit: GroupCommitFactory | None = None,
        group_read: GroupReadFactory | None = None,
    ) -> Gateway:
        """Open the pool (and Redis, when configured), read the reference files, the first
        snapshot and the plan: the whole process state, for the server and the CLI alike.
        The server hands in its group commit (gateway.pipeline.group_commit.GroupCommit.for_process)
        and group read (gateway.pipeline.group_read.GroupRead.for_process)."""
        # Helper threads (snapshot indexes, freeing a retired snapshot) must hand the
        # interpreter back to the event loop quickly: 1 ms instead of the default 5 ms keeps a
        # reload of 500,000 mappings under the 10 ms loop-block budget (P7). With one busy
        # thread, as in normal serving, the interval costs nothing.
        sys.setswitchinterval(HELPER_THREAD_SLICE_SECONDS)
        # A short connect timeout: an unreachable ledger must fail fast enough for the breaker.
        pool = await db.create_pool(
            settings.database_url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=3.0,
        )
        try:
            reference = await asyncio.to_thread(load_reference, settings.reference_dir)
            async with pool.acquire() as conn:
                snapshot = await reference_store.read_snapshot(conn, reference)
                plan = await ledger_plan.load(conn)
            ledgers = await Partitions.open(
                pool,
                settings.config.ledger_clusters,
                min_size=settings.pool_min,
                max_size=settings.pool_max,
                timeout=3.0,
            )
        except BaseException:
            await pool.close()
            raise
        # Short timeouts: Redis is never worth a settlement's wait (the breaker takes over).
        redis = open_redis(settings.config.redis, settings.redis_url, timeout=0.2)
        gw = cls(settings, pool, reference, snapshot, redis, group_commit, group_read, ledgers)
        gw.set_plan(plan)
        return gw

    def may_hold_claims(self, ledger: str) -> bool:
        """Whether the ledger database may hold a claim holding lines (see `ledger_claims`)."""
        return self.ledger_claims.get(ledger, True)

    async def recall_answers(self) -> None:
        """A serving process starts knowing the answers every ledger database committed lately,
        as if it had given them: a retry that comes while the ledger is out of reach gets its
        answer, not a claim (the look-up in the ledger itself cannot be made then)."""
        ledgers = self.ledgers.all
        share = self.recent.capacity // max(1, len(ledgers))
        if share <= 0:
            return
        for ledger in ledgers:
            async with ledger.pool.acquire() as conn:
                self.recent.recall(await idempotency.newest(conn, share))

    async def close(self) -> None:
        """Release what `start` opened; the background tasks are the caller's to stop first."""
        self.journal.close()
        self.catalog_versions.close()
        self.nonces.close()
        if self.redis is not None:
            await close_redis(self.redis)
        await self.ledgers.close(POOL_CLOSE_SECONDS)
        await db.close_pool(self.pool, POOL_CLOSE_SECONDS)

    async def _trigger_rule(self, code: str, reason: str) -> None:
        """An institution's trigger tripped: its protective action becomes a plan rule."""
        async with self.pool.acquire(timeout=5.0) as conn:
            await plan_store.set_rule(
                conn,
                scope=f"institution:{code}",
                klass=triggers.CLASS,
                action=self.config.triggers.institution.action,
                reason=reason,
                operator=triggers.OPERATOR,
            )
        await self.reload_plan(force=True)
        await self.announce_plan_change()

    def _has_trigger_rule(self, code: str) -> bool:
        scope = f"institution:{code}"
        return any(r.scope == scope and r.klass == triggers.CLASS for r in self.plan.rules)

    def set_plan(self, plan: Plan) -> None:
        """Swap the plan in force (one assignment) and export its state; every change of a
        scope/class's action (rule set or cleared, window opening or closing) is counted."""
        self.plan = plan
        now = _now()
        exported = self._plan_states
        scopes = {"global", *(r.scope for r in plan.rules), *(w.scope for w in plan.windows)}
        if exported is not None:
            scopes |= {scope for scope, _ in exported}
        states: dict[tuple[str, str], tuple[str, str] | None] = {}
        for scope in scopes:
            for klass in CLASSES:
                is_ = plan.state_of(scope, klass, now)
                # A parallel run where this gateway answers is normal service, not degraded.
                degraded = is_ is not None and is_.action is not Action.SHADOW
                metrics.PLAN_DEGRADED.labels(scope, klass).set(1 if degraded else 0)
                new = (is_.action, is_.source) if is_ else None
                if exported is not None and exported.get((scope, klass)) != new:
                    metrics.plan_changed(scope, klass, new[0] if new else "normal")
                elif exported is None and new is not None and _changed_lately(plan, is_, now):
                    # Set (or opened) within the page's window, before this process was there
                    # to see it: found from outside, a rule set while the gateway restarted
                    # never paged (its clearing did).
                    metrics.plan_changed(scope, klass, new[0])
                if new is not None:
                    states[(scope, klass)] = new
        self._plan_states = states

    async def reload_plan(self, *, force: bool = False) -> bool:
        """Re-read the plan when its version moved; True when swapped."""
        async with self.pool.acquire(timeout=2.0) as conn:
            if not force and await ledger_plan.version(conn) == self.plan.version:
                return False
            plan = await ledger_plan.load(conn)
        if plan.version != self.plan.version:
            log.info("emergency plan reloaded", extra={"plan_version": plan.version})
        self.set_plan(plan)
        return True

    async def watch_plan(self) -> None:
        """Poll the plan version (the fallback when Redis is absent); also re-exports window
        state as windows open and close."""
        while True:
            await asyncio.sleep(self.config.plan.poll_seconds)
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self.reload_plan()
            self.set_plan(self.plan)

    async def announce_plan_change(self) -> None:
        """Tell the other processes at once; polling catches up within a second anyway."""
        if self.redis is None:
            return
        try:
            await self.redis.publish(PLAN_CHANNEL, str(self.plan.version))
        except Exception:
            log.warning("plan change not published; other processes will poll")

    def _ledger_breaker_changed(self, ledger: str, b: Breaker) -> None:
        """A ledger breaker's change; opened, the requests waiting on that ledger are answered
        (gateway.pipeline.ledger_waits) and its running batches cut: their work must not commit
        later, when a hung network heals, beside the claims their retries become."""
        _breaker_changed(b)
        if b.state != OPEN:
            return
        released = self.waits.release(ledger)
        group = self.groups.get(ledger)
        cut = group.abort() if group is not None else 0
        if released or cut:
            breaker_log.warning(
                "requests waiting on the ledger answered, its batches cut: its breaker opened",
                extra={"breaker": b.name, "requests": released, "batches": cut},
            )

    def _suspect(self, pool: asyncpg.Pool, breaker: Breaker) -> None:
        """Probe the ledger database now: one institution's failures open its breaker only if
        the database fails the probe too (gateway.emergency.breaker, `suspect`)."""
        task = asyncio.get_running_loop().create_task(self._confirm(pool, breaker))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _confirm(self, pool: asyncpg.Pool, breaker: Breaker) -> None:
        suspected = breaker.suspected
        # On a connection of its own: the pool's may all be busy with the load (db.writable_afresh).
        ok = await db.writable_afresh(pool)
        if ok:
            breaker_log.warning(
                "ledger answered its probe: the breaker stays closed",
                extra={"breaker": breaker.name, "reason": suspected},
            )
        breaker.confirmed(ok)
        held = self._unjudged.pop(breaker.name, [])
        if ok and not breaker.is_open:
            # The database answered: the failures were their institutions' own.
            for code, timeout, seconds in held:
                self.triggers.record(code, False, timeout, seconds)

    def await_verdict(self, breaker: Breaker, code: str, timeout: bool, seconds: float) -> None:
        """A failure seen while the ledger breaker's probe decides whose failures they are:
        the institution's trigger gets it once the database answers the probe, nobody's if it
        fails it. Found from outside: every timeout starts a probe, so one pharmacy's timeouts
        on its person's locked rows were nobody's, and its trigger never set a rule."""
        held = self._unjudged.setdefault(breaker.name, [])
        if len(held) < UNJUDGED_LIMIT:
            held.append((code, timeout, seconds))

    def ledger_breaker(self, ledger: str) -> Breaker:
        """The breaker of a ledger database, by its partition name."""
        return self.breakers[ledger_breaker_name(ledger)]

    def breaker_states(self) -> list[dict[str, Any]]:
        """Every dependency breaker's state, and institutions whose trigger has tripped."""
        return self.triggers.states() + [
            {
                "dependency": b.name,
                "state": b.state,
                "reason": b.reason,
                "action": b.config.action,
                "recover": b.config.recover,
            }
            for b in self.breakers.values()
        ]

    async def refresh_catalog(self, *, force: bool = False) -> bool:
        """Rebuild the snapshot if the reference data changed; True when swapped."""
        async with self._refresh_lock:
            async with self.pool.acquire(timeout=5.0) as conn:
                version = await reference_store.current_version(conn)
                if version == self.snapshot.version and not force:
                    return False
                snapshot = await reference_store.read_snapshot(conn, self.reference)
            retired = [self.snapshot]
            self.snapshot = snapshot  # one reference assignment: requests see old or new, whole
            log.info("catalog snapshot swapped", extra={"catalog_version": snapshot.version})
        # Not awaited: the caller (a 3301's answer, the poller) need not wait for the old one.
        asyncio.get_running_loop().run_in_executor(
            None, _retire, retired, self.config.deadlines.call_seconds * 2
        )
        return True

    def catalog_changed(self, fixmedins_code: str) -> None:
        """This process swapped in an institution's catalog change, about to be answered: the
        host's other workers price that institution's next requests with it too."""
        self.catalog_versions.raise_to(fixmedins_code, self.snapshot.version)

    async def catch_up_catalog(self, fixmedins_code: str) -> None:
        """Before a request of this institution is priced: the snapshot another worker of the
        host answered a change of its catalog with, if this one is older. Waits at most half a
        deadline; a ledger that cannot be read leaves the snapshot as it is (the breaker and
        the poll take it from there)."""
        wanted = self.catalog_versions.wanted(fixmedins_code)
        if wanted <= self.snapshot.version:
            return
        loop = asyncio.get_running_loop()
        refresh = self._catch_up
        if refresh is None or refresh.done():
            if loop.time() < self._catch_up_after:
                return
            refresh = self._catch_up = asyncio.ensure_future(self.refresh_catalog())
        try:
            await asyncio.wait_for(asyncio.shield(refresh), self.config.deadlines.call_seconds / 2)
        except Exception:  # whatever failed, the request goes on as before
            self._catch_up_after = loop.time() + CATCH_UP_PAUSE_SECONDS
            log.warning("catalog not caught up with another worker's change", exc_info=True)
            return
        if self.snapshot.version < wanted:
            # The ledger holds less than asked: the slot outlived a database made afresh.
            self.catalog_versions.lower_to(fixmedins_code, self.snapshot.version)

    async def watch_catalog(self) -> None:
        """Poll the reference version; runs for the life of the process."""
        while True:
            await asyncio.sleep(self.catalog_poll_seconds)
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                await self.refresh_catalog()

    async def purge_idempotency(self, every_seconds: float = 3600.0) -> None:
        """Drop msgid answers past the retention, hourly; harmless when several workers do it."""
        while True:
            await asyncio.sleep(every_seconds)
            for ledger in self.ledgers.all:  # each database keeps its regions' answers
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                    async with ledger.pool.acquire(timeout=60.0) as conn:
                        await idempotency.purge(conn, self.config.idempotency.keep_days)

    async def announce_catalog_change(self) -> None:
        """Tell the other processes at once (best effort: polling still catches up)."""
        if self.redis is None:
            return
        try:
            await self.redis.publish(CATALOG_CHANNEL, str(self.snapshot.version))
        except Exception:
            log.warning("catalog change not published; other processes will poll")

    async def listen_catalog_changes(self) -> None:
        """Refresh when another process announces a change; reconnects after Redis trouble."""
        while self.redis is not None:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(CATALOG_CHANNEL, PLAN_CHANNEL)
                try:
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            channel = message.get("channel")
                            plan = channel in (PLAN_CHANNEL, PLAN_CHANNEL.encode())
                            with contextlib.suppress(
                                OSError, asyncpg.PostgresError, asyncio.TimeoutError
                            ):
                                if plan:
                                    await self.reload_plan()
                                else:
                                    await self.refresh_catalog()
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)
