"""2204 门诊费用明细上传 and 2301 住院费用明细上传 read into the upload (gateway.services.fee_uploads),
answered with each line's split; with 2205 and 2302, what each does to a provisional visit's lines
while it waits to be applied."""

from __future__ import annotations

import datetime as dt
from typing import Any

from adapters.national.envelope import Request, decode_input, text
from adapters.national.output import line_result
from adapters.national.paths import by_serial
from adapters.national.wire import (
    FeeDetail,
    In2204,
    In2205,
    In2302,
    as_list,
    micro,
    quantity,
    required,
    when_required,
)
from adapters.national.wire import fen_required as amount_of
from gateway.app.runtime import Gateway
from gateway.core.catalog import Snapshot
from gateway.core.model import Institution, LineSplit
from gateway.core.settle import split_line
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.pipeline.grouped import Job
from gateway.protocol.errors import BadRequest, GatewayError
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Answer, Call, Kind
from gateway.services import fee_uploads
from gateway.services.fee_uploads import ALL, MAX_LINES, StoredLine, Uploading, approval_flag


def _line(row: FeeDetail, index: int, *, batch_required: bool, refunds: bool) -> StoredLine:
    # A line without its serial is named by its place (found from outside: named by neither).
    sn = required(row.feedetl_sn, f"feedetail第{index + 1}条.feedetl_sn")
    at = by_serial("feedetail", sn)
    occurred = when_required(row.fee_ocur_time, f"{at}.fee_ocur_time")
    chrg_bchno = (
        required(row.chrg_bchno, f"{at}.chrg_bchno") if batch_required else text(row.chrg_bchno)
    )
    hosp_appr = approval_flag(sn, text(row.hosp_appr_flag))
    return StoredLine(
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
        # An outpatient batch's disease (2204); a stay's lines (2301) are the admission's.
        dise_codg=text(row.dise_codg) if batch_required else "",
    )


def _upload_of(req: Request, kind: Kind) -> fee_uploads.FeeUpload:
    rows = as_list(decode_input(req, In2204).feedetail)
    if not rows:
        raise BadRequest("费用明细feedetail不能为空")
    if len(rows) > MAX_LINES:
        raise BadRequest(f"单次上传费用明细不能超过{MAX_LINES}条，请分批上传")
    # Only an inpatient upload (2301) carries refund lines, with negative cnt and amount.
    return fee_uploads.FeeUpload(
        kind=kind,
        feedetail=tuple(
            _line(r, i, batch_required=kind is Kind.OUTPATIENT, refunds=kind is Kind.INPATIENT)
            for i, r in enumerate(rows)
        ),
    )


def inpatient_lines(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> object:
    """A 2301's lines as its upload reads them, before the ledger (`Transaction.checked`)."""
    return _upload_of(req, Kind.INPATIENT)


def _answer(splits: tuple[LineSplit, ...]) -> dict[str, Any]:
    return {"result": [line_result(s) for s in splits]}


def journaled_outpatient(req: Request, _provisional_id: str | None, snapshot: Snapshot) -> Any:
    """A 2204 taken while the ledger is away (`Transaction.journal_answer`)."""
    return _journaled(req, snapshot, Kind.OUTPATIENT)


def journaled_inpatient(req: Request, _provisional_id: str | None, snapshot: Snapshot) -> Any:
    """A 2301 taken while the ledger is away (`Transaction.journal_answer`)."""
    return _journaled(req, snapshot, Kind.INPATIENT)


def _journaled(req: Request, snapshot: Snapshot, kind: Kind) -> dict[str, Any]:
    """Each line's split by the catalog in memory, as the ledger's path answers it; a line the
    ledger's path would refuse by itself (its price times its quantity not its amount, another
    catalog code than the institution's mapping) is refused now. Found from outside: such an
    upload was answered `result: []`, a HIS that records each line's split from the answer
    recorded none, and a line refused only when applied at recovery, the counter long gone. A
    refund line (a stay's) is split on its own date: its charge's is in the ledger."""
    code = req.fixmedins_code
    return _answer(tuple(split_line(snapshot, code, ln) for ln in _upload_of(req, kind).feedetail))


def _uploading(gw: Gateway, req: Request, institution: Institution, now: dt.datetime) -> Uploading:
    return Uploading(
        Origin.of(req),
        gw.snapshot,
        gw.config.dates,
        gw.config.uploads.max_unsettled_lines_per_visit,
        institution.admdvs,
        now,
    )


async def upload(call: Call, *, kind: Kind) -> Answer:
    """Read every line, have them stored all or none, answer result[] in request order."""
    at = _uploading(call.gw, call.req, call.institution, call.now)
    splits = await fee_uploads.upload(call.conn, at, _upload_of(call.req, kind))
    return Answer(_answer(splits))


def outpatient_job(
    gw: Gateway, req: Request, institution: Institution, now: dt.datetime
) -> Job | None:
    """2204 in a group commit: the same checks and split as the single path's, in a batch."""
    a = _upload_of(req, Kind.OUTPATIENT)
    if a.feedetail[0].mdtrt_id.startswith(PROVISIONAL_PREFIX):
        return None  # an id handed out while the ledger was down: the single path resolves it
    return fee_uploads.upload_job(_uploading(gw, req, institution, now), a, _answer)


# ------------------------------------------- a provisional visit's lines, before they are applied
#
# Found from outside: under `defer` of both classes, a 2206 of a visit opened during the plan
# (its calls waiting to be applied) answered the whole bill within the policy range, a wholly
# self-pay line included, and a 2207 that copied those parts was taken, its receipt then
# disagreeing with the settlement replay made. The visit's lines are the ones its waiting calls
# will leave, in the order replay applies them (`Transaction.journaled_lines`).


def journaled_outpatient_lines(req: Request, lines: list[StoredLine]) -> list[StoredLine]:
    """A waiting 2204: the visit's lines with its own."""
    return _with_upload(req, lines, Kind.OUTPATIENT)


def journaled_inpatient_lines(req: Request, lines: list[StoredLine]) -> list[StoredLine]:
    """A waiting 2301: the stay's lines with its own (refund lines included)."""
    return _with_upload(req, lines, Kind.INPATIENT)


def _with_upload(req: Request, lines: list[StoredLine], kind: Kind) -> list[StoredLine]:
    try:
        added = _upload_of(req, kind).feedetail
    except GatewayError:  # refused when it is applied: it adds nothing
        return lines
    return [*lines, *added]


def journaled_batch_withdrawal(req: Request, lines: list[StoredLine]) -> list[StoredLine]:
    """A waiting 2205: the visit's lines less the batch ("0000": all of them)."""
    batch = batch_withdrawn(req)
    if batch is None:
        return lines
    return [] if batch == ALL else [ln for ln in lines if ln.chrg_bchno != batch]


def journaled_line_withdrawal(req: Request, lines: list[StoredLine]) -> list[StoredLine]:
    """A waiting 2302: the stay's lines less those it names ("0000": all of them)."""
    serials = {text(ref.feedetl_sn) for ref in as_list(decode_input(req, In2302).data)}
    if ALL in serials:
        return []
    return [ln for ln in lines if ln.feedetl_sn not in serials]


def batch_withdrawn(req: Request) -> str | None:
    """A 2205's charge batch, as a claim of it names it (`Transaction.withdraws`)."""
    data = decode_input(req, In2205).data
    return (text(data.chrg_bchno) or None) if data is not None else None


def stay_lines_withdrawn(_req: Request) -> str:
    """A 2302's lines, as a stay's claim names them: all of them (`Transaction.withdraws`)."""
    return ALL
