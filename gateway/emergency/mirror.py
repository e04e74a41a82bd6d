"""Visit mirroring in a parallel run: a visit's encounter calls replayed at the shadow.

A visit opened during a parallel run exists only in the system that answered the counter, so
the shadow could not price its settlement (2206/2303 of a visit it never saw). Here every
encounter call of a visit (2201-2205, 2401/2402/2404/2405, 2301/2302: the transaction table's
encounter class with a visit, `Deferral.CALL`) that the counter got a successful answer for is
replayed at the other system: to the old system over HTTP when this gateway answered (`shadow`),
to this gateway's own handler, committed, when the old system answered (`route_legacy_shadow`
with the encounter class routed to it). Under `route_legacy` of the settlements with the
encounter class answered here, calls go on to the old system, which now settles the visit; its
settlements are forwarded through `Mirror.routed` (the old system's numbers, once delivered).
A visit and its fee lines are not money: writing them before go-live is what a parallel run
is; the settlement itself is only ever priced.

The two systems number visits differently: the shadow's number of each visit, from its answer
to the mirrored 2201/2401, is kept in the ledger (shadow_mirror_visits), and every mirrored call
and every pricing has its `mdtrt_id` values rewritten through it; every other byte of the input
stays as sent (amounts are never re-encoded).

Off the request path: dispatch hands each answer to `Mirror.offer` (dispatch.ANSWERED), which
puts it on a bounded queue without waiting or I/O; a full queue drops it (counted, and its visit
known as not mirrored). A writer task moves the queue into the ledger's outbox
(shadow_mirror_calls); delivery workers in every process take calls from the outbox.

Order per visit, across processes (the guarantee and its limits). A counter sends a visit's
next call only once it has the previous answer, so the order of the counter's `received` times
is the visit's order. The outbox delivers one call of a visit at a time (the row locked
FOR UPDATE SKIP LOCKED for the delivery's transaction) and only the oldest pending one (no
earlier call of its visit pending), whichever process wrote it. A call written by another
process reaches the outbox a moment after its answer: a call is therefore delivered only
`[shadow] mirror_grace_seconds` after it was received, by which time an earlier call of its
visit is in the outbox. The limits: a process whose writer is behind by more than the grace
(its ledger slow), or nodes whose clocks differ by more than it, can deliver a visit's calls out
of order (the shadow then refuses one, and the visit is counted not mirrored, not compared
wrongly); a process that dies with calls in its queue loses them (its visits are priced as
refusals at the shadow). A pricing waits (`mirror_wait_seconds`) until every call of its visit
received before it is delivered; a visit not mirrored whole is a shadow failure (`not_mirrored`),
never a difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import msgspec

from adapters.national.envelope import Request, decode_request, encode_response
from gateway.app.runtime import Gateway
from gateway.core.model import Institution
from gateway.emergency import hook
from gateway.emergency.plan.rules import CATEGORIES, SHADOW_ACTIONS, Action, Decision, TxClass
from gateway.ledger import shadow_mirror as store
from gateway.ops import metrics
from gateway.pipeline import dispatch
from gateway.pipeline.outcome import Outcome, Result
from gateway.protocol.errors import GatewayError, Unavailable
from gateway.protocol.transaction import TRANSACTIONS, Call, Deferral, Transaction

log = logging.getLogger("gateway.emergency.mirror")

GATEWAY, LEGACY = "gateway", "legacy"  # the shadow a call is mirrored to
_BATCH = 100  # calls written to the outbox in one transaction
_POLL_SECONDS = 0.25  # an idle delivery worker looks at the outbox again after this
_IDLE_POLL_SECONDS = 1.0  # how often an idle worker asks (in memory) whether a run is in force
_answers = msgspec.json.Decoder(float_hook=Decimal)
_envelope = msgspec.json.Decoder(dict[str, msgspec.Raw])

# JSON string tokens: outside a string there is no quote, so scanning from one token's end
# finds the next (a key or a string value); a key is followed by a colon.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_COLON = re.compile(rb"\s*:\s*")
_INTEGER = re.compile(rb"-?[0-9]+(?![0-9.eE])")
_KEY = b'"mdtrt_id"'
# The plan actions under which encounter calls answered here are mirrored to the old system:
# the parallel run's, and `route_legacy` of the settlements (the protective action's), whose
# settlements the old system makes of visits it knows only through the mirror.
_MIRRORING = (*SHADOW_ACTIONS, Action.ROUTE_LEGACY)
NOT_SYNCED_MSG = "本次就诊未能同步至原系统，暂不能转原系统结算，请稍后使用相同报文ID重试"


def mdtrt_ids(raw: bytes) -> list[tuple[int, int, str]]:
    """Every `mdtrt_id` value in a JSON text, wherever it is nested: (start, end, value) of
    the value's bytes (a string, or an integer some clients send)."""
    found: list[tuple[int, int, str]] = []
    pos = 0
    while (m := _STRING.search(raw, pos)) is not None:
        pos = m.end()
        if m.group() != _KEY:
            continue
        colon = _COLON.match(raw, pos)
        if colon is None:
            continue  # a string value that reads "mdtrt_id", not the key
        value = _STRING.match(raw, colon.end()) or _INTEGER.match(raw, colon.end())
        if value is None:
            continue  # null, or not a value a visit number can be
        try:
            text = msgspec.json.decode(value.group())
        except msgspec.DecodeError:
            continue
        found.append((value.start(), value.end(), str(text)))
        pos = value.end()
    return found


