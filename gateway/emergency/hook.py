"""The emergency plan applied to requests: reject, defer (主动报), selfpay, route_legacy.

The plan in force (rules and windows, `gateway.emergency.plan`) and the ledger's breaker decide; this module
turns the decision into an answer. Installing it (`install()`) hooks it into dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import msgspec

from adapters.national import deferral
from adapters.national.category import request_category
from adapters.national.envelope import Request, encode_response, fingerprint
from gateway.app.runtime import Gateway
from gateway.core.model import Category, Institution
from gateway.emergency.breaker import Breaker, loop_stalls
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.emergency.plan import store as plan_store
from gateway.emergency.plan.rules import CLASSES, Action, Decision, TxClass
from gateway.ledger import (
    db,
    deferred,
    encounters,
    fees,
    idempotency,
    legacy_settlements,
    persons,
    settlements,
)
from gateway.ledger.deferred import Entry
from gateway.ledger.partitions import MAIN
from gateway.ledger.writes import Writes
from gateway.ops import metrics
from gateway.pipeline import dispatch
from gateway.pipeline.auth import sign_headers
from gateway.pipeline.dispatch import Detour
from gateway.pipeline.grouped import Built, Held, Job
from gateway.protocol import transaction
from gateway.protocol.errors import (
    Conflict,
    DependencyDown,
    GatewayError,
    HeldByPlan,
    LedgerDownRefusal,
    RuleRejected,
    SelfPayStay,
    Unavailable,
)
from gateway.protocol.transaction import (
    Answer,
    Call,
    Deferral,
    Kind,
    Mode,
    Prepare,
    Transaction,
    Undo,
)
from gateway.services import cancellation, fee_uploads, payouts, visit_settlement
from gateway.services.settlement_state import preview, settle_alone

log = logging.getLogger("gateway.emergency.hook")

# The fixed answer of `reject` (documented in docs/emergency.md): the counter settles as self-pay.
REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）：请按全自费结算并保留票据，"
    "待系统恢复后按规定办理报销"
)
# A catalog or reconciliation call (13xx, 3301/3302, 3201/3202, 9101/9102) has no patient to
# settle as self-pay (found from outside: a 3201 was told to settle in cash).
BUSINESS_REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）："
    "本次业务未办理，请待系统恢复后使用相同报文ID重新发送"
)
# Added to a settlement's (2207, 2102) refusal, which is kept against its msgid, since the
# counter takes the bill in cash on it. Found from outside: not kept, a retry of the same msgid after the rule was
# cleared settled the sale too (the account paid what the patient had paid in cash), so a till
# that sends unanswered or refused messages again once the system is back charged twice.
KEPT_TAIL = "；本报文ID不再办理医保结算，恢复后如需医保结算请使用新的报文ID"
# A pharmacy's sale (2101/2102): a purchase is not reimbursed by hand (the agency refuses a
# pharmacy's receipts, gateway.services.manual_claims), so the counter is not told it will be
# (found from outside: the words sent the patient to a claim the agency then refused).
PHARMACY_REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）：药店购药暂不能使用医保结算，参保人可全自费购药"
    "（药店购药不办理零星报销），或待系统恢复后再使用医保结算"
)
# An inpatient settlement (2303/2304) is told what the cut-over notices tell hospitals (毕节's,
# item 十): the stay is discharged and settled once the system is back; self-pay only if the
# patient chooses it (found from outside: told to settle as self-pay, the outpatient advice).
INPATIENT_REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）：住院费用暂不结算，患者可先办理出院，"
    "待系统恢复后再通知患者结算；患者自愿选择自费结算的，请保留票据及相关材料回参保地经办机构报销"
)
# The same for a cancellation (2103/2208/2305): there is nothing to settle as self-pay, the
# settlement stands (found from outside: a 2305 under `reject` was told to settle as self-pay).
CANCEL_REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）：原结算仍然有效，未退费；请待系统恢复后再办理撤销"
)
# The source of a decision made by a ledger database's breaker ("breaker:postgres" for the main
# database, "breaker:postgres:<cluster>" for a cluster's).
LEDGER_BREAKER = "breaker:postgres"
LEDGER_DOWN_MSG = (
    "医保结算数据库暂不可用，此项业务暂停办理：请按全自费结算并保留票据，待恢复后办理报销"
)
LEDGER_DOWN_BUSINESS_MSG = (
    "医保结算数据库暂不可用，此项业务暂停办理：本次业务未办理，请待恢复后使用相同报文ID重新发送"
)
LEDGER_DOWN_PHARMACY_MSG = (
    "医保结算数据库暂不可用，此项业务暂停办理：药店购药暂不能使用医保结算，参保人可全自费购药"
    "（药店购药不办理零星报销），或待恢复后再使用医保结算"
)
LEDGER_DOWN_QUERY_MSG = "医保结算数据库暂不可用，暂不能查询，请稍后使用相同报文ID重试"
# Found from outside: "retry" without the msgid left the clerk to send it as a new one.
LEGACY_DOWN_MSG = (
    "原医保系统接口暂不可用，本笔未办理：请稍后使用相同报文ID重试；如持续失败请按全自费结算"
)
KEEP_SECONDS = 0.25  # of a routed call's deadline, left to keep the old system's answer
# Sent to the old system and not answered: it may have done it. Kept against the msgid, so that
# no retry, whatever the plan says by then, settles it here a second time.
LEGACY_UNKNOWN_MSG = (
    f"本笔已按应急预案转原医保系统办理，但原系统未在时限内正常答复（超时或答复异常），"
    f"{idempotency.UNKNOWN_OUTCOME}：请在原系统查询该报文ID的结果，切勿在本系统重复结算；"
    "确认原系统未办理后，请使用新的报文ID重新发送"
)


def category_of(gw: Gateway, tx: Transaction, req: Request) -> str | None:
    """The request's medical category, for plan scopes that name one; None (without looking at
    the input) while no scope does, and when the request does not tell."""
    if not gw.plan.categorized:
        return None
    category = request_category(tx.kind, req)
    return None if category is None else category.value


def decide(
    gw: Gateway,
    tx: Transaction,
    institution: Institution,
    now: dt.datetime,
    category: str | None = None,
    ledger: str = MAIN,
) -> Decision | None:
    """The action for this request: the ledger's breaker first, then the plan. `category`
    (`category_of` the request) lets scopes narrowed to a medical category apply; callers
    without a request pass none and see the plain scopes only, each saying why that is right."""
    breaker = gw.ledger_breaker(ledger)
    if breaker.is_open:
        takes = tx.klass in (TxClass.SETTLEMENT, TxClass.ENCOUNTER)
        action = breaker.config.plan_action if takes else Action.REJECT
        if action is not None:
            return Decision(action, "global", tx.klass, f"breaker:{breaker.name}", breaker.reason)
    if tx.klass not in CLASSES:
        return None
    plan = gw.plan
    return plan.decide(institution.fixmedins_code, institution.admdvs, tx.klass, now, category)


def undo_refusal(
    gw: Gateway,
    original: Transaction,
    institution: Institution,
    now: dt.datetime,
    category: str | None,
    ledger: str = MAIN,
    *,
    deferred_words: str = cancellation.CANCEL_REFUSED_MSG,
    rejected_words: str = CANCEL_REJECT_MSG,
) -> GatewayError | None:
    """The refusal of undoing (2208, or a 2601) a settlement of this medical category while a
    plan scope narrowed to the category takes its settlements off the normal path, as the plain
    scopes refuse it before the handler (a cancellation names no med_type, so only its
    settlement tells the category). Found from outside: under the 温州 timetable, whose
    settlement rules are per category, a 2208 and 2601s refunded settlements made before the
    stop while the 2103 of a sale beside them was refused."""
    if category is None or not gw.plan.categorized:
        return None
    decision = decide(gw, original, institution, now, category, ledger)
    if decision is None:
        return None
    if decision.action is Action.DEFER:
        return HeldByPlan(deferred_words)
    if decision.action is Action.REJECT:
        return HeldByPlan(rejected_words.format(why=decision.reason))
    return None


def detours(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    now: dt.datetime,
    ledger: str = MAIN,
) -> Decision | None:
    """The decision when it takes this request off the normal path (dispatch then answers a
    retry from the msgid journals before `intercept` acts on it)."""
    decision = decide(gw, tx, institution, now, category_of(gw, tx, req), ledger)
    if decision is not None and decision.action is Action.SELFPAY and not tx.admits:
        return None  # selfpay changes nothing but admissions
    if decision is not None and decision.action is Action.SHADOW:
        return None  # this gateway answers as normal; the shadow prices it afterwards
    return decision


def _reject_words(tx: Transaction) -> str:
    """What `reject` answers, in the words of what was asked."""
    if tx.acts_on is not None or tx.undo is Undo.CANCELLATION:  # a 2601, a cancellation
        # Found from outside: a 2601 was told to settle as self-pay, as a sale would be, while
        # the sale it reversed stood (the account had paid it).
        return CANCEL_REJECT_MSG
    if tx.klass in (TxClass.CATALOG, TxClass.RECONCILE):
        return BUSINESS_REJECT_MSG
    if tx.kind is Kind.INPATIENT and tx.klass is TxClass.SETTLEMENT:
        return INPATIENT_REJECT_MSG
    if tx.kind is Kind.PHARMACY and tx.klass is TxClass.SETTLEMENT:
        return PHARMACY_REJECT_MSG
    return REJECT_MSG


def _ledger_down_words(tx: Transaction) -> str:
    """What the ledger's breaker answers, in the words of what was asked (found from outside: a
    2601 and a 5203 were told to settle as self-pay, as a sale would be)."""
    if tx.acts_on is not None or tx.undo is Undo.CANCELLATION:  # a 2601, a cancellation
        return cancellation.CANCEL_REFUSED_MSG
    if tx.klass is TxClass.QUERY:
        return LEDGER_DOWN_QUERY_MSG
    if tx.kind is Kind.PHARMACY and tx.klass is TxClass.SETTLEMENT:
        return LEDGER_DOWN_PHARMACY_MSG
    if tx.klass in (TxClass.CATALOG, TxClass.RECONCILE):
        return LEDGER_DOWN_BUSINESS_MSG
    return LEDGER_DOWN_MSG


def keeps_refusal(decision: Decision, tx: Transaction) -> bool:
    """Whether `intercept` answers with a refusal kept against the msgid: `reject` of a sale's or
    a visit's settlement, which the counter then takes in cash. A stay's is told to wait for the
    system instead (INPATIENT_REJECT_MSG) and keeps nothing; so does anything the ledger's
    breaker refuses (the ledger may not be there to keep it)."""
    return (
        decision.action is Action.REJECT
        and not decision.source.startswith(LEDGER_BREAKER)
        and tx.writes
        and tx.undo is Undo.SETTLEMENT
        and tx.kind is not Kind.INPATIENT
    )


def answers_retries(decision: Decision, tx: Transaction) -> bool:
    """Whether the request's path under this decision finds its msgid's earlier answer itself,
    so that the ledger's msgid journal need not be read first: a refusal kept (its keep's
    statement hands back the key's answer), or a settlement deferred as a claim and an
    encounter call kept for recovery, whose transactions claim the msgid before anything else
    (a retry finds it taken and is given its answer). With the ledger's breaker open they go to
    the local journal instead, after the journal's own look-up."""
    if keeps_refusal(decision, tx):
        return True
    return (
        decision.action is Action.DEFER
        and not decision.source.startswith(LEDGER_BREAKER)
        and tx.writes
        and tx.deferral in (Deferral.CLAIM, Deferral.CALL)
    )


