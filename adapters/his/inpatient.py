"""Inpatient transactions 2401–2405 and 2301–2305."""

from __future__ import annotations

import datetime as dt

import msgspec

from adapters.his import settling, uploads
from adapters.national import deferral, wire
from adapters.national.envelope import Request, decode_input, text
from adapters.national.wire import (
    In2202,
    In2302,
    In2401,
    In2402,
    as_list,
    certificate,
    required,
    when_required,
)
from gateway.app.runtime import Gateway
from gateway.core.model import Institution
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Answer, Call, Deferral, Kind, Mode, Undo, register
from gateway.services import encounters, fee_uploads


@register(
    "2401",
    "入院办理",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2401,
    kind=Kind.INPATIENT,
    deferral=Deferral.CALL,
    undo=Undo.ADMISSION,
    opens_visit=True,
    journal_answer=deferral.opened_visit_result,
    dated=(("mdtrtinfo", "", "begntime", "入院时间begntime"),),
    checked=lambda gw, req, institution, now: _admission_of(gw, req, institution, now),
)
async def admit(call: Call) -> Answer:
    a = _admission_of(call.gw, call.req, call.institution, call.now)
    selfpay = call.mode is Mode.SELFPAY
    mdtrt_id = await encounters.admit(
        call.conn, Origin.of(call.req), call.institution.admdvs, call.now, a, selfpay=selfpay
    )
    if selfpay:
        return Answer(
            {"result": {"mdtrt_id": mdtrt_id}},
            warn_msg="应急预案：按自费办理入院，系统恢复后请办理自费转医保后再结算",
        )
    return Answer({"result": {"mdtrt_id": mdtrt_id}})


