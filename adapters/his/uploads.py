"""2204 门诊费用明细上传 and 2301 住院费用明细上传: store lines, answer each line's split."""

from __future__ import annotations

import msgspec

from adapters.national.envelope import decode_input, text
from adapters.national.output import line_result
from adapters.national.wire import (
    FeeDetail,
    In2204,
    as_list,
    micro,
    quantity,
    required,
    when_required,
)
from adapters.national.wire import fen_required as amount_of
from gateway.core.dates import within_visit
from gateway.core.model import Visit
from gateway.core.money import cnt_text, fen_text, micro_text
from gateway.core.settle import split_lines
from gateway.ledger import encounters, fees
from gateway.protocol.errors import BadRequest, LineRejected, RuleRejected
from gateway.protocol.transaction import Answer, Call

MAX_LINES = 5000  # one upload; larger bills are uploaded in several calls, as HIS do


def _line(row: FeeDetail, *, batch_required: bool, refunds: bool) -> fees.StoredLine:
    sn = required(row.feedetl_sn, "feedetail.feedetl_sn")
    at = f"feedetail[{sn}]"
    occurred = when_required(row.fee_ocur_time, f"{at}.fee_ocur_time")
    chrg_bchno = (
        required(row.chrg_bchno, f"{at}.chrg_bchno") if batch_required else text(row.chrg_bchno)
    )
    hosp_appr = text(row.hosp_appr_flag) or None
    if hosp_appr is not None and hosp_appr not in ("0", "1", "2"):
        raise LineRejected(sn, "医院审批标志hosp_appr_flag只能为0、1或2")
    return fees.StoredLine(
        feedetl_sn=sn,
        medins_list_codg=required(row.medins_list_codg, f"{at}.medins_list_codg"),
        med_list_codg=text(row.med_list_codg) or None,
        pric_micro=micro(row.pric, f"{at}.pric"),
        cnt=quantity(row.cnt, f"{at}.cnt", signed=refunds),
        det_item_fee_sumamt=amount_of(
            row.det_item_fee_sumamt, f"{at}.det_item_fee_sumamt", signed=refunds
        ),
        fee_date=occurred.date(),
        hosp_appr_flag=hosp_appr,
        mdtrt_id=required(row.mdtrt_id, f"{at}.mdtrt_id"),
        chrg_bchno=chrg_bchno,
        init_feedetl_sn=text(row.init_feedetl_sn),
        psn_no=required(row.psn_no, f"{at}.psn_no"),
        fee_ocur_time=occurred,
    )


async def upload(call: Call, *, kind: str) -> Answer:
    """Validate every line, store them all or none, answer result[] in request order."""
    rows = as_list(decode_input(call.req, In2204).feedetail)
    if not rows:
        raise BadRequest("费用明细feedetail不能为空")
    if len(rows) > MAX_LINES:
        raise BadRequest(f"单次上传费用明细不能超过{MAX_LINES}条，请分批上传")
    # Only an inpatient upload (2301) carries refund lines, with negative cnt and amount.
    lines = [
        _line(r, batch_required=kind == "outpatient", refunds=kind == "inpatient") for r in rows
    ]
    mdtrt_ids = {ln.mdtrt_id for ln in lines}
    if len(mdtrt_ids) != 1:
        raise BadRequest("一次上传的费用明细必须属于同一就诊ID")
    seen: set[str] = set()
    for ln in lines:
        if ln.feedetl_sn in seen:
            raise LineRejected(ln.feedetl_sn, "同一报文中费用明细流水号重复")
        seen.add(ln.feedetl_sn)
        if ln.cnt == 0:
            raise LineRejected(ln.feedetl_sn, "数量不能为0")
        if ln.cnt < 0 and kind != "inpatient":
            raise LineRejected(ln.feedetl_sn, "门诊费用明细数量不能为负数，退费请先撤销结算和明细")
    rules = call.gw.config.dates
    for ln in lines:
        rules.check_line(
            ln.feedetl_sn, ln.fee_ocur_time, admdvs=call.institution.admdvs, now=call.now
        )
    mdtrt_id = lines[0].mdtrt_id
    enc = await encounters.get(call.conn, mdtrt_id, call.req.fixmedins_code, lock=True)
    if enc.kind != kind:
        raise RuleRejected(f"就诊ID{mdtrt_id}不是{'门诊' if kind == 'outpatient' else '住院'}就诊")
    encounters.require_open(enc)
    # Every pre-settlement and settlement of the visit reads all its unsettled lines: bounded,
    # so that one visit's bill cannot hold a ledger connection for seconds (the visit is locked).
    cap = call.gw.config.uploads.max_unsettled_lines_per_visit
    held = await fees.unsettled_count(call.conn, mdtrt_id)
    if cap and held + len(lines) > cap:
        raise BadRequest(
            f"就诊ID{mdtrt_id}待结算的费用明细已有{held}条，加上本次{len(lines)}条超过每次就诊"
            f"{cap}条的上限：请先结算已上传的费用（住院可中途结算）后再上传"
        )
    for ln in lines:
        if ln.psn_no != enc.psn_no:
            raise LineRejected(ln.feedetl_sn, "人员编号与就诊登记的参保人不一致")
        within_visit(
            ln.feedetl_sn,
            ln.fee_ocur_time,
            begntime=enc.begntime,
            # A refund line may be entered after the discharge, before the closing settlement.
            endtime=enc.endtime if ln.cnt > 0 else None,
            start="入院" if kind == "inpatient" else "挂号",
        )
        if ln.cnt < 0 and not ln.init_feedetl_sn:
            raise LineRejected(
                ln.feedetl_sn, "退费明细（数量为负）须填写原费用流水号init_feedetl_sn"
            )
        if ln.cnt > 0 and ln.init_feedetl_sn:
            raise LineRejected(
                ln.feedetl_sn,
                "收费明细（数量为正）不能填写原费用流水号init_feedetl_sn，"
                "只有退费明细（数量为负）填写被退的原费用流水号",
            )
    if any(ln.cnt < 0 for ln in lines):
        await _check_refunds(call, mdtrt_id, lines)
    visit = Visit(
        fixmedins_code=call.req.fixmedins_code,
        mdtrt_id=mdtrt_id,
        med_type=enc.med_type,
        service_date=enc.begntime.date(),
        acct_used_flag=False,
        dise_codg=enc.dise_codg,
    )
    splits = split_lines(call.gw.snapshot, visit, lines)
    await fees.insert(call.conn, lines, call.req.msgid)
    return Answer({"result": [line_result(s) for s in splits]})


