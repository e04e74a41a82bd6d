"""Pharmacy POS: 2101 药店预结算, 2102 药店结算, 2103 药店结算撤销 (protocol.md §2.5).

A pharmacy purchase has no registration or upload step: 2102 opens the visit, stores the lines
and settles them in one transaction, through the same core and ledger as hospital settlements.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from adapters.national import deferral, wire
from adapters.national.envelope import Amount, Code, Request, decode_input, text
from adapters.national.output import line_result, moment, setldetail, setlinfo
from adapters.national.paths import by_serial
from adapters.national.wire import (
    In2208,
    Node,
    cert_type_text,
    certificate,
    fen_required,
    flag,
    micro,
    quantity,
    required,
    when,
    when_required,
)
from gateway.app.runtime import Gateway
from gateway.core.catalog import Snapshot
from gateway.core.model import Institution, LineSplit, Settlement
from gateway.core.settle import split_line
from gateway.emergency.plan.rules import TxClass
from gateway.pipeline.grouped import Job
from gateway.protocol.errors import BadRequest, LineRejected, RuleRejected
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Answer, Call, Deferral, Kind, Undo, register
from gateway.services import cancellation
from gateway.services.purchase import (
    PHARMACY_MED_TYPE,
    Context,
    Declared,
    PurchaseAsk,
    Record,
    StoredLine,
    purchase_job,
)
from gateway.services.settlement_state import preview, settle_alone

MAX_LINES = 500


class DrugInfo(Node):
    psn_no: Code = None
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    begntime: Code = None
    medfee_sumamt: Amount = None
    insutype: Code = None
    dise_codg: Code = None
    dise_name: Code = None
    acct_used_flag: Code = None
    med_type: Code = None
    invono: Code = None


class DrugDetail(Node):
    feedetl_sn: Code = None
    rxno: Code = None
    rx_circ_flag: Code = None
    fee_ocur_time: Code = None
    med_list_codg: Code = None
    medins_list_codg: Code = None
    det_item_fee_sumamt: Amount = None
    cnt: Amount = None
    pric: Amount = None
    sin_dos_dscr: Code = None
    used_frqu_dscr: Code = None
    prd_days: Amount = None
    medc_way_dscr: Code = None
    bilg_dr_codg: Code = None
    bilg_dr_name: Code = None
    tcmdrug_used_way: Code = None


class In2101(Node):
    druginfo: DrugInfo | None = None
    drugdetail: list[DrugDetail] = []


def purchase_of(req: Request) -> PurchaseAsk:
    """A 2101/2102 as the settlement build reads it; refuses what cannot be one."""
    node = decode_input(req, In2101)
    info = node.druginfo
    if info is None:
        raise BadRequest("缺少输入节点druginfo")
    psn_no = required(info.psn_no, "druginfo.psn_no")
    cert = certificate(info.mdtrt_cert_type, info.mdtrt_cert_no, "druginfo")
    begntime = when_required(info.begntime, "druginfo.begntime")
    med_type = text(info.med_type) or PHARMACY_MED_TYPE
    if med_type != PHARMACY_MED_TYPE:
        raise RuleRejected(f"药店购药的医疗类别应为41，收到{med_type}")
    if not node.drugdetail:
        raise BadRequest("药品明细drugdetail不能为空")
    if len(node.drugdetail) > MAX_LINES:
        raise BadRequest(f"单次药品明细不能超过{MAX_LINES}条")
    lines: list[StoredLine] = []
    seen: set[str] = set()
    for index, row in enumerate(node.drugdetail, 1):
        # A line without its serial is named by its place (found from outside: named by neither).
        sn = required(row.feedetl_sn, f"drugdetail第{index}条.feedetl_sn")
        if sn in seen:
            raise LineRejected(sn, "同一报文中费用明细流水号重复")
        seen.add(sn)
        at = by_serial("drugdetail", sn)
        occurred = when(row.fee_ocur_time, f"{at}.fee_ocur_time", optional=True) or begntime
        cnt = quantity(row.cnt, f"{at}.cnt")
        if cnt <= 0:
            raise LineRejected(sn, "数量必须大于0，退药请撤销结算（2103）")
        lines.append(
            StoredLine(
                feedetl_sn=sn,
                medins_list_codg=required(row.medins_list_codg, f"{at}.medins_list_codg"),
                med_list_codg=text(row.med_list_codg) or None,
                pric_micro=micro(row.pric, f"{at}.pric"),
                cnt=cnt,
                det_item_fee_sumamt=fen_required(
                    row.det_item_fee_sumamt, f"{at}.det_item_fee_sumamt"
                ),
                fee_date=occurred.date(),
                hosp_appr_flag=None,  # restricted items are never approved at a pharmacy
                mdtrt_id="",
                chrg_bchno="",
                init_feedetl_sn="",
                psn_no=psn_no,
                fee_ocur_time=occurred,
            )
        )
    medfee_sumamt = fen_required(info.medfee_sumamt, "druginfo.medfee_sumamt")
    if medfee_sumamt == 0:
        raise BadRequest("医疗费总额medfee_sumamt为0，没有需要结算的药品费用")
    return PurchaseAsk(
        psn_no=psn_no,
        cert=cert,
        cert_type=cert_type_text(info.mdtrt_cert_type),
        begntime=begntime,
        acct_used=flag(info.acct_used_flag, "druginfo.acct_used_flag") == "1",
        insutype=text(info.insutype),
        dise_codg=text(info.dise_codg),
        dise_name=text(info.dise_name),
        declared=Declared(medfee_sumamt=medfee_sumamt),
        lines=tuple(lines),
        stored={"druginfo": msgspec.to_builtins(info), "dev_no": req.dev_no},
    )


def output(
    rec: Record,
    s: Settlement,
    ctx: Context,
    p: PurchaseAsk,
    final: bool,
) -> dict[str, Any]:
    """The 2101/2102 answer: 结算信息, 结算基金分项 and each line's split."""
    info = setlinfo(rec, service_date=ctx.visit.service_date, mdtrt_cert_type=p.cert_type)
    info.pop("hosp_part_amt", None)  # the pharmacy setlinfo has no hospital share
    if not final:
        info["mdtrt_id"] = None
    return {
        "setlinfo": info,
        "setldetail": setldetail(rec.funds),
        "detlcutinfo": [line_result(ln, with_lmt_flag=False) for ln in s.lines],
    }


