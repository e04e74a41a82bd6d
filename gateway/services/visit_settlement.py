"""The settlement of a visit's lines: outpatient (2206/2207) and inpatient (2303/2304).

One build, whoever asks: the counter alone or in a group-commit batch, a pre-settlement (the
same build, nothing written), a deferred claim at replay (exactly the claim's lines), bulk
catalog corrections (`settle_lines`). It works on a `VisitAsk`, the request as the rules need
it; the HIS adapter decodes the national shapes into one and encodes the answer (`Encode`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec

from adapters.national import deferral
from gateway.core import eligibility
from gateway.core.catalog import Snapshot
from gateway.core.dates import DateRules
from gateway.core.model import Category, Institution, PersonState, Settlement, Visit
from gateway.core.money import fen_text
from gateway.core.settle import settle
from gateway.ledger import encounters, fees, persons, settlements
from gateway.ledger.encounters import Encounter
from gateway.ledger.fees import ALL as ALL
from gateway.ledger.settlements import Context as Context
from gateway.ledger.settlements import Declared as Declared
from gateway.ledger.settlements import Record as Record
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job, VisitHeld, unchanged
from gateway.protocol.errors import Conflict, NotFound, NotInsured, RuleRejected, SelfPayStay
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind
from gateway.services.fee_uploads import one_disease
from gateway.services.settlement_state import preview, settle_alone


class VisitAsk(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2206/2207/2303/2304 as the rules read it (validated by the adapter)."""

    psn_no: str
    mdtrt_id: str
    med_type: str  # "" for a stay's settlement that sent none: the admission's applies
    acct_used: bool
    mid_setl_flag: str
    chrg_bchno: str  # fees.ALL for a stay (every unsettled line)
    declared: settlements.Declared
    insutype: str
    cert_type: str
    cert: persons.Certificate | None


# The answer a built settlement is encoded into (the adapter's national output).
Encode = Callable[[settlements.Record, settlements.Context, VisitAsk], Any]


def check_med_type(enc: Encounter, med_type: str) -> Category:
    """The med_type must be supported and belong to the kind of visit."""
    return eligibility.category_for(enc.kind, med_type, enc.mdtrt_id)


def visit_med_type(enc: Encounter, a: VisitAsk) -> VisitAsk:
    """The settlement's med_type is the one the visit recorded (the admission's, 2401; an
    outpatient visit's information, 2203); one sent must agree with it. Found from outside: an
    outpatient visit recorded as 14 (门诊慢特病) was settled as 11 when the 2206 said so, and one
    recorded as 11 at 90% as 14, where a stay's differing med_type was refused."""
    inpatient = enc.kind == Kind.INPATIENT
    # An outpatient visit whose 2203 was not sent holds only the registration's default (11,
    # no diagnosis): the settlement's own med_type stands.
    recorded = inpatient or enc.dise_codg or enc.med_type != encounters.REGISTRATION_MED_TYPE
    if not enc.med_type or not recorded:
        return a
    if a.med_type and a.med_type != enc.med_type:
        if inpatient:
            source, rule = "入院办理（2401）", "住院结算按入院时的医疗类别结算"
        else:
            source, rule = "就诊信息上传（2203）", "如需更改请重新上传就诊信息（2203）"
        raise RuleRejected(
            f"医疗类别{a.med_type}与{source}时的医疗类别{enc.med_type}不一致"
            f"（就诊ID{enc.mdtrt_id}），{rule}"
        )
    return msgspec.structs.replace(a, med_type=enc.med_type)


def _check_visit(enc: Encounter, kind: Kind, a: VisitAsk, *, final: bool) -> None:
    """What the visit must be for this settlement."""
    if enc.kind != kind:
        raise RuleRejected(
            f"就诊ID{a.mdtrt_id}不是{'门诊' if kind is Kind.OUTPATIENT else '住院'}就诊"
        )
    encounters.require_open(enc)
    if enc.selfpay:
        raise SelfPayStay(a.mdtrt_id)
    eligibility.require_insutype(a.insutype, enc.insutype, held_as="登记时的险种")
    check_med_type(enc, a.med_type)
    if kind is Kind.INPATIENT and final and a.mid_setl_flag == "0" and enc.status != "discharged":
        raise not_discharged()


def not_discharged() -> Conflict:
    """A stay's closing settlement before its discharge."""
    return Conflict("患者尚未办理出院（2402），不能进行出院结算；中途结算请传mid_setl_flag=1")


