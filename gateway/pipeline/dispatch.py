"""From a decoded envelope to the answer bytes: the transaction table, idempotency, errors.

This is the one place a GatewayError becomes `infcode -1` + `err_msg`, and the one place the
msgid journal is consulted, so every transaction behaves the same on retries and failures: a
retry of an answered request gets its stored answer before the emergency plan, a breaker, the
legacy route or a deferral has any say.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import asyncpg

from adapters.national import deferral
from adapters.national.envelope import Request, decode_request, encode_response, fingerprint
from gateway.app.runtime import Gateway
from gateway.core.model import PHARMACY_TYPE, Institution
from gateway.emergency.breaker import loop_stalls
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.emergency.plan.rules import Decision, TxClass
from gateway.ledger import db, idempotency
from gateway.ledger.partitions import MAIN, Partition
from gateway.pipeline.grouped import Batches, Unread
from gateway.pipeline.ledger_waits import Wait
from gateway.pipeline.outcome import Outcome as Outcome
from gateway.pipeline.outcome import Result as Result
from gateway.pipeline.outcome import failure as failure
from gateway.pipeline.shared_doubts import IN_DOUBT
from gateway.protocol.errors import (
    BadRequest,
    Busy,
    GatewayError,
    IdentityRejected,
    LedgerDown,
    NotYetApplied,
    RuleRejected,
    Unavailable,
)
from gateway.protocol.transaction import (
    TRANSACTIONS,
    Call,
    Deferral,
    Kind,
    Mode,
    Prepare,
    Transaction,
    Undo,
)

log = logging.getLogger("gateway.pipeline.dispatch")


@dataclass(slots=True)
class Detour:
    """What the emergency plan does with a request instead of the normal path."""

    tx: Transaction | None = None  # run this handler instead (journaled when it writes)
    answer: bytes | None = None  # already answered (local journal, legacy system)
    outcome: Result = Result.DEFERRED
    mode: Mode = Mode.NORMAL  # handed to the handler's Call
    content_type: str = "application/json"
    # The answer is kept against the msgid of a writing request (the old system's, relayed):
    # a retry gets it whatever the plan says by then, and is never settled here a second time.
    keep: bool = False
    # What else is written with the kept answer, in its transaction, when it is the first kept
    # (the old system's settlement of a visit's lines, or its cancellation).
    kept: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    # The kept answer is another system's (the old one's); False for the plan's own.
    elsewhere: bool = True
    # An ERROR outcome's dependency timed out (metrics: the institution's errors by kind).
    timeout: bool = False


@dataclass(frozen=True, slots=True)
class PlanHook:
    """The emergency plan as dispatch sees it (gateway.emergency.hook installs it).

    `decide` (no I/O) names the action that takes this request off the normal path, or None.
    `apply` carries it out: a Detour, None for the normal path after all, or a GatewayError to
    refuse (nothing written). They are two steps because a writing request the plan would detour
    is first looked up in the msgid journals: a retry is answered as it was the first time,
    whatever the plan says now (docs/emergency.md, "Retries come first").
    """

    # The last argument: the ledger database holding the request's money (its breaker decides).
    decide: Callable[
        [Gateway, Transaction, Request, Institution, dt.datetime, str], Decision | None
    ]
    apply: Callable[
        [Decision, Gateway, Transaction, Request, Institution, bytes, dt.datetime],
        Awaitable[Detour | None],
    ]
    # Whether the request's path under the decision finds the msgid's earlier answer itself (a
    # refusal kept against it, whose keep hands back the key's answer; a transaction that claims
    # the msgid first), so the ledger's journal is not read before (no I/O).
    answers_retries: Callable[[Decision, Transaction], bool]


PLAN_HOOK: list[PlanHook] = []
# A retry while an earlier attempt of the same msgid may still commit: neither deferred (the
# patient would pay cash for a sale the ledger then settles) nor refused for good.
STILL_SETTLING_MSG = (
    "本报文ID的结算仍在医保结算数据库中等待完成，结果待定：请勿按现金收费，"
    "请稍后使用相同报文ID重试查询结果"
)
# The same for a write that settles nothing (a registration, an upload): no cash to speak of
# (found from outside: a 2201 was told not to take cash).
STILL_WORKING_MSG = "本报文ID的请求仍在医保结算数据库中等待完成，结果待定：请稍后使用相同报文ID重试"

# A retry of a message whose earlier attempt sent its COMMIT and had no reply
# (gateway.pipeline.attempts): only the ledger can tell, once it answers again.
IN_DOUBT_SETTLING_MSG = (
    "本报文ID的结算已提交医保结算数据库但未收到确认，结果须待数据库恢复后确认："
    "请勿按现金收费，请稍后使用相同报文ID重试查询结果"
)
IN_DOUBT_MSG = (
    "本报文ID的请求已提交医保结算数据库但未收到确认，结果须待数据库恢复后确认："
    "请稍后使用相同报文ID重试"
)


def _pending_words(infno: str, in_doubt: bool) -> str:
    """What the counter is told of a message an attempt of which may yet commit."""
    if in_doubt:
        return IN_DOUBT_SETTLING_MSG if settling(infno) else IN_DOUBT_MSG
    return STILL_SETTLING_MSG if settling(infno) else STILL_WORKING_MSG


def _still_at_work(gw: Gateway, req: Request, held: str | None = None) -> Unavailable:
    """The refusal of a message an earlier attempt of which may yet commit, in its own words
    (`held`: as another worker's file says, where that worker holds it)."""
    key = (req.fixmedins_code, req.msgid)
    gw.attempts.told_to_retry(key)
    in_doubt = held == IN_DOUBT or (held is None and gw.attempts.in_doubt(key))
    return Unavailable(_pending_words(req.infno, in_doubt))


# A timeout is counted against the ledger when the ledger had at least this share of the deadline
# (the rest being time the loop stood still).
LEDGER_SHARE_OF_A_TIMEOUT = 0.9
# Outcomes of calls that reached the ledger, for the breakers: (gw, fixmedins_code, ok, timeout,
# seconds, the ledger database's name, whether the call settles: a settlement-class write).
# Installed by gateway.emergency.hook too.
OBSERVERS: list[Callable[[Gateway, str, bool, bool, float, str, bool], None]] = []


# Called with every answer made for a known transaction of a known institution (the table's
# entry, not a detour's), before it goes back: (gw, tx, req, institution, body, outcome,
# received). Must neither block nor raise: the parallel run enqueues its shadow pricing here
# (gateway.emergency.shadow) and the counter's answer never waits for it.
ANSWERED: list[
    Callable[[Gateway, Transaction, Request, Institution, bytes, Outcome, dt.datetime], None]
] = []


def _observe(
    gw: Gateway,
    code: str,
    ok: bool,
    timeout: bool,
    started: float,
    ledger: str = MAIN,
    settles: bool = False,
) -> None:
    """Report a ledger call to the breakers, without the time the event loop stood still.

    A request that waited behind a blocked loop (a bug, a runaway parse) looks slow, or times out,
    through no fault of the ledger; counting that against it would put every institution into
    degraded mode because of one. A timeout is the ledger's only if it would have happened
    without the stall.
    """
    now = time.perf_counter()
    seconds = now - started
    stalled = loop_stalls().stalled(started, now)
    if stalled > 0.0:
        seconds = max(0.0, seconds - stalled)
        if timeout and seconds < LEDGER_SHARE_OF_A_TIMEOUT * gw.config.deadlines.call_seconds:
            return
    for observer in OBSERVERS:
        observer(gw, code, ok, timeout, seconds, ledger, settles)


def _settles(tx: Transaction | None) -> bool:
    """A settlement-class write (a settlement, its cancellation): what the ledger breaker's run
    of failed writes counts. Registrations and uploads write other tables, and answer while the
    settlements' are hung."""
    return tx is not None and tx.writes and tx.klass is TxClass.SETTLEMENT


def _fail(gw: Gateway, received: dt.datetime, exc: GatewayError) -> bytes:
    return failure(gw.region, received, exc)


def settling(infno: str) -> bool:
    """Whether a settlement query (5203) tells the outcome of this transaction: the words of
    a msgid used again with another body (found from outside: a 9101 upload was sent to 5203)."""
    tx = TRANSACTIONS.get(infno)
    return tx is None or tx.klass is TxClass.SETTLEMENT


def overdue(gw: Gateway, infno: str, msgid: str = "", code: str = "") -> Outcome:
    """The answer to a request still stuck past its deadline; it counts as a dependency timeout."""
    settles = _settles(TRANSACTIONS.get(infno))
    _observe(
        gw, "", False, True, time.perf_counter() - gw.config.deadlines.call_seconds, MAIN, settles
    )
    words = "医保结算服务响应超时，请使用相同报文ID重试；如持续失败请按应急预案处理"
    exc = Unavailable(_retry_words(gw, code, msgid, infno, words))
    # Counted against the institution's interface, as every failure the till got (found from
    # outside: a hung ledger showed the 接口超时 alerts half the failures).
    return Outcome(
        _fail(gw, dt.datetime.now(), exc), infno, Result.ERROR, msgid, code, timeout=True
    )


def released(gw: Gateway, infno: str, msgid: str = "", code: str = "") -> Outcome:
    """The answer to a request waiting on a ledger whose breaker opened: as a deadline's, at
    once, and not counted again against the breaker that has just judged it. Its edge ends its
    work as a deadline would (gateway.app.server), so that nothing of it commits later beside the
    claim its retry becomes."""
    words = "医保结算服务暂时不可用（数据库无响应），已启用应急预案，请立即使用相同报文ID重试"
    if settling(infno):
        # Its COMMIT may be on its way: this answer is no bill to take in cash; the retry's
        # is (a claim), or says the outcome is pending.
        words = "医保结算服务暂时不可用（数据库无响应），已启用应急预案：本次请勿按现金收费，请立即使用相同报文ID重试"
    # Its own attempt is still at work until the cancel reaches it: only a doubt left by an
    # earlier one changes the words.
    exc = Unavailable(_retry_words(gw, code, msgid, infno, words, at_work=False))
    # The ledger gave no answer in time: the institution's timeout, as a deadline's.
    return Outcome(
        _fail(gw, dt.datetime.now(), exc), infno, Result.ERROR, msgid, code, timeout=True
    )


def _retry_words(
    gw: Gateway, code: str, msgid: str, infno: str, words: str, *, at_work: bool = True
) -> str:
    """A dependency's "retry the same msgid", or, where an attempt of the message may yet
    commit, words that say its outcome is pending and, for a settlement, not to take cash.
    Found from outside: a sale whose COMMIT hung was answered "…如持续失败请按应急预案处理" at
    each deadline, which a pharmacy reads as "take the bill in cash", and then committed."""
    if not msgid:
        return words
    key = (code, msgid)
    if gw.attempts.in_doubt(key):
        gw.attempts.told_to_retry(key)
        return IN_DOUBT_SETTLING_MSG if settling(infno) else IN_DOUBT_MSG
    if at_work and gw.attempts.running(key):
        # The retry may reach another worker while this attempt is still at work.
        gw.attempts.told_to_retry(key)
        if settling(infno):
            return STILL_SETTLING_MSG
    elif (held := gw.attempts.elsewhere(key)) is not None:
        # Another worker of the host holds an attempt of it: its words, not "take cash".
        return _pending_words(infno, held == IN_DOUBT)
    return words


def refused(
    gw: Gateway, exc: GatewayError, infno: str, outcome: Result = Result.REJECTED
) -> Outcome:
    """The answer to a request refused before it is read (a bad signature, overload)."""
    return Outcome(_fail(gw, dt.datetime.now(), exc), infno, outcome)


async def handle(
    gw: Gateway,
    body: bytes,
    path_infno: str | None = None,
    authenticated: str | None = None,
    wait: Wait | None = None,
) -> Outcome:
    """Answer one request; never raises for anything a client can send.

    `authenticated` is the institution the request's signature proved, when signing is on;
    `wait`, the request's place at the edge, told which ledger it goes to (its edge answers it
    at once if that ledger's breaker opens meanwhile: gateway.pipeline.ledger_waits).
    The steps: decode, admit (who, what, rate), the emergency plan's say (after the msgid
    journal for a retry), then the write (grouped or single) or the read; every failure is
    mapped to its envelope in `_failed`.
    """
    received = dt.datetime.now()
    received_clock = time.perf_counter()
    try:
        req = decode_request(body, path_infno)
    except GatewayError as exc:
        return Outcome(_fail(gw, received, exc), path_infno or "", Result.REJECTED)
    terminal = req.dev_no or req.opter or "-"
    ledgers = gw.ledgers
    ledger = ledgers.main
    try:
        tx, institution = await _admit(gw, req, terminal, authenticated)
        # Catalog and reconciliation work is the institution's, kept in the main database (a
        # reconciliation reads the other databases itself); the rest is a person's money.
        if ledgers.split and tx.klass not in (TxClass.CATALOG, TxClass.RECONCILE):
            ledger = await _ledger_of(gw, tx, req)
        refusal = _not_its_kind(institution, tx, req)
        if refusal is not None:
            # After the msgid journal, as the plan's refusals: a retry of a message answered
            # before the refusal existed gets its answer, not the refusal.
            earlier = (
                await _earlier_answer(gw, req, fingerprint(req), ledger) if tx.writes else None
            )
            if earlier is None:
                raise refusal
            routed: Outcome | tuple[Transaction, Mode] = earlier
        elif tx.writes and (held := await _held_in_journals(gw, req)):
            # Claims not in the ledger yet: this process's own (appended while a drain ran),
            # a dead process's, a live sibling's. Found from outside: a restarted gateway, and a
            # worker started beside a sibling still deferring, settled such retries for real.
            routed = held
        else:
            routed = await _plan(gw, tx, req, institution, body, received, ledger)
        if isinstance(routed, Outcome):
            outcome = routed
        else:
            run, mode = routed
            try:
                _wait_for_journaled(gw, tx, req)
            except NotYetApplied:
                # A retry of a message the ledger answered gets its stored answer, whatever a
                # journal holds now; only a new one waits for the drain.
                earlier = (
                    await _earlier_answer(gw, req, fingerprint(req), ledger) if tx.writes else None
                )
                if earlier is None:
                    raise
                routed = earlier
            if isinstance(routed, Outcome):
                outcome = routed
            elif run.writes:
                if wait is not None:
                    wait.ledger = ledger.name  # its edge answers it if that ledger's breaker opens
                    wait.code, wait.infno, wait.msgid = req.fixmedins_code, req.infno, req.msgid
                outcome = await _write(gw, run, req, institution, body, received, mode, ledger)
            else:
                if wait is not None:
                    wait.ledger = ledger.name
                    wait.code, wait.infno, wait.msgid = req.fixmedins_code, req.infno, req.msgid
                outcome = await _read(gw, run, req, institution, received, mode, ledger)
        outcome.terminal = terminal
    except Exception as exc:
        return _failed(gw, req, terminal, exc, received, received_clock, ledger.name)
    for answered in ANSWERED:
        try:
            answered(gw, tx, req, institution, body, outcome, received)
        except Exception:  # an observer's bug must not cost the counter its answer
            log.exception("answer observer failed", extra={"infno": req.infno})
    return outcome


async def _ledger_of(gw: Gateway, tx: Transaction, req: Request) -> Partition:
    """The database of a split ledger that holds this request's money: that of the earlier
    transaction it acts on, when it names one the journals hold; else its region's or person's."""
    wait = gw.config.deadlines.call_seconds
    if tx.acts_on is not None:
        original = tx.acts_on(req)
        if original:
            found = await gw.ledgers.holding(req.fixmedins_code, original, wait)
            if found is not None:
                return found
    return await gw.ledgers.of_request(req, wait)


# The visits a retail pharmacy does not hold: its sales are 2101/2102 (protocol §2.0).
_VISITS = {Kind.OUTPATIENT: "门诊", Kind.INPATIENT: "住院"}


def _not_its_kind(institution: Institution, tx: Transaction, req: Request) -> RuleRejected | None:
    """The refusal of a transaction the institution's kind does not hold, or None."""
    if (
        institution.fixmedins_type == PHARMACY_TYPE
        and tx.kind in _VISITS
        # A cancellation's handler names the transaction that cancels a pharmacy's sale.
        and tx.undo is not Undo.CANCELLATION
    ):
        # Found from outside: a pharmacy admitted, discharged and settled a stay (and settled
        # a clinic visit), the pool fund paying what its own sales (2102) never pay.
        return RuleRejected(
            f"{req.fixmedins_code}为定点零售药店，不能办理{_VISITS[tx.kind]}业务（{req.infno}）；"
            "药店购药请使用药店预结算和结算（2101、2102）"
        )
    return None


async def _admit(
    gw: Gateway, req: Request, terminal: str, authenticated: str | None
) -> tuple[Transaction, Institution]:
    """Who is asking for what: the signed institution's own request, a known transaction, a
    known institution, within its rate limits."""
    if authenticated is not None and req.fixmedins_code != authenticated:
        raise BadRequest(
            f"报文机构编号{req.fixmedins_code}与认证身份{authenticated}不一致，不能代其他机构办理业务"
        )
    tx = TRANSACTIONS.get(req.infno)
    if tx is None:
        raise BadRequest(f"不支持的交易编号{req.infno}")
    institution = gw.snapshot.institution(req.fixmedins_code)
    if institution is None:
        raise BadRequest(f"定点医药机构编号{req.fixmedins_code}未登记，请核对机构编号")
    if gw.catalog_versions.wanted(req.fixmedins_code) > gw.snapshot.version:
        # Another worker of the host answered a change of this institution's catalog that this
        # one's snapshot does not hold yet (gateway.app.catalog_versions).
        await gw.catch_up_catalog(req.fixmedins_code)
        institution = gw.snapshot.institution(req.fixmedins_code) or institution
    # The limiter stays ahead of the journal look-up: its refusal says "retry the same msgid",
    # which is true for a retry too, and a retry storm must not reach the ledger it protects.
    await gw.limiter.admit(req.fixmedins_code, terminal)
    return tx, institution


async def _plan(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    body: bytes,
    received: dt.datetime,
    ledger: Partition,
) -> Outcome | tuple[Transaction, Mode]:
    """The emergency plan's say: an answer of its own, or the transaction (perhaps its
    deferred form) and the mode to run it in. A writing request the plan would take off the
    normal path is first looked up in the msgid journals: a retry gets its first answer."""
    mode = Mode.NORMAL
    for hook in PLAN_HOOK:
        decision = hook.decide(gw, tx, req, institution, received, ledger.name)
        if decision is None:
            continue
        if not tx.writes:
            taken = await _detour(
                hook, decision, gw, tx, req, institution, body, received, b"", ledger
            )
        else:
            key = (req.fixmedins_code, req.msgid)
            body_hash = fingerprint(req)
            if hook.answers_retries(decision, tx):
                # Its own path claims the msgid in the ledger before anything else (a kept
                # refusal, a claim deferred into the ledger), waiting for an attempt that holds
                # it: a copy racing it, or an attempt still at work, is answered there.
                taken = _answered_here(gw, req, body_hash) or await _detour(
                    hook, decision, gw, tx, req, institution, body, received, body_hash, ledger
                )
            else:
                if gw.attempts.running(key) and not gw.attempts.in_doubt(key):
                    # An earlier attempt of this message is still at work here and may yet
                    # commit (gateway.pipeline.attempts): not a claim in the journal, nor a
                    # forward, beside it.
                    raise _still_at_work(gw, req)
                earlier = await _earlier_answer(gw, req, body_hash, ledger)
                if earlier is not None:
                    gw.attempts.resolved(key)  # its COMMIT, if in doubt, landed
                    return earlier
                if gw.attempts.running(key):
                    # Another copy got past its look-up first, and is at work.
                    raise _still_at_work(gw, req)
                held = gw.attempts.elsewhere(key)
                if held is not None:
                    # Another worker of the host holds it at work or in doubt (found from
                    # outside: a till's retry reached another worker and was taken as an
                    # all-cash claim while the first worker's COMMIT landed).
                    raise _still_at_work(gw, req, held)
                # At work while it is forwarded or journaled: another attempt of the message
                # here is told to retry meanwhile (found from outside: under `route_legacy`,
                # copies of one sale sent together were each forwarded to the old system, which
                # settled each).
                gw.attempts.begin(key)
                try:
                    taken = await _detour(
                        hook, decision, gw, tx, req, institution, body, received, body_hash, ledger
                    )
                finally:
                    gw.attempts.end(key)
        if taken is None:
            continue
        if isinstance(taken, Outcome):
            return taken
        detour = taken
        tx = detour.tx or tx
        mode = detour.mode
    return tx, mode


async def _detour(
    hook: PlanHook,
    decision: Decision,
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    body: bytes,
    received: dt.datetime,
    body_hash: bytes,
    ledger: Partition,
) -> Outcome | Detour | None:
    """The plan's detour of this request: its own answer (kept against the msgid where it is
    to be), or the transaction and mode to run (a Detour without an answer); None: none."""
    detour = await hook.apply(decision, gw, tx, req, institution, body, received)
    if detour is None or detour.answer is None:
        return detour
    if detour.keep and tx.writes:
        first = await _keep(
            gw,
            req,
            body_hash,
            detour.answer,
            ledger,
            detour.kept,
            elsewhere=detour.elsewhere,
        )
        if first is not None:
            # An earlier attempt of the same msgid committed first (it held the key until
            # then), or answered long before: its answer, not the plan's.
            return _replayed(req, first, body_hash)
    return Outcome(
        detour.answer,
        req.infno,
        detour.outcome,
        req.msgid,
        req.fixmedins_code,
        timeout=detour.timeout,
        content_type=detour.content_type,
    )


async def _keep(
    gw: Gateway,
    req: Request,
    body_hash: bytes,
    answer: bytes,
    ledger: Partition,
    kept: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    *,
    elsewhere: bool = True,
) -> idempotency.Stored | None:
    """Keep an answer the plan gave (the old system's, or its own refusal that told the counter
    to take the bill in cash) against the msgid, as a settlement's is kept; the first answer
    kept wins, and is returned when it is not this one. With the ledger out of reach it is not
    kept (logged): the plan routes there while its breaker is open, and the old system answers
    a retry."""
    infcode = 0 if idempotency.refusal_of(answer) is None else -1
    earlier: idempotency.Stored | None = None
    reads = gw.reads.get(ledger.name) if kept is None else None
    if reads is not None:
        # With nothing else to write beside it, in a batch: one statement and one commit for
        # every refusal waiting (gateway.pipeline.group_read).
        one = idempotency.Kept(
            req.fixmedins_code, req.msgid, req.infno, body_hash, answer, infcode, elsewhere
        )
        expires = asyncio.get_running_loop().time() + gw.config.deadlines.call_seconds
        try:
            return await reads.keep(one, expires)
        except Unread:
            pass  # the batch failed whole: kept alone below
        except TimeoutError:
            _not_kept(req)
            return None
    try:
        async with (
            db.leased(ledger.pool, gw.config.deadlines.call_seconds) as conn,
            conn.transaction(),
        ):
            fresh = await idempotency.keep_answer(
                conn,
                req.fixmedins_code,
                req.msgid,
                req.infno,
                body_hash,
                answer,
                infcode,
                elsewhere=elsewhere,
            )
            if fresh and kept is not None:
                await kept(conn)
                gw.ledger_claims.clear()  # lines held elsewhere: pre-settlements read them
            if not fresh:
                earlier = await idempotency.lookup(conn, req.fixmedins_code, req.msgid)
    except (*db.UNAVAILABLE, asyncpg.PostgresError):
        _not_kept(req)
    return earlier


def _not_kept(req: Request) -> None:
    log.warning(
        "answer of the plan not kept",
        extra={"infno": req.infno, "msgid": req.msgid, "fixmedins_code": req.fixmedins_code},
    )


async def _write(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    body: bytes,
    received: dt.datetime,
    mode: Mode,
    ledger: Partition,
) -> Outcome:
    """A writing transaction, journaled by msgid: in a group commit when it has a grouped form,
    else on its own transaction. Past the deadline it is abandoned (rolled back, or committed
    with its answer journaled); either way the client's retry of the same msgid settles it."""
    deadline = gw.config.deadlines.call_seconds
    expires = asyncio.get_running_loop().time() + deadline
    started = time.perf_counter()
    code = req.fixmedins_code
    body_hash = fingerprint(req)
    outcome = None
    # Grouped in a deferring mode only where the plan's detour gave a grouped form of its own
    # (a pharmacy's deferred claim): a self-pay visit must not take the settlement's.
    grouped_here = mode is Mode.NORMAL or (mode is Mode.DEFERRED and tx.grouped is not None)
    group = gw.groups.get(ledger.name) if grouped_here else None
    attempts, key = gw.attempts, (code, req.msgid)
    attempts.begin(key)
    try:
        if tx.grouped is not None and group is not None:
            outcome = await _grouped(
                group, tx.grouped, gw, req, institution, body_hash, received, expires
            )
        if outcome is None:
            async with gw.shares.turn(code, expires), asyncio.timeout_at(expires):
                outcome = await _journaled(
                    gw, tx, req, institution, body_hash, received, mode, ledger
                )
    finally:
        attempts.end(key)
    attempts.resolved(key)  # the ledger answered it: no earlier attempt's COMMIT is in doubt
    _observe(gw, code, True, False, started, ledger.name, _settles(tx))
    if outcome.outcome is Result.OK:
        # Committed with its answer: a retry while the ledger is away gets it from here, a claim
        # the plan deferred into the ledger as a settlement (found from outside: a claim's retry
        # in a later outage was made a claim again, its balc and times rebuilt).
        gw.recent.remember(code, req.msgid, body_hash, outcome.body)
        if mode is Mode.DEFERRED:
            outcome.outcome = Result.DEFERRED
    return outcome


async def _read(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    received: dt.datetime,
    mode: Mode,
    ledger: Partition,
) -> Outcome:
    """A transaction that changes nothing: its handler on a pooled connection."""
    deadline = gw.config.deadlines.call_seconds
    expires = asyncio.get_running_loop().time() + deadline
    started = time.perf_counter()
    code = req.fixmedins_code
    reads = gw.reads.get(ledger.name) if mode is Mode.NORMAL else None
    if tx.previewed is not None and reads is not None:
        job = tx.previewed(gw, req, institution, received)
        built = None if job is None else await reads.preview(job, expires)
        if built is not None:
            _observe(gw, code, True, False, started, ledger.name)
            out = encode_response(
                region=gw.region, received=received, output=built.output, warn_msg=built.warn_msg
            )
            return Outcome(out, req.infno, Result.OK, req.msgid, code)
    async with (
        gw.shares.turn(code, expires),
        asyncio.timeout_at(expires),
        db.leased(ledger.pool, deadline) as conn,
    ):
        answer = await tx.handler(Call(gw, req, conn, received, institution, mode, ledger.name))
    _observe(gw, code, True, False, started, ledger.name)
    if answer.raw is not None:
        return Outcome(
            answer.raw,
            req.infno,
            Result.OK,
            req.msgid,
            code,
            content_type="application/octet-stream",
        )
    out = encode_response(
        region=gw.region, received=received, output=answer.output, warn_msg=answer.warn_msg
    )
    return Outcome(out, req.infno, Result.OK, req.msgid, code)


def _failed(
    gw: Gateway,
    req: Request,
    terminal: str,
    exc: Exception,
    received: dt.datetime,
    received_clock: float,
    ledger: str,
) -> Outcome:
    """Every failure in its envelope: a refusal as the clerk's message, busy as busy, a
    dependency's failure as "unavailable, retry the same msgid", a bug as an internal error
    (logged) — never an exception out of the HTTP layer."""
    labels = {"infno": req.infno, "msgid": req.msgid, "fixmedins_code": req.fixmedins_code}
    code = req.fixmedins_code
    if isinstance(exc, Busy):
        return Outcome(_fail(gw, received, exc), req.infno, Result.BUSY, req.msgid, code, terminal)
    if isinstance(exc, LedgerDown) and exc.ledger:
        # Another region's database, named: its breaker counts it, not this request's ledger's.
        log.error("ledger database unavailable", exc_info=exc.__cause__, extra=labels)
        _observe(gw, code, False, exc.timeout, received_clock, exc.ledger, False)
    if isinstance(exc, GatewayError):
        return Outcome(
            _fail(gw, received, exc),
            req.infno,
            Result.ERROR if exc.counts_as_error else Result.REJECTED,
            req.msgid,
            code,
            terminal,
            identity_failure=isinstance(exc, IdentityRejected),
        )
    if isinstance(exc, db.UNAVAILABLE):
        log.error("dependency failure", exc_info=exc, extra=labels)
        settles = _settles(TRANSACTIONS.get(req.infno))
        _observe(gw, code, False, isinstance(exc, TimeoutError), received_clock, ledger, settles)
        # "The same msgid": found from outside, a clerk told only "retry later" may send a new
        # msgid, and a request that did commit would then be paid twice.
        down = Unavailable(
            _retry_words(
                gw,
                code,
                req.msgid,
                req.infno,
                "医保结算服务暂时不可用，请稍后使用相同报文ID重试；如持续失败请按应急预案处理",
            )
        )
        return Outcome(
            _fail(gw, received, down),
            req.infno,
            Result.ERROR,
            req.msgid,
            code,
            terminal,
            timeout=isinstance(exc, TimeoutError),
        )
    # A bug must still answer in the envelope: the counter sees a clear message, ops the log.
    log.error("unexpected failure", exc_info=exc, extra=labels)
    if gw.snapshot.institution(code) is not None:
        # The institution's failure for its trigger, as its timeouts are (found from outside:
        # a database trigger refusing one pharmacy's settlements failed 192 of 192 sales and no
        # rule was set); not the ledger's, whose breaker counts the dependency's failures only.
        gw.triggers.record(code, False, False, time.perf_counter() - received_clock)
    bug = Unavailable("医保结算服务内部错误，交易未生效，请稍后重试")
    return Outcome(_fail(gw, received, bug), req.infno, Result.ERROR, req.msgid, code, terminal)


async def _held_in_journals(gw: Gateway, req: Request) -> Outcome | None:
    """The answer a local journal holds for this msgid, its own or a sibling's segment's.
    While another process's segment is in the directory (an outage, or just after one), the
    segments are read up to now first: a sibling journals a claim before it answers, so the
    till's retry, wherever it lands, finds it (found from outside: read every half second by
    the watcher, whose sweeps took seconds, a retry 2 s after its claim was settled for real by
    the worker beside it). Otherwise nothing is read: a bool and a stat of the directory."""
    journal = gw.journal
    if journal.siblings or journal.listing_changed():
        await asyncio.to_thread(journal.adopt_siblings)
    if not journal.holds_anything:
        return None
    return _answered_here(gw, req, fingerprint(req))


def _wait_for_journaled(gw: Gateway, tx: Transaction, req: Request) -> None:
    """Refuse, to be retried, a request to the ledger on a visit, a claim or a message that a
    journal segment still holds calls or claims of (this process's, just after an outage, or a
    sibling's): without them the ledger would settle the visit short, not find the claim, price
    lines a claim holds, or bar a claim's message as never received. Found from outside: beside
    a worker still deferring, a 2207 on a visit whose 2203/2204 that worker had journaled was
    refused "no fees", the withdrawal of its journaled claim "not found", a 5203 of it "no
    settlement", and a 2601 of its message was taken as of a message never received (the claim
    then failed at the drain, its cash never reimbursed). Visits numbered under the plan wait
    in the ledger's own way (encounters.NotYetApplied)."""
    journal = gw.journal
    if not journal.holds_anything and not journal.names_anything:
        return
    code = req.fixmedins_code
    if tx.acts_on is not None:
        original = tx.acts_on(req)
        if original and journal.answered(code, original) is not None:
            raise NotYetApplied(
                f"原报文{original}为数据库中断期间暂存的业务，尚未补录入账，"
                "请稍后使用相同报文ID重试"
            )
    if not journal.names_anything:
        return
    if tx.deferral is Deferral.CANCEL_CLAIM:
        setl_id, visit, _ = deferral.withdrawal_ref(req)
    else:
        setl_id, visit = deferral.call_settlement(req), deferral.call_visit(req)
    if setl_id and journal.pending(code, (setl_id,)):
        raise NotYetApplied(
            f"暂存结算{setl_id}为数据库中断期间暂存的业务，尚未补录入账，请稍后使用相同报文ID重试"
        )
    provisional = visit.startswith(PROVISIONAL_PREFIX)
    if visit and not provisional and journal.pending(req.fixmedins_code, (visit,)):
        raise NotYetApplied(
            f"就诊ID{visit}尚有数据库中断期间暂存的业务（就诊信息、费用明细或结算）未补录入账，"
            "请稍后使用相同报文ID重试"
        )


def _answered_here(gw: Gateway, req: Request, body_hash: bytes) -> Outcome | None:
    """The answer this msgid got that this process holds: a claim its local journal deferred
    while the ledger was away (not in the ledger until drained), or an answer it gave lately."""
    code, msgid = req.fixmedins_code, req.msgid
    held = gw.journal.answered(code, msgid)
    stored = idempotency.Stored(*held) if held is not None else gw.recent.answered(code, msgid)
    return None if stored is None else _replayed(req, stored, body_hash)


def _replayed(req: Request, stored: idempotency.Stored, body_hash: bytes) -> Outcome:
    """The answer a msgid already has, given again (or refused, for another body)."""
    return Outcome(
        idempotency.replay(stored, body_hash, req.msgid, settling(req.infno)),
        req.infno,
        replay_result(stored),
        req.msgid,
        req.fixmedins_code,
    )


def replay_result(stored: idempotency.Stored) -> Result:
    """What answering from the journal is, for the metrics and the access log: a replay, but
    for a 2601's tombstone, which refuses a late original the client is sending for the first
    time (found from outside: logged and counted as a replay)."""
    return Result.REJECTED if stored.tombstone else Result.REPLAYED


async def _earlier_answer(
    gw: Gateway, req: Request, body_hash: bytes, ledger: Partition
) -> Outcome | None:
    """The answer this msgid already got, looked up only when the plan is about to answer it
    otherwise: the normal path claims a fresh msgid in one round trip and finds a retry then.

    The local journal (claims deferred by this process while the ledger was away) and the answers
    this process gave from the ledger lately first, then the ledger's msgid journal. While the
    ledger's breaker is open the look-up gets a short budget and is skipped when the last probe
    failed; unreachable, what this process holds is all there is, so a request the ledger
    acknowledged through another process, or long before, can be deferred a second time. The
    drain then files that claim as failed instead of settling it twice
    (gateway.emergency.deferred.replay).
    """
    held = _answered_here(gw, req, body_hash)
    if held is not None:
        return held
    code, msgid = req.fixmedins_code, req.msgid
    breaker = gw.ledger_breaker(ledger.name)
    loop = asyncio.get_running_loop()
    if not breaker.is_open:
        budget = gw.config.deadlines.call_seconds
        expires = loop.time() + budget
        found = await _answered(gw, code, msgid, expires, ledger)
        if found is None and await _held_open(gw, req, body_hash, ledger, expires):
            raise _still_at_work(gw, req)
    elif breaker.probe_failed:
        return None
    else:
        budget = gw.config.journal.ledger_lookup_seconds
        expires = loop.time() + budget
        pending = False
        try:
            async with (
                gw.shares.turn(code, expires),
                asyncio.timeout_at(expires),
                db.leased(ledger.pool, budget) as conn,
            ):
                found = await idempotency.lookup(conn, code, msgid)
                if found is None:
                    # The ledger answers but its breaker is open: commits may be what hangs (a
                    # synchronous standby lost), an earlier attempt still waiting on its own.
                    pending = await idempotency.held_by_another(
                        conn, code, msgid, req.infno, body_hash
                    )
        except (*db.UNAVAILABLE, asyncpg.PostgresError, Busy):
            # Busy: the institution's connections are all held by calls the outage hung; the
            # look-up is the plan's best effort, not a reason to turn the till away (found from
            # outside: right after the breaker opened, retries were told the institution was
            # too busy, and protected only after 10 s).
            return None
        if pending:
            raise _still_at_work(gw, req)
    return None if found is None else _replayed(req, found, body_hash)


async def _held_open(
    gw: Gateway, req: Request, body_hash: bytes, ledger: Partition, expires: float
) -> bool:
    """Whether a transaction still open holds this msgid's key in the ledger: an attempt at work
    in another process (this one's are gateway.pipeline.attempts'). Found from outside: under
    `route_legacy`, a retry sent to a second worker while the first attempt waited on a lock
    there was forwarded to the old system, which settled it, and the first attempt then
    committed here too: the sale settled in both systems."""
    code = req.fixmedins_code
    async with (
        gw.shares.turn(code, expires),
        asyncio.timeout_at(expires),
        db.leased(ledger.pool, gw.config.deadlines.call_seconds) as conn,
    ):
        return await idempotency.held_by_another(conn, code, req.msgid, req.infno, body_hash)


async def _answered(
    gw: Gateway, code: str, msgid: str, expires: float, ledger: Partition
) -> idempotency.Stored | None:
    """The msgid journal's answer: in a group read's batch, or alone when there is none or the
    batch failed."""
    reads = gw.reads.get(ledger.name)
    if reads is not None:
        try:
            return await reads.answer(code, msgid, expires)
        except Unread:
            pass
    async with (
        gw.shares.turn(code, expires),
        asyncio.timeout_at(expires),
        db.leased(ledger.pool, gw.config.deadlines.call_seconds) as conn,
    ):
        return await idempotency.lookup(conn, code, msgid)


async def _grouped(
    group: Batches,
    prepare: Prepare,
    gw: Gateway,
    req: Request,
    institution: Institution,
    body_hash: bytes,
    received: dt.datetime,
    expires: float,
) -> Outcome | None:
    """The request through the group commit; None: the single path answers it."""
    try:
        job = prepare(gw, req, institution, received)
    except GatewayError:
        return None  # refused before the ledger: the single path journals the refusal
    if job is None:
        return None
    return await group.submit(req, body_hash, received, job, expires, gw.attempts)


class _Taken(Exception):
    """Another request with the same msgid committed first."""


async def _journaled(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    body_hash: bytes,
    received: dt.datetime,
    mode: Mode,
    ledger: Partition,
) -> Outcome:
    code, msgid = req.fixmedins_code, req.msgid
    # Leased: a connection whose query the deadline cancels is dropped at once instead of
    # waiting for the server to confirm the cancel (forever on a dead network).
    async with db.leased(ledger.pool, gw.config.deadlines.call_seconds) as conn:
        # No look-up first: a fresh msgid (the common case) is claimed in one round trip, and a
        # retry finds its key taken and is answered from the journal below.
        key = (code, msgid)
        try:
            async with db.committing(
                conn, partial(gw.attempts.committing, key), partial(gw.attempts.committed, key)
            ):
                if not await idempotency.claim(conn, code, msgid, req.infno, body_hash):
                    raise _Taken
                answer = await tx.handler(
                    Call(gw, req, conn, received, institution, mode, ledger.name)
                )
                out = encode_response(
                    region=gw.region,
                    received=received,
                    output=answer.output,
                    warn_msg=answer.warn_msg,
                )
                await idempotency.settle_answer(conn, code, msgid, out, 0)
            if answer.catalog_changed:
                # Committed: this process sees it at once, the others on the announcement
                # (Redis) or within a poll (≤ 1 s).
                await gw.refresh_catalog()
                gw.catalog_changed(code)  # the host's other workers, before the answer
                await gw.announce_catalog_change()
            return Outcome(
                out, req.infno, Result.OK, msgid, code, paid=answer.paid, mismatch=answer.mismatch
            )
        except _Taken:
            stored = await idempotency.lookup(conn, code, msgid)
            if stored is None:  # the other request rolled back after all: let the client retry
                raise Unavailable("同一报文ID的交易正在处理中，请稍后重试") from None
            return Outcome(
                idempotency.replay(stored, body_hash, msgid, settling(req.infno)),
                req.infno,
                replay_result(stored),
                msgid,
                code,
            )
        except GatewayError as exc:
            if exc.retryable:
                raise
            out = _fail(gw, received, exc)
            # The business transaction rolled back; only the refusal is kept, for replays.
            earlier = await idempotency.store_failure(conn, code, msgid, req.infno, body_hash, out)
            if earlier is not None:
                return Outcome(
                    idempotency.replay(earlier, body_hash, msgid, settling(req.infno)),
                    req.infno,
                    replay_result(earlier),
                    msgid,
                    code,
                )
            return Outcome(
                out,
                req.infno,
                Result.REJECTED,
                msgid,
                code,
                identity_failure=isinstance(exc, IdentityRejected),
            )
