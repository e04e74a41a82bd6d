"""The HIS side of a visit's settlement: 2206/2207/2208 and 2303/2304/2305 decoded into the
request the settlement build reads (gateway.services.visit_settlement), and its answer encoded."""

from __future__ import annotations

import datetime as dt
from typing import Any

from adapters.national import deferral
from adapters.national.envelope import Code, Request, decode_input, text
from adapters.national.output import moment, setldetail, setlinfo
from adapters.national.wire import (
    In2206,
    In2208,
    SettleData,
    cert_type_text,
    certificate_if_sent,
    fen,
    fen_required,
    flag,
    required,
)
from gateway.app.runtime import Gateway
from gateway.core.dictionaries import labels
from gateway.core.model import Institution
from gateway.core.money import shown
from gateway.emergency import hook
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.pipeline.grouped import Job
from gateway.protocol.errors import BadRequest
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import TRANSACTIONS, Answer, Call, Kind, Mode
from gateway.services import cancellation, visit_settlement
from gateway.services.visit_settlement import ALL, Context, Declared, Record, VisitAsk, visit_job


def declared_of(data: SettleData) -> Declared:
    """The totals the client sent, signed: a HIS adding up its unsettled lines, refunds of lines
    settled earlier among them, sends a negative component (found from outside: told the field
    could not be negative, where the settlement's own refusal names the component and the way
    out; those words come first now, as for a request that sends no split)."""
    return Declared(
        medfee_sumamt=fen_required(data.medfee_sumamt, "data.medfee_sumamt", signed=True),
        fulamt_ownpay_amt=fen(
            data.fulamt_ownpay_amt, "data.fulamt_ownpay_amt", optional=True, signed=True
        ),
        overlmt_selfpay=fen(
            data.overlmt_selfpay, "data.overlmt_selfpay", optional=True, signed=True
        ),
        preselfpay_amt=fen(data.preselfpay_amt, "data.preselfpay_amt", optional=True, signed=True),
        inscp_scp_amt=fen(data.inscp_scp_amt, "data.inscp_scp_amt", optional=True, signed=True),
    )


def asked_of(req: Request, kind: Kind) -> VisitAsk:
    """A 2206/2207/2303/2304 as the settlement build reads it; refuses what cannot be one."""
    data = decode_input(req, In2206).data
    if data is None:
        if b'"mdtrtinfo"' in req.input:
            # Guangzhou's pilot 2206/2207 (IBORN RequestGzsiModel2206/2207): another shape,
            # refused (docs/protocol.md), in words that say which (found from outside: told only
            # that data was missing).
            raise BadRequest(
                "缺少输入节点data：结算类交易按国家接口的data节点发送，广州试点报文的mdtrtinfo"
                "节点格式不受支持"
            )
        raise BadRequest("缺少输入节点data")
    mid_setl_flag = flag(data.mid_setl_flag, "data.mid_setl_flag")
    _check_settle_way(data.psn_setlway)
    declared = declared_of(data)
    # A stay's closing settlement may net to zero (its charges refunded after a mid-way one);
    # any other settlement of nothing is a mistake at the counter.
    if declared.medfee_sumamt == 0 and not (kind is Kind.INPATIENT and mid_setl_flag == "0"):
        raise BadRequest("医疗费总额medfee_sumamt为0，没有需要结算的费用")
    return VisitAsk(
        psn_no=required(data.psn_no, "data.psn_no"),
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        # 2303/2304 carry no med_type (protocol.md §2.4): the admission (2401) gave it.
        med_type=required(data.med_type, "data.med_type")
        if kind is Kind.OUTPATIENT
        else text(data.med_type),
        acct_used=flag(data.acct_used_flag, "data.acct_used_flag") == "1",
        mid_setl_flag=mid_setl_flag,
        chrg_bchno=required(data.chrg_bchno, "data.chrg_bchno") if kind is Kind.OUTPATIENT else ALL,
        declared=declared,
        insutype=text(data.insutype),
        cert_type=cert_type_text(data.mdtrt_cert_type),
        cert=certificate_if_sent(data.mdtrt_cert_type, data.mdtrt_cert_no, "data"),
    )


# The national codes, and the local refinements of 02 the protocol names beside them.
_SETTLE_WAYS = labels("psn_setlway") | {"0201": "单病种", "0202": "日间手术"}
_SETTLE_WAYS_TEXT = "、".join(f"{code}（{name}）" for code, name in _SETTLE_WAYS.items())


def _check_settle_way(value: Code) -> None:
    """个人结算方式, where sent, one of the codes (protocol.md §4). Found from outside: "99"
    settled like any other, where every other code field is held to its list. The split is by
    item whichever is sent; one left empty is taken, as clients leave it."""
    sent = text(value)
    if sent and sent not in _SETTLE_WAYS:
        raise BadRequest(f"个人结算方式psn_setlway为“{shown(sent)}”，应为{_SETTLE_WAYS_TEXT}")


