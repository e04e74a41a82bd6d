"""1101 人员信息获取 and 2001 人员待遇享受检查."""

from __future__ import annotations

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import amount, person_fields
from adapters.national.wire import In1101, In2001, certificate, required, when
from gateway.core.dates import shown
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import persons, treatment_check

_IDENTITY = {"dibao": ("10", "最低生活保障对象"), "tekun": ("11", "特困供养人员")}


@register(
    "1101",
    "人员信息获取",
    writes=False,
    klass=TxClass.ENCOUNTER,
    input=wire.In1101,
)
async def person_info(call: Call) -> Answer:
    data = decode_input(call.req, In1101).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    cert = certificate(data.mdtrt_cert_type, data.mdtrt_cert_no, "data")
    # Only 1101 reads the card itself; later calls carry its number alone (protocol.md §2.2).
    if cert.cert_type == "03" and not text(data.card_sn):
        raise BadRequest("社保卡就诊须提供卡识别码card_sn")
    begntime = when(data.begntime, "data.begntime", optional=True)
    found = await persons.identify(
        call.conn, persons.PersonAsk(cert=cert, psn_name=text(data.psn_name))
    )
    person = found.person
    on = (begntime or call.now).date()
    identity = _IDENTITY.get(person.maf_class)
    return Answer(
        {
            "baseinfo": {**person_fields(person, on), "exp_content": ""},
            "insuinfo": [
                {
                    "balc": amount(found.balc),
                    "insutype": person.insutype,
                    "psn_type": person.psn_type,
                    "psn_insu_stas": person.psn_insu_stas,
                    "psn_insu_date": None,
                    "paus_insu_date": None,
                    "cvlserv_flag": person.cvlserv_flag,
                    "insuplc_admdvs": person.insuplc_admdvs,
                    "emp_name": "",
                }
            ],
            "idetinfo": []
            if identity is None
            else [
                {
                    "psn_idet_type": identity[0],
                    "psn_type_lv": "",
                    "memo": identity[1],
                    "begntime": None,
                    "endtime": None,
                }
            ],
        }
    )


@register(
    "2001",
    "人员待遇享受检查",
    writes=False,
    klass=TxClass.ENCOUNTER,
    input=wire.In2001,
)
async def treatment(call: Call) -> Answer:
    """Whether the pool fund pays for the person's visit: `trtinfo[]`, its row flagged 1 (享受)
    or 0 with the reason (`trt_chk_rslt`) in the words a settlement would be refused with."""
    data = decode_input(call.req, In2001).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    owner = text(data.fixmedins_code)
    if owner and owner != call.req.fixmedins_code:
        # Another institution's treatment is not this one's to ask (as a 9101 file's owner).
        raise BadRequest(f"定点医药机构编号fixmedins_code {owner}与报文机构编号不一致")
    begntime = when(data.begntime, "data.begntime", optional=True)
    endtime = when(data.endtime, "data.endtime", optional=True)
    if endtime is not None and endtime.year == 1:
        # A .NET client's DateTime left unset (binzhe's RY2001): no end sent, not an end in
        # year 1 (found from outside: answered "enjoys" from today to 0001-01-01).
        endtime = None
    on = (begntime or call.now).date()
    if endtime is not None and endtime.date() < on:
        raise BadRequest(
            f"结束时间endtime（{shown(endtime)}）早于待遇检查的开始日期{on.isoformat()}"
            "（begntime，未传时为当天），请核对"
        )
    ask = treatment_check.TreatmentAsk(
        psn_no=required(data.psn_no, "data.psn_no"),
        insutype=text(data.insutype),
        med_type=text(data.med_type),
        begntime=begntime,
        dise_codg=text(data.dise_codg),
    )
    person, verdict = await treatment_check.check(
        call.conn,
        call.gw.snapshot,
        ask,
        dates=call.gw.config.dates,
        admdvs=call.institution.admdvs,
        now=call.now,
    )
    return Answer(
        {
            "trtinfo": [
                {
                    "psn_no": person.psn_no,
                    "trt_chk_type": "1",  # 基本医疗保险待遇检查
                    "fund_pay_type": verdict.fund_pay_type,
                    "trt_enjymnt_flag": "1" if verdict.enjoys else "0",
                    "begndate": on.isoformat(),
                    "enddate": (endtime or begntime or call.now).date().isoformat(),
                    "trt_chk_rslt": verdict.why,
                }
            ]
        }
    )
