"""A visit's fee lines (费用明细): their upload (2204 outpatient, 2301 inpatient, with refund
lines) and their withdrawal before settlement (2205 by batch, 2302 by line).

An upload is taken whole or not at all, and answered with each line's split as the settlement
would make it now (`gateway.core.settle.split_lines`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from adapters.national import deferral
from gateway.core.catalog import Snapshot
from gateway.core.dates import DateRules, within_visit
from gateway.core.eligibility import CATEGORY_OF
from gateway.core.model import Category, LineSplit, Visit
from gateway.core.money import cnt_text, fen_text, micro_text
from gateway.core.settle import split_lines
from gateway.ledger import deferred, encounters, fees, settlements
from gateway.ledger.fees import ALL as ALL
from gateway.ledger.fees import StoredLine as StoredLine
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job, unchanged
from gateway.protocol.errors import (
    BadRequest,
    Conflict,
    LineRejected,
    NotFound,
    RuleRejected,
    Unavailable,
)
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind

MAX_LINES = 5000  # one upload; larger bills are uploaded in several calls, as HIS do
APPROVAL_FLAGS = ("0", "1", "2")  # hosp_appr_flag: 0 not approved, 1 approved, 2 self-pay


def approval_flag(feedetl_sn: str, flag: str) -> str | None:
    """A line's hosp_appr_flag as uploaded ("" for none sent), or the line's refusal."""
    if flag and flag not in APPROVAL_FLAGS:
        raise LineRejected(feedetl_sn, "医院审批标志hosp_appr_flag只能为0、1或2")
    return flag or None


@dataclass(frozen=True, slots=True)
class Uploading:
    """Where and when an upload is taken: who sends it, the catalog and date rules it is checked
    by, the per-visit cap on unsettled lines, the institution's region and the time taken."""

    origin: Origin
    snapshot: Snapshot
    dates: DateRules
    max_unsettled_lines: int
    admdvs: str
    now: dt.datetime