class _Charge(msgspec.Struct, frozen=True, gc=False):
    """An original line as a refund sees it."""

    medins_list_codg: str
    pric_micro: int
    cnt: int
    amount: int
    refund: bool  # itself a refund line


async def _check_refunds(call: Call, mdtrt_id: str, lines: list[fees.StoredLine]) -> None:
    """A refund line (退单, negative cnt) takes back part of one charge of the same admission:
    the same item at the same price, never another refund, and never more, with every refund in
    force, than the charge's quantity and amount. Anything else would only be found at the
    settlement (a negative component), after the stay could no longer be closed."""
    cited = sorted({ln.init_feedetl_sn for ln in lines if ln.cnt < 0})
    originals = {
        r.feedetl_sn: _Charge(
            r.medins_list_codg,
            r.pric_micro,
            r.cnt,
            r.amount_fen,
            r.cnt < 0 or bool(r.init_feedetl_sn),
        )
        for r in await fees.cited(call.conn, mdtrt_id, cited)
    }
    for ln in lines:  # an original may come in the same upload as its refund
        originals.setdefault(
            ln.feedetl_sn,
            _Charge(
                ln.medins_list_codg,
                ln.pric_micro,
                ln.cnt,
                ln.det_item_fee_sumamt,
                ln.cnt < 0 or bool(ln.init_feedetl_sn),
            ),
        )
    # Refund lines in force: a withdrawn one (2302) is deleted, a cancelled settlement's come
    # back unsettled and still count.
    taken = {
        init: [cnt, amount]
        for init, (cnt, amount) in (await fees.refunded(call.conn, mdtrt_id, cited)).items()
    }
    for ln in lines:
        if ln.cnt > 0:
            continue
        sn, init = ln.feedetl_sn, ln.init_feedetl_sn
        charge = originals.get(init)
        if charge is None:
            raise LineRejected(sn, f"原费用流水号{init}不存在（本次住院没有该收费明细），不能退费")
        if charge.refund:
            raise LineRejected(sn, f"原费用流水号{init}是退费明细，不能对退费明细再退费")
        if ln.medins_list_codg != charge.medins_list_codg:
            raise LineRejected(
                sn,
                f"退费项目{ln.medins_list_codg}与原费用流水号{init}的项目"
                f"{charge.medins_list_codg}不一致",
            )
        if ln.pric_micro != charge.pric_micro:
            raise LineRejected(
                sn,
                f"退费单价{_plain(micro_text(ln.pric_micro))}与原费用流水号{init}的单价"
                f"{_plain(micro_text(charge.pric_micro))}不一致",
            )
        total = taken.setdefault(init, [0, 0])
        total[0] += ln.cnt
        total[1] += ln.det_item_fee_sumamt
        if -total[0] > charge.cnt or -total[1] > charge.amount:
            raise LineRejected(
                sn,
                f"原费用流水号{init}累计退费数量{_plain(cnt_text(-total[0]))}、金额"
                f"{fen_text(-total[1])}超过原收费数量{_plain(cnt_text(charge.cnt))}、金额"
                f"{fen_text(charge.amount)}（含已上传的退费明细），不能重复或超额退费",
            )


def _plain(decimal_text: str) -> str:
    """12.500000 -> 12.5, 3.0000 -> 3: how the clerk typed it."""
    return decimal_text.rstrip("0").rstrip(".") if "." in decimal_text else decimal_text
