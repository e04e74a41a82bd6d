"""What one gateway process holds: the pool, the catalog snapshot, the reference files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import time
from typing import Any

import asyncpg

from gateway.breaker import STATE_VALUE, Breaker, BreakerConfig
from gateway.config import GatewayConfig
from gateway.core.catalog import Snapshot
from gateway.ledger import idempotency, reference_store
from gateway.ledger import plan as ledger_plan
from gateway.ledger_shares import LedgerShares, share_of
from gateway.ops import metrics
from gateway.ops.keys import CATALOG_CHANNEL, PLAN_CHANNEL
from gateway.plan.rules import CLASSES, Plan
from gateway.ratelimit import Limiter
from gateway.reference import Reference

log = logging.getLogger("gateway.catalog")

CATALOG_POLL_SECONDS = 1.0
HELPER_THREAD_SLICE_SECONDS = 0.001  # a change reaches every process within ~2 s
plan_log = logging.getLogger("gateway.plan")


def _now() -> dt.datetime:
    return dt.datetime.now()


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
    """Process state shared by all requests; the snapshot is swapped, never mutated."""

    __slots__ = (
        "_refresh_lock",
        "breakers",
        "catalog_poll_seconds",
        "config",
        "group",
        "journal",
        "limiter",
        "plan",
        "pool",
        "redis",
        "reference",
        "region",
        "shares",
        "snapshot",
        "triggers",
    )

    def __init__(
        self,
        pool: asyncpg.Pool,
        reference: Reference,
        snapshot: Snapshot,
        region: str,
        config: GatewayConfig,
        limiter: Limiter,
    ) -> None:
        self.pool = pool
        # Each institution's share of this pool's connections (gateway.ledger_shares).
        self.shares = LedgerShares(share_of(pool.get_max_size(), config.ledger_share_percent))
        self.reference = reference
        self.snapshot = snapshot
        self.region = region  # receiver region, the first six digits of inf_refmsgid
        self.config = config
        self.limiter = limiter
        self.redis: Any | None = None  # shared fan-out when configured; never required
        self.catalog_poll_seconds = CATALOG_POLL_SECONDS
        self._refresh_lock = asyncio.Lock()
        self.plan = Plan(version=0)
        self.journal: Any | None = None  # gateway.deferred.journal.Journal, set by the app
        self.group: Any | None = None  # gateway.group_commit.GroupCommit, set by the app
        self.breakers: dict[str, Breaker] = {}
        self.triggers: Any | None = None  # gateway.triggers.InstitutionTriggers, set by the app
        for name in ("postgres", "redis", "legacy"):
            cfg = config.breakers.get(name, BreakerConfig())
            breaker = Breaker(name, cfg, on_change=_breaker_changed)
            metrics.prime_breaker(name)
            self.breakers[name] = breaker
        limiter.breaker = self.breakers["redis"]

    @classmethod
    async def start(
        cls,
        pool: asyncpg.Pool,
        reference: Reference,
        region: str,
        config: GatewayConfig,
        limiter: Limiter,
    ) -> Gateway:
        """Build the first snapshot from the database."""
        # Helper threads (snapshot indexes, freeing a retired snapshot) must hand the
        # interpreter back to the event loop quickly: 1 ms instead of the default 5 ms keeps a
        # reload of 500,000 mappings under the 10 ms loop-block budget (P7). With one busy
        # thread, as in normal serving, the interval costs nothing.
        sys.setswitchinterval(HELPER_THREAD_SLICE_SECONDS)
        async with pool.acquire() as conn:
            snapshot = await reference_store.read_snapshot(conn, reference)
            plan = await ledger_plan.load(conn)
        gw = cls(pool, reference, snapshot, region, config, limiter)
        gw.set_plan(plan)
        return gw

    def set_plan(self, plan: Plan) -> None:
        """Swap the plan in force (one assignment) and export its state; every change of a
        scope/class's action (rule set or cleared, window opening or closing) is counted."""
        before, self.plan = self.plan, plan
        now = _now()
        scopes = {"global", *(r.scope for r in plan.rules), *(w.scope for w in plan.windows)}
        scopes |= {r.scope for r in before.rules} | {w.scope for w in before.windows}
        for scope in scopes:
            for klass in CLASSES:
                was = before.state_of(scope, klass, now)
                is_ = plan.state_of(scope, klass, now)
                metrics.PLAN_DEGRADED.labels(scope, klass).set(0 if is_ is None else 1)
                old = (was.action, was.source) if was else None
                new = (is_.action, is_.source) if is_ else None
                if old != new and before.version:
                    action = is_.action if is_ else "normal"
                    metrics.PLAN_CHANGES.labels(scope, klass, action).inc()

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
            await asyncio.sleep(self.config.plan_poll_seconds)
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

    def breaker_states(self) -> list[dict[str, Any]]:
        """Every dependency breaker's state, and institutions whose trigger has tripped."""
        tripped = self.triggers.states() if self.triggers is not None else []
        return tripped + [
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
            None, _retire, retired, self.config.call_deadline_seconds * 2
        )
        return True

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
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                async with self.pool.acquire(timeout=60.0) as conn:
                    await idempotency.purge(conn, self.config.idempotency_keep_days)

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
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)
