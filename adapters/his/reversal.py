"""2601 冲正交易."""

from __future__ import annotations

import functools
from collections.abc import Callable

from adapters.national.envelope import (
    Code,
    Request,
    base_infno,
    decode_input,
    encode_response,
    msgid_shaped,
    text,
)
from adapters.national.wire import Node, required
from gateway.emergency import hook
from gateway.emergency.plan.rules import Action, TxClass
from gateway.protocol import transaction
from gateway.protocol.errors import BadRequest, GatewayError
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import reversal


class ReverseData(Node):
    psn_no: Code = None
    omsgid: Code = None
    oinfno: Code = None


class In2601(Node):
    data: ReverseData | None = None


def _omsgid(req: Request) -> str:
    """The original's msgid, where a split ledger looks for it ("" when the input lacks it:
    the handler refuses that)."""
    try:
        d = decode_input(req, In2601).data
    except GatewayError:
        return ""
    return text(d.omsgid) if d is not None else ""


@register("2601", "冲正交易", writes=True, klass=TxClass.SETTLEMENT, input=In2601, acts_on=_omsgid)
async def reverse(call: Call) -> Answer:
    d = decode_input(call.req, In2601).data
    if d is None:
        raise BadRequest("缺少输入节点data")
    omsgid = required(d.omsgid, "data.omsgid")
    if not msgid_shaped(omsgid):
        # Found from outside: an omsgid with blanks, full-width letters or "../" was answered
        # "registered as reversed" (a bar recorded for a message that could never arrive).
        raise BadRequest("原发送方报文ID data.omsgid格式错误（最长40位字母数字）")
    if omsgid == call.req.msgid:
        raise BadRequest("冲正报文不能冲正自身")
    # What a late original will be answered with, byte for byte, once it has been barred.
    refusal = encode_response(
        region=call.gw.region,
        received=call.now,
        output=None,
        err_msg=f"报文ID{omsgid}的交易已被冲正（2601），不再受理，请使用新的报文ID重新发起",
    )
    # A revision's code (2304A) names the same original as its base code.
    oinfno = base_infno(required(d.oinfno, "data.oinfno"))
    outcome, instruction = await reversal.reverse(
        call.conn,
        fixmedins_code=call.req.fixmedins_code,
        psn_no=required(d.psn_no, "data.psn_no"),
        omsgid=omsgid,
        oinfno=oinfno,
        msgid=call.req.msgid,
        now=call.now,
        refusal=refusal,
        settlements_deferred=_deferred(call, oinfno),
        owner=_owner(call, omsgid),
        undo_refusal=_undo_refusal(call, oinfno),
    )
    ledgers = call.gw.ledgers
    if outcome == "tombstone" and ledgers.split:
        await reversal.bar_elsewhere(
            [p.pool for p in ledgers.all if p.name != call.ledger],
            call.req.fixmedins_code,
            omsgid,
            base_infno(required(d.oinfno, "data.oinfno")),
            refusal,
            call.gw.config.deadlines.call_seconds,
        )
    if outcome == "tombstone":
        instruction = "原交易未到达中心，已登记冲正，原交易到达时将被拒绝"
    else:
        call.gw.recent.forget(call.req.fixmedins_code, omsgid)  # its retries are refused now
    return Answer({}, warn_msg=instruction)


def _owner(call: Call, omsgid: str) -> str | None:
    """Another registered institution whose code the msgid begins with, if any."""
    code = call.req.fixmedins_code
    head = omsgid[: len(code)]
    if head == code or call.gw.snapshot.institution(head) is None:
        return None
    return head


def _undo_refusal(call: Call, oinfno: str) -> Callable[..., GatewayError | None] | None:
    """What refuses undoing the original's settlement, by its medical category, while a plan
    scope narrowed to a category holds (hook.undo_refusal); None while none does."""
    original = transaction.of(oinfno)
    if original is None or not call.gw.plan.categorized:
        return None
    return functools.partial(
        hook.undo_refusal, call.gw, original, call.institution, call.now, ledger=call.ledger
    )


def _deferred(call: Call, oinfno: str) -> bool:
    """Whether the plan defers the original's settlements at this institution now (its plain
    scopes: the original's medical category is not in a 2601)."""
    original = transaction.of(oinfno)
    if original is None:
        return False
    decision = hook.decide(call.gw, original, call.institution, call.now, None, call.ledger)
    return decision is not None and decision.action is Action.DEFER
