"""The parallel run: every settlement under a shadow rule priced by the other system too.

A cut-over moves a region's settlement from the old system to this gateway, and whether the new
one computes the same money is otherwise only seen at the counter (清远 plan 1.2.2, 1.4). Under
the plan's `route_legacy_shadow` (before go-live) the old system answers the counter and this
gateway prices the same request as its pre-settlement, writing nothing in its ledger; under
`shadow` (after go-live) this gateway answers and the old system (`[legacy] url`) prices it.
A settlement (2207, 2304, 2102) is priced at the shadow as the matching pre-settlement (2206,
2303, 2101): the shadow writes nothing either. The two answers are compared
(gateway.core.shadow_diff), the comparison stored (gateway.ledger.shadow) and counted
(sgw_shadow_* in gateway.ops.metrics).

Off the request path: dispatch hands each answer to `Shadow.offer` (dispatch.ANSWERED), which
samples it and puts it on a bounded queue without waiting; a full queue drops it (counted).
Workers price and compare; nothing they do can delay or fail the counter's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import zlib
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import msgspec

from adapters.national.envelope import Request, decode_request, encode_response
from gateway.app.runtime import Gateway
from gateway.core.eligibility import CATEGORY_OF
from gateway.core.model import Institution
from gateway.core.money import bp_text
from gateway.core.shadow_diff import LINE_NODES, Diagnosis, compare, items_of
from gateway.emergency import hook, mirror
from gateway.emergency.plan import store as plan_store
from gateway.emergency.plan.rules import Action, TxClass
from gateway.ledger import legacy_settlements
from gateway.ledger import shadow as shadow_store
from gateway.ops import metrics
from gateway.pipeline import dispatch
from gateway.pipeline.outcome import Outcome, Result, failure
from gateway.protocol.errors import GatewayError
from gateway.protocol.transaction import TRANSACTIONS, Call, Deferral, Kind, Transaction

log = logging.getLogger("gateway.emergency.shadow")

GATEWAY, LEGACY = "gateway", "legacy"  # who answered the counter; the other one shadows
PROTECT_OPERATOR = "trigger:shadow"  # who sets the automatic protective action's rule
_answers = msgspec.json.Decoder(float_hook=Decimal)  # exact amounts, never floats
_envelope = msgspec.json.Decoder(dict[str, msgspec.Raw])


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """A settlement answered, waiting to be priced by the shadow."""

    answered_by: str
    tx: Transaction  # what the counter sent
    shadow_tx: Transaction  # the pre-settlement the shadow is asked
    req: Request
    institution: Institution
    body: bytes  # the counter's request as received
    answer: bytes  # the counter's answer
    received: dt.datetime


_PRICED_BY: dict[str, Transaction | None] = {}  # infno -> presettlement_of, filled on first use


def presettlement_of(tx: Transaction) -> Transaction | None:
    """The pre-settlement that prices what this transaction settles (itself, for one): the
    same kind of visit, asked without writing. None: not a settlement a shadow can price."""
    if tx.infno not in _PRICED_BY:
        _PRICED_BY[tx.infno] = _presettlement_of(tx)
    return _PRICED_BY[tx.infno]


def _presettlement_of(tx: Transaction) -> Transaction | None:
    if tx.klass is not TxClass.SETTLEMENT or tx.kind is None:
        return None
    if tx.deferral is Deferral.PRESETTLEMENT:
        return tx
    if tx.deferral is not Deferral.CLAIM:
        return None
    for other in TRANSACTIONS.values():
        # The same kind and the same request shape: the request can be asked as it is.
        if (
            other.kind is tx.kind
            and other.deferral is Deferral.PRESETTLEMENT
            and other.input is tx.input
        ):
            return other
    return None


def sampled(sample_bp: int, fixmedins_code: str, msgid: str) -> bool:
    """Whether this settlement is priced twice: by its msgid, so a retry goes as it went."""
    if sample_bp >= 10000:
        return True
    return zlib.crc32(f"{fixmedins_code}:{msgid}".encode()) % 10000 < sample_bp


# The bill's four parts a settlement declares as its pre-settlement answered them: the answering
# system's figures, which the shadow's pre-settlement computes itself and would check them
# against (found from outside: every settlement of an item the two systems price differently
# was refused at the shadow and counted a `refusal`, not that item's difference).
DECLARED_PARTS = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


def as_presettlement(body: bytes, infno: str) -> bytes:
    """The counter's envelope with the pre-settlement's infno and without the bill's parts it
    declares (DECLARED_PARTS); every other byte of every other field as it was sent (amounts
    are never re-encoded)."""
    envelope = _envelope.decode(body)
    envelope["infno"] = msgspec.Raw(msgspec.json.encode(infno))
    raw = envelope.get("input")
    if raw is not None:
        try:
            given = _object.decode(raw)
            data = _object.decode(given["data"])
        except (msgspec.DecodeError, KeyError):
            pass  # not the object shape (an input sent as a string): as it came
        else:
            if any(part in data for part in DECLARED_PARTS):
                kept = {k: v for k, v in data.items() if k not in DECLARED_PARTS}
                given["data"] = msgspec.Raw(msgspec.json.encode(kept))
                envelope["input"] = msgspec.Raw(msgspec.json.encode(given))
    return msgspec.json.encode(envelope)


class _Rollback(Exception):
    """Leaves the shadow pricing's transaction with nothing written."""


