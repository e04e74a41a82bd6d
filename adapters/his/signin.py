"""9001 签到 / 9002 签退."""

from __future__ import annotations

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import moment
from adapters.national.wire import In9001, In9002, required
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import signins


@register("9001", "签到", writes=True, klass=TxClass.ENCOUNTER, input=wire.In9001)
async def sign_in(call: Call) -> Answer:
    node = decode_input(call.req, In9001).signIn
    if node is None:
        raise BadRequest("缺少输入节点signIn")
    a = signins.SignIn(
        opter_no=required(node.opter_no, "signIn.opter_no"), mac=text(node.mac), ip=text(node.ip)
    )
    sign_no = await signins.sign_in(
        call.conn, call.req.fixmedins_code, call.institution.admdvs, call.now, a
    )
    return Answer({"signinoutb": {"sign_time": moment(call.now), "sign_no": sign_no}})


@register("9002", "签退", writes=True, klass=TxClass.ENCOUNTER, input=wire.In9002)
async def sign_out(call: Call) -> Answer:
    node = decode_input(call.req, In9002).signOut
    if node is None:
        raise BadRequest("缺少输入节点signOut")
    sign_no = required(node.sign_no, "signOut.sign_no")
    await signins.sign_out(call.conn, call.req.fixmedins_code, call.now, sign_no)
    return Answer({"signinoutb": {"sign_time": moment(call.now)}})
