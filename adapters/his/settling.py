"""The settlement flow shared by outpatient (2206/2207/2208) and inpatient (2303/2304/2305)."""

from __future__ import annotations

from typing import Any

from adapters.his import deferral
from adapters.his.envelope import decode_input, text
from adapters.his.output import setldetail, setlinfo
from adapters.his.wire import In2206, In2208, SettleData, fen, fen_required, flag, required
from gateway.core.model import Category, Visit
from gateway.core.settle import category_of
from gateway.dispatch import Answer, Call
from gateway.errors import BadRequest, Conflict, RuleRejected
from gateway.ledger import encounters, fees, settlements
from gateway.ledger.encounters import Encounter

KIND_CATEGORIES = {
    "outpatient": frozenset({Category.OUTPATIENT, Category.CHRONIC}),
    "inpatient": frozenset({Category.INPATIENT}),
    "pharmacy": frozenset({Category.PHARMACY}),
}


def check_med_type(enc: Encounter, med_type: str) -> Category:
    """The med_type must be supported and belong to the kind of visit."""
    category = category_of(med_type)
    if category not in KIND_CATEGORIES[enc.kind]:
        raise RuleRejected(f"医疗类别{med_type}与就诊类型不符（就诊ID{enc.mdtrt_id}）")
    return category


def declared_of(data: SettleData) -> settlements.Declared:
    """The totals the client sent."""
    return settlements.Declared(
        medfee_sumamt=fen_required(data.medfee_sumamt, "data.medfee_sumamt"),
        fulamt_ownpay_amt=fen(data.fulamt_ownpay_amt, "data.fulamt_ownpay_amt", optional=True),
        overlmt_selfpay=fen(data.overlmt_selfpay, "data.overlmt_selfpay", optional=True),
        preselfpay_amt=fen(data.preselfpay_amt, "data.preselfpay_amt", optional=True),
        inscp_scp_amt=fen(data.inscp_scp_amt, "data.inscp_scp_amt", optional=True),
    )


async def settle_visit(call: Call, *, kind: str, final: bool) -> Answer:
    """Pre-settle (final=False, changes nothing) or settle the visit's unsettled lines."""
    data = decode_input(call.req, In2206).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    psn_no = required(data.psn_no, "data.psn_no")
    mdtrt_id = required(data.mdtrt_id, "data.mdtrt_id")
    med_type = required(data.med_type, "data.med_type")
    acct_used = flag(data.acct_used_flag, "data.acct_used_flag") == "1"
    mid_setl_flag = flag(data.mid_setl_flag, "data.mid_setl_flag")
    chrg_bchno = fees.ALL
    if kind == "outpatient":
        chrg_bchno = required(data.chrg_bchno, "data.chrg_bchno")
    declared = declared_of(data)
    enc = await encounters.get(
        call.conn, mdtrt_id, call.req.fixmedins_code, psn_no=psn_no, lock=final
    )
    if enc.kind != kind:
        raise RuleRejected(f"就诊ID{mdtrt_id}不是{'门诊' if kind == 'outpatient' else '住院'}就诊")
    encounters.require_open(enc)
    if enc.selfpay:
        raise RuleRejected(f"就诊ID{mdtrt_id}为应急期间自费入院，请先办理自费转医保后再结算")
    insutype = text(data.insutype)
    if insutype and insutype != enc.insutype:
        raise RuleRejected(f"险种类型{insutype}与登记时的险种{enc.insutype}不一致")
    check_med_type(enc, med_type)
    if kind == "inpatient" and final and mid_setl_flag == "0" and enc.status != "discharged":
        raise Conflict("患者尚未办理出院（2402），不能进行出院结算；中途结算请传mid_setl_flag=1")
    lines = await fees.unsettled(call.conn, mdtrt_id, chrg_bchno)
    if not lines and final and chrg_bchno != fees.ALL:
        settled = await call.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM fee_lines WHERE mdtrt_id = $1 AND chrg_bchno = $2"
            " AND setl_id IS NOT NULL)",
            mdtrt_id,
            chrg_bchno,
        )
        if settled:
            raise Conflict(f"收费批次{chrg_bchno}已结算，请勿重复结算")
    ctx = settlements.Context(
        institution=call.institution,
        encounter=enc,
        visit=Visit(
            fixmedins_code=call.req.fixmedins_code,
            mdtrt_id=mdtrt_id,
            med_type=med_type,
            service_date=enc.begntime.date(),
            acct_used_flag=acct_used,
            dise_codg=enc.dise_codg,
        ),
        infno=call.req.infno,
        msgid=call.req.msgid,
        chrg_bchno="" if chrg_bchno == fees.ALL else chrg_bchno,
        mid_setl_flag=mid_setl_flag,
        dev_no=call.req.dev_no,
        opter=call.req.opter,
        mdtrtarea_admvs=call.req.mdtrtarea_admvs,
    )
    snapshot = call.gw.snapshot
    s, state = await settlements.compute(call.conn, snapshot, ctx, lines, declared, lock=final)
    if final:
        rec = await settlements.commit(call.conn, snapshot, ctx, lines, s, state, call.now)
    else:
        rec = settlements.record_of(s, ctx, state.person, setl_id=None, setl_time=None)
        await call.conn.execute(
            "INSERT INTO presettlements VALUES ($1, $2, $3, $4) ON CONFLICT (mdtrt_id)"
            " DO UPDATE SET infno = EXCLUDED.infno, at = EXCLUDED.at",
            mdtrt_id,
            call.req.fixmedins_code,
            call.req.infno,
            call.now,
        )
    cert_type = text(data.mdtrt_cert_type)
    return Answer(
        {
            "setlinfo": setlinfo(
                rec, service_date=ctx.visit.service_date, mdtrt_cert_type=cert_type
            ),
            "setldetail": setldetail(rec.funds),
        },
        paid=rec.funds if final else (),
    )


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
        categories=frozenset(c.value for c in KIND_CATEGORIES[kind]),
    )
    info: dict[str, Any] = setlinfo(rec, sign=-1, balc=balance_after)
    info["setl_time"] = call.now.strftime("%Y-%m-%d %H:%M:%S")
    return Answer({"setlinfo": info, "setldetail": setldetail(rec.funds, -1)})