def context(
    origin: Origin, institution: Institution, enc: Encounter, a: VisitAsk
) -> settlements.Context:
    """The settlement's context: the visit as the rules see it and the request it records."""
    return settlements.Context(
        institution=institution,
        encounter=enc,
        visit=Visit(
            fixmedins_code=origin.fixmedins_code,
            mdtrt_id=enc.mdtrt_id,
            med_type=a.med_type,
            service_date=enc.begntime.date(),
            acct_used_flag=a.acct_used,
            dise_codg=enc.dise_codg,
        ),
        infno=origin.infno,
        msgid=origin.msgid,
        chrg_bchno="" if a.chrg_bchno == fees.ALL else a.chrg_bchno,
        mid_setl_flag=a.mid_setl_flag,
        dev_no=origin.dev_no,
        opter=origin.opter,
        mdtrtarea_admvs=origin.mdtrtarea_admvs,
        mdtrt_cert_type=a.cert_type,
    )


def person_state(held: Held, visit: VisitHeld) -> PersonState:
    """The person's state for a settlement of this visit, as the locked read has it."""
    assert held.person is not None
    enc = visit.encounter
    return PersonState(
        person=held.person,
        balance_fen=held.balance,
        year=held.year,
        admission_dedc_fen=enc.adm_dedc_fen,
        admission_dedc_used_fen=enc.adm_dedc_used_fen,
        other_inpatient_in_force=visit.other_inpatient_in_force,
    )


def settle_lines(
    snapshot: Snapshot,
    ctx: settlements.Context,
    held: Held,
    visit: VisitHeld,
    lines: list[fees.StoredLine],
    declared: settlements.Declared,
    now: dt.datetime,
    *,
    setl_serial: int,
    replaces: str | None,
) -> tuple[settlements.Record, Settlement, Writes]:
    """Settle these lines of the visit and stage everything it changes: the one settlement of
    a visit, whoever asks (the counter alone or in a batch, replay, bulk corrections)."""
    state = person_state(held, visit)
    s = settle(snapshot, ctx.visit, state, lines)
    settlements.check_declared(s, declared)
    writes = Writes()
    rec = settlements.stage(
        writes,
        snapshot,
        ctx,
        lines,
        s,
        state,
        now,
        setl_id=encounters.ledger_id(ctx.institution.admdvs, now, setl_serial),
        replaces=replaces,
    )
    return rec, s, writes


def refuse_reimbursed(visit: VisitHeld, enc: encounters.Encounter, total: int) -> None:
    """A bill the agency already reimbursed as a manual claim (零星报销: the person, the
    institution, the day and the total the same) is not settled again (found from outside: it
    was, and the funds paid one bill twice). The reverse, a claim of a bill settled here, is
    refused by the claim's settlement (gateway.services.manual_claims). A second bill of
    exactly the same total on the same day is for the agency to settle by hand, as there.
    A stay overlapping one the agency reimbursed is refused whatever its total."""
    for claim_no, admitted, discharged in visit.stay_reimbursed:
        raise Conflict(
            f"参保人{enc.psn_no}在本机构{admitted:%Y-%m-%d}至{discharged:%Y-%m-%d}的住院已由经办机构"
            f"零星报销（受理号{claim_no}），与本次住院时间重叠，疑为同一次住院重复结算，不予结算；"
            "如确为另一次住院，请联系经办机构核实后处理"
        )
    for claim_no, medfee in visit.reimbursed:
        if medfee == total:
            raise Conflict(
                f"参保人{enc.psn_no}于{enc.begntime.date().isoformat()}在本机构金额相同的费用"
                f"（{fen_text(total)}元）已由经办机构零星报销（受理号{claim_no}），"
                "疑为同一费用重复结算，不予结算；如确为另一笔费用，请联系经办机构核实后处理"
            )


def billable(dates: DateRules, enc: Encounter, admdvs: str, now: dt.datetime) -> None:
    """A visit is settled within the late-billing bound of the day it is settled, not only of
    the day it was registered: its service date picks the year that pays. Found from outside:
    a visit registered on 31 December, its date then the bound's first day, was settled after
    midnight from a year already closed, while a registration of a later day was refused."""
    why = dates.reason(enc.begntime, admdvs=admdvs, now=now)
    if why is not None:
        stay = enc.kind == "inpatient"
        raise RuleRejected(
            f"本次{'住院' if stay else '就诊'}的{'入院时间' if stay else '挂号时间'}{why}，"
            "不能再办理医保结算"
        )


