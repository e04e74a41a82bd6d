"""A settlement's cancellation (2208 门诊, 2305 住院, 2103 药店结算撤销): exactly what it applied,
reversed, its lines unsettled again. A deferred claim's id is withdrawn by the adapter instead
(adapters.national.deferral), before this is reached."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from gateway.core import eligibility, settle
from gateway.core.catalog import Snapshot
from gateway.core.model import Accumulators
from gateway.core.money import fen_text
from gateway.ledger import deferred, encounters, legacy_settlements, persons, settlements
from gateway.ledger.settlements import Record
from gateway.protocol.errors import Conflict, RuleRejected
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind

# While the emergency plan defers a settlement's class, the settlements in force stay as they
# are: a cancellation (2208/2305/2103, or a 2601 of the sale) waits for the recovery.
CANCEL_REFUSED_MSG = "应急处置期间不能撤销已完成的医保结算，请待系统恢复后再办理撤销"
LEGACY_CANCEL_MSG = (
    "结算ID{setl_id}是应急预案转原系统期间由原系统办理的结算，不在本系统：请在原系统办理撤销，"
    "或请应急小组为本机构设置转原系统（route_legacy）后以相同交易撤销"
)


class SettlementCancel(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2208/2305/2103: the settlement, its visit and its person."""

    setl_id: str
    mdtrt_id: str
    psn_no: str


