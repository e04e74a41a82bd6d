"""What one gateway process holds: the pool, the catalog snapshot, the reference files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from gateway.config import GatewayConfig
from gateway.core.catalog import Snapshot
from gateway.ledger import idempotency, reference_store
from gateway.ops.keys import CATALOG_CHANNEL
from gateway.ratelimit import Limiter
from gateway.reference import Reference

log = logging.getLogger("gateway.catalog")

CATALOG_POLL_SECONDS = 1.0  # a change reaches every process within ~2 s


class Gateway:
    """Process state shared by all requests; the snapshot is swapped, never mutated."""

    __slots__ = (
        "_refresh_lock",
        "catalog_poll_seconds",
        "config",
        "limiter",
        "pool",
        "redis",
        "reference",
        "region",
        "snapshot",
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
        self.reference = reference
        self.snapshot = snapshot
        self.region = region  # receiver region, the first six digits of inf_refmsgid
        self.config = config
        self.limiter = limiter
        self.redis: Any | None = None  # shared fan-out when configured; never required
        self.catalog_poll_seconds = CATALOG_POLL_SECONDS
        self._refresh_lock = asyncio.Lock()

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
        async with pool.acquire() as conn:
            snapshot = await reference_store.read_snapshot(conn, reference)
        return cls(pool, reference, snapshot, region, config, limiter)

    async def refresh_catalog(self, *, force: bool = False) -> bool:
        """Rebuild the snapshot if the reference data changed; True when swapped."""
        async with self._refresh_lock:
            async with self.pool.acquire() as conn:
                version = await reference_store.current_version(conn)
                if version == self.snapshot.version and not force:
                    return False
                snapshot = await reference_store.read_snapshot(conn, self.reference)
            self.snapshot = snapshot  # one reference assignment: requests see old or new, whole
            log.info("catalog snapshot swapped", extra={"catalog_version": snapshot.version})
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
                async with self.pool.acquire() as conn:
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
                await pubsub.subscribe(CATALOG_CHANNEL)
                try:
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            with contextlib.suppress(
                                OSError, asyncpg.PostgresError, asyncio.TimeoutError
                            ):
                                await self.refresh_catalog()
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)
