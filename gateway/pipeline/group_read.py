"""Group read: concurrent pre-settlements share one connection and one query.

A pharmacy pre-settlement (2101) reads one person's account and year and changes nothing; alone
it leases a connection, runs one query and hands the connection back, and that round trip was
over a third of the gateway's CPU per 2101 (the wrk harness's profile) and most of
PostgreSQL's. Here a few reader tasks take every pre-settlement waiting and read their state
together (`settlement_state.preview_many`: one query for all the persons, as a batch of one
reads it), then build each: the same reads and the same build as the single path, so the
answer is the one the single path gives for the state read.

Nothing is locked or written, so a batch needs no order and holds nothing past its query. A
batch that fails whole (a lost connection, a bug) answers None to each request, which then
takes the single path on its own, as the group commit does; one request's refusal (an unknown
person, the rules) is that request's alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from gateway.app.config import Settings
from gateway.ledger import db
from gateway.ops import metrics
from gateway.pipeline.grouped import Built, Job
from gateway.protocol.errors import GatewayError
from gateway.services.settlement_state import preview_many

log = logging.getLogger("gateway.pipeline.group_read")


@dataclass(slots=True)
class _Item:
    job: Job
    expires: float
    done: asyncio.Future[Built | GatewayError | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupRead:
    """The readers of one ledger database in one process."""

    def __init__(
        self, pool: asyncpg.Pool, *, readers: int, max_batch: int, acquire_timeout: float
    ) -> None:
        self.pool = pool
        self.readers = max(1, readers)
        self.max_batch = max(1, max_batch)
        self.acquire_timeout = acquire_timeout
        self._waiting: list[_Item] = []
        self._running = 0

    @classmethod
    def for_process(cls, pool: asyncpg.Pool, settings: Settings) -> GroupRead | None:
        """The process's readers from `[group_read]`; None when it has none (each
        pre-settlement reads on its own connection)."""
        config = settings.config
        if not config.group_read.readers:
            return None
        return cls(
            pool,
            readers=config.group_read.readers,
            max_batch=config.group_read.max_batch,
            acquire_timeout=config.deadlines.call_seconds,
        )

    async def submit(self, job: Job, expires: float) -> Built | None:
        """The job's build over the state as it is; None: take the single path. A refusal is
        raised as the single path raises it; past `expires` (the event loop's clock),
        TimeoutError as a slow ledger gives."""
        item = _Item(job, expires)
        self._waiting.append(item)
        if self._running < self.readers:
            self._running += 1
            asyncio.get_running_loop().create_task(self._read())
        async with asyncio.timeout_at(expires):
            got = await item.done
        if isinstance(got, GatewayError):
            raise got
        return got

    def _take(self) -> list[_Item]:
        # One whose caller gave up waiting is dropped: nothing is owed to it.
        waiting = [it for it in self._waiting if not it.done.done()]
        batch, self._waiting = waiting[: self.max_batch], waiting[self.max_batch :]
        return batch

    async def _read(self) -> None:
        try:
            while batch := self._take():
                await self._answer(batch)
        finally:
            self._running -= 1

    async def _answer(self, batch: list[_Item]) -> None:
        metrics.GROUP_READ_BATCH_SIZE.observe(len(batch))
        try:
            async with (
                asyncio.timeout_at(max(it.expires for it in batch)),
                db.leased(self.pool, self.acquire_timeout) as conn,
            ):
                built = await preview_many(conn, [it.job for it in batch])
        except Exception as exc:
            if not isinstance(exc, (*db.UNAVAILABLE, asyncpg.PostgresError, TimeoutError)):
                log.exception("group read failed; its requests go one by one")
            for item in batch:
                if not item.done.done():
                    item.done.set_result(None)
            return
        for item, got in zip(batch, built, strict=True):
            if not item.done.done():
                item.done.set_result(got)