def carried_lines(req: Request, snapshot: Snapshot) -> tuple[LineSplit, ...]:
    """A 2101/2102's lines split by the catalog, as its sale splits them (rules §1–2 depend on
    the catalog alone): its claim's and pre-settlement's lines while settlements are deferred."""
    code = req.fixmedins_code
    return tuple(split_line(snapshot, code, ln) for ln in purchase_of(req).lines)


def _job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime, *, final: bool = True
) -> Job:
    """2101/2102 as the purchase build (gateway.services.purchase), whichever path runs it."""
    return purchase_job(
        gw.snapshot,
        gw.config.dates,
        Origin.of(req),
        institution,
        now,
        purchase_of(req),
        output,
        final=final,
    )


def _preview_job(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> Job:
    """2101 as a preview of the purchase build: whichever path reads it, the group read's
    batches or `_pre_settle` alone."""
    return _job(gw, req, institution, now, final=False)


async def _pre_settle(call: Call) -> Answer:
    """2101: the same split as 2102 would make now, nothing locked or written."""
    built = await preview(call.conn, _preview_job(call.gw, call.req, call.institution, call.now))
    return Answer(built.output, warn_msg=built.warn_msg)


async def _settle_alone(call: Call) -> Answer:
    """2102 on its own transaction: the same build as a batch of one."""
    built = await settle_alone(call.conn, _job(call.gw, call.req, call.institution, call.now))
    return Answer(built.output, paid=built.paid)


@register(
    "2101",
    "药店预结算",
    writes=False,
    klass=TxClass.SETTLEMENT,
    input=In2101,
    kind=Kind.PHARMACY,
    deferral=Deferral.PRESETTLEMENT,
    previewed=_preview_job,
    carried_lines=carried_lines,
)
async def pre_settle(call: Call) -> Answer:
    return await _pre_settle(call)


@register(
    "2102",
    "药店结算",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=In2101,
    kind=Kind.PHARMACY,
    deferral=Deferral.CLAIM,
    undo=Undo.SETTLEMENT,
    dated=(
        ("druginfo", "", "begntime", "购药时间begntime"),
        ("drugdetail", "*", "fee_ocur_time", "费用发生时间fee_ocur_time"),
    ),
    grouped=_job,
    carried_lines=carried_lines,
)
async def settle_purchase(call: Call) -> Answer:
    return await _settle_alone(call)


@register(
    "2103",
    "药店结算撤销",
    writes=True,
    klass=TxClass.SETTLEMENT,
    input=wire.In2208,
    kind=Kind.PHARMACY,
    deferral=Deferral.CANCEL_CLAIM,
    undo=Undo.CANCELLATION,
)
async def cancel(call: Call) -> Answer:
    data = decode_input(call.req, In2208).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    if deferral.is_claim_id(text(data.setl_id)):
        return await deferral.withdraw_claim(call)  # psn_pay and cash_payamt as a sale's 2103
    a = cancellation.SettlementCancel(
        setl_id=required(data.setl_id, "data.setl_id"),
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        psn_no=required(data.psn_no, "data.psn_no"),
    )
    done = await cancellation.cancel(call.conn, Origin.of(call.req), call.now, Kind.PHARMACY, a)
    rec = done.at_counter()
    full = setlinfo(rec, sign=-1, balc=done.balc)
    # The 2103 answer as pharmacy clients read it: psn_pay and cash_payamt, no person block.
    info: dict[str, Any] = {
        k: full[k]
        for k in (
            "mdtrt_id",
            "setl_id",
            "clr_optins",
            "medfee_sumamt",
            "fulamt_ownpay_amt",
            "overlmt_selfpay",
            "preselfpay_amt",
            "inscp_scp_amt",
            "act_pay_dedc",
            "hifp_pay",
            "pool_prop_selfpay",
            "cvlserv_pay",
            "hifes_pay",
            "hifmi_pay",
            "hifob_pay",
            "maf_pay",
            "oth_pay",
            "fund_pay_sumamt",
            "acct_pay",
            "balc",
            "acct_mulaid_pay",
            "medins_setl_id",
        )
    }
    info["setl_time"] = moment(call.now)
    info["medins_setl_id"] = call.req.msgid  # the cancellation's own, as a 2208's
    info["psn_pay"] = full["psn_part_amt"]
    info["cash_payamt"] = full["psn_cash_pay"]
    return Answer(
        {"setlinfo": info, "setldetail": setldetail(rec.funds, -1, done.limits(call.gw.snapshot))},
        warn_msg=done.warning(),
    )