async def intercept(
    decision: Decision,
    gw: Gateway,
    tx: Transaction,
    req: Request,
    institution: Institution,
    body: bytes,
    received: dt.datetime,
) -> Detour | None:
    ledger_down = decision.source.startswith(LEDGER_BREAKER)
    if decision.action is Action.REJECT:
        if ledger_down:
            raise LedgerDownRefusal(_ledger_down_words(tx))
        words = _reject_words(tx)
        if keeps_refusal(decision, tx):
            refused = RuleRejected(words.format(why=decision.reason) + KEPT_TAIL)
            return Detour(
                answer=dispatch.failure(gw.region, received, refused),
                outcome=dispatch.Result.REJECTED,
                keep=True,
                elsewhere=False,
            )
        raise RuleRejected(words.format(why=decision.reason))
    if decision.action in (Action.ROUTE_LEGACY, Action.ROUTE_LEGACY_SHADOW):
        if not ledger_down and await _this_gateways(gw, tx, req):
            return None  # undone, or settled, where it was done: here
        return await _route_legacy(gw, tx, req, body, received, ledger_down)
    if decision.action is Action.SELFPAY:
        return Detour(mode=Mode.SELFPAY) if tx.admits else None
    if decision.action is not Action.DEFER:
        return None
    role = tx.deferral
    if role is Deferral.PRESETTLEMENT and not ledger_down and _claim_of(tx) is not None:
        # A visit's pre-settlement says what its claim would be told (found from outside: one
        # of lines a claim held, or of a total its lines do not make, was priced all-cash, and
        # the claim after it refused).
        return Detour(
            tx=dataclasses.replace(
                tx, name="暂存预结算", handler=_presettle_as_claim, grouped=None, previewed=None
            ),
            mode=Mode.DEFERRED,
        )
    if role is Deferral.PRESETTLEMENT:
        scope = deferral.claim_scope(req, priced=True) if ledger_down else None
        if scope is not None:
            # With the ledger away only this process's journal is known; a claim it holds on
            # these lines refuses their pre-settlement as it refuses their settlement (found
            # from outside: priced all cash, as if the lines were free to settle).
            deferral.refuse_if_held(gw.journal.held_on(req.fixmedins_code, scope[0]), scope[1])
        priced, lines = deferral.carried_split(req, gw.snapshot)
        out = encode_response(
            region=gw.region,
            received=received,
            output=deferral.presettle_output(req, priced, lines),
            warn_msg=PRESETTLE_DEFER_MSG,
        )
        return Detour(answer=out, outcome=dispatch.Result.DEFERRED)
    if role is Deferral.CLAIM:
        if ledger_down:
            return await _journal_claim(gw, req, institution, received)
        if deferral.kind_of(req.infno) is Kind.PHARMACY:
            # A purchase's claim touches no visit: a job, grouped like the sales it stands for.
            claim = dataclasses.replace(
                tx, name="暂存结算", handler=_defer_purchase, grouped=_purchase_claim
            )
        else:
            claim = dataclasses.replace(tx, name="暂存结算", handler=_defer_claim, grouped=None)
        return Detour(tx=claim, mode=Mode.DEFERRED)
    if role is Deferral.CANCEL_CLAIM:
        setl_id, _, _ = deferral.withdrawal_ref(req)
        if not deferral.is_claim_id(setl_id):
            raise HeldByPlan(cancellation.CANCEL_REFUSED_MSG)
        if ledger_down:
            return await _journal_withdrawal(gw, req, received)
        return None  # the cancellation handlers withdraw claims themselves (gateway.emergency.hook)
    if role is Deferral.CALL:
        if ledger_down:
            return await _journal_call(gw, req, institution, received)
        return Detour(
            tx=dataclasses.replace(tx, name="暂存业务", handler=_defer_call, grouped=None),
            mode=Mode.DEFERRED,
        )
    if ledger_down:
        raise DependencyDown(_ledger_down_words(tx))
    if tx.klass in (TxClass.CATALOG, TxClass.RECONCILE):
        raise RuleRejected(BUSINESS_REJECT_MSG.format(why=decision.reason))
    return None  # reads (1101, sign-in) go on as normal while the ledger answers