class FeeUpload(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2204/2301: its lines as read, in request order."""

    kind: Kind
    feedetail: tuple[StoredLine, ...]


class BatchWithdrawal(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2205: an outpatient visit's unsettled lines of one batch (chrg_bchno ALL: every one)."""

    mdtrt_id: str
    chrg_bchno: str
    psn_no: str


class LineWithdrawal(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One row of a 2302: an unsettled line of a stay (feedetl_sn ALL: every one)."""

    mdtrt_id: str
    feedetl_sn: str
    psn_no: str


async def upload(conn: asyncpg.Connection, at: Uploading, a: FeeUpload) -> tuple[LineSplit, ...]:
    """Check every line, store them all or none; each line's split, in request order."""
    kind, lines = a.kind, a.feedetail
    origin = at.origin
    mdtrt_id = _lines_alone(kind, lines, at)
    enc = await encounters.get(conn, mdtrt_id, origin.fixmedins_code, lock=True)
    if enc.mdtrt_id != mdtrt_id:
        # A provisional id (handed out while the ledger was down) the visit has replaced: the
        # lines are the real visit's, counted, checked and stored under its id.
        lines = tuple(msgspec.structs.replace(ln, mdtrt_id=enc.mdtrt_id) for ln in lines)
    held = await fees.unsettled_count(conn, enc.mdtrt_id)
    _against_visit(enc, mdtrt_id, kind, lines, held, at.max_unsettled_lines)
    if kind == "outpatient":
        settled = await fees.settled_batches(conn, [enc.mdtrt_id])
        _not_into_settled_batches(lines, settled.get(enc.mdtrt_id, set()))
        if any(ln.dise_codg for ln in lines):
            one_disease(enc, lines, await fees.unsettled(conn, enc.mdtrt_id))
    elif enc.status == "discharged":
        _not_into_a_closed_stay(await settlements.final_of(conn, enc.mdtrt_id))
        await not_under_a_closing_claim(conn, enc.mdtrt_id)
    priced: dict[str, dt.date] = {}
    if any(ln.cnt < 0 for ln in lines):
        priced = await _check_refunds(conn, enc.mdtrt_id, lines)
    # A refund line is split as its charge was, on the charge's date (as a settlement reads it
    # back: gateway.ledger.fees); it is stored with its own time.
    as_priced = [
        msgspec.structs.replace(ln, fee_date=priced[ln.feedetl_sn])
        if ln.feedetl_sn in priced
        else ln
        for ln in lines
    ]
    splits = split_lines(at.snapshot, upload_visit(origin.fixmedins_code, mdtrt_id, enc), as_priced)
    await fees.insert(conn, lines, origin.msgid)
    return splits


def upload_job(
    at: Uploading, a: FeeUpload, answer: Callable[[tuple[LineSplit, ...]], Any]
) -> Job | None:
    """An upload in a group commit: the same checks as `upload`, over the visit the batch
    locked and its unsettled lines; `answer(splits)` is the national answer's output. None
    for an upload with refund lines (a stay's: they are checked against the visit's earlier
    lines, which only `upload` reads)."""
    kind, lines = a.kind, a.feedetail
    origin = at.origin
    mdtrt_id = _lines_alone(kind, lines, at)
    if any(ln.cnt < 0 for ln in lines):
        return None

    def build(held: Held, _mdtrt_serial: int, _setl_serial: int) -> Built:
        visit = held.visit
        enc = encounters.own(visit.encounter if visit else None, mdtrt_id, origin.fixmedins_code)
        assert visit is not None
        unchanged(visit)
        _against_visit(enc, mdtrt_id, kind, lines, len(visit.unsettled), at.max_unsettled_lines)
        if kind == "outpatient":
            _not_into_settled_batches(lines, visit.settled_batches)
            one_disease(enc, lines, visit.unsettled)
        elif enc.status == "discharged":
            # Whether its closing settlement is in force is read on the single path: a
            # discharged stay's late charges are few, and the batch does not read it.
            raise Unavailable("住院费用明细上传需按单笔处理，请稍后重试")
        splits = split_lines(at.snapshot, upload_visit(origin.fixmedins_code, mdtrt_id, enc), lines)
        # `upload` learns this from the primary key; a settled line's number still does, and
        # then the batch fails whole and each request goes its own way (the same words).
        unsettled = {ln.feedetl_sn for ln in visit.unsettled}
        repeated = next((ln.feedetl_sn for ln in lines if ln.feedetl_sn in unsettled), None)
        if repeated is not None:
            raise fees.already_uploaded(repeated)
        writes = Writes()
        writes.extend(fees.INSERT, fees.rows(lines, origin.msgid))
        visit.changed = True
        return Built(answer(splits), writes, held.balance, held.year)

    return Job(
        psn_no=lines[0].psn_no,
        year=None,
        build=build,
        mdtrt_id=mdtrt_id,
        settles=False,
        draws=False,
        reads_batches=kind == "outpatient",
    )


def _not_into_settled_batches(lines: Sequence[StoredLine], settled: set[str]) -> None:
    """An outpatient charge batch (收费批次) is settled whole, once: a line sent into one with a
    settlement in force is refused. Found from outside: such a line was taken, and a second
    2207 of the batch then settled it as a second settlement of the same batch (or, refused
    "已结算", it stayed unsettled for good)."""
    for ln in lines:
        if ln.chrg_bchno in settled:
            raise LineRejected(
                ln.feedetl_sn,
                f"收费批次{ln.chrg_bchno}已结算，不能再上传该批次的费用明细：新发生的费用请使用"
                "新的收费批次号上传并结算；如需更改该批次，请先撤销其结算（2208）",
            )


def one_disease(
    enc: encounters.Encounter,
    lines: Sequence[StoredLine],
    earlier: Sequence[StoredLine] = (),
) -> None:
    """One charge batch, one disease (protocol §2.3, 2204 chrg_bchno: "同一收费批次号病种编号必须
    一致"), and on a chronic (门慢门特, 14) visit the visit's own: its batch is settled whole at
    the chronic ratio for the disease its 2203 named, so a line of another disease would be paid
    as that one. Found from outside: a 门慢 visit's batch holding lines of an unregistered
    disease was settled whole at the chronic ratio. `earlier`: the visit's unsettled lines
    already uploaded (at settlement, the batch itself). A line sending none is the batch's."""
    # An ordinary visit's 2203 often carries an ICD diagnosis as its dise_codg (YiBinActive's
    # client does), which prices nothing: only a chronic visit's disease binds its lines.
    chronic = bool(enc.dise_codg) and CATEGORY_OF.get(enc.med_type) is Category.CHRONIC
    named: dict[str, StoredLine] = {}
    for ln in earlier:
        if ln.dise_codg:
            named.setdefault(ln.chrg_bchno, ln)
    for ln in lines:
        if not ln.dise_codg:
            continue
        if chronic and ln.dise_codg != enc.dise_codg:
            raise LineRejected(
                ln.feedetl_sn,
                f"病种编码{ln.dise_codg}与就诊信息（2203）的病种编码{enc.dise_codg}不一致：门诊"
                "费用按就诊的病种结算，其他病种的费用请另行挂号就诊上传（已上传的先以2205撤销）；"
                "如就诊病种有误，请先以"
                "2203更正",
            )
        first = named.setdefault(ln.chrg_bchno, ln)
        if first.dise_codg != ln.dise_codg:
            raise LineRejected(
                ln.feedetl_sn,
                f"同一收费批次号病种编码必须一致：收费批次{ln.chrg_bchno}中明细{first.feedetl_sn}"
                f"的病种编码为{first.dise_codg}，本条为{ln.dise_codg}；不同病种的费用请使用不同的"
                "收费批次号上传",
            )


def _not_into_a_closed_stay(final: str | None) -> None:
    """A stay's closing settlement ends it: lines sent after it are refused until that
    settlement is cancelled (protocol §2.0: 2402 → 2303 → 2304; a change after it, 2305 first).
    Found from outside: charges sent after the closing 2304 were taken, and a second closing
    2304 settled them, the stay then holding two closing settlements in force."""
    if final is not None:
        raise Conflict(
            f"该住院已办理出院结算（结算ID{final}），不能再上传费用明细：如需补录或退费，"
            "请先撤销该结算（2305）后重新上传并结算"
        )


async def not_under_a_closing_claim(conn: asyncpg.Connection, mdtrt_id: str) -> None:
    """A stay's closing settlement deferred as a claim ends it as the settlement would: replay
    settles the lines the claim holds, closing the stay, and a line sent meanwhile would wait
    under that closing settlement for good (found from outside: a late line uploaded while the
    claim waited was left unsettled when replay closed the stay)."""
    for claim in await deferred.pending_on_visits(conn, [mdtrt_id]):
        if deferral.closes_stay(claim):
            raise Conflict(
                f"该住院的出院结算已按应急预案暂存（暂存结算{claim.claim_id}），不能再上传费用"
                "明细：请待补结算后撤销（2305）再补录，或先撤销暂存结算（2305）后重新上传并结算"
            )


def _lines_alone(kind: Kind, lines: Sequence[StoredLine], at: Uploading) -> str:
    """The checks an upload's lines pass before the visit is read; the visit's mdtrt_id."""
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
    at.dates.check_lines(lines, admdvs=at.admdvs, now=at.now)
    return lines[0].mdtrt_id


def _against_visit(
    enc: encounters.Encounter,
    mdtrt_id: str,
    kind: Kind,
    lines: Sequence[StoredLine],
    held: int,
    cap: int,
) -> None:
    """The checks of the lines against their visit (`mdtrt_id` as the lines name it; `held`:
    its unsettled lines so far)."""
    if enc.kind != kind:
        raise RuleRejected(f"就诊ID{mdtrt_id}不是{'门诊' if kind == 'outpatient' else '住院'}就诊")
    encounters.require_open(enc)
    # Every pre-settlement and settlement of the visit reads all its unsettled lines: bounded,
    # so that one visit's bill cannot hold a ledger connection for seconds (the visit is locked).
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
            stay=kind == "inpatient",
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


def upload_visit(fixmedins_code: str, mdtrt_id: str, enc: encounters.Encounter) -> Visit:
    """The visit as an upload's splits read it (and a query of its unsettled lines, 5204)."""
    return Visit(
        fixmedins_code=fixmedins_code,
        mdtrt_id=mdtrt_id,
        med_type=enc.med_type,
        service_date=enc.begntime.date(),
        acct_used_flag=False,
        dise_codg=enc.dise_codg,
    )


class _Charge(msgspec.Struct, frozen=True, gc=False):
    """An original line as a refund sees it."""

    medins_list_codg: str
    pric_micro: int
    cnt: int
    amount: int
    refund: bool  # itself a refund line
    fee_date: dt.date  # a refund of it is priced on this date (gateway.ledger.fees)


async def _check_refunds(
    conn: asyncpg.Connection, mdtrt_id: str, lines: Sequence[StoredLine]
) -> dict[str, dt.date]:
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
            r.fee_date,
        )
        for r in await fees.cited(conn, mdtrt_id, cited)
    }
    # Refund lines in force: a withdrawn one (2302) is deleted, a cancelled settlement's come
    # back unsettled and still count.
    taken = {
        init: [cnt, amount]
        for init, (cnt, amount) in (await fees.refunded(conn, mdtrt_id, cited)).items()
    }
    return _refunds_within(originals, taken, lines)


