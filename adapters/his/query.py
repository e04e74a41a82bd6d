"""5201 就诊信息查询, 5202 诊断信息查询, 5203 结算信息查询 and 5204 费用明细查询."""

from __future__ import annotations

import datetime as dt
from typing import Any

from asyncpg import Pool

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from adapters.national.output import line_result, moment, person_fields, setldetail, setlinfo
from adapters.national.wire import In5201, In5202, In5203, required, when_required
from gateway.core.model import Person
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import cancellation, settlement_queries, visit_queries
from gateway.services.settlement_queries import SettledLine


@register("5203", "结算信息查询", writes=False, klass=TxClass.QUERY, input=wire.In5203)
async def settlement_info(call: Call) -> Answer:
    data = decode_input(call.req, In5203).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    elsewhere = _elsewhere(call)
    rec = await settlement_queries.settlement_info(
        call.conn, call.req.fixmedins_code, _query(data), elsewhere
    )
    # A replayed claim's settlement as the counter took it (the whole bill in cash), with who
    # pays the fund's share: its split is the agency's, paid to the patient.
    replayed = await settlement_queries.replayed_from(call.conn, rec.setl_id, elsewhere)
    shown = rec if replayed is None else cancellation.as_paid_at_counter(rec, replayed)
    info = setlinfo(shown)
    info["refd_setl_flag"] = "1" if rec.status == "cancelled" else "0"
    # The 5203 table names the personal part and the cash psn_pay / cash_payamt (Dongguan's DLL
    # reads both as doubles); the setlinfo names stay for clients that share one parser.
    info["psn_pay"] = info["psn_part_amt"]
    info["cash_payamt"] = info["psn_cash_pay"]
    if replayed is not None:
        warn = cancellation.replayed_words(rec, replayed)
    elif rec.status == "cancelled":
        # Found from outside: a settlement undone by 2601 read like one in force, but for
        # refd_setl_flag.
        warn = CANCELLED_WORDS.format(setl_id=rec.setl_id)
    else:
        warn = None
    return Answer({"setlinfo": info, "setldetail": setldetail(shown.funds)}, warn_msg=warn)


