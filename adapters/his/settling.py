"""The settlement flow shared by outpatient (2206/2207/2208) and inpatient (2303/2304/2305)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from adapters.his import deferral
from adapters.national.envelope import Request, decode_input, text
from adapters.national.output import setldetail, setlinfo
from adapters.national.wire import (
    In2206,
    In2208,
    SettleData,
    certificate_if_sent,
    fen,
    fen_required,
    flag,
    required,
)
from gateway.app.runtime import Gateway
from gateway.core import eligibility
from gateway.core.catalog import Snapshot
from gateway.core.model import Category, Institution, PersonState, Settlement, Visit
from gateway.core.settle import settle
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.ledger import encounters, fees, persons, settlements
from gateway.ledger.encounters import Encounter
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job, VisitHeld
from gateway.protocol.errors import BadRequest, Conflict, NotFound, NotInsured, RuleRejected
from gateway.protocol.transaction import TRANSACTIONS, Answer, Call, Mode
from gateway.services.settlement_state import preview, settle_alone


def check_med_type(enc: Encounter, med_type: str) -> Category:
    """The med_type must be supported and belong to the kind of visit."""
    return eligibility.category_for(enc.kind, med_type, enc.mdtrt_id)


def declared_of(data: SettleData) -> settlements.Declared:
    """The totals the client sent."""
    return settlements.Declared(
        medfee_sumamt=fen_required(data.medfee_sumamt, "data.medfee_sumamt"),
        fulamt_ownpay_amt=fen(data.fulamt_ownpay_amt, "data.fulamt_ownpay_amt", optional=True),
        overlmt_selfpay=fen(data.overlmt_selfpay, "data.overlmt_selfpay", optional=True),
        preselfpay_amt=fen(data.preselfpay_amt, "data.preselfpay_amt", optional=True),
        inscp_scp_amt=fen(data.inscp_scp_amt, "data.inscp_scp_amt", optional=True),
    )


class Asked(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2206/2207/2303/2304 request, validated (pure)."""

    psn_no: str
    mdtrt_id: str
    med_type: str
    acct_used: bool
    mid_setl_flag: str
    chrg_bchno: str
    declared: settlements.Declared
    insutype: str
    cert_type: str
    cert: persons.Certificate | None


def _asked(req: Request, kind: str) -> Asked:
    data = decode_input(req, In2206).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    mid_setl_flag = flag(data.mid_setl_flag, "data.mid_setl_flag")
    declared = declared_of(data)
    # A stay's closing settlement may net to zero (its charges refunded after a mid-way one);
    # any other settlement of nothing is a mistake at the counter.
    if declared.medfee_sumamt == 0 and not (kind == "inpatient" and mid_setl_flag == "0"):
        raise BadRequest("医疗费总额medfee_sumamt为0，没有需要结算的费用")
    return Asked(
        psn_no=required(data.psn_no, "data.psn_no"),
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        # 2303/2304 carry no med_type (protocol.md §2.4): the admission (2401) gave it.
        med_type=required(data.med_type, "data.med_type")
        if kind == "outpatient"
        else text(data.med_type),
        acct_used=flag(data.acct_used_flag, "data.acct_used_flag") == "1",
        mid_setl_flag=mid_setl_flag,
        chrg_bchno=required(data.chrg_bchno, "data.chrg_bchno")
        if kind == "outpatient"
        else fees.ALL,
        declared=declared,
        insutype=text(data.insutype),
        cert_type=text(data.mdtrt_cert_type),
        cert=certificate_if_sent(data.mdtrt_cert_type, data.mdtrt_cert_no, "data"),
    )


def admission_med_type(enc: Encounter, a: Asked) -> Asked:
    """The inpatient settlement's med_type is the admission's; one sent must agree with it."""
    if a.med_type and a.med_type != enc.med_type:
        raise RuleRejected(
            f"医疗类别{a.med_type}与入院办理（2401）时的医疗类别{enc.med_type}不一致"
            f"（就诊ID{enc.mdtrt_id}），住院结算按入院时的医疗类别结算"
        )
    return msgspec.structs.replace(a, med_type=enc.med_type)