def check_kept_refunds(kept: Sequence[StoredLine], lines: Sequence[StoredLine]) -> None:
    """`_check_refunds` of an upload to a stay kept under the plan (a provisional id), against
    the lines its kept calls leave (`deferral.journaled_lines`). Found from outside: a refund of
    more than was charged, or of no charge, was answered as kept and failed when applied."""
    originals = {ln.feedetl_sn: _charge_of(ln) for ln in kept}
    taken: dict[str, list[int]] = {}
    for ln in kept:
        if ln.cnt < 0:
            total = taken.setdefault(ln.init_feedetl_sn, [0, 0])
            total[0] += ln.cnt
            total[1] += ln.det_item_fee_sumamt
    _refunds_within(originals, taken, lines)


def _charge_of(ln: StoredLine) -> _Charge:
    return _Charge(
        ln.medins_list_codg,
        ln.pric_micro,
        ln.cnt,
        ln.det_item_fee_sumamt,
        ln.cnt < 0 or bool(ln.init_feedetl_sn),
        ln.fee_date,
    )


def _refunds_within(
    originals: dict[str, _Charge], taken: dict[str, list[int]], lines: Sequence[StoredLine]
) -> dict[str, dt.date]:
    """The refund rule over the charges a stay holds (`originals`) and the refunds in force
    against each (`taken`: [cnt, amount], summed); each refund line's charge date."""
    for ln in lines:  # an original may come in the same upload as its refund
        originals.setdefault(ln.feedetl_sn, _charge_of(ln))
    priced: dict[str, dt.date] = {}
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
        priced[sn] = charge.fee_date
    return priced


