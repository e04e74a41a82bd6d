"""2601 冲正: undo a committed original exactly, or bar an original that never arrived.

Reversible originals (protocol §2.6): 2102, 2207, 2304 (a settlement is cancelled, exactly as
2103/2208/2305 would), 2103, 2208, 2305 (the cancelled settlement is reinstated with exactly the
amounts it had, only while nothing it depends on changed since: `settlements.reinstate`), 2401
(the admission is cancelled, only while it has no lines and no settlement in force). An original
this gateway never saw gets a tombstone: when it arrives late it is refused, so the two sides
cannot disagree. Each undo and its precondition: docs/reliability.md, "Undo and dates".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import asyncpg

from gateway.core.model import Category
from gateway.ledger import (
    db,
    deferred,
    encounters,
    fees,
    idempotency,
    manual_claims,
    reversals,
    settlements,
)
from gateway.protocol.errors import (
    BadRequest,
    Conflict,
    GatewayError,
    HeldByPlan,
    NotFound,
    Unavailable,
)
from gateway.protocol.transaction import TRANSACTIONS, Kind, Transaction, Undo
from gateway.services import cancellation

_CATEGORIES = {
    "pharmacy": frozenset({Category.PHARMACY.value}),
    "outpatient": frozenset({Category.OUTPATIENT.value, Category.CHRONIC.value}),
    "inpatient": frozenset({Category.INPATIENT.value}),
}


async def reverse(
    conn: asyncpg.Connection,
    *,
    fixmedins_code: str,
    psn_no: str,
    omsgid: str,
    oinfno: str,
    msgid: str,
    now: dt.datetime,
    refusal: bytes,
    settlements_deferred: bool = False,
    owner: str | None = None,
    undo_refusal: Callable[..., GatewayError | None] | None = None,
) -> tuple[str, str | None]:
    """Reverse (fixmedins_code, omsgid); returns "reversed" or "tombstone", with the clerk's
    instruction where the undo needs one (a replayed deferred claim's settlement: the whole bill
    is refunded in cash). Caller holds the tx.
    `settlements_deferred`: the emergency plan defers the original's settlements now, and a
    settlement in force is then neither cancelled nor put back, as by 2208/2103 (found from
    outside: a 2601 cancelled what a 2103 of the same sale was refused).
    In a ledger split by region, the caller then bars a tombstoned original in the other
    databases too (`bar_elsewhere`).
    `owner`: another institution whose code the original's msgid begins with (protocol §1.4: an
    institution's msgid is its own code, the time and a serial); such an original that this
    institution never sent is that institution's, and is refused, not barred.
    `undo_refusal`: by the settlement's medical category (and the words a deferral refuses in),
    the plan's refusal of undoing it, or of putting a cancelled one back, now (scopes narrowed
    to a category, which the 2601 itself does not name)."""
    original = TRANSACTIONS.get(oinfno)
    if original is None or original.undo is Undo.NONE:
        reversible = "、".join(
            sorted(t.infno for t in TRANSACTIONS.values() if t.undo is not Undo.NONE)
        )
        raise BadRequest(f"原交易编号{oinfno}不可冲正（可冲正：{reversible}）")
    row = await reversals.lock_original(conn, fixmedins_code, omsgid)
    if row is None:
        claim_no = await manual_claims.settled_under(conn, fixmedins_code, omsgid)
        if claim_no is not None:
            # Found from outside: a 2601 of a manual claim's settlement answered 成功 ("never
            # arrived, barred") while the settlement stayed in force; it is the agency's own.
            raise Conflict(
                f"原报文{omsgid}是经办机构零星报销{claim_no}的结算，不是本机构发送的交易，不能冲正"
            )
        if owner is not None:
            # Found from outside (twice): a pharmacy's 2601 of another's sale answered 成功,
            # "barred when it arrives", read at the counter as the sale reversed; nothing of the
            # other institution's changes, and no tombstone is wanted in this one's messages.
            raise NotFound(
                f"原报文{omsgid}不是本机构的报文（报文ID以定点医药机构编号{owner}开头），"
                "本机构没有该交易，未冲正任何交易；其他机构的交易只能由该机构冲正"
            )
        if await reversals.bar(conn, fixmedins_code, omsgid, oinfno, refusal):
            return "tombstone", None
        # The original committed while we waited on its key: reverse it after all.
        row = await reversals.lock_original(conn, fixmedins_code, omsgid)
        assert row is not None
    if row.answered_elsewhere:
        # Its answer was the old system's (route_legacy): whatever it did is there.
        raise Conflict(f"原报文{omsgid}已按应急预案转原医保系统办理，请在原系统冲正")
    if row.tombstone or row.reversed_by is not None:
        raise Conflict(f"原报文{omsgid}已冲正，不能重复冲正")
    if row.infno != oinfno:
        raise BadRequest(f"原报文{omsgid}的交易编号为{row.infno}，与oinfno {oinfno}不符")
    warning = None
    if row.infcode == 0:
        if original.undo is Undo.SETTLEMENT:
            warning = await _undo_settlement(
                conn,
                fixmedins_code,
                psn_no,
                omsgid,
                original,
                msgid,
                now,
                settlements_deferred,
                undo_refusal,
            )
        elif original.undo is Undo.CANCELLATION:
            warning = await _undo_cancellation(
                conn,
                fixmedins_code,
                psn_no,
                omsgid,
                original.kind,
                now,
                settlements_deferred,
                undo_refusal,
            )
        else:
            await _undo_admission(conn, fixmedins_code, psn_no, omsgid)
    else:
        # Said so (found from outside: 成功 alone, after a refused cancellation, read to the
        # clerk as the settlement put back in force).
        warning = (
            f"原报文{omsgid}当时未办理成功（已被拒绝），未产生费用，本次冲正仅作登记，原业务状态不变；"
            "该报文ID再次发送将答复已被冲正"
        )
    # A failed original changed nothing; it is only marked, so it cannot be reversed twice.
    # Either way its retries are refused from now on, in the words a late original gets.
    await reversals.mark_reversed(conn, fixmedins_code, omsgid, msgid, refusal)
    return "reversed", warning


async def _undo_settlement(
    conn: asyncpg.Connection,
    code: str,
    psn_no: str,
    omsgid: str,
    original: Transaction,
    msgid: str,
    now: dt.datetime,
    settlements_deferred: bool,
    undo_refusal: Callable[..., GatewayError | None] | None = None,
) -> str | None:
    row = await reversals.settlement_of(conn, code, omsgid, original.infno)
    if row is None:
        raise await _no_settlement(conn, code, omsgid, original)
    if row.psn_no != psn_no:
        raise Conflict("人员编号与原结算的参保人不一致")
    if row.status != "settled":
        replaced = await settlements.replacement(conn, row.setl_id)
        raise Conflict(replaced or f"原结算{row.setl_id}已撤销，无需冲正")
    if settlements_deferred:
        raise HeldByPlan(cancellation.CANCEL_REFUSED_MSG)
    if undo_refusal is not None:
        refused = undo_refusal(row.category, deferred_words=cancellation.CANCEL_REFUSED_MSG)
        if refused is not None:
            raise refused
    kind = original.kind
    assert kind is not None
    if kind is Kind.INPATIENT:
        await cancellation.no_claim_waiting(conn, row.mdtrt_id, "冲正该住院的结算")
    try:
        rec, balance = await settlements.cancel(
            conn,
            fixmedins_code=code,
            setl_id=row.setl_id,
            mdtrt_id=row.mdtrt_id,
            psn_no=psn_no,
            msgid=msgid,
            now=now,
            categories=_CATEGORIES[kind],
        )
    except settlements.AlreadyCancelled:
        # A 2103/2208 committed between the read above and the lock: the same refusal as
        # when it had committed before.
        raise Conflict(f"原结算{row.setl_id}已撤销，无需冲正") from None
    if kind is Kind.PHARMACY:
        # 2102 opened the visit and stored its lines in the same stroke: undo those too.
        await fees.delete_unsettled(conn, row.mdtrt_id)
        await encounters.update(conn, row.mdtrt_id, status="cancelled")
    # A replayed deferred claim's settlement: the counter refunds the whole bill, as for its
    # 2208 (found from outside: the 2601 answered 成功 alone, the withdrawn reimbursement unsaid).
    replayed = await cancellation.replayed(conn, row.setl_id)
    return cancellation.Cancelled(record=rec, balc=balance, replayed=replayed).warning()


REINSTATE_REFUSED_MSG = "应急处置期间不能冲正医保结算的撤销（恢复原结算），请待系统恢复后再办理冲正"
REINSTATE_REJECT_MSG = (
    "医保系统按应急预案暂停办理此项业务（{why}）：原结算已撤销，未恢复；请待系统恢复后再办理冲正"
)


async def _no_settlement(
    conn: asyncpg.Connection, code: str, omsgid: str, original: Transaction
) -> Conflict | NotFound:
    """Why a settling message that committed has no settlement to cancel: it was answered with
    a deferred claim, still waiting for replay or withdrawn. Found from outside: told "未找到原
    报文的结算", a clerk took the visit as never charged, and the replay settled it later."""
    claim = await deferred.claim_of_message(conn, code, omsgid)
    if claim is None:
        return NotFound(f"未找到原报文{omsgid}的结算")
    if claim["status"] == "withdrawn":
        return Conflict(f"原报文{omsgid}的暂存结算{claim['claim_id']}已撤销，无需冲正")
    assert original.kind is not None  # every settling transaction names its kind of visit
    _, undo = settlements.UNDONE_BY[original.kind.value]
    target = claim["setl_id"] or claim["claim_id"]
    state = {"pending": "待补结算", "failed": "补结算未成功"}.get(
        claim["status"], f"已补结算为{target}"
    )
    return Conflict(
        f"原报文{omsgid}是应急期间的暂存结算{claim['claim_id']}（{state}），不能冲正；"
        f"如需撤销请对结算ID{target}发起{undo}"
    )


