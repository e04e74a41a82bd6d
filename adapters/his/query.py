"""5203 结算信息查询."""

from __future__ import annotations

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import setldetail, setlinfo
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
    a = settlement_queries.SettlementQuery(
        setl_id=text(data.setl_id), mdtrt_id=text(data.mdtrt_id), psn_no=text(data.psn_no)
    )
    # Split by region, a query naming no region, or another than the insured's, reached a
    # database that may not hold the settlement: not found there, it is looked for in the
    # others (a false "not found" could make the counter settle again under a new msgid).
    ledgers = call.gw.ledgers
    elsewhere = [p.pool for p in ledgers.all if p.name != call.ledger] if ledgers.split else []
    rec = await settlement_queries.settlement_info(call.conn, call.req.fixmedins_code, a, elsewhere)
    info = setlinfo(rec)
    info["refd_setl_flag"] = "1" if rec.status == "cancelled" else "0"
    # The 5203 table names the personal part and the cash psn_pay / cash_payamt (Dongguan's DLL
    # reads both as doubles); the setlinfo names stay for clients that share one parser.
    info["psn_pay"] = info["psn_part_amt"]
    info["cash_payamt"] = info["psn_cash_pay"]
    return Answer({"setlinfo": info, "setldetail": setldetail(rec.funds)})