def first_mdtrt_id(raw: bytes) -> str | None:
    spans = mdtrt_ids(raw)
    return spans[0][2] if spans else None


def rewrite_ids(raw: bytes, mapping: dict[str, str]) -> bytes:
    """The JSON text with each mapped `mdtrt_id` value replaced; every other byte as it was."""
    spans = [s for s in mdtrt_ids(raw) if s[2] in mapping]
    if not spans:
        return raw
    out = bytearray()
    pos = 0
    for start, end, value in spans:
        out += raw[pos:start]
        out += msgspec.json.encode(mapping[value])
        pos = end
    out += raw[pos:]
    return bytes(out)


def with_input(body: bytes, input_: bytes) -> bytes:
    """The envelope with this input node (the same node for a client that spelled it `Input`
    or sent it as a string: the rewritten object); every other field byte for byte."""
    envelope = _envelope.decode(body)
    envelope.pop("Input", None)
    envelope["input"] = msgspec.Raw(input_)
    return msgspec.json.encode(envelope)


def mapped(body: bytes, req: Request, mapping: dict[str, str]) -> bytes:
    """The envelope with its input's visit numbers rewritten through `mapping`; the body as
    it was when none of them is mapped."""
    rewritten = rewrite_ids(req.input, mapping)
    if rewritten is req.input:
        return body
    return with_input(body, rewritten)


def mirrored(tx: Transaction) -> bool:
    """An encounter call of a visit: what the shadow needs to hold the visit as the counter
    left it (the table's encounter class journaled with its visit; not sign-in, not 1101)."""
    return tx.klass is TxClass.ENCOUNTER and tx.writes and tx.deferral is Deferral.CALL


_SETTLEMENT: list[Transaction] = []


def _settlement_class() -> Transaction:
    """A settlement-class entry: the plan's decision for the scope's settlements is what says
    whether the scope is in a parallel run."""
    if not _SETTLEMENT:
        _SETTLEMENT.append(next(t for t in TRANSACTIONS.values() if t.klass is TxClass.SETTLEMENT))
    return _SETTLEMENT[0]


