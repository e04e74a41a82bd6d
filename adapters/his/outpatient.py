"""Outpatient transactions 2201–2208."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.his import settling, uploads
from adapters.national import deferral, wire
from adapters.national.envelope import decode_input, text
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
from gateway.core import eligibility
from gateway.emergency.plan.rules import TxClass
from gateway.ledger import encounters, fees, persons
from gateway.protocol.errors import BadRequest, Conflict, NotFound, RuleRejected
from gateway.protocol.transaction import Answer, Call, Deferral, Kind, Undo, register


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
)
async def register_visit(call: Call) -> Answer:
    data = decode_input(call.req, In2201).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    psn_no = required(data.psn_no, "data.psn_no")
    insutype = required(data.insutype, "data.insutype")
    begntime = when_required(data.begntime, "data.begntime")
    call.gw.config.dates.check(
        "挂号时间begntime", begntime, admdvs=call.institution.admdvs, now=call.now
    )
    ipt_otp_no = required(data.ipt_otp_no, "data.ipt_otp_no")
    cert = certificate(data.mdtrt_cert_type, data.mdtrt_cert_no, "data")
    person, _ = await persons.read(call.conn, psn_no)
    persons.require_certificate(person, cert)
    persons.require_insured(person)
    eligibility.require_insutype(insutype, person.insutype)
    mdtrt_id = await encounters.new_mdtrt_id(call.conn, call.institution.admdvs, call.now)
    await encounters.create(
        call.conn,
        mdtrt_id=mdtrt_id,
        fixmedins_code=call.req.fixmedins_code,
        psn_no=psn_no,
        insutype=insutype,
        kind=Kind.OUTPATIENT,
        med_type="11",
        begntime=begntime,
        ipt_otp_no=ipt_otp_no,
        insuplc_admdvs=person.insuplc_admdvs,
        msgid=call.req.msgid,
        detail={"registration": msgspec.to_builtins(data)},
    )
    return Answer({"data": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": ipt_otp_no}})


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
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    psn_no = required(data.psn_no, "data.psn_no")
    enc = await encounters.get(
        call.conn, mdtrt_id, call.req.fixmedins_code, psn_no=psn_no, lock=True
    )
    if enc.kind != "outpatient":
        raise RuleRejected(f"就诊ID{mdtrt_id}不是门诊就诊")
    ipt_otp_no = text(data.ipt_otp_no)
    if ipt_otp_no and ipt_otp_no != enc.ipt_otp_no:
        raise Conflict(f"门诊号{ipt_otp_no}与就诊ID{mdtrt_id}不对应")
    if enc.status == "cancelled":
        raise Conflict(f"就诊ID{mdtrt_id}已撤销，不能重复撤销")
    if await encounters.settled_count(call.conn, mdtrt_id):
        raise Conflict("该就诊存在未撤销的结算，请先撤销结算（2208）")
    if await fees.has_lines(call.conn, mdtrt_id):
        raise Conflict("该就诊存在已上传的费用明细，请先撤销费用明细（2205）")
    await encounters.update(call.conn, mdtrt_id, status="cancelled")
    return Answer({})


async def _visit_info(call: Call) -> Answer:
    node = decode_input(call.req, In2203)
    info = node.mdtrtinfo
    if info is None:
        raise BadRequest("缺少输入节点mdtrtinfo")
    mdtrt_id = required(info.mdtrt_id, "mdtrtinfo.mdtrt_id")
    psn_no = required(info.psn_no, "mdtrtinfo.psn_no")
    med_type = required(info.med_type, "mdtrtinfo.med_type")
    when(info.begntime, "mdtrtinfo.begntime")
    category = eligibility.category_for("outpatient", med_type, mdtrt_id)
    enc = await encounters.get(
        call.conn, mdtrt_id, call.req.fixmedins_code, psn_no=psn_no, lock=True
    )
    if enc.kind != "outpatient":
        raise RuleRejected(f"就诊ID{mdtrt_id}不是门诊就诊")
    encounters.require_open(enc)
    dise_codg = text(info.dise_codg)
    if category is eligibility.CHRONIC:
        person, _ = await persons.read(call.conn, psn_no)
        eligibility.require_chronic_filing(person, dise_codg)
    detail: dict[str, Any] = {
        "mdtrtinfo": msgspec.to_builtins(info),
        "diseinfo": msgspec.to_builtins(node.diseinfo),
    }
    await encounters.update(
        call.conn,
        mdtrt_id,
        med_type=med_type,
        dise_codg=dise_codg,
        dise_name=text(info.dise_name),
        detail=detail,
    )
    return Answer({})


register(
    "2203",
    "门诊就诊信息上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2203,
    deferral=Deferral.CALL,
)(_visit_info)


@register(
    "2204",
    "门诊费用明细信息上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2204,
    deferral=Deferral.CALL,
    journal_answer=deferral.lines_taken,
    dated=(("feedetail", "*", "fee_ocur_time", "费用发生时间fee_ocur_time"),),
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
)
async def cancel_fees(call: Call) -> Answer:
    data = decode_input(call.req, In2205).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    chrg_bchno = required(data.chrg_bchno, "data.chrg_bchno")
    psn_no = required(data.psn_no, "data.psn_no")
    enc = await encounters.get(
        call.conn, mdtrt_id, call.req.fixmedins_code, psn_no=psn_no, lock=True
    )
    if enc.kind != "outpatient":
        raise RuleRejected(f"就诊ID{mdtrt_id}不是门诊就诊")
    removed = await fees.delete_unsettled(call.conn, mdtrt_id, chrg_bchno=chrg_bchno)
    if not removed:
        raise NotFound("没有可撤销的未结算费用明细（已结算的明细须先撤销结算）")
    return Answer({})


@register(
    "2206",
    "门诊预结算",
    writes=False,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.OUTPATIENT,
    deferral=Deferral.PRESETTLEMENT,
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