def _plain(decimal_text: str) -> str:
    """12.500000 -> 12.5, 3.0000 -> 3: how the clerk typed it."""
    return decimal_text.rstrip("0").rstrip(".") if "." in decimal_text else decimal_text


async def withdraw_batch(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    a: BatchWithdrawal,
    *,
    received: dt.datetime | None = None,
) -> None:
    """2205: remove an outpatient visit's unsettled lines of the batch. `received`: when a
    replayed withdrawal came (`_not_under_a_claim`)."""
    enc = await encounters.get(conn, a.mdtrt_id, fixmedins_code, psn_no=a.psn_no, lock=True)
    if enc.kind != "outpatient":
        raise RuleRejected(f"就诊ID{a.mdtrt_id}不是门诊就诊")
    await _not_under_a_claim(conn, enc, a.chrg_bchno, received)
    # The visit's own id: a provisional one the client still sends names the visit it became.
    removed = await fees.delete_unsettled(conn, enc.mdtrt_id, chrg_bchno=a.chrg_bchno)
    if not removed:
        raise NotFound("没有可撤销的未结算费用明细（已结算的明细须先撤销结算）")


async def withdraw_lines(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    rows: Iterable[LineWithdrawal],
    *,
    received: dt.datetime | None = None,
) -> None:
    """2302: remove a stay's unsettled lines, row by row. `rows` may be read as it goes (the
    adapter decodes each row when it is reached), so a request is refused for its first fault
    in row order, whether that is a row that cannot be read or one that cannot be withdrawn.
    `received`: when a replayed withdrawal came (`_not_under_a_claim`)."""
    removed = 0
    touched: set[str] = set()
    for row in rows:
        enc = await encounters.get(conn, row.mdtrt_id, fixmedins_code, psn_no=row.psn_no, lock=True)
        if enc.kind != "inpatient":
            raise RuleRejected(f"就诊ID{row.mdtrt_id}不是住院就诊")
        if enc.mdtrt_id not in touched:
            await _not_under_a_claim(conn, enc, ALL, received)  # a stay's claim holds all
        touched.add(enc.mdtrt_id)
        n = await fees.delete_unsettled(conn, enc.mdtrt_id, feedetl_sn=row.feedetl_sn)
        if not n and row.feedetl_sn != ALL:
            raise _not_withdrawn(
                row.feedetl_sn, await fees.settled_by(conn, enc.mdtrt_id, row.feedetl_sn)
            )
        removed += n
    if not removed:
        raise NotFound("没有可撤销的未结算费用明细（已结算的明细须先撤销结算）")
    for mdtrt_id in sorted(touched):
        await _no_orphan_refunds(conn, mdtrt_id)