def no_lines(kind: Kind) -> NotFound | Conflict:
    """What a settlement of a batch, or a stay, with no unsettled line is told."""
    if kind is Kind.INPATIENT:
        return _nothing_to_settle_in_stay(False)
    return NotFound("没有待结算的费用明细（可能已结算或未上传），请核对收费批次号")


def check_billed(kind: Kind, medfee_sumamt: int, lines: Sequence[fees.StoredLine]) -> None:
    """A settlement's lines exist and make the total it declares (settlement-rules §2)."""
    if not lines:
        raise no_lines(kind)
    settlements.check_total(medfee_sumamt, sum(ln.det_item_fee_sumamt for ln in lines))


def _nothing_to_settle_in_stay(any_settled: bool) -> Conflict | NotFound:
    """A stay's settlement that finds no fee line waiting, in the clerk's terms."""
    if any_settled:
        return Conflict(
            # Where a timed-out settlement's amounts are (found from outside: only the undo
            # was named).
            "本次住院的费用明细已全部结算，请勿重复结算，结算信息请用5203查询；"
            "如需重新结算，请先撤销原结算（2305）"
        )
    return NotFound("本次住院没有待结算的费用明细，请先上传住院费用明细（2301）")


def visit_job(
    snapshot: Snapshot,
    origin: Origin,
    institution: Institution,
    now: dt.datetime,
    asked: VisitAsk,
    encode: Encode,
    *,
    kind: Kind,
    final: bool = True,
    only: frozenset[str] | None = None,
    respect_claims: bool = True,
    dates: DateRules | None = None,
) -> Job:
    """A 2206/2207/2303/2304 as a Job: the visit and the person locked, the checks, the split
    and its writes in one pure build, whichever path runs it.

    `final=False`: a pre-settlement (run by `preview`: the same answer, nothing written but the
    visit's latest pre-settlement noted);
    `only`: just these of the lines (a deferred claim's, at replay, which settles the lines its
    pending claim holds: respect_claims=False);
    `dates`: the late-billing bound a counter's settlement is held to (`billable`).
    """
    a = asked

    def build(held: Held, _mdtrt_serial: int, setl_serial: int) -> Built:
        visit = held.visit
        code = origin.fixmedins_code
        encounters.own(visit.encounter if visit else None, a.mdtrt_id, code)
        assert visit is not None
        unchanged(visit)
        if respect_claims and only is None:
            deferral.refuse_if_held(visit.claimed, a.chrg_bchno)
        # The person after the claims: a claim's holder is named whoever asks.
        enc = encounters.own(visit.encounter, a.mdtrt_id, code, a.psn_no)
        this = visit_med_type(enc, a) if enc.kind == kind else a
        _check_visit(enc, kind, this, final=final)
        if dates is not None:
            billable(dates, enc, institution.admdvs, now)
        if kind is Kind.INPATIENT and visit.closing is not None:
            # A stay's closing settlement ends it: nothing is settled on it, mid-way or closing,
            # while one is in force (found from outside: a closing put back over a line uploaded
            # after its 2305 let a mid-way, or a second closing, settlement follow it).
            raise Conflict(
                f"本次住院已办理出院结算（结算ID{visit.closing}），费用明细已全部结算，请勿重复"
                "结算，结算信息请用5203查询；如需重新结算，请先撤销原结算（2305）"
            )
        lines = fees.of_batch(visit.unsettled, this.chrg_bchno)
        if only is not None:
            lines = _claimed(lines, only)
        if not lines:
            if kind is Kind.INPATIENT:
                # A stay has no charge batch to check (found from outside: a second 2304 on a
                # settled stay was told to check its 收费批次号, an outpatient field).
                raise _nothing_to_settle_in_stay(bool(visit.settled_batches))
            if final and this.chrg_bchno in visit.settled_batches:
                raise deferral.settled_already(this.chrg_bchno)
            raise no_lines(kind)
        if kind is Kind.OUTPATIENT:
            # The visit's 病种 may have changed (2203) since the batch's lines were taken.
            one_disease(enc, lines)
        if held.person is None:
            raise NotInsured(f"人员编号{this.psn_no}不存在，请重新读卡获取人员信息")
        refuse_reimbursed(visit, enc, sum(ln.det_item_fee_sumamt for ln in lines))
        persons.require_certificate(held.person, this.cert)
        persons.require_insured(held.person)
        ctx = context(origin, institution, enc, this)
        if not final:
            s = settle(snapshot, ctx.visit, person_state(held, visit), lines)
            settlements.check_declared(s, this.declared)
            rec = settlements.record_of(s, ctx, held.person, setl_id=None, setl_time=None)
            # All a pre-settlement writes: the visit's latest pre-settlement noted.
            noted = Writes()
            noted.add(
                settlements.NOTE_PRESETTLEMENT,
                a.mdtrt_id,
                origin.fixmedins_code,
                origin.infno,
                now,
            )
            return Built(encode(rec, ctx, this), noted, held.balance, held.year)
        declared = this.declared
        if only is not None:
            # A claim at replay: the patient paid its bill in cash, and the split is the rules'
            # now (found from outside: a HIS filled a claim's 2207 split from the 2204 answer
            # the outage left empty, and replay refused every such claim, never reimbursed).
            declared = settlements.Declared(medfee_sumamt=declared.medfee_sumamt)
        rec, s, writes = settle_lines(
            snapshot,
            ctx,
            held,
            visit,
            lines,
            declared,
            now,
            setl_serial=setl_serial,
            replaces=visit.refunded.pop(ctx.chrg_bchno, None),
        )
        # The next settlement of this visit in the same batch sees these lines as settled.
        taken = {ln.feedetl_sn for ln in lines}
        visit.unsettled = [ln for ln in visit.unsettled if ln.feedetl_sn not in taken]
        visit.settled_batches.add(this.chrg_bchno)
        return Built.settled(s, held, encode(rec, ctx, this), writes)

    return Job(psn_no=a.psn_no, year=None, build=build, mdtrt_id=a.mdtrt_id)