# ------------------------------------------------------------------------ deferral in the ledger


def _check_dates(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> None:
    """The date bounds a settlement would apply, applied before a request is deferred."""
    for name, moment in deferral.service_times(req):
        gw.config.dates.check(name, moment, admdvs=institution.admdvs, now=now)


def _claim_entry(
    req: Request,
    facts: deferral.ClaimFacts,
    claim_id: str,
    mdtrt_id: str,
    service_date: dt.date,
    now: dt.datetime,
    lines: tuple[str, ...] | None = None,
) -> Entry:
    """A ledger claim's row."""
    return _entry(
        "claim",
        req,
        now,
        psn_no=facts.psn_no,
        mdtrt_id=facts.mdtrt_id,
        service_date=service_date,
        medfee_sumamt=facts.medfee_sumamt,
        claim_id=claim_id,
        lines=lines,
    )


def _purchase_claim(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> Job:
    """A pharmacy purchase's claim as a job: the claim staged beside its answer, under the
    batch's lock of the person. While settlements are deferred the claims share the group
    commit's transactions as the sales they stand for did, instead of a transaction and a commit
    each (benchmarks/RESULTS.md, `defer`). The single path runs the same job alone
    (`_defer_purchase`).

    The claim is refused for whatever the sale itself would be refused for now: its build runs
    first, over the same locked person, and only its verdict is kept. Found from outside: a
    claim of a lapsed person, of another insutype, or declaring a total its lines do not make
    was answered with a claim number and the promise of a reimbursement that replay then
    refused; with a wrong total the counter took the declared sum in cash."""
    sale = _sale_of(gw, req, institution, now)
    facts = deferral.read_claim(req)
    _check_dates(gw, req, institution, now)
    claim_id = deferral.new_claim_id(institution.admdvs, now, req.fixmedins_code, req.msgid)
    # The purchase's visit is made when the claim is replayed; until then the claim stands for it.
    entry = _claim_entry(req, facts, claim_id, claim_id, facts.service_date or now.date(), now)
    warn_msg = deferral.DEFER_WARN.format(claim_id=claim_id)

    def build(held: Held, _mdtrt_serial: int, _setl_serial: int) -> Built:
        # Its refusals are the claim's; nothing it stages is written. Its lines' split is the
        # claim's answer's (found from outside: a wholly self-pay line answered as within the
        # policy range).
        sold = sale.build(held, 0, 0).output
        writes = Writes()
        deferred.stage(writes, entry, "ledger")
        output = deferral.claim_output(
            facts,
            claim_id,
            claim_id,
            req.msgid,
            now,
            held.balance,
            priced=deferral.sale_split(sold),
            lines=sold.get("detlcutinfo") if isinstance(sold, dict) else None,
        )
        return Built(output, writes, held.balance, held.year, warn_msg=warn_msg)

    return Job(psn_no=facts.psn_no, year=sale.year, build=build, settles=False, draws=False)


def _sale_of(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> Job:
    """The real-time sale's own job for this request (its transaction's grouped form)."""
    sale = transaction.of(req.infno)
    job = None if sale is None or sale.grouped is None else sale.grouped(gw, req, institution, now)
    if job is None:
        raise Unavailable("暂存结算暂不可用，请稍后使用相同报文ID重试")
    return job


async def _defer_purchase(call: Call) -> Answer:
    """A pharmacy purchase's claim on its own transaction (the group commit's job, alone)."""
    job = _purchase_claim(call.gw, call.req, call.institution, call.now)
    built = await settle_alone(call.conn, job)
    return Answer(built.output, warn_msg=built.warn_msg)


async def _defer_claim(call: Call) -> Answer:
    """A visit's claim journaled in the ledger, inside the msgid transaction (so retries replay
    it); a pharmacy purchase's is `_purchase_claim`."""
    req = call.req
    facts = deferral.read_claim(req)
    _check_dates(call.gw, req, call.institution, call.now)
    person, balance = await persons.read(call.conn, facts.psn_no)
    persons.require_certificate(person, facts.cert)
    service_date = facts.service_date
    mdtrt_id = facts.mdtrt_id
    visit = mdtrt_id
    enc = None
    if facts.mdtrt_id and not facts.mdtrt_id.startswith(PROVISIONAL_PREFIX):
        # Locked: a claim and a real-time settlement of the same visit (one process still
        # deferring, another back to normal) see each other, whichever commits second.
        enc = await encounters.get(
            call.conn, facts.mdtrt_id, req.fixmedins_code, psn_no=facts.psn_no, lock=True
        )
        encounters.require_open(enc)
        service_date = enc.begntime.date()
        visit = enc.mdtrt_id
    scope = deferral.claim_scope(req)
    claimed: list[fees.StoredLine] | None = None
    journaled: list[fees.StoredLine] | None = None
    if scope is not None:
        await _refuse_claimed_twice(call.conn, req.fixmedins_code, visit, scope[1])
        if not visit.startswith(PROVISIONAL_PREFIX):
            claimed = await _claimed_lines(call.conn, req.fixmedins_code, visit, scope[1])
        else:
            journaled = await _journaled_lines(call.conn, req.fixmedins_code, visit, scope[1])
            if journaled is not None:
                # Refused as its settlement would be (found from outside: a claim of a batch
                # never uploaded, or withdrawn, or of a total its lines do not make, was taken
                # and failed at replay, the patient's cash taken; a stay's closing claim before
                # its discharge likewise).
                kind = deferral.kind_of(req.infno) or Kind.OUTPATIENT
                if kind is Kind.INPATIENT and deferral.closes(req):
                    bodies = await deferred.calls_on_visit(call.conn, req.fixmedins_code, visit)
                    if not deferral.discharged(bodies):
                        raise visit_settlement.not_discharged()
                visit_settlement.check_billed(kind, facts.medfee_sumamt, journaled)
                deferral.refuse_other_parts(
                    facts, deferral.priced_split(call.gw.snapshot, req.fixmedins_code, journaled)
                )
    lines = None if claimed is None else tuple(ln.feedetl_sn for ln in claimed)
    if visit == facts.mdtrt_id and not visit.startswith(PROVISIONAL_PREFIX):
        await _refuse_as_its_settlement(call)
    claim_id = deferral.new_claim_id(
        call.institution.admdvs, call.now, call.req.fixmedins_code, call.req.msgid
    )
    entry = _claim_entry(
        req, facts, claim_id, mdtrt_id, service_date or call.now.date(), call.now, lines
    )
    await deferred.insert(call.conn, entry, "ledger")
    call.gw.ledger_claims.clear()  # pre-settlements read claims again until the next count
    priced = deferral.priced_split(call.gw.snapshot, req.fixmedins_code, claimed or journaled)
    if not facts.med_type and enc is not None:
        # A 2304 names no med_type: its answer gives the stay's, as the settlement's would
        # (found from outside: "" in a deferred stay's answer, "21" online).
        facts = dataclasses.replace(facts, med_type=enc.med_type)
    output = deferral.claim_output(
        facts, claim_id, mdtrt_id, req.msgid, call.now, balance, priced=priced
    )
    return Answer(output, warn_msg=deferral.DEFER_WARN.format(claim_id=claim_id))


PRESETTLE_DEFER_MSG = "医保实时结算暂停（应急预案），本次费用须由参保人全额现金支付"


def _claim_of(presettlement: Transaction) -> Transaction | None:
    """The settlement whose claim a visit's pre-settlement stands for (2206: 2207, 2303: 2304)."""
    return next(
        (
            t
            for t in transaction.TRANSACTIONS.values()
            if t.deferral is Deferral.CLAIM
            and t.judged is not None
            and t.kind is presettlement.kind
        ),
        None,
    )


async def _presettle_as_claim(call: Call) -> Answer:
    """A visit's pre-settlement under `defer` with the ledger reachable: refused for what its
    claim would be refused for (lines a claim holds, a total they do not make, a person or an
    insutype that does not fit), else the all-cash figures, nothing written."""
    scope = deferral.claim_scope(call.req, priced=True)
    if scope is not None:
        # Lines a claim holds first, judged or not (found from outside: with the institution's
        # calls waiting to be applied, a 2206 of a claimed batch was priced all cash again).
        await _refuse_claimed_twice(call.conn, call.req.fixmedins_code, scope[0], scope[1])
    tx = transaction.of(call.req.infno)
    claim = _claim_of(tx) if tx is not None else None
    if claim is not None and tx is not None:
        # Judged as a pre-settlement: what its claim would be refused for, but for a stay not
        # discharged yet, which a pre-settlement prices as it does online (found from outside: a
        # 2303 before the 2402 was refused under `defer`, where online it is answered).
        await _refuse_as_its_settlement(call, claim, tx.previewed)
    # The parts its claim will answer (found from outside: the whole bill within the policy
    # range, and a HIS that copied them into its 2207 was refused, the lines splitting else).
    priced, carried = deferral.carried_split(call.req, call.gw.snapshot)  # a purchase's
    med_type = ""
    if scope is not None and not scope[0].startswith(PROVISIONAL_PREFIX):
        code = call.req.fixmedins_code
        lines = await _claimed_lines(call.conn, code, scope[0], scope[1])
        priced = deferral.priced_split(call.gw.snapshot, code, lines)
        # A 2303 names no med_type: the stay's, as online (found from outside: "").
        med_type = await encounters.med_type_of(call.conn, code, scope[0]) or ""
    elif scope is not None:
        code = call.req.fixmedins_code
        lines = await _journaled_lines(call.conn, code, scope[0], scope[1])
        if lines is not None and tx is not None and tx.kind is not None:
            # What its claim would be refused for (no lines, a total they do not make).
            facts = deferral.read_claim(call.req)
            visit_settlement.check_billed(tx.kind, facts.medfee_sumamt, lines)
        priced = deferral.priced_split(call.gw.snapshot, code, lines)
    return Answer(
        deferral.presettle_output(call.req, priced, carried, med_type),
        warn_msg=PRESETTLE_DEFER_MSG,
    )


async def _refuse_as_its_settlement(
    call: Call, claim: Transaction | None = None, judge: Prepare | None = None
) -> None:
    """A visit's claim is refused for what its settlement would be refused for now (a lapsed
    person, another insutype, totals its lines do not make, a stay not discharged settled as
    final), judged by the settlement's own build over the visit as it is, which writes nothing
    here. Found from outside for a pharmacy's claims (`_purchase_claim`); a visit's is the same
    promise of a reimbursement; a stay's 2304 was taken unjudged, then judged by its 2303, which
    prices a stay still in hospital: both failed at replay, the patient's cash already paid. Not
    judged while the institution's calls journaled with the ledger away wait to be applied:
    their lines are not in the ledger yet, and replay judges the claim after them."""
    claim = claim or transaction.of(call.req.infno)
    judge = judge or (claim.judged if claim is not None else None)
    if judge is None:
        return
    if await deferred.calls_waiting(call.conn, call.req.fixmedins_code):
        return
    job = judge(call.gw, call.req, call.institution, call.now)
    if job is None:
        return
    try:
        await preview(call.conn, job, note=False)
    except SelfPayStay:
        # Admitted self-pay under the plan: its claim is what the plan promises (all cash now,
        # reimbursed once the stay is converted, 自费转医保); replay judges it then.
        return


async def _claimed_lines(
    conn: asyncpg.Connection, fixmedins_code: str, visit: str, batch: str
) -> list[fees.StoredLine] | None:
    """The lines a claim covers (of its charge batch, or of the whole visit): those unsettled as
    it is taken, since lines uploaded afterwards are settled by a later settlement (a mid-way
    2304 followed by more fees). Found from outside: a batch's claim named no lines, so a line
    added to the batch after it made the claim's total wrong at replay, and the claim failed
    with the patient's cash taken. None while the institution's deferred calls wait: their
    lines belong to the claim when they came before it, and replay fixes the lines once it has
    applied them (in order)."""
    if await deferred.calls_waiting(conn, fixmedins_code):
        return None
    return fees.of_batch(await fees.unsettled(conn, visit), batch)


async def _journaled_lines(
    conn: asyncpg.Connection, fixmedins_code: str, visit: str, batch: str
) -> list[fees.StoredLine] | None:
    """The lines of a provisional visit a claim or pre-settlement covers (its charge batch, or
    all of them): those its calls waiting to be applied will leave (`deferral.journaled_lines`),
    or, once they are applied, the ledger's of the visit it became (None while the
    institution's calls journaled with the ledger away wait: not known here)."""
    real = await deferred.visit_of(conn, visit)
    if real != visit:
        return await _claimed_lines(conn, fixmedins_code, real, batch)
    bodies = await deferred.calls_on_visit(conn, fixmedins_code, visit)
    return fees.of_batch(deferral.journaled_lines(bodies), batch)


async def _refuse_claimed_twice(
    conn: asyncpg.Connection, fixmedins_code: str, visit: str, lines: str
) -> None:
    """A claim of lines already under a pending claim, or already settled, is refused: the
    counter would collect the full amount in cash a second time for one bill."""
    claims = await deferred.pending_on_visits(conn, [await deferred.visit_of(conn, visit)])
    deferral.refuse_if_held(deferral.held_lines(claims, fixmedins_code), lines)
    if lines != fees.ALL and await fees.batch_settled(conn, visit, lines):
        raise deferral.settled_already(lines)


async def _defer_call(call: Call) -> Answer:
    """An encounter call stored to be applied at recovery; a new visit gets a provisional id.
    What the request alone refuses is refused now, as with the ledger away (found from outside:
    a 2403 to an outpatient med_type was answered as kept, then failed unseen when applied)."""
    req = call.req
    _refuse_as_its_request(call.gw, req, call.institution, call.now)
    _check_dates(call.gw, req, call.institution, call.now)
    provisional = None
    if deferral.opens_visit(req.infno):
        provisional = deferral.new_provisional_id(
            call.institution.admdvs, call.now, req.fixmedins_code, req.msgid
        )
    output = deferral.call_output(req, provisional, call.gw.snapshot)  # may refuse it
    visit = deferral.call_visit(req)
    if visit.startswith(PROVISIONAL_PREFIX):
        await _refuse_as_its_visit_would(call, visit)
    entry = _entry(
        "call",
        req,
        call.now,
        provisional_id=provisional,
        psn_no=deferral.call_person(req),
        mdtrt_id=deferral.call_visit(req),
    )
    await deferred.insert(call.conn, entry, "ledger")
    ref = provisional or req.msgid
    return Answer(output, warn_msg=deferral.CALL_WARN.format(ref=ref))


async def _refuse_as_its_visit_would(call: Call, visit: str) -> None:
    """A call on a visit kept under the plan (its provisional id) is refused for the claims the
    visit already has, and an upload's refunds for the charges it has, as the ledger refuses
    them on a visit it holds: lines a pending claim holds are not withdrawn, a stay whose
    closing settlement waits as a claim takes no more lines, a refund takes back no more than
    its charge. Found from outside: each was answered as kept and failed when applied, the
    counter believing a batch withdrawn that replay then settled."""
    code = call.req.fixmedins_code
    withdrawn = deferral.withdrawn_lines(call.req)
    if withdrawn is not None:
        await fee_uploads.not_under_a_claim_of(call.conn, code, visit, withdrawn)
    tx = transaction.of(call.req.infno)
    if withdrawn is None and tx is not None and tx.journaled_lines is not None:
        # An upload (only a stay's closing settlement closes a visit to more lines; only a
        # stay's lines are refunds, each held to the charges its kept uploads left).
        await fee_uploads.not_under_a_closing_claim(call.conn, visit)
        kept = deferral.journaled_lines(await deferred.calls_on_visit(call.conn, code, visit))
        fee_uploads.check_kept_refunds(kept, tx.journaled_lines(call.req, []))


def _entry(kind: str, req: Request, received: dt.datetime, **fields: Any) -> Entry:
    """A deferred item of this request; `fields` fill in what the kind knows."""
    base: dict[str, Any] = {
        "kind": kind,
        "fixmedins_code": req.fixmedins_code,
        "msgid": req.msgid,
        "infno": req.infno,
        "psn_no": "",
        "mdtrt_id": "",
        "service_date": received.date(),
        "medfee_sumamt": 0,
        "body": deferral.stored_request(req),
        "answer": b"",
        "received_at": received,
    }
    return Entry(**(base | fields))


# ------------------------------------------------------------------ deferral in the local journal


async def _journal_append(gw: Gateway, e: Entry) -> None:
    await gw.journal.append(e)


def _refuse_as_its_request(
    gw: Gateway, req: Request, institution: Institution, received: dt.datetime
) -> None:
    """With the ledger away, a request is still read as the normal path reads it before the
    ledger (its transaction's grouped job: every field, number and total its lines make), so
    that what would be refused is refused now, not answered "taken" and failed at replay
    (found from outside: a sale whose total its lines did not make was answered all-cash at
    the wrong total, an exponent in a quantity, a 2201 without psn_no, a line without its
    mdtrt_id were all taken)."""
    tx = transaction.of(req.infno)
    if tx is None:
        return
    if tx.grouped is not None:
        tx.grouped(gw, req, institution, received)
    elif tx.checked is not None:
        tx.checked(gw, req, institution, received)


async def _journal_claim(
    gw: Gateway, req: Request, institution: Institution, received: dt.datetime
) -> Detour:
    facts = deferral.read_claim(req)
    _refuse_as_its_request(gw, req, institution, received)
    _check_dates(gw, req, institution, received)
    # A purchase's lines are in the request: its parts and lines as its sale splits them.
    priced, lines = deferral.carried_split(req, gw.snapshot)
    claim_id = deferral.new_claim_id(institution.admdvs, received, req.fixmedins_code, req.msgid)
    mdtrt_id = facts.mdtrt_id or claim_id
    journal = gw.journal
    scope = deferral.claim_scope(req)
    if scope is not None:
        # Only this process's journal is known while the ledger is away; held before the
        # write, so two claims of one batch arriving together cannot both pass.
        deferral.refuse_if_held(journal.held_on(req.fixmedins_code, scope[0]), scope[1])
        journal.hold(deferred.Held(claim_id, req.infno, scope[1]), req.fixmedins_code, scope[0])
    out = encode_response(
        region=gw.region,
        received=received,
        # The ledger is away: the balance is not known (docs/protocol.md, `balc`).
        output=deferral.claim_output(
            facts, claim_id, mdtrt_id, req.msgid, received, 0, priced=priced, lines=lines
        ),
        warn_msg=deferral.DEFER_WARN.format(claim_id=claim_id),
    )
    try:
        await _journal_append(
            gw,
            _entry(
                "claim",
                req,
                received,
                psn_no=facts.psn_no,
                mdtrt_id=facts.mdtrt_id,
                service_date=facts.service_date or received.date(),
                medfee_sumamt=facts.medfee_sumamt,
                answer=out,
                digest=fingerprint(req),
                claim_id=claim_id,
            ),
        )
    except BaseException:
        journal.let_go(claim_id)
        raise
    return Detour(answer=out, outcome=dispatch.Result.DEFERRED)


async def _journal_call(
    gw: Gateway, req: Request, institution: Institution, received: dt.datetime
) -> Detour:
    _refuse_as_its_request(gw, req, institution, received)
    _check_dates(gw, req, institution, received)
    provisional = None
    if deferral.opens_visit(req.infno):
        provisional = deferral.new_provisional_id(
            institution.admdvs, received, req.fixmedins_code, req.msgid
        )
    out = encode_response(
        region=gw.region,
        received=received,
        output=deferral.call_output(req, provisional, gw.snapshot),
        warn_msg=deferral.CALL_WARN.format(ref=provisional or req.msgid),
    )
    await _journal_append(
        gw,
        _entry(
            "call",
            req,
            received,
            answer=out,
            digest=fingerprint(req),
            provisional_id=provisional,
            psn_no=deferral.call_person(req),
            mdtrt_id=deferral.call_visit(req),
        ),
    )
    return Detour(answer=out, outcome=dispatch.Result.DEFERRED)


async def _journal_withdrawal(gw: Gateway, req: Request, received: dt.datetime) -> Detour:
    setl_id, mdtrt_id, psn_no = deferral.withdrawal_ref(req)
    journal = gw.journal
    held = journal.claims.get(setl_id)
    if held is None or held.fixmedins_code != req.fixmedins_code or held.psn_no != psn_no:
        # Only a claim this process holds can be withdrawn while the ledger is away; another
        # worker may hold it (found from outside: the same msgid withdrew it there), so the
        # counter is told to retry as well as to wait.
        raise Unavailable(
            "医保结算数据库暂不可用，暂未能撤销该暂存结算：请稍后使用相同报文ID重试，"
            "或待系统恢复后再撤销"
        )
    if mdtrt_id and mdtrt_id != deferred.visit_of_claim(held.mdtrt_id, setl_id):
        raise Conflict(f"结算ID{setl_id}与就诊ID、人员编号不对应")
    if setl_id in journal.withdrawn:
        raise Conflict(f"暂存结算{setl_id}已撤销，不能重复撤销")
    row = {"claim_id": setl_id, "mdtrt_id": held.mdtrt_id, "msgid": held.msgid}
    out = encode_response(
        region=gw.region,
        received=received,
        # The ledger is away: the balance is not known (docs/protocol.md, `balc`).
        output=deferral.withdrawal_output(
            deferral.request_of(held.body), row, received, 0, req.msgid, held.answer
        ),
        warn_msg=f"暂存结算{setl_id}已撤销",
    )
    await _journal_append(
        gw,
        _entry(
            "withdrawal",
            req,
            received,
            psn_no=psn_no,
            mdtrt_id=held.mdtrt_id,
            answer=out,
            digest=fingerprint(req),
            claim_id=setl_id,
        ),
    )
    journal.let_go(setl_id)
    return Detour(answer=out, outcome=dispatch.Result.DEFERRED)


# ---------------------------------------------------------------------------------- route_legacy


class LegacyDown(Exception):
    """The old system gave no answer: `kind` is "timeout", "error" (a failed call or a 5xx), or
    "unavailable" (its breaker is open, or no `[legacy] url`). `reached`: the request may have
    reached it (it may have done it), which is not so for a connection never made."""

    def __init__(self, kind: str, *, reached: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.reached = reached


async def post_legacy(
    gw: Gateway,
    body: bytes,
    timeout_seconds: float,
    *,
    infno: str,
    fixmedins_code: str,
    session: aiohttp.ClientSession | None = None,
) -> bytes:
    """POST an envelope to `[legacy] url` and return the old system's answer bytes, through its
    breaker (open: not even tried); every call's outcome feeds the breaker. Used by route_legacy
    and by the parallel run's shadow pricing (gateway.emergency.shadow), with its own session.

    Signed as the institution signs its requests (x-tif, a fresh timestamp and nonce), where
    this gateway verifies signatures and so holds its secret: found from outside, an old system
    that verifies them refused every forwarded request, and the parallel run counted each
    refusal as a difference in money."""
    breaker = gw.breakers["legacy"]
    url = gw.config.legacy.url
    if not url:
        raise LegacyDown("unavailable")
    if breaker.is_open and not breaker.probe_due():
        raise LegacyDown("unavailable")
    started = asyncio.get_running_loop().time()
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    headers = {"Content-Type": "application/json"}
    secret = gw.institution_secrets.get(fixmedins_code)
    if secret is not None:
        headers.update(sign_headers(fixmedins_code, secret, secrets.token_hex(16)))
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            resp = await stack.enter_async_context(
                session.post(url, data=body, headers=headers, timeout=timeout)
            )
            answer = await resp.read()
            if resp.status >= 500:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status
                )
            if not 200 <= resp.status < 300 or not _is_envelope(answer):
                # Relayed byte for byte means an envelope relayed: an HTML error page or a
                # proxy's text is no answer a counter can read (found from outside: the till
                # got "<html>oops</html>"). A failed call, for the breaker too.
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message="not an envelope"
                )
    except (aiohttp.ClientError, TimeoutError) as exc:
        timed_out = isinstance(exc, TimeoutError)
        _note(breaker, False, timed_out, started)
        log.warning("legacy endpoint failed", extra={"infno": infno, "error": repr(exc)})
        reached = not isinstance(exc, aiohttp.ClientConnectorError)  # a connection never made
        raise LegacyDown("timeout" if timed_out else "error", reached=reached) from None
    _note(breaker, True, False, started)
    return answer


LEGACY_PROBE_SECONDS = 2.0


async def probe_legacy(gw: Gateway) -> None:
    """The old system's breaker, probed while open and due. Found from outside: requests were
    its only probes, so once nothing was routed to it (the rule cleared, the parallel run over)
    its breaker stayed open, `SgwBreakerOpen` paging, for a system back for minutes. A GET of
    the interface's address answered below 500 (a POST-only endpoint answers 405) is the old
    system reachable and serving; nothing is sent that it would act on."""
    breaker = gw.breakers["legacy"]
    url = gw.config.legacy.url
    if not url or not breaker.is_open or not breaker.probe_due():
        return
    timeout = aiohttp.ClientTimeout(
        total=min(gw.config.legacy.timeout_seconds, LEGACY_PROBE_SECONDS)
    )
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            ok = resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    if not breaker.is_open:
        return  # a request's outcome closed it meanwhile
    breaker.probe_result(ok)
    if breaker.ready_to_close():
        breaker.close("原系统恢复")


def _is_envelope(answer: bytes) -> bool:
    """Whether the old system's answer is a JSON object carrying `infcode`."""
    try:
        doc = msgspec.json.decode(answer)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and "infcode" in doc


# How a forwarded request's visit numbers become the old system's (visit mirroring installs it,
# gateway.emergency.mirror.Mirror.routed): a visit opened here during a parallel run is known
# there only under its own number. Given the request, its body and when it was received, it
# answers the body to forward and what turns the old system's answer back to our numbers (None:
# nothing to turn), or raises a GatewayError.
Renumber = Callable[[bytes], bytes]
RoutedVisits = Callable[
    [Gateway, Request, bytes, dt.datetime], Awaitable[tuple[bytes, Renumber | None]]
]
ROUTED_VISITS: list[RoutedVisits] = []


async def _route_legacy(
    gw: Gateway,
    tx: Transaction,
    req: Request,
    body: bytes,
    received: dt.datetime,
    ledger_down: bool,
) -> Detour:
    """Forward the envelope and relay the old system's answer: unchanged, but for the numbers
    of visits opened here and mirrored there (ROUTED_VISITS), rewritten to the old system's on
    the way out and back to ours in its answer, so the counter keeps one number per visit. With
    the ledger down the map cannot be read: the envelope goes unchanged (docs/emergency.md)."""
    if not gw.config.legacy.url:
        # A rule set from a gateway with another configuration: the transaction is not done,
        # and the clerk is told what the plan's reject would say, as well as to retry.
        raise Unavailable(
            "应急预案要求转原系统办理，但本网关未配置原系统地址，本笔未办理：请稍后使用相同报文ID重试，"
            "如持续失败请按全自费结算并保留票据，并联系运维"
        )
    back: list[Renumber] = []
    if not ledger_down:
        for visits in ROUTED_VISITS:
            body, renumber = await visits(gw, req, body, received)
            if renumber is not None:
                back.append(renumber)
    # Within the call's own deadline, with a moment left to keep the outcome: found from outside,
    # a forward still waiting (the old system's 10 s) when the call's 5 s ran out was answered
    # "retry the same msgid", the retry was settled here once the plan changed, and the old
    # system settled it too.
    left = gw.config.deadlines.call_seconds - (dt.datetime.now() - received).total_seconds()
    timeout = max(0.1, min(gw.config.legacy.timeout_seconds, left - KEEP_SECONDS))
    try:
        answer = await post_legacy(
            gw, body, timeout, infno=req.infno, fixmedins_code=req.fixmedins_code
        )
    except LegacyDown as exc:
        if not exc.reached or not tx.writes:
            # Never reached, or a read (a pre-settlement, a query) that did nothing there
            # either way (found from outside: a 2101 was told its outcome was unknown and not to
            # settle it here): retry the same msgid.
            raise DependencyDown(LEGACY_DOWN_MSG) from None
        # It reached the old system, which may have done it (found from outside: a sale the
        # old system settled after the gateway gave up was settled here too when the counter
        # retried after the plan changed). An answer of its own, kept for the msgid.
        unknown = encode_response(
            region=gw.region, received=received, output=None, err_msg=LEGACY_UNKNOWN_MSG
        )
        # Counted as the old system's failure, by kind (found from outside: its timeouts and
        # 5xx answers were counted as refusals, and the error alerts never saw them).
        return Detour(
            answer=unknown,
            outcome=dispatch.Result.ERROR,
            keep=not ledger_down,
            timeout=exc.kind == "timeout",
        )
    for renumber in back:
        answer = renumber(answer)
    # Not kept with the ledger known down (the breaker's route): the attempt would hold every
    # routed answer on a pool that cannot serve it.
    return Detour(
        answer=answer,
        outcome=dispatch.Result.LEGACY,
        keep=not ledger_down,
        kept=_settled_elsewhere(tx, req, answer),
    )


def _settled_elsewhere(
    tx: Transaction, req: Request, answer: bytes
) -> Callable[[asyncpg.Connection], Awaitable[None]] | None:
    """What the old system's answer does to a visit's lines here: a settlement of them (2207/
    2304 answered 成功 with its setl_id) holds them, its cancellation (2208/2305) frees them."""
    if idempotency.refusal_of(answer) is not None:
        return None
    if tx.settle_claim is not None:
        scope = deferral.claim_scope(req)
        setl_id = deferral.answered_setl_id(answer)
        if scope is None or not setl_id:
            return None
        return functools.partial(
            legacy_settlements.record,
            fixmedins_code=req.fixmedins_code,
            setl_id=setl_id,
            mdtrt_id=scope[0],
            lines=scope[1],
            infno=req.infno,
            msgid=req.msgid,
        )
    if tx.undo is Undo.CANCELLATION and tx.kind in (Kind.OUTPATIENT, Kind.INPATIENT):
        try:
            setl_id = deferral.withdrawal_ref(req)[0]
        except GatewayError:
            return None
        return functools.partial(
            legacy_settlements.cancel, fixmedins_code=req.fixmedins_code, setl_id=setl_id
        )
    return None


# A provisional visit id (handed out here under the plan) as a JSON string in a request's input.
_PROVISIONAL_VISIT = re.compile(rb'"' + PROVISIONAL_PREFIX.encode() + rb"[0-9]{6}")


async def _this_gateways(gw: Gateway, tx: Transaction, req: Request) -> bool:
    """Whether a request the plan would route to the old system acts on what this gateway did:
    a cancellation of its settlement or deferred claim, a 2601 of a message it answered, a
    settlement of a visit it numbered provisionally. Those stay here (found from outside: under
    route_legacy they went to the old system, which never had them, and its answer was kept;
    the clerk was told "cancelled" while this ledger kept the sale, and a withdrawn claim was
    replayed)."""
    if _PROVISIONAL_VISIT.search(req.input):
        return True
    lookup: Callable[[asyncpg.Connection], Awaitable[bool]]
    if tx.acts_on is not None:
        omsgid = tx.acts_on(req)
        if not omsgid:
            return False
        lookup = functools.partial(
            idempotency.answered_here, msgid=omsgid, fixmedins_code=req.fixmedins_code
        )
    elif tx.deferral is Deferral.CANCEL_CLAIM:
        try:
            setl_id, visit, _ = deferral.withdrawal_ref(req)
        except GatewayError:
            return True  # refused here, in the words the handler uses
        if deferral.is_claim_id(setl_id):
            return True
        lookup = functools.partial(
            _held_here,
            setl_id=setl_id,
            mdtrt_id=visit or None,
            fixmedins_code=req.fixmedins_code,
        )
    else:
        return False
    wait = gw.config.journal.ledger_lookup_seconds
    try:
        ledger = await gw.ledgers.of_request(req, wait)
        async with asyncio.timeout(wait), db.leased(ledger.pool, wait) as conn:
            return await lookup(conn)
    except (TimeoutError, *db.UNAVAILABLE, asyncpg.PostgresError):
        # Not known: the old system answers for what it holds, and refuses the rest.
        return False


async def _held_here(
    conn: asyncpg.Connection, *, setl_id: str, mdtrt_id: str | None, fixmedins_code: str
) -> bool:
    """A settlement of this ledger, not the old system's kept under route_legacy (the two
    systems' numbers may coincide: the visit named tells them apart, as the cancellation does)."""
    if await legacy_settlements.in_force(
        conn, fixmedins_code=fixmedins_code, setl_id=setl_id, mdtrt_id=mdtrt_id
    ):
        return False
    return await settlements.held(conn, fixmedins_code, setl_id)


def _note(breaker: Breaker, ok: bool, timeout: bool, started: float) -> None:
    now = asyncio.get_running_loop().time()
    # The loop's clock is time.monotonic; stalls are kept in perf_counter: compare durations.
    since = time.perf_counter() - (now - started)
    stalled = loop_stalls().stalled(since, time.perf_counter())
    seconds = max(0.0, now - started - stalled)
    if timeout and stalled > 0.0 and seconds < breaker.config.latency_target_seconds:
        return  # the old system was not given its time: the loop stood still
    if breaker.is_open:
        breaker.probe_result(ok)
        if breaker.ready_to_close():
            breaker.close("原系统恢复")
    else:
        breaker.record(ok, timeout=timeout, seconds=seconds)


# --------------------------------------------------------------------------------- observation


def observe(
    gw: Gateway,
    fixmedins_code: str,
    ok: bool,
    timeout: bool,
    seconds: float,
    ledger: str = MAIN,
    settles: bool = False,
) -> None:
    """Feed the breaker of the ledger database the call used, and the institution trigger with
    what is not the database's failure.

    A database that stops answering fails every institution's calls; its breaker sees them all
    and opens first (or together). Those failures are not one institution's: fed to its trigger
    as well, they would write an institution rule (manual recovery) for every institution that
    happened to be busy, which outlives the outage — now that the rule lives in the main database
    while a cluster is down, it would be written."""
    breaker = gw.ledger_breaker(ledger)
    breaker.record(ok, timeout=timeout, seconds=seconds, write=settles, who=fixmedins_code)
    if not ok and breaker.is_open:
        return
    if not ok and breaker.suspected:
        # While the breaker's probe decides whose they are, they are nobody's yet (found by a
        # test: an institution alone on a dead cluster got an institution rule, which outlived
        # the outage, before the probe had opened the cluster's breaker); the probe's answer
        # gives them to their institutions, or to nobody.
        if fixmedins_code:
            gw.await_verdict(breaker, fixmedins_code, timeout, seconds)
        return
    gw.triggers.record(fixmedins_code, ok, timeout, seconds)


# How long a starting process drains dead processes' segments before it serves (the watcher
# drains what is left).
START_DRAIN_SECONDS = 10.0


async def take_over_dead_segments(gw: Gateway) -> None:
    """Before the first request: the claims in other processes' journal segments (those that
    died holding them, kill -9 or a crash, and a live sibling's not yet drained) are answered
    by this one, and dead ones' drained into the ledger if it can be within
    START_DRAIN_SECONDS. Found from outside: a restarted gateway served before its
    watcher drained the dead process's segment, and retries of the acknowledged claims in
    that second (patients who had paid in cash) were settled again, for real."""
    from gateway.emergency.deferred import (
        replay,  # replay imports the handlers, which import this module
    )

    if not gw.journal.drainable_exists():
        return
    await asyncio.to_thread(gw.journal.adopt_siblings)  # their answers, and a live sibling's
    try:
        async with asyncio.timeout(START_DRAIN_SECONDS):
            await replay.drain(gw, gw.journal)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Answered from the adopted claims meanwhile; the watcher drains them.
        log.warning("journal not drained at start", exc_info=True)


async def watch_ledger(gw: Gateway, every: float = 0.5) -> None:
    """Probe the ledger while its breaker is open; drain the journal, then close (and the old
    system's breaker, in a task of its own: `probe_legacy`).

    Also drains segments left by processes that died (their locks are gone), and exports the
    number of claims waiting. The breakers discount time the loop stood still: the ticker that
    measures it lives as long as this watcher."""
    stalls = loop_stalls()
    stalls.on_stall = metrics.LOOP_STALLED.inc
    ticker = asyncio.create_task(stalls.run())
    # Its own task: a probe of an old system that does not answer waits its timeout, which
    # must not hold the ledger's watch.
    legacy = asyncio.create_task(_watch_legacy(gw, every))
    # Its own task too: the watch's sweeps take seconds, and a sibling's claims must be known
    # within half a second of their segment appearing (`journal.siblings`).
    siblings = asyncio.create_task(_watch_siblings(gw, every))
    try:
        await _watch_ledger(gw, every)
    finally:
        for task in (ticker, legacy, siblings):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _watch_siblings(gw: Gateway, every: float) -> None:
    """Other processes' journal segments read as they appear and grow: their claims' retries
    are answered here, never settled for real (journal.adopt_siblings)."""
    while True:
        await asyncio.sleep(every)
        if not gw.journal.drainable_exists():
            gw.journal.siblings = False
            continue
        try:
            await asyncio.to_thread(gw.journal.adopt_siblings)
        except OSError:
            log.warning("journal segments not read this round", exc_info=True)


async def _watch_legacy(gw: Gateway, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await probe_legacy(gw)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("legacy probe failed", exc_info=True)


async def _watch_ledger(gw: Gateway, every: float) -> None:
    from gateway.emergency.deferred import (
        replay,  # replay imports the handlers, which import this module
    )

    last_sweep = 0.0
    # Claims pending in each ledger database, as last read: one out of reach keeps its last
    # count (found from outside: the gauge fell from 179 to 4 when the ledger stopped, the
    # claims still pending there left out while only the local journal was counted).
    pending_in: dict[str, int] = {}
    failed_in: dict[str, int] = {}
    while True:
        await asyncio.sleep(every)
        loop_now = asyncio.get_running_loop().time()
        # Each ledger database on its own: a cluster down is probed, and drained into once it
        # answers, while the others are swept as usual.
        for ledger in gw.ledgers.all:
            breaker = gw.ledger_breaker(ledger.name)
            try:
                if breaker.is_open and breaker.probe_due():
                    breaker.probe_result(await db.writable(ledger.pool))
                    if breaker.ready_to_close() and await _may_close(gw, breaker):
                        async with asyncio.timeout(30):
                            await replay.drain(gw, gw.journal, _reachable(gw, ledger.name))
                        breaker.close("数据库恢复，暂存业务已转入账本")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "ledger watch step failed", exc_info=True, extra={"ledger": ledger.name}
                )
        if loop_now - last_sweep < 5.0:
            continue
        last_sweep = loop_now
        try:
            async with asyncio.timeout(10):
                # Claims appended while the previous drain ran, and segments of dead processes;
                # not while a breaker is open (its closing drains what it can reach).
                open_now = any(gw.ledger_breaker(p.name).is_open for p in gw.ledgers.all)
                if not open_now and (gw.journal.holds_anything or gw.journal.drainable_exists()):
                    await replay.drain(gw, gw.journal)
                reachable = [p for p in gw.ledgers.all if not gw.ledger_breaker(p.name).is_open]
                async with contextlib.AsyncExitStack() as stack:
                    conns = [
                        await stack.enter_async_context(db.leased(p.pool, 2.0)) for p in reachable
                    ]
                    for p, conn in zip(reachable, conns, strict=True):
                        pending_in[p.name] = await deferred.pending_claims(conn)
                        failed_in[p.name] = await deferred.failed_claims(conn)
                        gw.ledger_claims[p.name] = await deferred.holding_claims(conn)
                    if len(conns) == len(gw.ledgers.all):  # a part would read as paid out
                        await payouts.refresh_metrics(conns, dt.datetime.now(dt.UTC))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("ledger watch step failed", exc_info=True)
        if not any(gw.ledger_breaker(p.name).is_open for p in gw.ledgers.all):
            try:
                # After the counts, and bounded: found by a test, a ledger cut before its
                # breaker opened held this step, and the claims gauge with it, for seconds.
                async with asyncio.timeout(5):
                    await replay.apply_released_calls(gw, lambda code: _defers_calls(gw, code))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deferred visit calls not applied this round", exc_info=True)
        # The claims this process holds in its local journal count too, read or not the ledger
        # (found from outside: the gauge said 0 through a whole outage, the claims at risk in
        # the journal, and read the ledger's count only once it was drained).
        # Two gauges: the ledger's and dead workers' segments are the same for every worker,
        # each one's own journal is its own (metrics.DEFERRED_CLAIMS). A killed worker's claims
        # count until drained (found from outside: they dropped out of the figure at the kill).
        unheld = 0
        if gw.journal.drainable_exists():
            try:
                dead = await asyncio.to_thread(gw.journal.unheld_claims)
                unheld = len(dead - gw.journal.claims.keys())
            except OSError:
                log.warning("journal segments not counted this round", exc_info=True)
        metrics.DEFERRED_CLAIMS.set(sum(pending_in.values()) + unheld)
        metrics.FAILED_CLAIMS.set(sum(failed_in.values()))
        metrics.JOURNALED_CLAIMS.set(gw.journal.claims_waiting)


def _defers_calls(gw: Gateway, fixmedins_code: str) -> bool:
    """Whether the plan defers the institution's encounter calls now, in any medical category."""
    institution = gw.snapshot.institution(fixmedins_code)
    if institution is None:
        return False  # no longer known: applied, and its handler answers for it
    now = dt.datetime.now()
    return any(
        (d := gw.plan.decide(fixmedins_code, institution.admdvs, TxClass.ENCOUNTER, now, c))
        is not None
        and d.action is Action.DEFER
        for c in (None, *(category.value for category in Category))
    )


def _reachable(gw: Gateway, closing: str) -> Callable[[str], bool]:
    """Whether to drain into a ledger database now: its breaker is closed, or it is the one
    about to close (its probes answered)."""

    def reachable(ledger: str) -> bool:
        return ledger == closing or not gw.ledger_breaker(ledger).is_open

    return reachable


LEDGER_TRIGGER = "trigger:postgres"


async def _may_close(gw: Gateway, breaker: Breaker) -> bool:
    """Automatic recovery closes at once. Manual recovery waits for a person: the protective
    action is written as a global plan rule (the ledger answers again by now), and the breaker
    closes once the team has cleared it (`plan clear --scope global --class settlement`)."""
    if breaker.config.recover == "auto":
        return True
    held = any(
        r.scope == "global" and r.klass is TxClass.SETTLEMENT and r.operator == LEDGER_TRIGGER
        for r in gw.plan.rules
    )
    if breaker.reason.startswith("待人工恢复"):
        return not held
    async with db.leased(gw.pool, 5.0) as conn:
        await plan_store.set_rule(
            conn,
            scope="global",
            klass=TxClass.SETTLEMENT,
            action=breaker.config.action,
            reason=f"待人工恢复：账本数据库已恢复连接，熔断原因：{breaker.reason}",
            operator=LEDGER_TRIGGER,
        )
    await gw.reload_plan(force=True)
    await gw.announce_plan_change()
    breaker.reason = "待人工恢复：" + breaker.reason
    return False


PLAN = dispatch.PlanHook(detours, intercept, answers_retries)


def install() -> None:
    """Hook the plan into dispatch (idempotent)."""
    if PLAN not in dispatch.PLAN_HOOK:
        dispatch.PLAN_HOOK.append(PLAN)
    if observe not in dispatch.OBSERVERS:
        dispatch.OBSERVERS.append(observe)