def _admission_of(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> encounters.Admission:
    """A 2401 as the admission reads it, before the ledger."""
    node = decode_input(req, In2401)
    info = node.mdtrtinfo
    if info is None:
        raise BadRequest("缺少输入节点mdtrtinfo")
    psn_no = required(info.psn_no, "mdtrtinfo.psn_no")
    insutype = required(info.insutype, "mdtrtinfo.insutype")
    begntime = when_required(info.begntime, "mdtrtinfo.begntime")
    # Checked where it is read: a request wrong in more than one way names the same fault.
    gw.config.dates.check("入院时间begntime", begntime, admdvs=institution.admdvs, now=now)
    return encounters.Admission(
        psn_no=psn_no,
        insutype=insutype,
        begntime=begntime,
        med_type=required(info.med_type, "mdtrtinfo.med_type"),
        ipt_no=required(info.ipt_no, "mdtrtinfo.ipt_no"),
        cert=certificate(info.mdtrt_cert_type, info.mdtrt_cert_no, "mdtrtinfo"),
        dise_codg=text(info.dise_codg),
        dise_name=text(info.dise_name),
        stored={
            "mdtrtinfo": msgspec.to_builtins(info),
            "diseinfo": msgspec.to_builtins(wire.diagnoses(node.diseinfo)),
        },
    )


@register(
    "2402",
    "出院办理",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2402,
    deferral=Deferral.CALL,
    discharges=True,
)
async def discharge(call: Call) -> Answer:
    info = decode_input(call.req, In2402).dscginfo
    if info is None:
        raise BadRequest("缺少输入节点dscginfo")
    a = encounters.Discharge(
        mdtrt_id=required(info.mdtrt_id, "dscginfo.mdtrt_id"),
        psn_no=required(info.psn_no, "dscginfo.psn_no"),
        endtime=when_required(info.endtime, "dscginfo.endtime"),
    )
    await encounters.discharge(
        call.conn,
        call.req.fixmedins_code,
        call.gw.config.dates,
        call.institution.admdvs,
        call.now,
        a,
    )
    return Answer({})


@register(
    "2403",
    "住院信息变更",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2403,
    deferral=Deferral.CALL,
    dated=(("adminfo", "", "begntime", "入院时间begntime"),),
    # What the request alone refuses is refused before a deferral keeps it (found from
    # outside: under the plan a 2403 to med_type 11 was answered as kept, then failed unseen).
    checked=lambda gw, req, institution, now: _change_of(req),
)
async def change_admission(call: Call) -> Answer:
    """Found from outside: real HIS code sends 2403 (TeaHZ/185, nhis-web's
    saveZyHpRegRelationship) and was told the transaction was not supported."""
    a = _change_of(call.req)
    await encounters.change_admission(
        call.conn,
        call.req.fixmedins_code,
        call.gw.config.dates,
        call.institution.admdvs,
        call.now,
        a,
    )
    return Answer({})


def _change_of(req: Request) -> encounters.AdmissionChange:
    """A 2403 as the change reads it, before the ledger."""
    node = decode_input(req, wire.In2403)
    info = node.adminfo
    if info is None:
        raise BadRequest("缺少输入节点adminfo")
    med_type = text(info.med_type) or None
    if med_type is not None:
        encounters.require_inpatient(med_type)
    # Empty texts and nulls, as clients send the fields they leave alone, change nothing, and
    # are not kept over what an earlier message sent (found from outside: a bed changed by
    # one 2403 was lost from the record by the next, which sent the bed null).
    sent = {k: v for k, v in msgspec.to_builtins(info).items() if v not in (None, "")}
    diagnoses = wire.diagnoses(node.diseinfo)
    return encounters.AdmissionChange(
        mdtrt_id=required(info.mdtrt_id, "adminfo.mdtrt_id"),
        psn_no=required(info.psn_no, "adminfo.psn_no"),
        med_type=med_type,
        begntime=wire.when(info.begntime, "adminfo.begntime", optional=True),
        dise_codg=text(info.dise_codg) or None,
        dise_name=text(info.dise_name) or None,
        stored={
            "adminfo": sent,
            **({"diseinfo": msgspec.to_builtins(diagnoses)} if diagnoses else {}),
        },
    )


def _visit_ref(call: Call) -> encounters.VisitRef:
    """The stay a 2404/2405 names."""
    data = decode_input(call.req, In2202).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    return encounters.VisitRef(
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        psn_no=required(data.psn_no, "data.psn_no"),
    )


@register(
    "2404",
    "入院办理撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2202,
    deferral=Deferral.CALL,
)
async def cancel_admission(call: Call) -> Answer:
    await encounters.cancel_admission(call.conn, call.req.fixmedins_code, _visit_ref(call))
    return Answer({})


@register(
    "2405",
    "出院办理撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2202,
    deferral=Deferral.CALL,
    discharges=False,
)
async def cancel_discharge(call: Call) -> Answer:
    await encounters.cancel_discharge(call.conn, call.req.fixmedins_code, _visit_ref(call))
    return Answer({})


@register(
    "2301",
    "住院费用明细上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2204,
    deferral=Deferral.CALL,
    journal_answer=uploads.journaled_inpatient,
    journaled_lines=uploads.journaled_inpatient_lines,
    dated=(("feedetail", "*", "fee_ocur_time", "费用发生时间fee_ocur_time"),),
    checked=uploads.inpatient_lines,
)
async def upload_fees(call: Call) -> Answer:
    return await uploads.upload(call, kind=Kind.INPATIENT)


@register(
    "2302",
    "住院费用明细撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2302,
    deferral=Deferral.CALL,
    journaled_lines=uploads.journaled_line_withdrawal,
    withdraws=uploads.stay_lines_withdrawn,
)
async def cancel_fees(call: Call) -> Answer:
    refs = as_list(decode_input(call.req, In2302).data)
    if not refs:
        raise BadRequest("缺少输入节点data")
    # Each row read when the withdrawal reaches it: the first fault in row order is named.
    rows = (
        fee_uploads.LineWithdrawal(
            mdtrt_id=required(ref.mdtrt_id, "data.mdtrt_id"),
            feedetl_sn=required(ref.feedetl_sn, "data.feedetl_sn"),
            psn_no=required(ref.psn_no, "data.psn_no"),
        )
        for ref in refs
    )
    received = call.now if call.mode is Mode.REPLAY else None  # replay's now: when it came
    await fee_uploads.withdraw_lines(call.conn, call.req.fixmedins_code, rows, received=received)
    return Answer({})


@register(
    "2303",
    "住院预结算",
    writes=False,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.INPATIENT,
    deferral=Deferral.PRESETTLEMENT,
    previewed=settling.inpatient_preview_job,
)
async def pre_settle(call: Call) -> Answer:
    return await settling.settle_visit(call, kind=Kind.INPATIENT, final=False)


@register(
    "2304",
    "住院结算",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.INPATIENT,
    deferral=Deferral.CLAIM,
    undo=Undo.SETTLEMENT,
    settle_claim=settling.settle_claim,
    judged=settling.inpatient_job,
)
async def settle(call: Call) -> Answer:
    return await settling.settle_visit(call, kind=Kind.INPATIENT, final=True)


@register(
    "2305",
    "住院结算撤销",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=wire.In2208,
    kind=Kind.INPATIENT,
    deferral=Deferral.CANCEL_CLAIM,
    undo=Undo.CANCELLATION,
)
async def cancel(call: Call) -> Answer:
    return await settling.cancel_settlement(call, kind=Kind.INPATIENT)
