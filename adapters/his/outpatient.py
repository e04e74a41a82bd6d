"""Outpatient transactions 2201–2208."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from adapters.his import settling, uploads
from adapters.national import deferral, wire
from adapters.national.envelope import Request, decode_input, text
from adapters.national.wire import (
    In2201,
    In2202,
    In2203,
    In2205,
    certificate,
    required,
    when,
    when_required,
)
from gateway.app.runtime import Gateway
from gateway.core.model import Institution
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.emergency.plan.rules import TxClass
from gateway.pipeline.grouped import Job
from gateway.protocol.errors import BadRequest
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Answer, Call, Deferral, Kind, Mode, Undo, register
from gateway.services import encounters, fee_uploads


def _registration(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> Job:
    """2201 as the registration build (gateway.services.encounters), whichever path runs it."""
    return _registering(gw, req, institution, now)[1]


def _registering(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> tuple[encounters.Registration, Job]:
    data = decode_input(req, In2201).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    psn_no = required(data.psn_no, "data.psn_no")
    insutype = required(data.insutype, "data.insutype")
    begntime = when_required(data.begntime, "data.begntime")
    # Checked where it is read: a request wrong in more than one way names the same fault.
    gw.config.dates.check("挂号时间begntime", begntime, admdvs=institution.admdvs, now=now)
    a = encounters.Registration(
        psn_no=psn_no,
        insutype=insutype,
        begntime=begntime,
        ipt_otp_no=required(data.ipt_otp_no, "data.ipt_otp_no"),
        cert=certificate(data.mdtrt_cert_type, data.mdtrt_cert_no, "data"),
        stored=msgspec.to_builtins(data),
    )

    def answer(mdtrt_id: str) -> dict[str, Any]:
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": a.ipt_otp_no}}

    return a, encounters.registration_job(Origin.of(req), institution.admdvs, now, a, answer)


@register(
    "2201",
    "门诊挂号",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2201,
    deferral=Deferral.CALL,
    kind=Kind.OUTPATIENT,
    opens_visit=True,
    journal_answer=deferral.opened_visit_data,
    dated=(("data", "", "begntime", "挂号时间begntime"),),
    grouped=_registration,
)
async def register_visit(call: Call) -> Answer:
    a, job = _registering(call.gw, call.req, call.institution, call.now)
    return Answer(await encounters.register(call.conn, job, call.req.fixmedins_code, a.ipt_otp_no))


@register(
    "2202",
    "门诊挂号撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2202,
    deferral=Deferral.CALL,
)
async def cancel_registration(call: Call) -> Answer:
    data = decode_input(call.req, In2202).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    a = encounters.VisitRef(
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        psn_no=required(data.psn_no, "data.psn_no"),
        ipt_otp_no=text(data.ipt_otp_no),
    )
    await encounters.cancel_registration(call.conn, call.req.fixmedins_code, a)
    return Answer({})


def _info_of(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> encounters.VisitInfo:
    node = decode_input(req, In2203)
    info = node.mdtrtinfo
    if info is None:
        raise BadRequest("缺少输入节点mdtrtinfo")
    mdtrt_id = required(info.mdtrt_id, "mdtrtinfo.mdtrt_id")
    psn_no = required(info.psn_no, "mdtrtinfo.psn_no")
    med_type = required(info.med_type, "mdtrtinfo.med_type")
    begntime = when(info.begntime, "mdtrtinfo.begntime")
    if begntime is not None:
        # Within bounds as the registration's (found from outside: days ahead was taken).
        gw.config.dates.check("就诊时间begntime", begntime, admdvs=institution.admdvs, now=now)
    sent = wire.diagnoses(node.diseinfo)
    for n, dise in enumerate(sent, 1):
        # A diagnosis dated ahead too (found from outside: three days ahead was taken); one in
        # a shape not read stays as it was, unread (the field was never read before).
        try:
            diag_time = when(dise.diag_time, f"diseinfo[{n}].diag_time", optional=True)
        except BadRequest:
            continue
        if diag_time is not None:
            label = f"第{n}条诊断的诊断时间diag_time"
            gw.config.dates.check_not_ahead(label, diag_time, now=now)
    return encounters.VisitInfo(
        begntime=begntime,
        mdtrt_id=mdtrt_id,
        psn_no=psn_no,
        med_type=med_type,
        dise_codg=text(info.dise_codg),
        dise_name=text(info.dise_name),
        # No diagnosis sent (none, null, or only blank ones): the visit keeps those an earlier
        # 2203 sent (encounters.SET_INFO).
        stored={
            "mdtrtinfo": msgspec.to_builtins(info),
            **({"diseinfo": msgspec.to_builtins(sent)} if sent else {}),
        },
    )


def _visit_info_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2203 in a group commit: the same build as the single path's, in a batch."""
    a = _info_of(gw, req, institution, now)
    if a.mdtrt_id.startswith(PROVISIONAL_PREFIX):
        return None  # an id handed out while the ledger was down: the single path resolves it
    return encounters.visit_info_job(req.fixmedins_code, a, received=now)


