"""Group commit: concurrent settlements share transactions, each answered after its own commit.

One commit per settlement tops out near the database's fsync rate, and a settlement written
statement by statement spends a dozen round trips. Here a handful of writer tasks take whatever
settlements are waiting and settle them together:

    claim every msgid  ->  lock the visits (mdtrt_id order), then the persons (psn_no order)
    ->  read their accumulators and the visits' lines  ->  draw the ids  ->  compute each in
    arrival order (pure)  ->  flush the staged rows  ->  COMMIT  ->  answer each

Pharmacy 2102 and the outpatient visit's writes (2201 registration, 2203 diagnosis, 2204 fee
upload, 2207 settlement) take this path (their `register(..., grouped=...)`). A job on a visit
an earlier job of the same batch changed goes to the single path after the commit
(gateway.pipeline.grouped.unchanged).

`synchronous_commit` stays on: no answer leaves before the commit that holds it. One person is
still serialized: within a batch the second settlement is computed against the first's result,
and across batches the account row lock orders them. A refusal (rules, insurance status) writes
only its stored answer, as on the single path. When a whole batch fails (a lost connection, a
deadlock, a bug) nothing of it is kept and each request takes the single path on its own, so
the batch is an optimisation, never a second set of rules.

At low load a writer finds one request waiting and the batch is a batch of one, so latency is
that of the single path; under load batches grow by themselves while the writers are busy.

One institution's settlements are in at most its share of the running batches (as it holds at
most its share of the pool, gateway.pipeline.ledger_shares): a hospital settling huge batches occupies
some writers, never all of them, and the others keep serving everyone else. A settlement held
back that way past its deadline is answered busy (its institution's own backlog).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

import asyncpg

from adapters.national.envelope import Request, encode_response
from gateway.app.config import Settings
from gateway.ledger import db, idempotency, settlements
from gateway.ledger.writes import Writes
from gateway.ops import metrics
from gateway.pipeline import dispatch
from gateway.pipeline.attempts import Attempts
from gateway.pipeline.deadlines import awaited_by
from gateway.pipeline.grouped import Job
from gateway.pipeline.ledger_shares import SHARE_BUSY, share_of
from gateway.protocol.errors import Busy, GatewayError, IdentityRejected
from gateway.services.settlement_state import Locked

log = logging.getLogger("gateway.pipeline.group_commit")
# A batch mixes institutions: one waiting on a row another transaction holds (a person's, a
# visit's, a msgid's key) gives up after this and its requests go the single path, each waiting
# for its own locks within its own deadline. Found from outside: one region's persons held by a
# long transaction timed out another institution's sales batched with one of them, counted
# against that institution's fault trigger. A batch's own locks are held for milliseconds.
LOCK_WAIT_SECONDS = 0.25


@dataclass(slots=True)
class _Item:
    req: Request
    body_hash: bytes
    received: dt.datetime
    job: Job
    done: asyncio.Future[dispatch.Outcome | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    expires: float | None = None  # the caller's deadline, the event loop's clock
    attempts: Attempts | None = None  # told the message is at work while a batch holds it
    held_back: bool = False  # left waiting because its institution was in its share of batches
    taken: bool = False  # in a batch

    @property
    def key(self) -> tuple[str, str]:
        return (self.req.fixmedins_code, self.req.msgid)


class GroupCommit:
    """The writers of one process; `submit` answers with an Outcome, or None: take the single
    path (the batch could not be committed)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        region: str,
        *,
        writers: int,
        max_batch: int,
        acquire_timeout: float,
        share_percent: int,
    ) -> None:
        self.pool = pool
        self.region = region
        self.writers = max(1, writers)
        self.max_batch = max(1, max_batch)
        self.acquire_timeout = acquire_timeout  # the call deadline: no batch waits past it
        self.share = share_of(self.writers, share_percent)  # running batches per institution
        self._waiting: list[_Item] = []
        self._running = 0
        self._connections: set[asyncpg.Connection] = set()  # held by running batches
        self._in_batches: dict[str, int] = {}  # institution -> running batches holding it

    @classmethod
    def for_process(cls, pool: asyncpg.Pool, settings: Settings) -> GroupCommit | None:
        """The process's writers from `[group_commit]`; None when it has none (every
        settlement commits on its own)."""
        config = settings.config
        if not config.group_commit.writers:
            return None
        return cls(
            pool,
            settings.region,
            writers=config.group_commit.writers,
            max_batch=config.group_commit.max_batch,
            acquire_timeout=config.deadlines.call_seconds,
            share_percent=config.ledger_pool.institution_share_percent,
        )

    async def submit(
        self,
        req: Request,
        body_hash: bytes,
        received: dt.datetime,
        job: Job,
        expires: float | None = None,
        attempts: Attempts | None = None,
    ) -> dispatch.Outcome | None:
        """The settlement's answer, or None (take the single path). `expires` (the event loop's
        clock) is the caller's deadline; one held back for its institution's share past it is
        refused busy, anything else past it raises TimeoutError as a slow ledger does.
        `attempts`: the message is at work there while a batch holds it, however long after
        its waiter's deadline (gateway.pipeline.attempts)."""
        item = _Item(req, body_hash, received, job, expires=expires, attempts=attempts)
        self._waiting.append(item)
        if self._running < self.writers:
            self._running += 1
            asyncio.get_running_loop().create_task(self._write())
        try:
            return await awaited_by(item.done, expires)
        except TimeoutError:
            if item.held_back and not item.taken:
                raise Busy(SHARE_BUSY) from None
            raise

    def _take(self) -> list[_Item]:
        """The next batch in arrival order, leaving waiting the settlements of institutions
        already in their share of running batches (one of those batches takes them next)."""
        batch: list[_Item] = []
        rest: list[_Item] = []
        for it in self._waiting:
            if it.done.done():
                # Its deadline passed while waiting: dropped before anything is written for
                # it; its client retries the same msgid.
                continue
            if len(batch) >= self.max_batch:
                rest.append(it)
            elif self._in_batches.get(it.req.fixmedins_code, 0) >= self.share:
                it.held_back = True
                rest.append(it)
            else:
                it.taken = True
                batch.append(it)
        self._waiting = rest
        return batch

    async def _write(self) -> None:
        try:
            while batch := self._take():
                codes = {it.req.fixmedins_code for it in batch}
                for code in codes:
                    self._in_batches[code] = self._in_batches.get(code, 0) + 1
                try:
                    await self._commit(batch)
                finally:
                    for code in codes:
                        left = self._in_batches.pop(code) - 1
                        if left:
                            self._in_batches[code] = left
        finally:
            self._running -= 1

    async def _commit(self, batch: list[_Item]) -> None:
        metrics.GROUP_BATCH_SIZE.observe(len(batch))
        try:
            # No batch outlives the last deadline it serves: its requests are answered by then,
            # and a batch stuck on a dead network would otherwise keep its writer and its
            # institutions' share of the writers for good, every later settlement of theirs
            # answered busy and none counted by the breaker as the timeout it is.
            async with (
                asyncio.timeout_at(self._last_deadline(batch)),
                db.leased(self.pool, self.acquire_timeout) as conn,
            ):
                # From here the batch's messages are at work (gateway.pipeline.attempts) until
                # it is over, however long after their waiters' deadlines; one answered while
                # the batch waited for its connection is dropped (`_settle`), not written.
                held = [
                    (attempts, it.key)
                    for it in batch
                    if not it.done.done() and (attempts := it.attempts) is not None
                ]
                for attempts, key in held:
                    attempts.begin(key)
                self._connections.add(conn)

                def sending() -> None:
                    for attempts, key in held:
                        attempts.committing(key)

                def answered() -> None:
                    for attempts, key in held:
                        attempts.committed(key)

                try:
                    async with db.committing(conn, sending, answered):
                        answers, later = await self._settle(conn, batch)
                    for item in later:  # the msgid was already taken: answer as its owner did
                        answers[id(item)] = await _replay(conn, item)
                finally:
                    self._connections.discard(conn)
                    for attempts, key in held:
                        attempts.end(key)
        except Exception as exc:
            if not isinstance(exc, (*db.UNAVAILABLE, asyncpg.PostgresError)):
                log.exception("group commit failed; its requests go one by one")
            for item in batch:
                if not item.done.done():
                    item.done.set_result(None)
            return
        for item in batch:
            if not item.done.done():
                item.done.set_result(answers.get(id(item)))

    def abort(self) -> int:
        """Cut the running batches' connections (the ledger's breaker has opened): a batch whose
        statements wait in a hung network must not commit when it heals, its requests answered
        and their retries taken by the plan; without a COMMIT the server rolls it back. How many
        were cut."""
        cut = list(self._connections)
        for conn in cut:
            conn.terminate()
        return len(cut)

    def _last_deadline(self, batch: list[_Item]) -> float:
        """The latest deadline of the batch's requests (the event loop's clock); one without its
        own deadline gets the call deadline from now."""
        loop_now = asyncio.get_running_loop().time()
        return max(
            loop_now + self.acquire_timeout if it.expires is None else it.expires for it in batch
        )

    async def _settle(
        self, conn: asyncpg.Connection, batch: list[_Item]
    ) -> tuple[dict[int, dispatch.Outcome | None], list[_Item]]:
        first: dict[tuple[str, str], _Item] = {}
        later: list[_Item] = []
        for item in batch:
            if item.done.done():
                # Answered while the batch waited for its connection (its deadline, or its
                # ledger's breaker opening): nothing is written for it; its retry starts afresh.
                continue
            if item.key in first:
                later.append(item)  # the same msgid twice in one batch: one effect
            else:
                first[item.key] = item
        if not first:
            return {}, later
        claimed = await idempotency.claim_many(
            conn,
            [
                (it.req.fixmedins_code, it.req.msgid, it.req.infno, it.body_hash)
                for it in first.values()
            ],
            drawing=[key for key, it in first.items() if it.job.draws],
            serials=settlements.SERIALS,
            lock_wait_ms=int(LOCK_WAIT_SECONDS * 1000),
        )
        mine = [it for key, it in first.items() if key in claimed]
        later += [it for key, it in first.items() if key not in claimed]
        if not mine:
            return {}, later
        drawn = {id(it.job): pair for key, it in first.items() if (pair := claimed.get(key))}
        locked = await Locked.take(conn, [it.job for it in mine], drawn)
        writes = Writes()
        answers: dict[int, dispatch.Outcome | None] = {}
        for item in mine:
            job, req = item.job, item.req
            try:
                built = locked.build(job)
            except GatewayError as exc:
                if exc.retryable:
                    writes.add(idempotency.RELEASE, req.fixmedins_code, req.msgid)
                    answers[id(item)] = None
                    continue
                out = dispatch.failure(self.region, item.received, exc)
                writes.add(idempotency.ANSWER, req.fixmedins_code, req.msgid, out, -1)
                answers[id(item)] = dispatch.Outcome(
                    out,
                    req.infno,
                    dispatch.Result.REJECTED,
                    req.msgid,
                    req.fixmedins_code,
                    identity_failure=isinstance(exc, IdentityRejected),
                )
                continue
            out = encode_response(
                region=self.region,
                received=item.received,
                output=built.output,
                warn_msg=built.warn_msg,
            )
            writes.merge(built.writes)
            writes.add(idempotency.ANSWER, req.fixmedins_code, req.msgid, out, 0)
            answers[id(item)] = dispatch.Outcome(
                out, req.infno, dispatch.Result.OK, req.msgid, req.fixmedins_code, paid=built.paid
            )
        await writes.flush(conn)
        return answers, later


async def _replay(conn: asyncpg.Connection, item: _Item) -> dispatch.Outcome | None:
    """The stored answer of a msgid another request took; None sends the request down the
    single path, which answers the cases that need words (still in progress, another body)."""
    req = item.req
    stored = await idempotency.lookup(conn, req.fixmedins_code, req.msgid)
    if stored is None or (stored.body_sha256 != item.body_hash and not stored.tombstone):
        return None
    body = idempotency.replay(stored, item.body_hash, req.msgid, dispatch.settling(req.infno))
    return dispatch.Outcome(
        body, req.infno, dispatch.replay_result(stored), req.msgid, req.fixmedins_code
    )