def _check_visit(enc: Encounter, kind: str, a: Asked, *, final: bool) -> None:
    """What the visit must be for this settlement (both paths)."""
    if enc.kind != kind:
        raise RuleRejected(
            f"就诊ID{a.mdtrt_id}不是{'门诊' if kind == 'outpatient' else '住院'}就诊"
        )
    encounters.require_open(enc)
    if enc.selfpay:
        raise RuleRejected(f"就诊ID{a.mdtrt_id}为应急期间自费入院，请先办理自费转医保后再结算")
    eligibility.require_insutype(a.insutype, enc.insutype, held_as="登记时的险种")
    check_med_type(enc, a.med_type)
    if kind == "inpatient" and final and a.mid_setl_flag == "0" and enc.status != "discharged":
        raise Conflict("患者尚未办理出院（2402），不能进行出院结算；中途结算请传mid_setl_flag=1")


def _already_settled(a: Asked) -> Conflict:
    return Conflict(f"收费批次{a.chrg_bchno}已结算，请勿重复结算")


def _context(
    req: Request, institution: Institution, enc: Encounter, a: Asked
) -> settlements.Context:
    return settlements.Context(
        institution=institution,
        encounter=enc,
        visit=Visit(
            fixmedins_code=req.fixmedins_code,
            mdtrt_id=enc.mdtrt_id,
            med_type=a.med_type,
            service_date=enc.begntime.date(),
            acct_used_flag=a.acct_used,
            dise_codg=enc.dise_codg,
        ),
        infno=req.infno,
        msgid=req.msgid,
        chrg_bchno="" if a.chrg_bchno == fees.ALL else a.chrg_bchno,
        mid_setl_flag=a.mid_setl_flag,
        dev_no=req.dev_no,
        opter=req.opter,
        mdtrtarea_admvs=req.mdtrtarea_admvs,
    )


def _output(rec: settlements.Record, ctx: settlements.Context, a: Asked) -> dict[str, Any]:
    return {
        "setlinfo": setlinfo(rec, service_date=ctx.visit.service_date, mdtrt_cert_type=a.cert_type),
        "setldetail": setldetail(rec.funds),
    }


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


def visit_job(
    gw: Gateway,
    req: Request,
    institution: Institution,
    now: dt.datetime,
    *,
    kind: str,
    final: bool = True,
    mdtrt_id: str | None = None,
    only: frozenset[str] | None = None,
    respect_claims: bool = True,
    asked: Asked | None = None,
) -> Job:
    """A 2206/2207/2303/2304 as a Job: the visit and the person locked, the checks, the split
    and its writes in one pure build, whichever path runs it.

    `final=False`: a pre-settlement (run by `preview`: the same answer, nothing written);
    `mdtrt_id`: the visit a provisional id became; `only`: just these of the lines (a deferred
    claim's, at replay, which settles the lines its pending claim holds: respect_claims=False);
    `asked`: the request already decoded.
    """
    a = asked or _asked(req, kind)
    if mdtrt_id is not None:
        a = msgspec.structs.replace(a, mdtrt_id=mdtrt_id)
    snapshot = gw.snapshot

    def build(held: Held, _mdtrt_serial: int, setl_serial: int) -> Built:
        visit = held.visit
        if visit is None or visit.encounter.fixmedins_code != req.fixmedins_code:
            raise NotFound(f"就诊ID{a.mdtrt_id}不存在或不属于本机构")
        if final and respect_claims and only is None:
            deferral.refuse_if_held(visit.claimed, a.chrg_bchno)
        enc = visit.encounter
        if a.psn_no != enc.psn_no:
            raise Conflict(f"人员编号{a.psn_no}与就诊ID{a.mdtrt_id}的参保人不一致")
        asked = admission_med_type(enc, a) if kind == "inpatient" == enc.kind else a
        _check_visit(enc, kind, asked, final=final)
        lines = visit.unsettled
        if asked.chrg_bchno != fees.ALL:
            lines = [ln for ln in lines if ln.chrg_bchno == asked.chrg_bchno]
        if only is not None:
            lines = _claimed(lines, only)
        if not lines:
            if final and asked.chrg_bchno in visit.settled_batches:
                raise _already_settled(asked)
            raise NotFound("没有待结算的费用明细（可能已结算或未上传），请核对收费批次号")
        if held.person is None:
            raise NotInsured(f"人员编号{asked.psn_no}不存在，请重新读卡获取人员信息")
        persons.require_certificate(held.person, asked.cert)
        persons.require_insured(held.person)
        ctx = _context(req, institution, enc, asked)
        if not final:
            s = settle(snapshot, ctx.visit, person_state(held, visit), lines)
            settlements.check_declared(s, asked.declared)
            rec = settlements.record_of(s, ctx, held.person, setl_id=None, setl_time=None)
            return Built(_output(rec, ctx, asked), Writes(), held.balance, held.year)
        rec, s, writes = settle_lines(
            snapshot,
            ctx,
            held,
            visit,
            lines,
            asked.declared,
            now,
            setl_serial=setl_serial,
            replaces=visit.refunded.pop(ctx.chrg_bchno, None),
        )
        # The next settlement of this visit in the same batch sees these lines as settled.
        taken = {ln.feedetl_sn for ln in lines}
        visit.unsettled = [ln for ln in visit.unsettled if ln.feedetl_sn not in taken]
        visit.settled_batches.add(asked.chrg_bchno)
        return Built.settled(s, held, _output(rec, ctx, asked), writes)

    return Job(psn_no=a.psn_no, year=None, build=build, mdtrt_id=a.mdtrt_id)