async def _undo_cancellation(
    conn: asyncpg.Connection,
    code: str,
    psn_no: str,
    omsgid: str,
    kind: Kind | None,
    now: dt.datetime,
    settlements_deferred: bool,
    undo_refusal: Callable[..., GatewayError | None] | None = None,
) -> str | None:
    assert kind is not None  # every cancellation names the kind of visit it cancels
    if undo_refusal is not None and not settlements_deferred:
        # Putting a cancelled settlement back in force is undoing too (found from outside: under
        # a category's rule a 2601 of a 2208 put the settlement back, the account paying again).
        category = await settlements.category_cancelled_by(conn, code, omsgid)
        refused = undo_refusal(
            category, deferred_words=REINSTATE_REFUSED_MSG, rejected_words=REINSTATE_REJECT_MSG
        )
        if refused is not None:
            raise refused
    if kind is not Kind.PHARMACY and not settlements_deferred:
        mdtrt_id = await settlements.visit_cancelled_by(conn, code, omsgid)
        if mdtrt_id is not None:
            await cancellation.no_claim_waiting(conn, mdtrt_id, "冲正恢复原结算")
    setl_id = await settlements.reinstate(
        conn,
        now=now,
        fixmedins_code=code,
        cancel_msgid=omsgid,
        psn_no=psn_no,
        categories=_CATEGORIES[kind],
        # Found from outside: a 2601 of a claim's withdrawal was told to wait for the recovery,
        # and after it that there was nothing to undo; the settlement is looked for first.
        refused=REINSTATE_REFUSED_MSG if settlements_deferred else None,
    )
    if kind is Kind.PHARMACY:
        mdtrt_id = await settlements.visit_of(conn, setl_id)
        await encounters.update(conn, mdtrt_id, status="open")
    return await cancellation.reinstated_words(conn, setl_id)


