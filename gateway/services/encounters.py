"""A visit's life before and after its settlements: outpatient registration (2201) and its
cancellation (2202), the visit's information (2203), admission (2401), discharge (2402) and
their cancellations (2404, 2405).

Each function works on a request as the rules read it (the HIS adapter decodes the national
shapes into one and encodes the answer), reads the visit and the person through the ledger and
applies the rules of `gateway.core.eligibility`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from adapters.national import deferral
from gateway.core import eligibility
from gateway.core.dates import DateRules
from gateway.ledger import deferred, encounters, fees, persons, settlements
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job, unchanged
from gateway.protocol.errors import Conflict, NotInsured, RuleRejected
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind
from gateway.services.settlement_state import settle_alone

INPATIENT_MED_TYPES = frozenset({"21", "22", "23", "24"})


def require_inpatient(med_type: str) -> None:
    """A stay's med_type (2401, 2403) is an inpatient one."""
    if med_type not in INPATIENT_MED_TYPES:
        raise RuleRejected(f"医疗类别{med_type}不是住院类别")


# What a visit's status is called to the clerk.
_STATUS = {"open": "在院", "discharged": "已出院", "cancelled": "已撤销"}


class Registration(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2201 (its dates already checked where they were read)."""

    psn_no: str
    insutype: str
    begntime: dt.datetime
    ipt_otp_no: str
    cert: persons.Certificate
    stored: dict[str, Any]  # what the visit keeps of the request


class Admission(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2401 (its dates already checked where they were read)."""

    psn_no: str
    insutype: str
    begntime: dt.datetime
    med_type: str
    ipt_no: str
    cert: persons.Certificate
    dise_codg: str
    dise_name: str
    stored: dict[str, Any]


class VisitRef(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The visit a 2202/2404/2405 names; ipt_otp_no "" where none was sent (or none is read)."""

    mdtrt_id: str
    psn_no: str
    ipt_otp_no: str = ""


class VisitInfo(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2203."""

    mdtrt_id: str
    psn_no: str
    med_type: str
    dise_codg: str
    dise_name: str
    stored: dict[str, Any]
    begntime: dt.datetime | None = None  # 就诊时间 as sent (optional)


class AdmissionChange(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2403: the stay, and what it sends of it (None: left as it is)."""

    mdtrt_id: str
    psn_no: str
    med_type: str | None
    begntime: dt.datetime | None
    dise_codg: str | None
    dise_name: str | None
    stored: dict[str, Any]


class Discharge(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2402."""

    mdtrt_id: str
    psn_no: str
    endtime: dt.datetime


def registration_job(
    origin: Origin,
    admdvs: str,
    now: dt.datetime,
    a: Registration,
    answer: Callable[[str], Any],
) -> Job:
    """2201 as a build over the person's locked state, whichever path runs it: the group commit
    registers many visits (and settles other requests) in one transaction, the single path one
    (`register`). `answer(mdtrt_id)` is the national answer's output."""

    def build(held: Held, mdtrt_serial: int, _setl_serial: int) -> Built:
        person = held.person
        if person is None:
            raise NotInsured(f"人员编号{a.psn_no}不存在，请重新读卡获取人员信息")
        persons.require_certificate(person, a.cert)
        persons.require_insured(person)
        eligibility.require_insutype(a.insutype, person.insutype)
        mdtrt_id = encounters.ledger_id(admdvs, now, mdtrt_serial)
        writes = Writes()
        writes.add(
            encounters.INSERT,
            *encounters.row(
                encounters.Encounter(
                    mdtrt_id=mdtrt_id,
                    fixmedins_code=origin.fixmedins_code,
                    psn_no=a.psn_no,
                    insutype=a.insutype,
                    kind=Kind.OUTPATIENT,
                    med_type=encounters.REGISTRATION_MED_TYPE,
                    begntime=a.begntime,
                    ipt_otp_no=a.ipt_otp_no,
                    insuplc_admdvs=person.insuplc_admdvs,
                ),
                origin.msgid,
                {"registration": a.stored},
            ),
        )
        return Built(answer(mdtrt_id), writes, held.balance, held.year)

    return Job(psn_no=a.psn_no, year=a.begntime.year, build=build, settles=False)


async def register(conn: asyncpg.Connection, job: Job, fixmedins_code: str, ipt_otp_no: str) -> Any:
    """2201 on the caller's transaction: the registration's build as a batch of one; its
    answer's output. (In a group commit the same visit number taken twice fails the batch, and
    each request then comes here and is answered one by one.)"""
    try:
        async with conn.transaction():  # a savepoint: the refusal reads the visit it clashed with
            return (await settle_alone(conn, job)).output
    except asyncpg.UniqueViolationError as exc:
        raise await encounters.number_taken(
            conn, fixmedins_code, Kind.OUTPATIENT, ipt_otp_no, job.psn_no
        ) from exc


async def cancel_registration(conn: asyncpg.Connection, fixmedins_code: str, a: VisitRef) -> None:
    """2202: cancel an outpatient visit with nothing settled or uploaded on it."""
    enc = await _visit(conn, fixmedins_code, a, Kind.OUTPATIENT)
    if a.ipt_otp_no and a.ipt_otp_no != enc.ipt_otp_no:
        raise Conflict(f"门诊号{a.ipt_otp_no}与就诊ID{a.mdtrt_id}不对应")
    if enc.status == "cancelled":
        raise Conflict(f"就诊ID{a.mdtrt_id}已撤销，不能重复撤销")
    if await encounters.settled_count(conn, enc.mdtrt_id):
        raise Conflict("该就诊存在未撤销的结算，请先撤销结算（2208）")
    if await fees.has_lines(conn, enc.mdtrt_id):
        raise Conflict("该就诊存在已上传的费用明细，请先撤销费用明细（2205）")
    await encounters.update(conn, enc.mdtrt_id, status="cancelled")


def visit_info_job(
    fixmedins_code: str,
    a: VisitInfo,
    mdtrt_id: str | None = None,
    received: dt.datetime | None = None,
) -> Job:
    """2203 as a build over the visit's locked state, whichever path runs it (the group commit,
    or `visit_info` alone): the outpatient visit's med_type and diagnosis; a chronic-disease
    visit only for a person filed for that disease. `mdtrt_id`: the visit a provisional id
    sent as `a.mdtrt_id` became (the one locked and written); `received`: when the 2203 was
    taken (a kept one applied later, its own time)."""
    real = mdtrt_id or a.mdtrt_id

    def build(held: Held, _mdtrt_serial: int, _setl_serial: int) -> Built:
        category = eligibility.category_for("outpatient", a.med_type, a.mdtrt_id)
        visit = held.visit
        enc = encounters.own(visit.encounter if visit else None, real, fixmedins_code, a.psn_no)
        assert visit is not None
        unchanged(visit)
        _of_kind(enc, a.mdtrt_id, Kind.OUTPATIENT)
        encounters.require_open(enc)
        if a.begntime is not None and a.begntime.date() < enc.begntime.date():
            # Found from outside: a visit's information dated the day before its registration
            # (in another year) was taken. Whole days, as for its fee lines (core.dates).
            raise RuleRejected(
                # An outpatient visit's words (found from outside: told to check a discharge
                # time and to use 2403, which a visit has neither of).
                f"就诊时间begntime {a.begntime:%Y-%m-%d %H:%M:%S}早于挂号时间"
                f"{enc.begntime:%Y-%m-%d %H:%M:%S}，请核对就诊时间（不能早于挂号当日）；挂号"
                "时间有误的，请撤销挂号（2202）后重新挂号"
            )
        changes = a.med_type != enc.med_type or (
            category is eligibility.CHRONIC and a.dise_codg != (enc.dise_codg or "")
        )
        # Only a claim taken before this 2203 holds the visit as it was: found from outside,
        # a kept chronic visit's first 2203, applied after the outage, was refused for the
        # claim its own 2207 had become later, and the claim then failed for want of it.
        claim = next(
            (
                c.claim_id
                for c in visit.claimed
                if not c.elsewhere
                and (received is None or c.received_at is None or c.received_at <= received)
            ),
            None,
        )
        if changes and claim is not None:
            # A claim is settled at replay under the visit as it was taken (found from outside:
            # a 2203 changing the med_type under a pending claim was taken, and the claim failed
            # at replay, the patient's cash paid under it).
            raise Conflict(
                f"就诊ID{a.mdtrt_id}有应急预案暂存结算{claim}待补结算，不能更改医疗类别或病种："
                "请待补结算后再更改，或先撤销该暂存结算"
            )
        if visit.settled_batches and changes:
            # As a stay's med_type (2403) changes only while nothing on it is settled. Found
            # from outside: a visit's chronic settlement stood in force at 90% after its 2203
            # made the visit ordinary (11) with another disease. An ordinary visit's dise_codg
            # prices nothing (HIS fill it from the main ICD diagnosis, which may be corrected).
            raise Conflict(
                f"就诊ID{a.mdtrt_id}已有结算（收费批次{'、'.join(sorted(visit.settled_batches))}），"
                f"不能更改医疗类别或病种（现为医疗类别{enc.med_type}"
                f"{'、病种' + enc.dise_codg if enc.dise_codg else ''}）：如需更改，请先撤销"
                "结算（2208）"
            )
        if category is eligibility.CHRONIC:
            if held.person is None:
                raise NotInsured(f"人员编号{a.psn_no}不存在，请重新读卡获取人员信息")
            eligibility.require_chronic_filing(held.person, a.dise_codg)
        writes = Writes()
        writes.add(encounters.SET_INFO, real, a.med_type, a.dise_codg, a.dise_name, a.stored)
        visit.changed = True
        return Built({}, writes, held.balance, held.year)

    return Job(
        psn_no=a.psn_no,
        year=None,
        build=build,
        mdtrt_id=real,
        settles=False,
        draws=False,
        reads_batches=True,
        reads_claims=True,
    )


async def visit_info(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    a: VisitInfo,
    received: dt.datetime | None = None,
) -> None:
    """2203 on the caller's transaction: its build as a batch of one."""
    # The med_type is judged before the visit is looked up, as the build judges it first: a
    # request wrong in both ways names the same fault whether or not its id is provisional.
    eligibility.category_for("outpatient", a.med_type, a.mdtrt_id)
    real = await encounters.real_id(conn, a.mdtrt_id, fixmedins_code)
    await settle_alone(conn, visit_info_job(fixmedins_code, a, real, received))


async def admit(
    conn: asyncpg.Connection,
    origin: Origin,
    admdvs: str,
    now: dt.datetime,
    a: Admission,
    *,
    selfpay: bool,
) -> str:
    """2401: open a stay; `selfpay` (the emergency plan's 自费入院) opens it uninsured, its
    insurance checked when it is converted (自费转医保). Its 就诊ID."""
    require_inpatient(a.med_type)
    person, _ = await persons.read(conn, a.psn_no)
    persons.require_certificate(person, a.cert)
    if not selfpay:
        persons.require_insured(person)
    eligibility.require_insutype(a.insutype, person.insutype)
    mdtrt_id = await encounters.new_mdtrt_id(conn, admdvs, now)
    await encounters.create(
        conn,
        selfpay=selfpay,
        mdtrt_id=mdtrt_id,
        fixmedins_code=origin.fixmedins_code,
        psn_no=a.psn_no,
        insutype=a.insutype,
        kind=Kind.INPATIENT,
        med_type=a.med_type,
        begntime=a.begntime,
        ipt_otp_no=a.ipt_no,
        insuplc_admdvs=person.insuplc_admdvs,
        msgid=origin.msgid,
        dise_codg=a.dise_codg,
        dise_name=a.dise_name,
        detail=a.stored,
    )
    return mdtrt_id


async def discharge(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    dates: DateRules,
    admdvs: str,
    now: dt.datetime,
    a: Discharge,
) -> None:
    """2402: close a stay at endtime, within the date bounds, not before its admission nor its
    last charge."""
    dates.check("出院时间endtime", a.endtime, admdvs=admdvs, now=now)
    enc = await _visit(
        conn, fixmedins_code, VisitRef(mdtrt_id=a.mdtrt_id, psn_no=a.psn_no), Kind.INPATIENT
    )
    if enc.status != "open":
        raise Conflict(f"就诊ID{a.mdtrt_id}当前状态不能办理出院（{_STATUS[enc.status]}）")
    endtime = a.endtime
    if endtime < enc.begntime:
        raise RuleRejected(
            f"出院时间endtime {endtime:%Y-%m-%d %H:%M:%S}早于入院时间"
            f"{enc.begntime:%Y-%m-%d %H:%M:%S}，请核对出院时间，或以住院信息变更（2403）更正入院时间"
        )
    last_fee = await fees.latest_fee_time(conn, enc.mdtrt_id)
    if last_fee is not None and last_fee.date() > endtime.date():
        raise RuleRejected(
            f"出院时间endtime {endtime:%Y-%m-%d %H:%M:%S}早于已上传费用明细的发生时间"
            f"{last_fee:%Y-%m-%d %H:%M:%S}，请核对出院时间或先撤销该费用明细（2302）"
        )
    await encounters.update(conn, enc.mdtrt_id, status="discharged", endtime=endtime)


async def change_admission(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    dates: DateRules,
    admdvs: str,
    now: dt.datetime,
    a: AdmissionChange,
) -> None:
    """2403: an open stay's information as the hospital corrects it. Its diagnosis and the rest
    it keeps as sent change freely; its med_type and admission time only while nothing on it
    is settled (a settlement in force, a mid-stay one too, was made under them: the hospital
    cancels it first), the med_type only to another inpatient one, the time within the date
    bounds and never after a charge already uploaded (the stay's lines are judged by it)."""
    enc = await _visit(
        conn, fixmedins_code, VisitRef(mdtrt_id=a.mdtrt_id, psn_no=a.psn_no), Kind.INPATIENT
    )
    if enc.status != "open":
        hint = ""
        if enc.status == "discharged":
            # Found from outside: a stay settled at discharge was sent to 2405, which sent
            # the clerk to 2305.
            final = await settlements.has_final(conn, enc.mdtrt_id)
            hint = (
                "，请先撤销出院结算（2305）再撤销出院（2405）"
                if final
                else "，请先撤销出院（2405）"
            )
        raise Conflict(f"就诊ID{a.mdtrt_id}当前状态不能变更住院信息（{_STATUS[enc.status]}）{hint}")
    med_type = a.med_type or enc.med_type
    begntime = a.begntime or enc.begntime
    # (a med_type sent is an inpatient one: require_inpatient, the request's own check)
    changes_rules = (med_type, begntime) != (enc.med_type, enc.begntime)
    if changes_rules and await encounters.settled_count(conn, enc.mdtrt_id):
        raise Conflict(
            "该住院存在未撤销的结算（含中途结算），不能变更医疗类别或入院时间；请先撤销结算（2305）"
        )
    if begntime != enc.begntime:
        dates.check("入院时间begntime", begntime, admdvs=admdvs, now=now)
        first_fee = await fees.earliest_fee_time(conn, enc.mdtrt_id)
        if first_fee is not None and first_fee.date() < begntime.date():
            raise RuleRejected(
                f"入院时间begntime {begntime:%Y-%m-%d %H:%M:%S}晚于已上传费用明细的发生时间"
                f"{first_fee:%Y-%m-%d %H:%M:%S}，请核对入院时间或先撤销该费用明细（2302）"
            )
    await conn.execute(
        encounters.CHANGE_ADMISSION,
        enc.mdtrt_id,
        med_type,
        begntime,
        enc.dise_codg if a.dise_codg is None else a.dise_codg,
        enc.dise_name if a.dise_name is None else a.dise_name,
        a.stored,
    )


async def cancel_admission(conn: asyncpg.Connection, fixmedins_code: str, a: VisitRef) -> None:
    """2404: cancel a stay still open with nothing settled or uploaded on it."""
    enc = await _visit(conn, fixmedins_code, a, Kind.INPATIENT)
    if enc.status == "discharged":
        # Found from outside: a settled stay was told only that it is discharged; the clerk
        # needs the steps back, in their order.
        if await settlements.has_final(conn, enc.mdtrt_id):
            raise Conflict(
                f"就诊ID{a.mdtrt_id}已出院结算，不能撤销入院；"
                "请先撤销结算（2305），再撤销出院（2405）"
            )
        raise Conflict(f"就诊ID{a.mdtrt_id}已出院，不能撤销入院；请先撤销出院（2405）")
    if enc.status != "open":
        raise Conflict(f"就诊ID{a.mdtrt_id}当前状态不能撤销入院（{_STATUS[enc.status]}）")
    if await encounters.settled_count(conn, enc.mdtrt_id):
        raise Conflict("该住院存在未撤销的结算，请先撤销结算（2305）")
    if await fees.has_lines(conn, enc.mdtrt_id):
        raise Conflict("该住院存在已上传的费用明细，请先撤销费用明细（2302）")
    await encounters.update(conn, enc.mdtrt_id, status="cancelled")


async def cancel_discharge(conn: asyncpg.Connection, fixmedins_code: str, a: VisitRef) -> None:
    """2405: reopen a discharged stay whose closing settlement is not standing."""
    enc = await _visit(conn, fixmedins_code, a, Kind.INPATIENT)
    if enc.status != "discharged":
        raise Conflict(f"就诊ID{a.mdtrt_id}未办理出院，不能撤销出院")
    if await settlements.has_final(conn, enc.mdtrt_id):
        raise Conflict("该住院已出院结算，请先撤销结算（2305）再撤销出院")
    # Found from outside: a discharge cancelled under the stay's pending claim (the patient
    # paid in cash, the fund's share owed) made the claim fail at replay, "not discharged".
    held = deferral.held_lines(
        await deferred.pending_on_visits(conn, [enc.mdtrt_id]), fixmedins_code
    )
    held = [h for h in held if not h.elsewhere]  # a claim's, not the old system's settlement
    if held:
        raise Conflict(
            f"该住院的结算已按应急预案暂存（暂存结算单号{held[0].claim_id}），"
            "请待恢复后由系统补结算，或先撤销暂存（2305），再撤销出院"
        )
    await encounters.update(conn, enc.mdtrt_id, status="open", endtime=None)


async def _visit(
    conn: asyncpg.Connection, fixmedins_code: str, a: VisitRef, kind: Kind
) -> encounters.Encounter:
    """The institution's visit of this person and kind, locked. Its `mdtrt_id` is the visit's
    own: a provisional id the client still sends names the visit it became, and every read and
    write after this goes by the visit's (found from outside: a 2402 naming the PV… id answered
    成功 and discharged nothing, its update matching no row)."""
    enc = await encounters.get(conn, a.mdtrt_id, fixmedins_code, psn_no=a.psn_no, lock=True)
    return _of_kind(enc, a.mdtrt_id, kind)


def _of_kind(enc: encounters.Encounter, mdtrt_id: str, kind: Kind) -> encounters.Encounter:
    if enc.kind != kind:
        raise RuleRejected(
            f"就诊ID{mdtrt_id}不是{'门诊' if kind is Kind.OUTPATIENT else '住院'}就诊"
        )
    return enc
