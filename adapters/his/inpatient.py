"""Inpatient transactions 2401–2405 and 2301–2305."""

from __future__ import annotations

import msgspec

from adapters.his import settling, uploads
from adapters.national import deferral, wire
from adapters.national.envelope import decode_input, text
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
from gateway.core import eligibility
from gateway.emergency.plan.rules import TxClass
from gateway.ledger import encounters, fees, persons, settlements
from gateway.protocol.errors import BadRequest, Conflict, NotFound, RuleRejected
from gateway.protocol.transaction import Answer, Call, Deferral, Kind, Mode, Undo, register

INPATIENT_MED_TYPES = frozenset({"21", "22", "23", "24"})


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
)
async def admit(call: Call) -> Answer:
    node = decode_input(call.req, In2401)
    info = node.mdtrtinfo
    if info is None:
        raise BadRequest("缺少输入节点mdtrtinfo")
    psn_no = required(info.psn_no, "mdtrtinfo.psn_no")
    insutype = required(info.insutype, "mdtrtinfo.insutype")
    begntime = when_required(info.begntime, "mdtrtinfo.begntime")
    call.gw.config.dates.check(
        "入院时间begntime", begntime, admdvs=call.institution.admdvs, now=call.now
    )
    med_type = required(info.med_type, "mdtrtinfo.med_type")
    ipt_no = required(info.ipt_no, "mdtrtinfo.ipt_no")
    cert = certificate(info.mdtrt_cert_type, info.mdtrt_cert_no, "mdtrtinfo")
    if med_type not in INPATIENT_MED_TYPES:
        raise RuleRejected(f"医疗类别{med_type}不是住院类别")
    person, _ = await persons.read(call.conn, psn_no)
    persons.require_certificate(person, cert)
    selfpay = call.mode is Mode.SELFPAY
    if not selfpay:  # a self-pay admission is checked when it is converted (自费转医保)
        persons.require_insured(person)
    eligibility.require_insutype(insutype, person.insutype)
    mdtrt_id = await encounters.new_mdtrt_id(call.conn, call.institution.admdvs, call.now)
    await encounters.create(
        call.conn,
        selfpay=selfpay,
        mdtrt_id=mdtrt_id,
        fixmedins_code=call.req.fixmedins_code,
        psn_no=psn_no,
        insutype=insutype,
        kind=Kind.INPATIENT,
        med_type=med_type,
        begntime=begntime,
        ipt_otp_no=ipt_no,
        insuplc_admdvs=person.insuplc_admdvs,
        msgid=call.req.msgid,
        dise_codg=text(info.dise_codg),
        dise_name=text(info.dise_name),
        detail={
            "mdtrtinfo": msgspec.to_builtins(info),
            "diseinfo": msgspec.to_builtins(node.diseinfo),
        },
    )
    if selfpay:
        return Answer(
            {"result": {"mdtrt_id": mdtrt_id}},
            warn_msg="应急预案：按自费办理入院，系统恢复后请办理自费转医保后再结算",
        )
    return Answer({"result": {"mdtrt_id": mdtrt_id}})


@register(
    "2402",
    "出院办理",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2402,
    deferral=Deferral.CALL,
)
async def discharge(call: Call) -> Answer:
    info = decode_input(call.req, In2402).dscginfo
    if info is None:
        raise BadRequest("缺少输入节点dscginfo")
    mdtrt_id = required(info.mdtrt_id, "dscginfo.mdtrt_id")
    psn_no = required(info.psn_no, "dscginfo.psn_no")
    endtime = when_required(info.endtime, "dscginfo.endtime")
    call.gw.config.dates.check(
        "出院时间endtime", endtime, admdvs=call.institution.admdvs, now=call.now
    )
    enc = await _admission(call, mdtrt_id, psn_no)
    if enc.status != "open":
        raise Conflict(f"就诊ID{mdtrt_id}当前状态不能办理出院（{_STATUS[enc.status]}）")
    if endtime < enc.begntime:
        raise RuleRejected(
            f"出院时间endtime {endtime:%Y-%m-%d %H:%M:%S}早于入院时间"
            f"{enc.begntime:%Y-%m-%d %H:%M:%S}，请核对日期"
        )
    last_fee = await fees.latest_fee_time(call.conn, mdtrt_id)
    if last_fee is not None and last_fee.date() > endtime.date():
        raise RuleRejected(
            f"出院时间endtime {endtime:%Y-%m-%d %H:%M:%S}早于已上传费用明细的发生时间"
            f"{last_fee:%Y-%m-%d %H:%M:%S}，请核对出院时间或先撤销该费用明细（2302）"
        )
    await encounters.update(call.conn, mdtrt_id, status="discharged", endtime=endtime)
    return Answer({})


