"""5203 结算信息查询 and 5204 费用明细查询."""

from __future__ import annotations

from asyncpg import Pool

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import line_result, moment, setldetail, setlinfo
from adapters.national.wire import In5203
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import settlement_queries


@register("5203", "结算信息查询", writes=False, klass=TxClass.QUERY, input=wire.In5203)
async def settlement_info(call: Call) -> Answer:
    data = decode_input(call.req, In5203).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    rec = await settlement_queries.settlement_info(
        call.conn, call.req.fixmedins_code, _query(data), _elsewhere(call)
    )
    info = setlinfo(rec)
    info["refd_setl_flag"] = "1" if rec.status == "cancelled" else "0"
    # The 5203 table names the personal part and the cash psn_pay / cash_payamt (Dongguan's DLL
    # reads both as doubles); the setlinfo names stay for clients that share one parser.
    info["psn_pay"] = info["psn_part_amt"]
    info["cash_payamt"] = info["psn_cash_pay"]
    return Answer({"setlinfo": info, "setldetail": setldetail(rec.funds)})


def _query(data: wire.SettlementQuery) -> settlement_queries.SettlementQuery:
    return settlement_queries.SettlementQuery(
        setl_id=text(data.setl_id), mdtrt_id=text(data.mdtrt_id), psn_no=text(data.psn_no)
    )


def _elsewhere(call: Call) -> list[Pool]:
    """Split by region, a query naming no region, or another than the insured's, reached a
    database that may not hold the settlement: not found there, it is looked for in the others
    (a false "not found" could make the counter settle again under a new msgid)."""
    ledgers = call.gw.ledgers
    return [p.pool for p in ledgers.all if p.name != call.ledger] if ledgers.split else []


@register("5204", "费用明细查询", writes=False, klass=TxClass.QUERY, input=wire.In5203)
async def fee_detail(call: Call) -> Answer:
    """The settlement's lines, each with its split as settled: `output` is the list itself, as
    the interface answers 5204 (nhis-web reads `output` as a list of rows)."""
    data = decode_input(call.req, In5203).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    rec, lines = await settlement_queries.fee_detail(
        call.conn, call.req.fixmedins_code, _query(data), _elsewhere(call)
    )
    snapshot = call.gw.snapshot
    code = call.req.fixmedins_code
    on = rec.service_date or call.now.date()
    rows = []
    for ln in lines:
        sp = ln.split
        mapping = snapshot.mapping(code, sp.medins_list_codg, on)
        entry = snapshot.entry(sp.med_list_codg, on) if sp.med_list_codg else None
        rows.append(
            {
                "mdtrt_id": rec.mdtrt_id,
                "setl_id": rec.setl_id,
                "med_type": rec.med_type,
                "fee_ocur_time": moment(ln.fee_ocur_time),
                **line_result(sp),
                "hilist_code": sp.med_list_codg,
                "hilist_name": entry.med_list_name if entry is not None else "",
                "list_type": sp.list_type,
                "med_list_codg": sp.med_list_codg,
                "medins_list_codg": sp.medins_list_codg,
                "medins_list_name": mapping.fixmedins_hilist_name if mapping is not None else "",
                "hosp_appr_flag": ln.hosp_appr_flag or "",
                "chrg_bchno": ln.chrg_bchno,
            }
        )
    return Answer(rows)
