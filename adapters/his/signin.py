"""9001 签到 / 9002 签退."""

from __future__ import annotations

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import moment
from adapters.national.wire import In9001, In9002, required
from gateway.emergency.plan.rules import TxClass
from gateway.ledger import signins
from gateway.protocol.errors import BadRequest, Conflict, NotFound
from gateway.protocol.transaction import Answer, Call, register


@register("9001", "签到", writes=True, klass=TxClass.ENCOUNTER, input=wire.In9001)
async def sign_in(call: Call) -> Answer:
    node = decode_input(call.req, In9001).signIn
    if node is None:
        raise BadRequest("缺少输入节点signIn")
    opter_no = required(node.opter_no, "signIn.opter_no")
    serial = await signins.next_serial(call.conn)
    sign_no = f"{call.institution.admdvs}{call.now:%Y%m%d}{serial:08d}"
    await signins.insert(
        call.conn,
        sign_no=sign_no,
        fixmedins_code=call.req.fixmedins_code,
        opter_no=opter_no,
        mac=text(node.mac),
        ip=text(node.ip),
        sign_time=call.now.replace(microsecond=0),
    )
    return Answer({"signinoutb": {"sign_time": moment(call.now), "sign_no": sign_no}})


@register("9002", "签退", writes=True, klass=TxClass.ENCOUNTER, input=wire.In9002)
async def sign_out(call: Call) -> Answer:
    node = decode_input(call.req, In9002).signOut
    if node is None:
        raise BadRequest("缺少输入节点signOut")
    sign_no = required(node.sign_no, "signOut.sign_no")
    signed_in = await signins.lock(call.conn, sign_no, call.req.fixmedins_code)
    if signed_in is None:
        raise NotFound(f"签到编号{sign_no}不存在或不属于本机构")
    if signed_in.sign_out_time is not None:
        raise Conflict(f"签到编号{sign_no}已签退")
    await signins.sign_out(call.conn, sign_no, call.now.replace(microsecond=0))
    return Answer({"signinoutb": {"sign_time": moment(call.now)}})
