"""Group read: concurrent reads of one kind share one connection and one query.

A pharmacy pre-settlement (2101) reads one person's account and year and changes nothing; alone
it leases a connection, runs one query and hands the connection back, and that round trip was
over a third of the gateway's CPU per 2101 (the wrk harness's profile) and most of
PostgreSQL's. An outpatient pre-settlement (2206) reads its visit's lines too, and notes itself
on the visit: alone, a commit each. A writing request the emergency plan answers otherwise (`reject`, `defer`) is first
looked up in the msgid journal, one round trip each, and that was over a third of the gateway's
CPU per refusal. Here a few reader tasks per kind take every read waiting and run them together:

- previews (`settlement_state.preview_many`: one query for all the visits, one for all the
  persons, each build as a batch of one builds it, the visits' pre-settlements noted in one
  statement), so a pre-settlement answers as the single path would for the state read;
- msgid journal look-ups (`idempotency.lookup_many`);
- refusals the plan keeps against their msgid (`reject` of a sale or a visit's settlement, which
  the counter then takes in cash: `idempotency.keep_many`, one statement and one commit a
  batch). Kept one by one, each refusal was a transaction and a commit of its own, and `reject`
  lost half its rate to them (benchmarks/RESULTS.md, 2026-12-06 11:22–).

Nothing is locked, and nothing written but the notes (an upsert per visit, the latest kept) and
the kept refusals (each a key of its own, inserted in sorted order and waiting at most
KEEP_WAIT_SECONDS for a key an open transaction holds), so a batch needs no order and holds
nothing past its statements. A
batch that fails whole (a lost connection, a bug) raises `Unread` to each request, which then
reads on its own, as the group commit sends a failed batch down the single path; one request's
refusal (an unknown person, the rules) is that request's alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg

from gateway.app.config import Settings
from gateway.ledger import db, idempotency
from gateway.ops import metrics
from gateway.pipeline.deadlines import awaited_by
from gateway.pipeline.grouped import Built, Job, Unread
from gateway.protocol.errors import GatewayError
from gateway.services.settlement_state import preview_many

log = logging.getLogger("gateway.pipeline.group_read")

K = TypeVar("K")
R = TypeVar("R")


@dataclass(slots=True)
class _Item(Generic[K, R]):
    key: K
    expires: float
    done: asyncio.Future[R | GatewayError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


ReadMany = Callable[[asyncpg.Connection, list[K]], Awaitable[list[R | GatewayError]]]


class Batched(Generic[K, R]):
    """The readers of one kind of read on one ledger database in one process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kind: str,
        read_many: ReadMany[K, R],
        *,
        readers: int,
        max_batch: int,
        acquire_timeout: float,
    ) -> None:
        self.pool = pool
        self.kind = kind  # the batch-size metric's label
        self.read_many = read_many
        self.readers = max(1, readers)
        self.max_batch = max(1, max_batch)
        self.acquire_timeout = acquire_timeout
        self._waiting: list[_Item[K, R]] = []
        self._running = 0

    async def submit(self, key: K, expires: float) -> R:
        """The read's result. A refusal is raised as the single path raises it; past `expires`
        (the event loop's clock), TimeoutError as a slow ledger gives; Unread: read it alone."""
        item: _Item[K, R] = _Item(key, expires)
        self._waiting.append(item)
        if self._running < self.readers:
            self._running += 1
            asyncio.get_running_loop().create_task(self._read())
        got = await awaited_by(item.done, expires)
        if isinstance(got, GatewayError):
            raise got
        return got

    def _take(self) -> list[_Item[K, R]]:
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

    async def _answer(self, batch: list[_Item[K, R]]) -> None:
        metrics.GROUP_READ_BATCH_SIZE.labels(self.kind).observe(len(batch))
        try:
            async with (
                asyncio.timeout_at(max(it.expires for it in batch)),
                db.leased(self.pool, self.acquire_timeout) as conn,
            ):
                results = await self.read_many(conn, [it.key for it in batch])
        except Exception as exc:
            if not isinstance(exc, (*db.UNAVAILABLE, asyncpg.PostgresError, TimeoutError)):
                log.exception("group read failed; its requests read one by one")
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(Unread())
                    item.done.exception()  # retrieved: a caller gone by then is not an error
            return
        for item, got in zip(batch, results, strict=True):
            if not item.done.done():
                item.done.set_result(got)