class Replayed(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A settlement made by replaying a deferred claim: at the counter the patient paid the
    whole bill in cash under `claim_id`; the fund's share was owed to the patient
    (`reimbursement_fen`), and the cancellation withdrew it."""

    claim_id: str
    reimbursement_fen: int
    # The 就诊ID the claim's answer gave the counter (a pharmacy claim's is its own number: its
    # visit is made at replay, and the till never saw that one).
    counter_visit: str = ""


# What the bill was, kept in the counter's view of a replayed claim; who paid it is the counter's.
_THE_BILL = frozenset(
    ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
     "balc")
)  # fmt: skip


class Cancelled(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The settlement reversed and the account balance after the refund (fen)."""

    record: Record
    balc: int
    replayed: Replayed | None = None
    # The person's year as the cancellation left it: what each fund's remaining limit is read
    # from (`limits`).
    year_after: Accumulators | None = None

    def limits(self, snapshot: Snapshot) -> dict[str, int]:
        """Each capped fund's remaining annual limit after the refund (crt_payb_lmt_amt of the
        cancellation's fund rows: found from outside, the original's, as if the refund had left
        the fund's year as it was). Empty where it cannot be read: the rows keep the original's
        then, never failing a cancellation already made."""
        rec = self.record
        if self.year_after is None or rec.service_date is None:
            return {}
        try:
            return settle.limits_after(
                snapshot, rec.person, rec.service_date, rec.med_type, self.year_after
            )
        except RuleRejected:
            return {}

    def at_counter(self) -> Record:
        """What the counter refunds: the settlement as the counter took it. For a replayed
        claim that is the whole bill in cash, as the claim's answer said, not the replayed
        split (found from outside: a HIS refunding the cancellation's psn_cash_pay gave back
        only the cash part of the split, while the fund's share, owed to the patient, was
        withdrawn — the patient lost it)."""
        if self.replayed is None:
            return self.record
        return as_paid_at_counter(self.record, self.replayed)

    def warning(self) -> str | None:
        """The clerk's instruction for a replayed claim's cancellation."""
        if self.replayed is None:
            return None
        owed = self.replayed.reimbursement_fen
        withdrawn = f"；应支付给参保人的报销款{fen_text(owed)}元已取消" if owed else ""
        return (
            f"结算ID{self.record.setl_id}由暂存结算{self.replayed.claim_id}补结算，患者在窗口"
            f"已现金全额支付：请全额退还现金{fen_text(self.record.amounts['medfee_sumamt'])}元"
            f"{withdrawn}"
        )


async def reinstated_words(conn: asyncpg.Connection, setl_id: str) -> str | None:
    """The clerk's instruction when a 2601 puts back in force a replayed claim's settlement its
    2208/2103 cancelled: that cancellation's answer had said to refund the whole bill in cash
    and that the reimbursement owed was withdrawn (found from outside: the 2601 answered 成功
    alone while the reimbursement went back into the next payout batch, so a till that had
    refunded left the patient with the bill back and the reimbursement too)."""
    claim = await replayed(conn, setl_id)
    if claim is None:
        return None
    total = await settlements.medfee_of(conn, setl_id)
    owed = claim.reimbursement_fen
    restored = f"；应支付给参保人的报销款{fen_text(owed)}元恢复支付" if owed else ""
    return (
        f"结算ID{setl_id}（由暂存结算{claim.claim_id}补结算）的撤销已冲正，结算恢复有效："
        f"撤销时提示退还的现金{fen_text(total)}元不应退还，如已退还请向参保人收回{restored}"
    )


async def category_of(conn: asyncpg.Connection, fixmedins_code: str, setl_id: str) -> str | None:
    """The medical category of the settlement a cancellation names (the plan's scopes narrowed
    to a category judge the cancellation by it: gateway.emergency.hook.undo_refusal)."""
    return await settlements.category_of(conn, fixmedins_code, setl_id)


async def cancel(
    conn: asyncpg.Connection, origin: Origin, now: dt.datetime, kind: Kind, a: SettlementCancel
) -> Cancelled:
    """Reverse the institution's settlement, only by the kind of visit it belongs to (an
    outpatient cancellation never reverses a stay's settlement)."""
    # The visit as the counter knows it: a provisional id handed out under the plan names the
    # visit it became (found from outside: a till that only ever had the PV… id was told the
    # replayed settlement was not of its visit).
    a = msgspec.structs.replace(
        a, mdtrt_id=await encounters.real_id(conn, a.mdtrt_id, origin.fixmedins_code)
    )
    # Read before the cancel: payouts.hold_for_cancel changes the owed line, not the claim.
    claim = await replayed(conn, a.setl_id)
    if claim is not None and a.mdtrt_id == claim.claim_id:
        # A pharmacy claim's answer gave its number as the sale's 就诊ID too; its visit is made
        # at replay, under an id the till never saw (found from outside: told to cancel by the
        # replayed setl_id, the till was then told that 就诊ID did not match it).
        a = msgspec.structs.replace(a, mdtrt_id=await settlements.visit_of(conn, a.setl_id))
    if kind is Kind.INPATIENT:
        await no_claim_waiting(conn, a.mdtrt_id, "撤销该住院的结算")
    if await legacy_settlements.in_force(
        conn, fixmedins_code=origin.fixmedins_code, setl_id=a.setl_id, mdtrt_id=a.mdtrt_id
    ):
        # Found from outside: told "does not exist" of a settlement the gateway itself names
        # when it refuses to settle those lines again.
        raise Conflict(LEGACY_CANCEL_MSG.format(setl_id=a.setl_id))
    rec, balance_after = await settlements.cancel(
        conn,
        fixmedins_code=origin.fixmedins_code,
        setl_id=a.setl_id,
        mdtrt_id=a.mdtrt_id,
        psn_no=a.psn_no,
        msgid=origin.msgid,
        now=now,
        categories=frozenset(c.value for c in eligibility.KIND_CATEGORIES[kind]),
    )
    year = rec.service_date.year if rec.service_date is not None else now.year
    return Cancelled(
        record=rec,
        balc=balance_after,
        replayed=claim,
        year_after=await persons.year_accumulators(conn, rec.person.psn_no, year),
    )


async def no_claim_waiting(conn: asyncpg.Connection, mdtrt_id: str, doing: str) -> None:
    """Nothing is undone or put back on a visit while a deferred claim holds its lines (pending,
    or failed at replay): the claim was taken over the visit as it stood, and replay settles
    exactly its lines. Found from outside: a stay's mid-way settlement cancelled under its
    closing claim left a line unsettled under the closing settlement replay made; a cancelled
    one put back (2601 of its 2305) took a line the claim held, and replay failed."""
    for claim in await deferred.pending_on_visits(conn, [mdtrt_id]):
        if claim.elsewhere_lines is None:
            raise Conflict(
                f"该就诊有应急预案暂存结算{claim.claim_id}尚未补结算，暂不能{doing}：请待补结算"
                "后再办理，或先撤销该暂存结算"
            )


def as_paid_at_counter(rec: Record, claim: Replayed) -> Record:
    """A replayed claim's settlement as its counter took it: the whole bill in cash, no fund,
    no account (the claim's own answer); the split it was replayed at is the agency's, paid to
    the patient, not the institution's. Nothing of it is cleared with the institution either,
    so it carries no clearing fields and no fund ratio, as the claim's answer carried none (found
    from outside: a 2208 of one answered clr_type 11 and clr_optins, which a HIS books into its
    3201 totals, and the centre's leave out)."""
    bill = rec.amounts
    amounts = {name: (bill[name] if name in _THE_BILL else 0) for name in bill}
    amounts["psn_part_amt"] = amounts["psn_cash_pay"] = bill["medfee_sumamt"]
    # Under the 就诊ID the counter was given (found from outside: a pharmacy till's 2103 and
    # 5203 answered the visit replay made, which the till had never seen).
    return msgspec.structs.replace(
        rec,
        amounts=amounts,
        funds=(),
        clr_optins="",
        clr_type="",
        pool_prop_bp=0,
        mdtrt_id=claim.counter_visit or rec.mdtrt_id,
    )


def replayed_words(rec: Record, replayed: Replayed) -> str:
    """What a query of a replayed claim's settlement tells the counter (found from outside: a
    5203 of it read as an ordinary settlement, the fund's share as cash the counter took too
    much of; a clerk refunding it would pay the patient that share a second time)."""
    bill = fen_text(rec.amounts["medfee_sumamt"])
    head = f"结算ID{rec.setl_id}由应急期间暂存结算{replayed.claim_id}补结算，参保人已在窗口现金全额支付{bill}元"
    if rec.status == "cancelled":
        return f"{head}；该结算已撤销，现金应已全额退还，报销款已取消"
    owed = replayed.reimbursement_fen
    share = (
        f"基金应支付部分{fen_text(owed)}元由医保经办机构直接支付给参保人"
        if owed
        else "医保基金无支付"
    )
    return f"{head}；{share}，本机构无需退费"


async def replayed(conn: asyncpg.Connection, setl_id: str) -> Replayed | None:
    """The deferred claim `setl_id` was replayed from, or None."""
    claim = await deferred.replayed_claim(conn, setl_id)
    if claim is None:
        return None
    return Replayed(
        claim_id=claim["claim_id"],
        reimbursement_fen=claim["reimbursement_fen"],
        counter_visit=claim["counter_visit"],
    )