async def _visit_info(call: Call) -> Answer:
    info = _info_of(call.gw, call.req, call.institution, call.now)
    await encounters.visit_info(call.conn, call.req.fixmedins_code, info, call.now)
    return Answer({})


register(
    "2203",
    "门诊就诊信息上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2203,
    deferral=Deferral.CALL,
    dated=(("mdtrtinfo", "", "begntime", "就诊时间begntime"),),
    grouped=_visit_info_job,
)(_visit_info)


@register(
    "2204",
    "门诊费用明细信息上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2204,
    deferral=Deferral.CALL,
    journal_answer=uploads.journaled_outpatient,
    journaled_lines=uploads.journaled_outpatient_lines,
    dated=(("feedetail", "*", "fee_ocur_time", "费用发生时间fee_ocur_time"),),
    grouped=uploads.outpatient_job,
)
async def upload_fees(call: Call) -> Answer:
    return await uploads.upload(call, kind=Kind.OUTPATIENT)


@register(
    "2205",
    "门诊费用明细信息撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2205,
    deferral=Deferral.CALL,
    journaled_lines=uploads.journaled_batch_withdrawal,
    withdraws=uploads.batch_withdrawn,
)
async def cancel_fees(call: Call) -> Answer:
    data = decode_input(call.req, In2205).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    a = fee_uploads.BatchWithdrawal(
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        chrg_bchno=required(data.chrg_bchno, "data.chrg_bchno"),
        psn_no=required(data.psn_no, "data.psn_no"),
    )
    received = call.now if call.mode is Mode.REPLAY else None  # replay's now: when it came
    await fee_uploads.withdraw_batch(call.conn, call.req.fixmedins_code, a, received=received)
    return Answer({})


@register(
    "2206",
    "门诊预结算",
    writes=False,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.OUTPATIENT,
    deferral=Deferral.PRESETTLEMENT,
    previewed=settling.outpatient_preview_job,
)
async def pre_settle(call: Call) -> Answer:
    return await settling.settle_visit(call, kind=Kind.OUTPATIENT, final=False)


@register(
    "2207",
    "门诊结算",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.OUTPATIENT,
    deferral=Deferral.CLAIM,
    undo=Undo.SETTLEMENT,
    grouped=settling.outpatient_job,
    settle_claim=settling.settle_claim,
    judged=settling.outpatient_job,
)
async def settle(call: Call) -> Answer:
    return await settling.settle_visit(call, kind=Kind.OUTPATIENT, final=True)


@register(
    "2208",
    "门诊结算撤销",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=wire.In2208,
    kind=Kind.OUTPATIENT,
    deferral=Deferral.CANCEL_CLAIM,
    undo=Undo.CANCELLATION,
)
async def cancel(call: Call) -> Answer:
    return await settling.cancel_settlement(call, kind=Kind.OUTPATIENT)