class Shadow:
    """The queue and workers of one gateway process's parallel run."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.config = gw.config.shadow
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=self.config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.mirror = mirror.Mirror(gw)  # the visits' encounter calls, so visits can be priced
        metrics.prime_shadow(
            (i.admdvs, i.fixmedins_code, i.fixmedins_type) for i in gw.snapshot.institutions
        )

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
        """An answer made (dispatch.ANSWERED): queued for the shadow when the plan says so.
        No I/O and no waiting."""
        if gw is not self.gw or tx.klass is not TxClass.SETTLEMENT:
            return  # (another gateway in this process: tests run two)
        # The settlement's own category: a category's rule (the protective action's
        # `institution:X:inpatient`) takes that category out of the run here as at the counter.
        decision = hook.decide(gw, tx, institution, received, hook.category_of(gw, tx, req))
        if decision is None:
            return
        shadow_tx = presettlement_of(tx)
        if shadow_tx is None:
            return
        if decision.action is Action.SHADOW and outcome.outcome is Result.OK:
            answered_by = GATEWAY
        elif decision.action is Action.ROUTE_LEGACY_SHADOW and outcome.outcome is Result.LEGACY:
            answered_by = LEGACY
        else:
            return  # not a parallel run here, or nothing newly priced (a retry, a refusal)
        if not sampled(self.config.sample_bp, req.fixmedins_code, req.msgid):
            return
        pending = Pending(
            answered_by, tx, shadow_tx, req, institution, body, outcome.body, received
        )
        try:
            self.queue.put_nowait(pending)
        except asyncio.QueueFull:
            metrics.SHADOW_FAILURES.labels(_shadow_of(answered_by), "dropped").inc()

    # ------------------------------------------------------------------------- the workers

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.config.workers)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            pending = await self.queue.get()
            try:
                await self.price(pending)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("shadow pricing failed", exc_info=True)
                metrics.SHADOW_FAILURES.labels(_shadow_of(pending.answered_by), "error").inc()
            finally:
                self.queue.task_done()

    async def price(self, p: Pending) -> Diagnosis | None:
        """Price one settlement at the shadow, compare, count and store; None when the shadow
        gave no answer (counted as its failure)."""
        body = p.body
        shadow = _shadow_of(p.answered_by)
        if p.tx.kind is not Kind.PHARMACY:
            # A visit's settlement: priced once the shadow holds the visit (mirrored), under
            # the shadow's number of it; a visit not mirrored whole is not compared.
            try:
                ids = await self.mirror.visit_map(
                    p.req.fixmedins_code, p.req, p.received, target=shadow
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                metrics.SHADOW_FAILURES.labels(shadow, "error").inc()
                return None
            if ids is None:
                metrics.SHADOW_FAILURES.labels(shadow, "not_mirrored").inc()
                return None
            body = mirror.mapped(body, p.req, ids)
        # After the visit's numbers: `mapped` rewrites the input the counter sent.
        body = as_presettlement(body, p.shadow_tx.infno)
        try:
            if p.answered_by == GATEWAY:
                shadowed = await hook.post_legacy(
                    self.gw,
                    body,
                    self.config.timeout_seconds,
                    infno=p.shadow_tx.infno,
                    fixmedins_code=p.req.fixmedins_code,
                    session=self._session,
                )
            else:
                shadowed = await self._price_here(p, body)
        except hook.LegacyDown as exc:
            metrics.SHADOW_FAILURES.labels(shadow, exc.kind).inc()
            return None
        except TimeoutError:
            metrics.SHADOW_FAILURES.labels(shadow, "timeout").inc()
            return None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            metrics.SHADOW_FAILURES.labels(shadow, "error").inc()
            return None
        answered_env = _decoded(p.answer)
        shadowed_env = _decoded(shadowed)
        if answered_env is None or shadowed_env is None:
            # Not an envelope: nothing to compare (the old system's proxy answered a page).
            metrics.SHADOW_FAILURES.labels(shadow, "error").inc()
            return None
        request_input = _decoded(p.req.input)
        items = items_of(request_input)
        if p.tx.kind is not Kind.PHARMACY:
            # A 2206/2303 answer carries no lines: the visit's lines are compared as the two
            # systems answered its mirrored uploads (a class A/B mapping then shows on its item).
            try:
                lines = await mirror.visit_lines(
                    self.gw, p.req.fixmedins_code, p.req, p.answered_by
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                lines = None
            if lines is not None:
                _with_lines(answered_env, lines.answered)
                _with_lines(shadowed_env, lines.shadowed)
                items |= lines.items
        diagnosis = compare(answered_env, shadowed_env, items)
        med_type = _med_type(answered_env, shadowed_env, request_input)
        category = CATEGORY_OF.get(med_type)
        category_label = category.value if category is not None else ""
        admdvs = p.institution.admdvs
        code = p.req.fixmedins_code
        metrics.SHADOW_COMPARED.labels(admdvs, code, category_label).inc()
        if diagnosis.differs:
            metrics.SHADOW_DIFFERING.labels(admdvs, code, category_label).inc()
            for cause in diagnosis.causes:
                metrics.SHADOW_CAUSES.labels(admdvs, category_label, str(cause)).inc()
        await self._store(p, shadowed, diagnosis, med_type, category_label)
        return diagnosis

    async def _price_here(self, p: Pending, body: bytes) -> bytes:
        """This gateway's pre-settlement of the request, in a transaction rolled back: whatever
        the handler notes (a visit's latest pre-settlement) is not kept either."""
        gw = self.gw
        limit = self.config.timeout_seconds
        answer = None
        try:
            req = decode_request(body)
            async with asyncio.timeout(limit), gw.pool.acquire(timeout=limit) as conn:
                with contextlib.suppress(_Rollback):
                    async with conn.transaction():
                        if p.answered_by == LEGACY:
                            # The old system's settlement of this request, or of a later one
                            # (a 2207 answered before its 2206 is priced), holds the lines
                            # here: found from outside, it refused every such pricing.
                            await legacy_settlements.set_aside_since(
                                conn,
                                fixmedins_code=p.req.fixmedins_code,
                                msgid=p.req.msgid,
                                since=p.received.astimezone(),
                            )
                        answer = await p.shadow_tx.handler(
                            Call(gw, req, conn, p.received, p.institution)
                        )
                        raise _Rollback
        except GatewayError as exc:
            return failure(gw.region, p.received, exc)  # a refusal is an answer to compare
        assert answer is not None
        return encode_response(
            region=gw.region, received=p.received, output=answer.output, warn_msg=answer.warn_msg
        )

    async def _store(
        self,
        p: Pending,
        shadowed: bytes,
        diagnosis: Diagnosis,
        med_type: str,
        category: str,
    ) -> None:
        differs = diagnosis.differs
        row = shadow_store.Comparison(
            answered_by=p.answered_by,
            fixmedins_code=p.req.fixmedins_code,
            admdvs=p.institution.admdvs,
            infno=p.tx.infno,
            shadow_infno=p.shadow_tx.infno,
            msgid=p.req.msgid,
            med_type=med_type,
            category=category,
            differs=differs,
            cause=None if diagnosis.cause is None else str(diagnosis.cause),
            item=diagnosis.item,
            request=_text(p.body) if differs else None,
            answer=_text(p.answer) if differs else None,
            shadow_answer=_text(shadowed) if differs else None,
            diagnosis=diagnosis.to_builtins() if differs else None,
            differences=tuple(
                (str(d.cause), d.place, d.item, d.field, d.answered, d.shadowed)
                for d in diagnosis.differences
            ),
        )
        try:
            async with self.gw.pool.acquire(timeout=self.config.timeout_seconds) as conn:
                await shadow_store.insert(conn, row)
                if differs and p.answered_by == GATEWAY and self.config.protect_action:
                    await self._protect(conn, p, category)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            # The metrics have it; the ledger's own breaker watches the ledger.
            log.warning("shadow comparison not stored", exc_info=True)

    async def _protect(self, conn: asyncpg.Connection, p: Pending, category: str) -> None:
        """The automatic protective action ([shadow] protect_*): a scope whose settlements
        answered here differ past the bound gets a plan rule for its settlements, set by
        trigger:shadow with the figures as its reason, audited like any change; a person
        clears it, and the count starts afresh from the clearing.

        The scope is the institution (`protect_scope`, the default) or its region, narrowed to
        the settlement's medical category with `protect_by_category` (counted per category,
        the rule `institution:X:inpatient`: only that category goes back to the old system)."""
        cfg = self.config
        if cfg.protect_scope == "region":
            by, key, scope = "admdvs", p.institution.admdvs, f"region:{p.institution.admdvs}"
        else:
            code = p.req.fixmedins_code
            by, key, scope = "fixmedins_code", code, f"institution:{code}"
        if cfg.protect_by_category:
            if not category:
                return  # a settlement of no known category counts toward no category's rule
            scope = f"{scope}:{category}"
        held = next(
            (r for r in self.gw.plan.rules if r.scope == scope and r.klass is TxClass.SETTLEMENT),
            None,
        )
        if held is not None and held.action is not Action.SHADOW:
            # Already under a rule of its own (this trigger's, or a person's). A `shadow` rule
            # at exactly this scope is the run being measured: the protective rule replaces it
            # (audited with it as `before`).
            return
        since = p.received.astimezone() - dt.timedelta(seconds=cfg.protect_window_seconds)
        bound = await shadow_store.past_bound(
            conn,
            by=by,
            key=key,
            category=category if cfg.protect_by_category else None,
            cleared_target=f"{scope}/{TxClass.SETTLEMENT}",
            since=since,
            min_compared=cfg.protect_min_compared,
            rate_bp=cfg.protect_rate_bp,
        )
        if bound is None:
            return
        reason = (
            f"自动触发：并行比对差异率超过{bp_text(cfg.protect_rate_bp)}"
            f"（{bound.differing}/{bound.compared}笔不一致，主要原因{bound.cause}），"
            f"按预案转原系统结算，核查后人工恢复"
        )
        log.warning(
            "parallel run trigger", extra={"fixmedins_code": p.req.fixmedins_code, "scope": scope}
        )
        await plan_store.set_rule(
            conn,
            scope=scope,
            klass=TxClass.SETTLEMENT,
            action=cfg.protect_action,
            reason=reason,
            operator=PROTECT_OPERATOR,
        )
        await self.gw.reload_plan(force=True)
        await self.gw.announce_plan_change()


def _shadow_of(answered_by: str) -> str:
    return GATEWAY if answered_by == LEGACY else LEGACY


def _decoded(raw: bytes) -> Any:
    try:
        value = _answers.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _with_lines(envelope: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """An answer without lines of its own given the visit's (a settlement's answer that
    lists its lines keeps them)."""
    output = envelope.get("output")
    if isinstance(output, dict) and not any(node in output for node in LINE_NODES):
        output["result"] = rows


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _med_type(answered: dict[str, Any], shadowed: dict[str, Any], request_input: Any) -> str:
    """The settlement's medical category code: from whichever answer settled, else the
    request (2206 data.med_type, 2101 druginfo.med_type)."""
    for env in (answered, shadowed):
        output = env.get("output")
        info = output.get("setlinfo") if isinstance(output, dict) else None
        if isinstance(info, dict) and info.get("med_type"):
            return str(info["med_type"])
    if isinstance(request_input, dict):
        for node in ("data", "druginfo"):
            part = request_input.get(node)
            if isinstance(part, dict) and part.get("med_type"):
                return str(part["med_type"])
    return ""


def install(shadow: Shadow) -> None:
    """Hand every answer of this process to the parallel run (its settlements to the pricing,
    its visits' encounter calls to the mirror), and start their workers."""
    if shadow.offer not in dispatch.ANSWERED:
        dispatch.ANSWERED.append(shadow.offer)
    shadow.start()
    mirror.install(shadow.mirror)


async def uninstall(shadow: Shadow) -> None:
    with contextlib.suppress(ValueError):
        dispatch.ANSWERED.remove(shadow.offer)
    await mirror.uninstall(shadow.mirror)
    await shadow.close()
