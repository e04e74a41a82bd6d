"""What one gateway process holds: the pool, the catalog snapshot, the reference files."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from gateway.config import GatewayConfig
from gateway.core.catalog import Snapshot
from gateway.ledger import reference_store
from gateway.ratelimit import Limiter
from gateway.reference import Reference

log = logging.getLogger("gateway.catalog")

CATALOG_POLL_SECONDS = 1.0  # a change reaches every process within ~2 s


class Gateway:
    """Process state shared by all requests; the snapshot is swapped, never mutated."""

    __slots__ = ("_refresh_lock", "config", "limiter", "pool", "reference", "region", "snapshot")

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
            await asyncio.sleep(CATALOG_POLL_SECONDS)
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                await self.refresh_catalog()