def _claimed(lines: list[fees.StoredLine], only: frozenset[str]) -> list[fees.StoredLine]:
    """The claim's lines, each still unsettled: settling fewer would not be the bill the patient
    paid in cash."""
    taken = [ln for ln in lines if ln.feedetl_sn in only]
    gone = sorted(only - {ln.feedetl_sn for ln in taken})
    if gone:
        # What is owed (found from outside: a claim of lines settled meanwhile at a counter
        # was failed in words that did not say the patient had paid twice).
        raise Conflict(
            f"暂存结算所含费用明细{'、'.join(gone)}已撤销或已结算，不能按暂存时的费用补结算："
            "参保人就本暂存结算已全额支付的现金应予退还，请医疗机构以暂存结算单号办理撤销（退还现金）"
        )
    return taken


async def settle_visit(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    origin: Origin,
    institution: Institution,
    now: dt.datetime,
    asked: VisitAsk,
    encode: Encode,
    *,
    kind: Kind,
    final: bool,
    only: frozenset[str] | None = None,
    respect_claims: bool = True,
    dates: DateRules | None = None,
) -> Built:
    """Pre-settle (final=False: the answer a settlement would give now, nothing locked or
    written but the visit's latest pre-settlement noted) or settle the visit's unsettled lines
    on the caller's own transaction; `only`: just these of them (a deferred claim's, at replay);
    `dates`: the late-billing bound (a counter's, not replay's)."""
    real = await encounters.real_id(conn, asked.mdtrt_id, origin.fixmedins_code)
    if real != asked.mdtrt_id:
        # Found from outside (a failover drill): a 2207 retried between its visit's registration
        # and its fees being applied settled nothing, "没有待结算的费用明细", and that refusal
        # was kept against its msgid. At the counter it waits, unkept, for the visit's calls;
        # at replay the claim's own order is the journal's.
        if respect_claims and await encounters.calls_waiting(
            conn, origin.fixmedins_code, asked.mdtrt_id
        ):
            raise encounters.calls_not_yet_applied(asked.mdtrt_id)
        asked = msgspec.structs.replace(asked, mdtrt_id=real)  # a provisional id, now its visit
    job = visit_job(
        snapshot,
        origin,
        institution,
        now,
        asked,
        encode,
        kind=kind,
        final=final,
        only=only,
        respect_claims=respect_claims,
        dates=dates,
    )
    if not final:
        return await preview(conn, job)  # the visit's pre-settlement noted with it
    return await settle_alone(conn, job)