def _run_of(
    gw: Gateway, tx: Transaction, req: Request, institution: Institution, now: dt.datetime
) -> Decision | None:
    """The plan's decision for the settlements of the visit this call belongs to: of its
    medical category when the call names one (2401, 2203, 2204/2301 rows). A call that names
    none (2202, 2205, 2402–2405, 2302, an outpatient 2201 before its 2203) is of a visit of some
    category: while a scope narrowed to a category is in a run, it is mirrored when any
    category here is, so a visit of that category is mirrored whole; a visit of another category
    then leaves the old system a call it refuses (counted), never a wrong comparison."""
    settlement = _settlement_class()
    category = hook.category_of(gw, tx, req)
    decision = hook.decide(gw, settlement, institution, now, category)
    if category is not None or not gw.plan.categorized or _in_run(decision):
        return decision
    for other in CATEGORIES:
        found = hook.decide(gw, settlement, institution, now, other)
        if _in_run(found):
            return found
    return decision


def _in_run(decision: Decision | None) -> bool:
    return decision is not None and decision.action in _MIRRORING


def succeeded(raw: bytes) -> bool:
    """An envelope answering infcode 0."""
    try:
        value = _answers.decode(raw)
    except msgspec.DecodeError:
        return False
    return isinstance(value, dict) and value.get("infcode") in (0, "0", Decimal(0))


@dataclasses.dataclass(frozen=True, slots=True)
class Answered:
    """An encounter call answered at the counter, waiting to be written to the outbox."""

    target: str  # the shadow: where it is replayed
    tx: Transaction
    req: Request
    body: bytes
    answer: bytes
    received: dt.datetime

    def visit(self) -> str | None:
        """The visit's number as the counter got it: the answer's for a call that opens it."""
        return first_mdtrt_id(self.answer if self.tx.opens_visit else self.req.input)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.astimezone()


def _local(moment: dt.datetime) -> dt.datetime:
    """A ledger time as the handlers take `now`: local, naive."""
    return moment.astimezone().replace(tzinfo=None)