NOTE_WAIT_SECONDS = 0.05  # see settlement_state.preview_many's note_wait
# A kept refusal whose msgid an earlier attempt still holds (its commit not done) waits for it,
# and the batch with it: past this the batch fails, and each refusal is kept on its own.
KEEP_WAIT_SECONDS = 0.25


def _maybe() -> bool:
    return True


async def _answers(
    conn: asyncpg.Connection, keys: list[tuple[str, str]]
) -> list[idempotency.Stored | GatewayError | None]:
    return list(await idempotency.lookup_many(conn, keys))


async def _kept(
    conn: asyncpg.Connection, kept: list[idempotency.Kept]
) -> list[idempotency.Stored | GatewayError | None]:
    return list(await idempotency.keep_many(conn, kept, lock_wait_ms=int(KEEP_WAIT_SECONDS * 1000)))


class GroupRead:
    """The batched reads of one ledger database in one process."""

    def __init__(
        self, pool: asyncpg.Pool, *, readers: int, max_batch: int, acquire_timeout: float
    ) -> None:
        # Whether the ledger may hold claims (the process's last count; True until counted).
        self.claims_held: Callable[[], bool] = _maybe

        async def previews(conn: asyncpg.Connection, jobs: list[Job]) -> list[Built | GatewayError]:
            return await preview_many(
                conn, jobs, note_wait=NOTE_WAIT_SECONDS, claims=self.claims_held()
            )

        self.previews: Batched[Job, Built] = Batched(
            pool,
            metrics.GROUP_READ_KINDS[0],
            previews,
            readers=readers,
            max_batch=max_batch,
            acquire_timeout=acquire_timeout,
        )
        self.answers: Batched[tuple[str, str], idempotency.Stored | None] = Batched(
            pool,
            metrics.GROUP_READ_KINDS[1],
            _answers,
            readers=readers,
            max_batch=max_batch,
            acquire_timeout=acquire_timeout,
        )
        self.kept: Batched[idempotency.Kept, idempotency.Stored | None] = Batched(
            pool,
            metrics.GROUP_READ_KINDS[2],
            _kept,
            readers=readers,
            max_batch=max_batch,
            acquire_timeout=acquire_timeout,
        )

    @classmethod
    def for_process(cls, pool: asyncpg.Pool, settings: Settings) -> GroupRead | None:
        """The process's readers from `[group_read]`; None when it has none (each read on its
        own connection)."""
        config = settings.config
        if not config.group_read.readers:
            return None
        return cls(
            pool,
            readers=config.group_read.readers,
            max_batch=config.group_read.max_batch,
            acquire_timeout=config.deadlines.call_seconds,
        )

    async def preview(self, job: Job, expires: float) -> Built | None:
        """The job's build over the state as it is; None: take the single path."""
        try:
            return await self.previews.submit(job, expires)
        except Unread:
            return None

    async def answer(
        self, fixmedins_code: str, msgid: str, expires: float
    ) -> idempotency.Stored | None:
        """The msgid journal's answer for this key, if any (Unread: look it up alone)."""
        return await self.answers.submit((fixmedins_code, msgid), expires)

    async def keep(self, kept: idempotency.Kept, expires: float) -> idempotency.Stored | None:
        """Keep an answer against its key: None when it is the key's now (or the key has none
        to give), else the answer an earlier attempt committed (Unread: keep it alone)."""
        return await self.kept.submit(kept, expires)