CANCELLED_WORDS = "结算ID{setl_id}已撤销（refd_setl_flag为1），所列为原结算金额，已不再有效"


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
    the interface answers 5204 (nhis-web reads `output` as a list of rows). Without a 结算ID,
    the visit's lines (its settlements' in force and those not settled yet)."""
    data = decode_input(call.req, In5203).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    code = call.req.fixmedins_code
    snapshot = call.gw.snapshot
    if not text(data.setl_id) and text(data.mdtrt_id):
        enc, lines = await settlement_queries.visit_fee_detail(
            call.conn, snapshot, code, text(data.mdtrt_id), text(data.psn_no)
        )
        on = enc.begntime.date()
        return Answer(
            [_fee_row(call, ln.line, enc.mdtrt_id, ln.setl_id, enc.med_type, on) for ln in lines]
        )
    elsewhere = _elsewhere(call)
    rec, settled = await settlement_queries.fee_detail(call.conn, code, _query(data), elsewhere)
    # A replayed claim's lines carry the split it was replayed at, which the agency pays the
    # patient: said so, as 5203 says it (found from outside: 5204 of it said nothing).
    replayed = await settlement_queries.replayed_from(call.conn, rec.setl_id, elsewhere)
    on = rec.service_date or call.now.date()
    # Under the 就诊ID the counter was given, as 5203 shows it (found from outside: a replayed
    # pharmacy claim's lines carried the visit replay made, which the till never saw).
    mdtrt_id = (replayed.counter_visit if replayed is not None else "") or rec.mdtrt_id
    rows = [_fee_row(call, ln, mdtrt_id, rec.setl_id or "", rec.med_type, on) for ln in settled]
    return Answer(
        rows, warn_msg=None if replayed is None else cancellation.replayed_words(rec, replayed)
    )


def _fee_row(
    call: Call,
    ln: SettledLine,
    mdtrt_id: str,
    setl_id: str,
    med_type: str,
    on: dt.date,
) -> dict[str, Any]:
    """One 5204 row: the line's split and what its upload said of it."""
    snapshot = call.gw.snapshot
    sp = ln.split
    mapping = snapshot.mapping(call.req.fixmedins_code, sp.medins_list_codg, on)
    entry = snapshot.entry(sp.med_list_codg, on) if sp.med_list_codg else None
    return {
        "mdtrt_id": mdtrt_id,
        "setl_id": setl_id,
        "med_type": med_type,
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


# What a visit's calls kept as sent that 5201's row carries (texts only; the rest is the
# ledger's own columns). 2201 keeps its `data` as `registration` (once the visit's 2203 is in,
# only encounters.REGISTRATION_SHOWN of it); 2203 and 2401 `mdtrtinfo`; 2403 `adminfo`.
_SENT_FIELDS = (
    "mdtrt_cert_type",
    "adm_diag_dscr",
    "medrcdno",
    "atddr_no",
    "chfpdr_name",
    "adm_dept_codg",
    "adm_dept_name",
    "adm_bed",
    # 住院主诊断, which 2401 requires and 2403 may change (found from outside: a HIS reading a
    # stay back by 5201 found no main diagnosis; public clients' 5201 rows carry it).
    "dscg_maindiag_code",
    "dscg_maindiag_name",
    "main_cond_dscr",
    "coner_name",
    "tel",
)


def _visit_row(
    person: Person, enc: visit_queries.Encounter, detail: dict[str, Any]
) -> dict[str, Any]:
    """A 5201 mdtrtinfo row: the person as on the visit's day, the visit as the ledger holds it,
    and what its calls sent."""
    # The registration's (2201's) first, each later call's over it: found from outside, the
    # certificate type and doctor 2201 sent were left out.
    sent = {
        **detail,
        **(detail.get("registration") or {}),
        **(detail.get("mdtrtinfo") or {}),
        **(detail.get("adminfo") or {}),
    }
    row: dict[str, Any] = {
        "mdtrt_id": enc.mdtrt_id,
        **person_fields(person, enc.begntime.date()),
        "insutype": enc.insutype,
        "psn_type": person.psn_type,
        "cvlserv_flag": person.cvlserv_flag,
        "insu_optins": enc.insuplc_admdvs,
        "begntime": moment(enc.begntime),
        "endtime": moment(enc.endtime),
        "med_type": enc.med_type,
        "ipt_otp_no": enc.ipt_otp_no,
        "dise_codg": enc.dise_codg,
        "dise_name": enc.dise_name,
        # 在院状态 of a stay: 1 in hospital, 0 discharged; an outpatient visit has none.
        "inhosp_stas": None if enc.kind != "inpatient" else "1" if enc.status == "open" else "0",
    }
    for name in _SENT_FIELDS:
        value = sent.get(name)
        row[name] = value if isinstance(value, str) else None
    return row


@register("5201", "就诊信息查询", writes=False, klass=TxClass.QUERY, input=wire.In5201)
async def visit_info(call: Call) -> Answer:
    """The person's visits and stays at the institution begun within the range: `mdtrtinfo[]`
    (none is an empty list)."""
    data = decode_input(call.req, In5201).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    endtime = when_required(data.endtime, "data.endtime")
    if len(text(data.endtime)) <= len("yyyy-MM-dd"):
        # A bare date ends the range with its day, not at its first moment (found from outside:
        # visits "to today" by date answered none of today's).
        endtime += dt.timedelta(days=1, microseconds=-1)
    q = visit_queries.VisitQuery(
        psn_no=required(data.psn_no, "data.psn_no"),
        begntime=when_required(data.begntime, "data.begntime"),
        endtime=endtime,
        med_type=text(data.med_type),
        mdtrt_id=text(data.mdtrt_id),
    )
    person, found = await visit_queries.visits(call.conn, call.req.fixmedins_code, q)
    return Answer({"mdtrtinfo": [_visit_row(person, enc, detail) for enc, detail in found]})


@register("5202", "诊断信息查询", writes=False, klass=TxClass.QUERY, input=wire.In5202)
async def diagnosis_info(call: Call) -> Answer:
    """A visit's diagnoses as its latest 2203/2401/2403 sent them: `diseinfo[]`."""
    data = decode_input(call.req, In5202).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    enc, detail = await visit_queries.diagnoses(
        call.conn,
        call.req.fixmedins_code,
        required(data.mdtrt_id, "data.mdtrt_id"),
        text(data.psn_no),
        _elsewhere(call),
    )
    rows = [d for d in detail.get("diseinfo") or [] if isinstance(d, dict)]
    return Answer({"diseinfo": [_diagnosis_row(enc, n, d) for n, d in enumerate(rows, start=1)]})


def _diagnosis_row(enc: visit_queries.Encounter, n: int, sent: dict[str, Any]) -> dict[str, Any]:
    """A diagnosis as its call sent it, typed as the interface types it whichever call sent it
    (found from outside: `diag_srt_no` a number from 2203 and a text from 2403 in one list,
    `vali_flag` null where the call left it out): `diag_srt_no` a number (its place in the list
    where none was sent), `vali_flag` 1 where none was sent."""
    number: Any = sent.get("diag_srt_no")
    whole = isinstance(number, float) and number.is_integer()
    if whole or (isinstance(number, str) and number.strip().isdigit()):
        number = int(number)
    elif not isinstance(number, int | float):
        number = n
    return {
        "mdtrt_id": enc.mdtrt_id,
        "psn_no": enc.psn_no,
        **sent,
        "diag_srt_no": number,
        "vali_flag": sent.get("vali_flag") or "1",
    }