class Mirror:
    """One gateway process's share of visit mirroring: its queue, writer and delivery workers."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.config = gw.config.shadow
        self.queue: asyncio.Queue[Answered] = asyncio.Queue(maxsize=self.config.mirror_queue_size)
        self._lost: list[tuple[str, str, str]] = []  # visits known not mirrored, to write
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ on the request path

    def offer(
        self,
        gw: Gateway,
        tx: Transaction,
        req: Request,
        institution: Institution,
        body: bytes,
        outcome: Outcome,
        received: dt.datetime,
    ) -> None:
        """An answer made (dispatch.ANSWERED): queued for the outbox when it is an encounter
        call answered in a parallel run. No I/O and no waiting."""
        if gw is not self.gw or not mirrored(tx):
            return
        decision = _run_of(gw, tx, req, institution, received)
        if decision is None:
            return
        if outcome.outcome is Result.OK and decision.action in _MIRRORING:
            # Under route_legacy and route_legacy_shadow the old system settles the visit: it
            # must hold every line the counter uploaded here, after the switch as before it
            # (found from outside: under route_legacy_shadow a visit opened here was never
            # mirrored, so its settlement went to the old system under a number it never had).
            target = LEGACY
        elif decision.action is Action.ROUTE_LEGACY_SHADOW and outcome.outcome is Result.LEGACY:
            target = GATEWAY
        else:
            return  # not a parallel run here, or nothing newly answered (a retry, a refusal)
        item = Answered(target, tx, req, body, outcome.body, received)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            metrics.SHADOW_MIRRORED.labels(target, "dropped").inc()
            self._forget(item, "dropped")

    def _forget(self, item: Answered, reason: str) -> None:
        """Its visit is known not mirrored (written by the writer, bounded like the queue)."""
        if len(self._lost) >= self.config.mirror_queue_size or not succeeded(item.answer):
            return
        visit = item.visit()
        if visit:
            self._lost.append((item.req.fixmedins_code, visit, reason))

    # ------------------------------------------------------------------------ the workers

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._write())]
        self._tasks += [
            asyncio.create_task(self._deliver()) for _ in range(self.config.mirror_workers)
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()

    async def _write(self) -> None:
        """The queue into the ledger's outbox, in batches."""
        while True:
            batch: list[Answered] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # the lost visits are written even when idle
                    batch.append(await self.queue.get())
            while len(batch) < _BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._write_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("mirror outbox write failed", exc_info=True)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write_batch(self, batch: list[Answered]) -> None:
        calls: list[store.Outgoing] = []
        for item in batch:
            visit = item.visit() if succeeded(item.answer) else None
            if not visit:
                continue  # the old system refused it: nothing happened to mirror
            calls.append(
                store.Outgoing(
                    item.req.fixmedins_code,
                    visit,
                    item.target,
                    item.tx.infno,
                    item.req.msgid,
                    item.tx.opens_visit,
                    item.body,
                    item.answer,
                    _aware(item.received),
                )
            )
        lost, self._lost = self._lost, []
        if not calls and not lost:
            return
        try:
            async with self.gw.pool.acquire(timeout=self.config.timeout_seconds) as conn:
                await store.enqueue(conn, calls, lost)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning("mirror outbox not written", exc_info=True)
            for c in calls:
                metrics.SHADOW_MIRRORED.labels(c.target, "failed").inc()
            room = self.config.mirror_queue_size - len(self._lost)
            again = lost + [(c.fixmedins_code, c.mdtrt_id, "outbox not written") for c in calls]
            self._lost += again[: max(0, room)]
            return
        self._wake.set()

    async def _deliver(self) -> None:
        while True:
            if not self._may_look():
                # No parallel run or routing in force, or the ledger's breaker open: the outbox
                # is not touched at all (a gateway outside a cut-over must not query it forever,
                # and during a ledger outage a worker would hold a pool connection on a dead
                # network that the counters' requests and the breaker's probes need).
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_IDLE_POLL_SECONDS):
                        await self._wake.wait()  # a call written here wakes it at once
                continue
            try:
                # Bounded: one delivery is a few statements and at most one call to the shadow.
                async with asyncio.timeout(4 * self.config.timeout_seconds):
                    delivered = await self.deliver_one()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("mirror delivery failed", exc_info=True)
                delivered = False
            if not delivered:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_POLL_SECONDS):
                        await self._wake.wait()

    def _may_look(self) -> bool:
        """Whether a delivery worker may look at the outbox now: while a parallel run or a
        routing that mirrors is in force anywhere (calls of other processes arrive there), and
        the ledger's breaker is closed."""
        if self.gw.breakers["postgres"].is_open:
            return False
        plan = self.gw.plan
        return any(r.action in _MIRRORING for r in plan.rules) or any(
            w.action in _MIRRORING for w in plan.windows
        )

    async def deliver_one(self) -> bool:
        """Delivers the next call the outbox lets go (see the module's order); False: none."""
        limit = self.config.timeout_seconds
        async with self.gw.pool.acquire(timeout=limit) as conn, conn.transaction():
            call = await store.claim(conn, self.config.mirror_grace_seconds)
            if call is None:
                return False
            await self._deliver_call(conn, call)
        return True

    async def _deliver_call(self, conn: asyncpg.Connection, c: store.Claimed) -> None:
        code = c.fixmedins_code
        state = await store.visit(conn, code, c.mdtrt_id, c.received_at)
        if state is not None and state.state == "not_mirrored":
            await self._done(conn, c, "failed", "visit not mirrored")
            return
        body = c.body
        if not c.opens_visit:
            try:
                req = decode_request(body)
            except GatewayError as exc:  # answered once, so never; but never stuck on it
                await self._done(conn, c, "failed", str(exc)[:500])
                return
            mapping = await store.shadow_ids(conn, code, {s[2] for s in mdtrt_ids(req.input)})
            body = mapped(body, req, mapping)
        if c.target == LEGACY:
            outcome, answer, detail = await self._to_legacy(c, body)
        else:
            outcome, answer, detail = await self._here(conn, c, body)
        if outcome == "retry":
            if c.attempts + 1 < self.config.mirror_attempts:
                delay = self.config.mirror_grace_seconds * 2**c.attempts
                await store.retry_later(conn, c.call_id, delay, detail)
                return
            outcome = "failed"
        if outcome == "ok" and c.opens_visit:
            shadow_id = first_mdtrt_id(answer) if answer is not None else None
            if shadow_id is None:
                outcome, detail = "failed", "no mdtrt_id in the shadow's answer"
            else:
                await store.map_visit(conn, code, c.mdtrt_id, shadow_id)
        await self._done(conn, c, outcome, detail, answer)

    async def _done(
        self,
        conn: asyncpg.Connection,
        c: store.Claimed,
        outcome: str,
        detail: str,
        answer: bytes | None = None,
    ) -> None:
        await store.finish(conn, c.call_id, outcome, detail or None, answer)
        if outcome != "ok":
            # The shadow's copy of the visit is no longer the counter's.
            await store.lose_visit(conn, c.fixmedins_code, c.mdtrt_id, f"{c.infno} {outcome}")
        metrics.SHADOW_MIRRORED.labels(c.target, outcome).inc()

    async def _to_legacy(self, c: store.Claimed, body: bytes) -> tuple[str, bytes | None, str]:
        """The call posted to the old system: (outcome, its answer, detail)."""
        try:
            answer = await hook.post_legacy(
                self.gw,
                body,
                self.config.timeout_seconds,
                infno=c.infno,
                fixmedins_code=c.fixmedins_code,
                session=self._session,
            )
        except hook.LegacyDown as exc:
            return "retry", None, exc.kind
        if not succeeded(answer):
            try:
                envelope = _answers.decode(answer)
            except msgspec.DecodeError:
                return "retry", None, "not an envelope"
            message = envelope.get("err_msg") if isinstance(envelope, dict) else None
            return "refused", answer, str(message or "")[:500]
        return "ok", answer, ""

    async def _here(
        self, conn: asyncpg.Connection, c: store.Claimed, body: bytes
    ) -> tuple[str, bytes | None, str]:
        """The call run by this gateway's own handler, committed with the outbox row (a
        refusal rolls back to the savepoint: nothing of it is kept)."""
        tx = TRANSACTIONS.get(c.infno)
        institution = self.gw.snapshot.institution(c.fixmedins_code)
        if tx is None or institution is None:
            return "refused", None, "unknown transaction or institution"
        try:
            req = decode_request(body)
            async with asyncio.timeout(self.config.timeout_seconds), conn.transaction():
                answer = await tx.handler(
                    Call(self.gw, req, conn, _local(c.received_at), institution)
                )
        except GatewayError as exc:
            return ("retry" if exc.retryable else "refused"), None, str(exc)[:500]
        except (asyncpg.PostgresError, TimeoutError) as exc:
            return "retry", None, repr(exc)[:500]
        received = _local(c.received_at)
        out = encode_response(
            region=self.gw.region, received=received, output=answer.output, warn_msg=answer.warn_msg
        )
        return "ok", out, ""

    # --------------------------------------------------------------------- for the pricing

    async def visit_map(
        self, fixmedins_code: str, req: Request, received: dt.datetime, target: str
    ) -> dict[str, str] | None:
        """The shadow's (`target`'s) numbers of the visits a pricing names, once every call of
        them the counter sent before it is mirrored there: {} when none is mapped (a visit the
        mirror never saw, carried over under the same number, or one mirrored the other way:
        found from outside, a visit opened here and mirrored to the old system was priced here
        under the old system's number), None when one is not mirrored (a call of it dropped,
        refused or failed, or still pending after `mirror_wait_seconds`)."""
        ids = sorted({s[2] for s in mdtrt_ids(req.input)})
        if not ids:
            return {}
        return await self._when_mirrored(fixmedins_code, ids, received, target=target)

    async def _visits(
        self, fixmedins_code: str, ids: list[str], before: dt.datetime, target: str | None
    ) -> list[store.Visit | None]:
        async with self.gw.pool.acquire(timeout=self.config.timeout_seconds) as conn:
            return [await store.visit(conn, fixmedins_code, i, before, target) for i in ids]

    async def _when_mirrored(
        self,
        fixmedins_code: str,
        ids: list[str],
        received: dt.datetime,
        *,
        wait: float | None = None,
        target: str | None = None,
    ) -> dict[str, str] | None:
        """`visit_map`'s wait. The pricing (`wait` None) waits the grace, then up to
        `mirror_wait_seconds`. A routed request (`wait` given: all it may spend, the grace
        included) looks first and is not held at all when the mirror knows none of its visits
        (`target`: as mirrored to that shadow), the common case of a visit the old system opened."""
        config = self.config
        loop = asyncio.get_running_loop()
        before = _aware(received)
        end = None if wait is None else loop.time() + wait
        if end is not None and all(
            v is None for v in await self._visits(fixmedins_code, ids, before, target)
        ):
            return {}
        # An earlier call answered by another process reaches the outbox within the grace.
        ahead = (received - dt.datetime.now()).total_seconds() + config.mirror_grace_seconds
        if end is not None:
            ahead = min(ahead, end - loop.time())
        if ahead > 0:
            await asyncio.sleep(ahead)
        if end is None:
            end = loop.time() + config.mirror_wait_seconds
        while True:
            visits = await self._visits(fixmedins_code, ids, before, target)
            if all(v is None or v.pending == 0 for v in visits):
                if any(v is not None and v.state != "mapped" for v in visits):
                    return None
                return {
                    i: v.shadow_mdtrt_id
                    for i, v in zip(ids, visits, strict=True)
                    if v is not None and v.shadow_mdtrt_id
                }
            if loop.time() >= end:
                return None
            await asyncio.sleep(max(0.0, min(_POLL_SECONDS, end - loop.time())))

    # ------------------------------------------------------------------ for route_legacy

    async def routed(
        self, gw: Gateway, req: Request, body: bytes, received: dt.datetime
    ) -> tuple[bytes, hook.Renumber | None]:
        """A request the plan forwards to the old system (hook.ROUTED_VISITS): the envelope
        with the old system's numbers of the visits it names that were opened here and mirrored
        there, once their earlier calls are delivered, and what gives its answer our numbers
        back. Unchanged, and no ledger read, when it names no visit; unchanged when the mirror
        knows none of them as mirrored there. Unavailable (retryable) when one of them is not
        mirrored whole, or its calls are not delivered within the time the call has left: the
        old system would settle it without lines, refuse it, or settle another visit of that
        number."""
        ids = sorted({s[2] for s in mdtrt_ids(req.input)})
        if gw is not self.gw or not ids:
            return body, None
        config = gw.config
        left = config.deadlines.call_seconds - (dt.datetime.now() - received).total_seconds()
        # The forward keeps its time (at most half of what is left); the wait takes the rest.
        reserve = min(config.legacy.timeout_seconds, left / 2)
        wait = max(0.0, min(self.config.mirror_wait_seconds, left - reserve))
        try:
            # The map's reads too are bounded by the call's time (a slow ledger).
            async with asyncio.timeout(wait + _POLL_SECONDS):
                found = await self._when_mirrored(
                    req.fixmedins_code, ids, received, wait=wait, target=LEGACY
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning("visit map not read for a routed request", exc_info=True)
            raise Unavailable(NOT_SYNCED_MSG) from None
        if found is None:
            log.warning(
                "routed request refused: its visit is not mirrored to the old system",
                extra={"infno": req.infno, "fixmedins_code": req.fixmedins_code},
            )
            raise Unavailable(NOT_SYNCED_MSG)
        if not found:
            return body, None
        back = {theirs: ours for ours, theirs in found.items()}
        return mapped(body, req, found), lambda answer: rewrite_ids(answer, back)


def install(mirror: Mirror) -> None:
    """Hand every answer of this process to visit mirroring, and start its workers."""
    if mirror.offer not in dispatch.ANSWERED:
        dispatch.ANSWERED.append(mirror.offer)
    if mirror.routed not in hook.ROUTED_VISITS:
        hook.ROUTED_VISITS.append(mirror.routed)
    mirror.start()


async def uninstall(mirror: Mirror) -> None:
    with contextlib.suppress(ValueError):
        dispatch.ANSWERED.remove(mirror.offer)
    with contextlib.suppress(ValueError):
        hook.ROUTED_VISITS.remove(mirror.routed)
    await mirror.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Lines:
    """A visit's standing fee lines as both systems answered their uploads (2204/2301
    result[] rows), for the comparison: a 2206/2303 answer carries no lines."""

    answered: list[dict[str, Any]]
    shadowed: list[dict[str, Any]]
    items: dict[str, str]  # feedetl_sn -> medins_list_codg


def _rows(raw: bytes, node: str) -> dict[str, Any]:
    try:
        env = _answers.decode(raw)
    except msgspec.DecodeError:
        return {}
    output = env.get("output") if isinstance(env, dict) else None
    rows = output.get(node) if isinstance(output, dict) else None
    if not isinstance(rows, list):
        return {}
    return {str(r["feedetl_sn"]): r for r in rows if isinstance(r, dict) and "feedetl_sn" in r}


def standing_lines(
    calls: list[store.Delivered], chrg_bchno: str | None, settled_by: str | None = None
) -> Lines:
    """The lines of a visit's delivered calls still standing after its withdrawals, in upload
    order (only those `chrg_bchno` names, when the settlement names a batch). Read from each
    request's shape: feedetail[] uploads, data{chrg_bchno} withdraws a batch (2205), data[] of
    feedetl_sn withdraws lines (2302). `answered` is the side of the system that answered the
    settlement (`settled_by`): an upload it was the shadow of has its two answers swapped
    (found from outside: a visit opened here and settled by the old system had its lines'
    differences told the wrong way round)."""
    lines: dict[str, tuple[str, str, Any, Any]] = {}
    for call in calls:
        try:
            body = _answers.decode(decode_request(call.body).input)
        except (GatewayError, msgspec.DecodeError):
            continue
        if not isinstance(body, dict):
            continue
        feedetail, data = body.get("feedetail"), body.get("data")
        if isinstance(feedetail, list):
            answered, shadowed = _rows(call.answer, "result"), _rows(call.shadow_answer, "result")
            if call.target == settled_by:
                answered, shadowed = shadowed, answered
            for row in feedetail:
                if not isinstance(row, dict) or row.get("feedetl_sn") is None:
                    continue
                sn = str(row["feedetl_sn"])
                batch, item = (
                    str(row.get("chrg_bchno") or ""),
                    str(row.get("medins_list_codg") or ""),
                )
                lines[sn] = (batch, item, answered.get(sn), shadowed.get(sn))
        elif isinstance(data, dict) and data.get("chrg_bchno"):
            gone = str(data["chrg_bchno"])
            lines = {sn: ln for sn, ln in lines.items() if ln[0] != gone}
        elif isinstance(data, list):
            for ref in data:
                if isinstance(ref, dict) and ref.get("feedetl_sn") is not None:
                    lines.pop(str(ref["feedetl_sn"]), None)
    kept = [(sn, ln) for sn, ln in lines.items() if chrg_bchno is None or ln[0] == chrg_bchno]
    return Lines(
        [ln[2] for _, ln in kept if ln[2] is not None],
        [ln[3] for _, ln in kept if ln[3] is not None],
        {sn: ln[1] for sn, ln in kept},
    )


async def visit_lines(
    gw: Gateway, fixmedins_code: str, req: Request, settled_by: str
) -> Lines | None:
    """The standing lines of the visit a pricing names (as the counter numbers it), both
    systems' answers, the settlement's answerer's (`settled_by`) first; None when none of its
    uploads was mirrored."""
    visit = first_mdtrt_id(req.input)
    if visit is None:
        return None
    async with gw.pool.acquire(timeout=gw.config.shadow.timeout_seconds) as conn:
        calls = await store.delivered(conn, fixmedins_code, visit)
    try:
        node = _answers.decode(req.input)
    except msgspec.DecodeError:
        return None
    data = node.get("data") if isinstance(node, dict) else None
    batch = data.get("chrg_bchno") if isinstance(data, dict) else None
    lines = standing_lines(calls, str(batch) if batch else None, settled_by)
    return lines if lines.answered or lines.shadowed else None