async def _undo_admission(conn: asyncpg.Connection, code: str, psn_no: str, omsgid: str) -> None:
    mdtrt_id = await encounters.created_admission(conn, code, omsgid)
    if mdtrt_id is None:
        raise NotFound(f"未找到原报文{omsgid}的入院登记")
    enc = await encounters.get(conn, mdtrt_id, code, psn_no=psn_no, lock=True)
    if enc.status == "cancelled":
        raise Conflict(f"入院登记{mdtrt_id}已撤销，无需冲正")
    if await encounters.settled_count(conn, mdtrt_id) or await fees.has_lines(conn, mdtrt_id):
        raise Conflict("该住院已有费用明细或结算，请先撤销后再冲正入院")
    if enc.status == "discharged":
        # As 2404 (docs/reliability.md: the same preconditions); found from outside, an empty
        # discharged stay refused 2404 and took the 2601 of its 2401.
        raise Conflict(f"就诊ID{mdtrt_id}已出院，不能冲正入院；请先撤销出院（2405）")
    await encounters.update(conn, mdtrt_id, status="cancelled")


async def bar_elsewhere(
    pools: Sequence[asyncpg.Pool],
    fixmedins_code: str,
    omsgid: str,
    oinfno: str,
    refusal: bytes,
    wait: float,
) -> None:
    """An original no database knows, barred in every other ledger database of a split ledger
    (each committed on its own, before the 2601's own transaction): a late original is refused
    wherever its region or person sends it. If one of them has the original by now (it arrived
    meanwhile, routed there), the 2601 is refused as retryable: retried, it runs there."""
    for pool in pools:
        async with db.elsewhere(pool, wait) as conn, conn.transaction():
            if await reversals.bar(conn, fixmedins_code, omsgid, oinfno, refusal):
                continue
            found = await idempotency.lookup(conn, fixmedins_code, omsgid)
            if found is not None and not found.tombstone:
                raise Unavailable(
                    f"原报文{omsgid}刚刚到达中心，冲正未生效，请使用相同报文ID重试冲正（2601）"
                )