_STATUS = {"open": "在院", "discharged": "已出院", "cancelled": "已撤销"}


async def _admission(call: Call, mdtrt_id: str, psn_no: str) -> encounters.Encounter:
    enc = await encounters.get(
        call.conn, mdtrt_id, call.req.fixmedins_code, psn_no=psn_no, lock=True
    )
    if enc.kind != "inpatient":
        raise RuleRejected(f"就诊ID{mdtrt_id}不是住院就诊")
    return enc


@register(
    "2404",
    "入院办理撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2202,
    deferral=Deferral.CALL,
)
async def cancel_admission(call: Call) -> Answer:
    data = decode_input(call.req, In2202).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    enc = await _admission(call, mdtrt_id, required(data.psn_no, "data.psn_no"))
    if enc.status != "open":
        raise Conflict(f"就诊ID{mdtrt_id}当前状态不能撤销入院（{_STATUS[enc.status]}）")
    if await encounters.settled_count(call.conn, mdtrt_id):
        raise Conflict("该住院存在未撤销的结算，请先撤销结算（2305）")
    if await fees.has_lines(call.conn, mdtrt_id):
        raise Conflict("该住院存在已上传的费用明细，请先撤销费用明细（2302）")
    await encounters.update(call.conn, mdtrt_id, status="cancelled")
    return Answer({})


@register(
    "2405",
    "出院办理撤销",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2202,
    deferral=Deferral.CALL,
)
async def cancel_discharge(call: Call) -> Answer:
    data = decode_input(call.req, In2202).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    enc = await _admission(call, mdtrt_id, required(data.psn_no, "data.psn_no"))
    if enc.status != "discharged":
        raise Conflict(f"就诊ID{mdtrt_id}未办理出院，不能撤销出院")
    if await settlements.has_final(call.conn, mdtrt_id):
        raise Conflict("该住院已出院结算，请先撤销结算（2305）再撤销出院")
    await encounters.update(call.conn, mdtrt_id, status="open", endtime=None)
    return Answer({})


@register(
    "2301",
    "住院费用明细上传",
    writes=True,
    klass=TxClass.ENCOUNTER,
    input=wire.In2204,
    deferral=Deferral.CALL,
    journal_answer=deferral.lines_taken,
    dated=(("feedetail", "*", "fee_ocur_time", "费用发生时间fee_ocur_time"),),
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
)
async def cancel_fees(call: Call) -> Answer:
    refs = as_list(decode_input(call.req, In2302).data)
    if not refs:
        raise BadRequest("缺少输入节点data")
    removed = 0
    touched: set[str] = set()
    for ref in refs:
        mdtrt_id = required(ref.mdtrt_id, "data.mdtrt_id")
        sn = required(ref.feedetl_sn, "data.feedetl_sn")
        await _admission(call, mdtrt_id, required(ref.psn_no, "data.psn_no"))
        touched.add(mdtrt_id)
        n = await fees.delete_unsettled(call.conn, mdtrt_id, feedetl_sn=sn)
        if not n and sn != fees.ALL:
            raise NotFound(f"费用明细流水号{sn}不存在或已结算，不能撤销")
        removed += n
    if not removed:
        raise NotFound("没有可撤销的未结算费用明细（已结算的明细须先撤销结算）")
    for mdtrt_id in sorted(touched):
        await _no_orphan_refunds(call, mdtrt_id)
    return Answer({})


async def _no_orphan_refunds(call: Call, mdtrt_id: str) -> None:
    """A refund never stands without the charge it takes back (uploads.py): a charge is
    withdrawn with its refund lines, or after them (checked once the whole request is applied,
    so one 2302 may list the charge before its refunds)."""
    orphan = await fees.orphan_refund(call.conn, mdtrt_id)
    if orphan is not None:
        refund_sn, charge_sn = orphan
        raise Conflict(
            f"费用流水号{charge_sn}有退费明细{refund_sn}，"
            "请先撤销退费明细（或一并撤销）后再撤销原收费明细"
        )


@register(
    "2303",
    "住院预结算",
    writes=False,
    klass=TxClass.SETTLEMENT,
    input=wire.In2206,
    kind=Kind.INPATIENT,
    deferral=Deferral.PRESETTLEMENT,
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
