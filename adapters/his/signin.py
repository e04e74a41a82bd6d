"""9001 签到 / 9002 签退."""

from __future__ import annotations

from adapters.his import wire
from adapters.his.envelope import decode_input, text
from adapters.his.output import moment
from adapters.his.wire import In9001, In9002, required
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.transaction import Answer, Call, register


@register("9001", "签到", writes=True, klass="encounter", input=wire.In9001)
async def sign_in(call: Call) -> Answer:
    node = decode_input(call.req, In9001).signIn
    if node is None:
        raise BadRequest("缺少输入节点signIn")
    opter_no = required(node.opter_no, "signIn.opter_no")
    serial = await call.conn.fetchval("SELECT nextval('sign_seq')")
    sign_no = f"{call.institution.admdvs}{call.now:%Y%m%d}{int(serial):08d}"
    await call.conn.execute(
        "INSERT INTO sign_ins (sign_no, fixmedins_code, opter_no, mac, ip, sign_time)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        sign_no,
        call.req.fixmedins_code,
        opter_no,
        text(node.mac),
        text(node.ip),
        call.now.replace(microsecond=0),
    )
    return Answer({"signinoutb": {"sign_time": moment(call.now), "sign_no": sign_no}})


@register("9002", "签退", writes=True, klass="encounter", input=wire.In9002)
async def sign_out(call: Call) -> Answer:
    node = decode_input(call.req, In9002).signOut
    if node is None:
        raise BadRequest("缺少输入节点signOut")
    sign_no = required(node.sign_no, "signOut.sign_no")
    row = await call.conn.fetchrow(
        "SELECT sign_out_time FROM sign_ins WHERE sign_no = $1 AND fixmedins_code = $2 FOR UPDATE",
        sign_no,
        call.req.fixmedins_code,
    )
    if row is None:
        raise NotFound(f"签到编号{sign_no}不存在或不属于本机构")
    if row["sign_out_time"] is not None:
        raise Conflict(f"签到编号{sign_no}已签退")
    await call.conn.execute(
        "UPDATE sign_ins SET sign_out_time = $2 WHERE sign_no = $1",
        sign_no,
        call.now.replace(microsecond=0),
    )
    return Answer({"signinoutb": {"sign_time": moment(call.now)}})