async def settle_visit(
    call: Call, *, kind: str, final: bool, only: frozenset[str] | None = None
) -> Answer:
    """Pre-settle (final=False, changes nothing) or settle the visit's unsettled lines on the
    call's own transaction; `only`: just these of them (a deferred claim's, at replay)."""
    a = _asked(call.req, kind)
    job = visit_job(
        call.gw,
        call.req,
        call.institution,
        call.now,
        kind=kind,
        final=final,
        mdtrt_id=await encounters.real_id(call.conn, a.mdtrt_id),
        only=only,
        respect_claims=call.mode is Mode.NORMAL,
        asked=a,
    )
    if not final:
        built = await preview(call.conn, job)
        await settlements.note_presettlement(
            call.conn, job.mdtrt_id or a.mdtrt_id, call.req.fixmedins_code, call.req.infno, call.now
        )
        return Answer(built.output)
    built = await settle_alone(call.conn, job)
    return Answer(built.output, paid=built.paid)


def _claimed(lines: list[fees.StoredLine], only: frozenset[str]) -> list[fees.StoredLine]:
    """The claim's lines, each still unsettled: settling fewer would not be the bill the patient
    paid in cash."""
    taken = [ln for ln in lines if ln.feedetl_sn in only]
    gone = sorted(only - {ln.feedetl_sn for ln in taken})
    if gone:
        raise Conflict(
            f"暂存结算所含费用明细{'、'.join(gone)}已撤销或已结算，不能按暂存时的费用补结算"
        )
    return taken


async def settle_claim(call: Call, lines: list[str]) -> Answer:
    """A deferred 2207/2304 at replay: exactly the lines it was taken for."""
    kind = TRANSACTIONS[call.req.infno].kind
    assert kind is not None  # a claim is a settlement's, which names its kind
    return await settle_visit(call, kind=kind, final=True, only=frozenset(lines))


def outpatient_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2207 in a group commit: the same job as the single path's, in a batch."""
    if _asked(req, "outpatient").mdtrt_id.startswith(PROVISIONAL_PREFIX):
        return None  # an id handed out while the ledger was down: the single path resolves it
    return visit_job(gw, req, institution, now, kind="outpatient")


async def cancel_settlement(call: Call, *, kind: str) -> Answer:
    """2208 / 2305: reverse a settlement; the answer is its amounts negated."""
    data = decode_input(call.req, In2208).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    setl_id = required(data.setl_id, "data.setl_id")
    if deferral.is_claim_id(setl_id):
        return await deferral.withdraw_claim(call)
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    psn_no = required(data.psn_no, "data.psn_no")
    rec, balance_after = await settlements.cancel(
        call.conn,
        fixmedins_code=call.req.fixmedins_code,
        setl_id=setl_id,
        mdtrt_id=mdtrt_id,
        psn_no=psn_no,
        msgid=call.req.msgid,
        now=call.now,
        categories=frozenset(c.value for c in eligibility.KIND_CATEGORIES[kind]),
    )
    info: dict[str, Any] = setlinfo(rec, sign=-1, balc=balance_after)
    info["setl_time"] = call.now.strftime("%Y-%m-%d %H:%M:%S")
    return Answer({"setlinfo": info, "setldetail": setldetail(rec.funds, -1)})