def _not_withdrawn(feedetl_sn: str, settled_by: str | None) -> NotFound | Conflict:
    """Why a stay's line was not withdrawn, and what the clerk does instead (found from outside:
    "不存在或已结算" said neither which nor what next)."""
    if settled_by is None:
        return NotFound(f"费用明细流水号{feedetl_sn}不存在或已结算，不能撤销")
    return Conflict(
        f"费用明细流水号{feedetl_sn}已结算（结算ID{settled_by}），不能撤销：如需退费，请上传退费明细"
        f"（数量为负，原费用明细流水号init_feedetl_sn填{feedetl_sn}），或先撤销该结算（2305）"
    )


async def _not_under_a_claim(
    conn: asyncpg.Connection,
    enc: encounters.Encounter,
    lines: str,
    received: dt.datetime | None = None,
) -> None:
    """Lines a pending deferred claim holds are not withdrawn: replay settles exactly the lines
    the patient paid for in cash, and lines withdrawn and uploaded again under the same serials
    would be settled in their place (found from outside: a self-pay batch swapped for a covered
    one before replay, the fund paying for what the patient never paid).

    A withdrawal replayed (`received`: when the gateway took it) is held only by claims taken
    before it: a claim taken after it was priced without the lines it withdrew. Found from
    outside: a 2302 kept before a stay's 2304 claim failed when applied, the claim then failed
    on the withdrawn line, and the patient's cash was never reimbursed."""
    await not_under_a_claim_of(conn, enc.fixmedins_code, enc.mdtrt_id, lines, received)


async def not_under_a_claim_of(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    mdtrt_id: str,
    lines: str,
    received: dt.datetime | None = None,
) -> None:
    """`_not_under_a_claim` of a visit by its id (a provisional one, kept under the plan, has
    no encounter yet)."""
    claims = await deferred.pending_on_visits(conn, [mdtrt_id])
    if received is not None:
        claims = [c for c in claims if c.received_at is None or c.received_at <= received]
    deferral.refuse_if_held(deferral.held_lines(claims, fixmedins_code), lines)


async def _no_orphan_refunds(conn: asyncpg.Connection, mdtrt_id: str) -> None:
    """A refund never stands without the charge it takes back (`upload`): a charge is withdrawn
    with its refund lines, or after them (checked once the whole request is applied, so one 2302
    may list the charge before its refunds)."""
    orphan = await fees.orphan_refund(conn, mdtrt_id)
    if orphan is not None:
        refund_sn, charge_sn = orphan
        raise Conflict(
            f"费用流水号{charge_sn}有退费明细{refund_sn}，"
            "请先撤销退费明细（或一并撤销）后再撤销原收费明细"
        )