def output(rec: Record, ctx: Context, a: VisitAsk) -> dict[str, Any]:
    """The 2206/2207/2303/2304 answer: 结算信息 and 结算基金分项."""
    return {
        "setlinfo": setlinfo(rec, service_date=ctx.visit.service_date, mdtrt_cert_type=a.cert_type),
        "setldetail": setldetail(rec.funds),
    }


async def settle_visit(
    call: Call, *, kind: Kind, final: bool, only: frozenset[str] | None = None
) -> Answer:
    """Pre-settle (final=False, changes nothing) or settle the visit's unsettled lines on the
    call's own transaction; `only`: just these of them (a deferred claim's, at replay)."""
    built = await visit_settlement.settle_visit(
        call.conn,
        call.gw.snapshot,
        Origin.of(call.req),
        call.institution,
        call.now,
        asked_of(call.req, kind),
        output,
        kind=kind,
        final=final,
        only=only,
        respect_claims=call.mode is Mode.NORMAL,
        # A claim replayed after the year turned was judged by the bound when it was taken.
        dates=None if call.mode is Mode.REPLAY else call.gw.config.dates,
    )
    if not final:  # as the group read answers it (gateway.pipeline.dispatch._read)
        return Answer(built.output, warn_msg=built.warn_msg)
    return Answer(built.output, paid=built.paid)


async def settle_claim(call: Call, lines: frozenset[str]) -> Answer:
    """A deferred 2207/2304 at replay: exactly the lines it was taken for."""
    kind = TRANSACTIONS[call.req.infno].kind
    assert kind is not None  # a claim is a settlement's, which names its kind
    return await settle_visit(call, kind=kind, final=True, only=lines)


def outpatient_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2207 in a group commit: the same job as the single path's, in a batch."""
    return _outpatient(gw, req, institution, now, final=True)


def outpatient_preview_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2206 in a group read: the same job as the single path's pre-settlement, in a batch."""
    return _outpatient(gw, req, institution, now, final=False)


def inpatient_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2304 as its settlement's job: the judge of its claim under the plan (no group commit)."""
    return _visit(gw, req, institution, now, kind=Kind.INPATIENT, final=True)


def inpatient_preview_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2303 in a group read: the same job as the single path's pre-settlement."""
    return _visit(gw, req, institution, now, kind=Kind.INPATIENT, final=False)


def _outpatient(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime, *, final: bool
) -> Job | None:
    return _visit(gw, req, institution, now, kind=Kind.OUTPATIENT, final=final)


def _visit(
    gw: Gateway,
    req: Request,
    institution: Institution,
    now: dt.datetime,
    *,
    kind: Kind,
    final: bool,
) -> Job | None:
    a = asked_of(req, kind)
    if a.mdtrt_id.startswith(PROVISIONAL_PREFIX):
        return None  # an id handed out while the ledger was down: the single path resolves it
    return visit_job(
        gw.snapshot,
        Origin.of(req),
        institution,
        now,
        a,
        output,
        kind=kind,
        final=final,
        dates=gw.config.dates,
    )


async def cancel_settlement(call: Call, *, kind: Kind) -> Answer:
    """2208 / 2305: reverse a settlement; the answer is its amounts negated."""
    data = decode_input(call.req, In2208).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    setl_id = required(data.setl_id, "data.setl_id")
    if deferral.is_claim_id(setl_id):
        return await deferral.withdraw_claim(call)
    if call.gw.plan.categorized:
        # Its category is its settlement's (a cancellation names no med_type): a scope narrowed
        # to it refuses the undo as the plain scopes do before the handler.
        category = await cancellation.category_of(call.conn, call.req.fixmedins_code, setl_id)
        tx = TRANSACTIONS[call.req.infno]
        refused = hook.undo_refusal(call.gw, tx, call.institution, call.now, category, call.ledger)
        if refused is not None:
            raise refused
    a = cancellation.SettlementCancel(
        setl_id=setl_id,
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        psn_no=required(data.psn_no, "data.psn_no"),
    )
    done = await cancellation.cancel(call.conn, Origin.of(call.req), call.now, kind, a)
    rec = done.at_counter()
    info: dict[str, Any] = setlinfo(rec, sign=-1, balc=done.balc)
    info["setl_time"] = moment(call.now)
    # The cancellation's own msgid, as for every answer (README): found from outside, the
    # original's came back; the captured Hebei 2208 (clients.md A1) carries its own.
    info["medins_setl_id"] = call.req.msgid
    return Answer(
        {"setlinfo": info, "setldetail": setldetail(rec.funds, -1, done.limits(call.gw.snapshot))},
        warn_msg=done.warning(),
    )
