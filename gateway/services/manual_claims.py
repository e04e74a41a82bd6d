"""Manual claims (零星报销): a patient who paid the whole bill claims it at the agency.

The Guizhou guide's steps: 零星报销登记 (register: person by certificate, where treated, medical
category, dates, invoices) → 明细录入 (enter the bill's fee lines) → 明细审核 (a second person
checks them) → 结算 (settle) → 结算审核 (batch review: what is owed to the patient is recorded,
ready for a payout batch).

The settlement is the counter's: the claim opens a visit at the institution where the patient
was treated, its lines are stored as an upload stores them, and the settlement build
(`visit_job` through `settle_alone`) settles them, so accumulators, deductible, caps and the
personal account apply exactly as at the counter. The patient paid everything in cash; what
the agency owes back is the bill less what the patient would have paid at the counter in cash
(the same reckoning as a replayed 主动报 claim's).

Every step runs in its own transaction, locks the claim first, and is idempotent: a step asked
again once done answers the claim as it is.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec

from adapters.national import lengths
from gateway.core import eligibility
from gateway.core.catalog import Snapshot
from gateway.core.dates import DateRules, within_visit
from gateway.core.model import PHARMACY_TYPE, Category, Visit, same_operator
from gateway.core.money import AmountError, fen_text, typed
from gateway.core.settle import split_lines
from gateway.core.timestamps import as_local
from gateway.ledger import deferred, encounters, fees, payouts, persons, settlements
from gateway.ledger import manual_claims as store
from gateway.ledger.manual_claims import Claim, Line
from gateway.ops import audit
from gateway.protocol.errors import (
    BadRequest,
    Conflict,
    LineRejected,
    NotFound,
    NotInsured,
    RuleRejected,
)
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind
from gateway.services.encounters import INPATIENT_MED_TYPES
from gateway.services.fee_uploads import MAX_LINES, approval_flag  # as one upload
from gateway.services.settlement_state import settle_alone
from gateway.services.visit_settlement import VisitAsk, visit_job

# The infno a manual claim's settlement records: the counter's settlement of the same kind.
SETTLEMENT_INFNO = deferred.CLAIM_INFNO  # by the claim's kind
TEXT_MAX = 64  # an invoice number, a diagnosis code: longer is a typing or pasting mistake
SERIAL_MAX = lengths.limit_of("feedetl_sn")  # as the interface bounds a line's serial
# Holds a new claim's invoices beyond its own database (claim_no, fixmedins_code, invoices), or
# raises Conflict naming the claim that holds one.
InvoiceGuard = Callable[[str, str, Sequence[str]], Awaitable[None]]
STATUS_NAMES = {
    "registered": "已登记",
    "lines_entered": "明细已录入",
    "reviewed": "明细已审核",
    "settled": "已结算",
    "batch_reviewed": "结算已审核",
    "refused": "已拒付",
    "withdrawn": "已撤回",
}


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """零星报销登记 as the clerk fills it."""

    cert_type: str  # 01 电子凭证, 02 身份证, 03 社保卡
    cert_no: str
    fixmedins_code: str
    med_type: str
    begntime: dt.datetime
    endtime: dt.datetime | None = None  # a stay's discharge
    dise_codg: str = ""
    acct_used: bool = False
    invoice_nos: tuple[str, ...] = ()


def _status(c: Claim) -> str:
    return STATUS_NAMES.get(c.status, c.status)


def _require(c: Claim, *allowed: str, doing: str) -> None:
    if c.status not in allowed:
        raise Conflict(f"零星报销{c.claim_no}当前状态为{_status(c)}，不能{doing}")


def view(c: Claim) -> dict[str, Any]:
    """A claim as the CLI and the API show it (amounts as decimal text)."""
    out: dict[str, Any] = msgspec.to_builtins(c)
    out["status_name"] = _status(c)
    for k in ("medfee_sumamt", "reimbursement_fen"):
        if out[k] is not None:
            out[k] = fen_text(out[k])
    out["reimbursement"] = out.pop("reimbursement_fen")
    return out


# ---------------------------------------------------------------------------------- 零星报销登记


class _HeldMeanwhile(Conflict):
    """Another registration took one of the invoices between the look-up and the hold."""


async def register(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    reg: Registration,
    operator: str,
    now: dt.datetime,
    *,
    dates: DateRules | None = None,
    invoices_held: InvoiceGuard | None = None,
) -> Claim:
    """Register a claim (see `_register`). Two registrations of the same invoices at once (a
    double-clicked form, a form sent to two workers): the second waits for the first's hold,
    then looks again and answers the first's claim when it is the same registration (found
    from outside: it was refused as if another claim held the invoice)."""
    try:
        return await _register(conn, snapshot, reg, operator, now, dates, invoices_held)
    except _HeldMeanwhile:
        return await _register(conn, snapshot, reg, operator, now, dates, invoices_held)


async def _register(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    reg: Registration,
    operator: str,
    now: dt.datetime,
    dates: DateRules | None,
    invoices_held: InvoiceGuard | None,
) -> Claim:
    """Register a claim; the same invoices registered again for the same person and
    institution answer the claim they are held by. `invoices_held` (a split ledger's registry,
    gateway.services.agency_ledgers) also holds them beyond this database, or refuses."""
    invoices = tuple(invoice_number(i) for i in reg.invoice_nos)
    if not invoices or any(not i for i in invoices):
        raise BadRequest("零星报销须登记发票号invoice_nos（至少一张，不能为空）")
    if len(set(invoices)) != len(invoices):
        raise BadRequest("发票号重复登记")
    if any(len(i) > TEXT_MAX for i in invoices) or len(reg.dise_codg) > TEXT_MAX:
        raise BadRequest(f"发票号、诊断代码均不能超过{TEXT_MAX}个字符")
    # Found from outside: a control character or "|" (the files' separator) was stored.
    for what, value in (
        ("发票号invoice_nos", "".join(invoices)),
        ("诊断代码dise_codg", reg.dise_codg),
    ):
        if not value.isprintable() or "|" in value:
            raise BadRequest(f"{what}含有不可见的控制字符或“|”，请删除后重新登记")
    if reg.cert_type not in persons.CERT_TYPES:
        raise BadRequest("证件类型只能为01（电子凭证）、02（身份证）或03（社保卡）")
    institution = snapshot.institution(reg.fixmedins_code)
    if institution is None:
        raise NotFound(f"定点医药机构编号{reg.fixmedins_code}未登记，不能受理零星报销")
    if institution.fixmedins_type == PHARMACY_TYPE:
        # A pharmacy's sale settles by the pharmacy's rules (2102), which this claim's visit
        # build does not apply; settled as an outpatient visit it would pay what the counter
        # never pays (found from outside).
        raise RuleRejected(
            f"{reg.fixmedins_code}为定点零售药店，药店购药不受理零星报销，请到药店办理药店结算（2102）"
        )
    kind = "inpatient" if reg.med_type in INPATIENT_MED_TYPES else "outpatient"
    category = eligibility.category_for(kind, reg.med_type, "（零星报销）")
    if kind == "inpatient" and reg.endtime is None:
        raise BadRequest("住院零星报销须填写出院时间endtime")
    if reg.endtime is not None and reg.endtime < reg.begntime:
        raise BadRequest("出院时间早于入院时间，请核对日期")
    if reg.begntime > now:
        raise BadRequest("就诊时间晚于当前时间，请核对日期")
    # The counter's date bounds (a visit after now or before the late-billing bound is refused
    # at 2201/2401): a claim is a visit settled later, not a way around them.
    rules = dates or DateRules()
    rules.check("就诊时间begntime", reg.begntime, admdvs=institution.admdvs, now=now)
    if reg.endtime is not None:
        rules.check("出院时间endtime", reg.endtime, admdvs=institution.admdvs, now=now)
    async with conn.transaction():
        found = await persons.find_by_certificate(conn, reg.cert_type, reg.cert_no)
        if found is None:
            raise NotInsured("证件号码未查到参保人，请核对证件类型和号码")
        person = found[0]
        persons.require_insured(person)
        if category is Category.CHRONIC:
            eligibility.require_chronic_filing(person, reg.dise_codg)
        held = await store.invoice_holders(conn, reg.fixmedins_code, invoices)
        if held:
            again = await _registered_again(conn, held, invoices, person.psn_no, reg)
            if again is not None:
                if invoices_held is not None:  # a registry row lost between two commits
                    await invoices_held(again.claim_no, reg.fixmedins_code, invoices)
                return again
            invono, claim_no = next(iter(sorted(held.items())))
            raise Conflict(f"发票号{invono}已在零星报销{claim_no}中登记，不能重复报销")
        claim = Claim(
            claim_no=await store.new_claim_no(conn, now),
            psn_no=person.psn_no,
            fixmedins_code=reg.fixmedins_code,
            kind=kind,
            med_type=reg.med_type,
            begntime=reg.begntime,
            endtime=reg.endtime,
            dise_codg=reg.dise_codg,
            acct_used=reg.acct_used,
            invoice_nos=list(invoices),
            status="registered",
            registered_by=operator,
        )
        await store.insert(conn, claim)
        if not await store.hold_invoices(conn, reg.fixmedins_code, invoices, claim.claim_no):
            raise _HeldMeanwhile("发票号正被另一笔零星报销登记，请稍后查询后再办理")
        if invoices_held is not None:
            await invoices_held(claim.claim_no, reg.fixmedins_code, invoices)
        await _audit(conn, operator, "claim.register", claim, "零星报销登记")
        return claim


async def _registered_again(
    conn: asyncpg.Connection,
    held: dict[str, str],
    invoices: tuple[str, ...],
    psn_no: str,
    reg: Registration,
) -> Claim | None:
    """The claim a repeated registration names: all its invoices, the same person and visit."""
    owners = set(held.values())
    if len(owners) != 1 or set(held) != set(invoices):
        return None
    claim = await store.get(conn, owners.pop())
    same = (
        claim.psn_no == psn_no
        and set(claim.invoice_nos) == set(invoices)
        and claim.med_type == reg.med_type
        and claim.begntime == reg.begntime
    )
    return claim if same else None


# ------------------------------------------------------------------------------------ 明细录入

# The columns of a bill's lines typed as text (the console's form), in this order.
TEXT_COLUMNS = (
    "feedetl_sn",
    "medins_list_codg",
    "pric",
    "cnt",
    "det_item_fee_sumamt",
    "fee_ocur_time",
)


def invoice_number(text: str) -> str:
    """An invoice number as it is held: its full-width characters as the half-width ones they
    stand for, letters in capitals. An invoice is one paper whatever keyboard typed its number
    (found from outside: "ＩＮＶ-Ａ001" and "inv-a001" were registered beside a live
    "INV-A001"). Numbers registered before this are held as they were typed."""
    return unicodedata.normalize("NFKC", text).strip().upper()


def claim_time(text: str, what: str) -> dt.datetime:
    """A time as a clerk types it (2026-06-01 08:30:00, or with a T; one with an offset is
    converted to local time: found from outside, it reached the checks against local times
    and failed there, an HTTP 500 at the desk and a traceback at the shell)."""
    try:
        return as_local(dt.datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise BadRequest(f"{what}“{text}”不是有效的时间（如2026-06-01 08:30:00）") from exc


def _number(value: Any) -> str | int:
    """An amount as given: text or a whole number; a JSON fraction as the text it was typed as."""
    if isinstance(value, bool) or value is None:
        return ""
    return value if isinstance(value, int) else str(value)


def lines_from_rows(rows: Any) -> list[Line]:
    """A bill's lines from feedetail objects (national field names, amounts as decimal text)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BadRequest("费用明细须为对象数组（feedetail）")
    out = []
    for r in rows:
        sn = str(r.get("feedetl_sn") or "")
        # As an upload's (2204/2301) are: found from outside, a 200-character serial and a flag
        # of "9" were taken.
        if len(sn) > SERIAL_MAX or not sn.isprintable():
            raise BadRequest(f"费用明细流水号feedetl_sn最长{SERIAL_MAX}位，且不能含控制字符")
        appr = approval_flag(sn, str(r.get("hosp_appr_flag") or ""))
        try:
            out.append(
                Line(
                    feedetl_sn=sn,
                    medins_list_codg=str(r.get("medins_list_codg") or ""),
                    med_list_codg=str(r.get("med_list_codg") or "") or None,
                    pric_micro=typed(_number(r.get("pric")), 6, f"费用明细{sn}单价pric"),
                    cnt=typed(_number(r.get("cnt")), 4, f"费用明细{sn}数量cnt"),
                    amount_fen=typed(
                        _number(r.get("det_item_fee_sumamt")),
                        2,
                        f"费用明细{sn}金额det_item_fee_sumamt",
                    ),
                    fee_ocur_time=claim_time(
                        str(r.get("fee_ocur_time", "")), f"费用明细{sn}发生时间"
                    ),
                    hosp_appr_flag=appr,
                )
            )
        except AmountError as exc:
            raise BadRequest(str(exc)) from exc
    return out


def lines_from_text(text: str) -> list[Line]:
    """A bill's lines typed one a line: 流水号, 目录编码, 单价, 数量, 金额, 发生时间, separated
    by "|", a tab or a comma (the time keeps its space)."""
    rows = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        fields = [f.strip() for f in re.split(r"[|\t,，]", raw)]
        if len(fields) != len(TEXT_COLUMNS):
            raise BadRequest(
                f"第{n}行应为{len(TEXT_COLUMNS)}项（流水号、目录编码、单价、数量、金额、发生时间），"
                f"实为{len(fields)}项"
            )
        rows.append(dict(zip(TEXT_COLUMNS, fields, strict=True)))
    return lines_from_rows(rows)


def _stored(claim: Claim, ln: Line, mdtrt_id: str) -> fees.StoredLine:
    return fees.StoredLine(
        feedetl_sn=ln.feedetl_sn,
        medins_list_codg=ln.medins_list_codg,
        med_list_codg=ln.med_list_codg,
        pric_micro=ln.pric_micro,
        cnt=ln.cnt,
        det_item_fee_sumamt=ln.amount_fen,
        fee_date=ln.fee_ocur_time.date(),
        hosp_appr_flag=ln.hosp_appr_flag,
        mdtrt_id=mdtrt_id,
        chrg_bchno=claim.claim_no,
        init_feedetl_sn="",
        psn_no=claim.psn_no,
        fee_ocur_time=ln.fee_ocur_time,
    )


def check_lines(snapshot: Snapshot, claim: Claim, lines: Sequence[Line]) -> None:
    """An upload's checks on a bill's lines: present, distinct, positive, within the visit's
    dates, and each one priced by the institution's catalog as the counter would."""
    if not lines:
        raise BadRequest("费用明细不能为空")
    if len(lines) > MAX_LINES:
        raise BadRequest(f"单笔零星报销费用明细不能超过{MAX_LINES}条")
    seen: set[str] = set()
    for ln in lines:
        if not ln.feedetl_sn or not ln.medins_list_codg:
            raise BadRequest("费用明细流水号和医药机构目录编码不能为空")
        if ln.feedetl_sn in seen:
            raise LineRejected(ln.feedetl_sn, "同一笔报销中费用明细流水号重复")
        seen.add(ln.feedetl_sn)
        if ln.cnt <= 0:
            raise LineRejected(ln.feedetl_sn, "数量须大于0（零星报销按实际收费录入，不含退费）")
        if ln.amount_fen < 0:
            raise LineRejected(ln.feedetl_sn, "金额不能为负数")
        within_visit(
            ln.feedetl_sn,
            ln.fee_ocur_time,
            begntime=claim.begntime,
            endtime=claim.endtime,
            start="入院" if claim.kind == "inpatient" else "就诊",
            stay=claim.kind == "inpatient",
        )
    visit = Visit(
        fixmedins_code=claim.fixmedins_code,
        mdtrt_id="",
        med_type=claim.med_type,
        service_date=claim.begntime.date(),
        acct_used_flag=claim.acct_used,
        dise_codg=claim.dise_codg,
    )
    split_lines(snapshot, visit, [_stored(claim, ln, "") for ln in lines])


async def enter_lines(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    claim_no: str,
    lines: Sequence[Line],
    operator: str,
    *,
    dates: DateRules | None = None,
    now: dt.datetime | None = None,
) -> Claim:
    """明细录入: the bill's lines, replacing any entered before (until reviewed)."""
    async with conn.transaction():
        claim = await store.get(conn, claim_no, lock=True)
        _require(claim, "registered", "lines_entered", doing="录入明细")
        check_lines(snapshot, claim, lines)
        institution = snapshot.institution(claim.fixmedins_code)
        rules, at = dates or DateRules(), now or dt.datetime.now()
        admdvs = institution.admdvs if institution is not None else ""
        # each line within the counter's bounds, as an upload's
        rules.check_lines(lines, admdvs=admdvs, now=at)
        await store.replace_lines(conn, claim_no, lines)
        await store.update(conn, claim_no, status="lines_entered", entered_by=operator)
        total = sum(ln.amount_fen for ln in lines)
        await _audit(
            conn, operator, "claim.lines", claim, f"明细录入{len(lines)}条，合计{fen_text(total)}"
        )
        return await store.get(conn, claim_no)


# ------------------------------------------------------------------------------------ 明细审核


async def review(
    conn: asyncpg.Connection, claim_no: str, operator: str, *, refuse: str | None = None
) -> Claim:
    """明细审核 by someone other than who entered the lines; `refuse`: the claim is refused
    with this reason (its invoices may be claimed again)."""
    async with conn.transaction():
        claim = await store.get(conn, claim_no, lock=True)
        if refuse is None and claim.status == "reviewed" and claim.reviewed_by == operator:
            return claim
        _require(claim, "lines_entered", doing="审核")
        if any(same_operator(operator, by) for by in (claim.entered_by, claim.registered_by)):
            raise Conflict("明细审核须由登记、录入以外的经办人办理，不能审核本人经办的报销")
        if refuse is not None:
            refuse = audit.reason_given(refuse, "拒付须填写原因")
            await store.update(
                conn, claim_no, status="refused", reviewed_by=operator, closed_reason=refuse
            )
            await store.release_invoices(conn, claim_no)
            await _audit(conn, operator, "claim.refuse", claim, refuse)
        else:
            await store.update(conn, claim_no, status="reviewed", reviewed_by=operator)
            await _audit(conn, operator, "claim.review", claim, "明细审核通过")
        return await store.get(conn, claim_no)


async def withdraw(conn: asyncpg.Connection, claim_no: str, operator: str, reason: str) -> Claim:
    """The claim withdrawn before it is settled (its invoices may be claimed again)."""
    reason = audit.reason_given(reason, "撤回须填写原因")
    async with conn.transaction():
        claim = await store.get(conn, claim_no, lock=True)
        if claim.status == "withdrawn":
            return claim
        _require(claim, "registered", "lines_entered", "reviewed", doing="撤回")
        await store.update(conn, claim_no, status="withdrawn", closed_reason=reason)
        await store.release_invoices(conn, claim_no)
        await _audit(conn, operator, "claim.withdraw", claim, reason)
        return await store.get(conn, claim_no)


# ---------------------------------------------------------------------------------------- 结算


def _record(rec: settlements.Record, _ctx: settlements.Context, _a: VisitAsk) -> Any:
    """The build's answer for a manual claim: the settlement record itself."""
    return rec


def _held_words(what: str, ref: str) -> str:
    """A settlement or 主动报 claim a manual claim's bill is refused for, in the clerk's words
    (what `store.same_bill` and `store.stay_settled` name it)."""
    return {
        "settlement": f"医保结算{ref}",
        "claim": f"待补结算的暂存结算{ref}（主动报）",
        "withdrawn": f"暂存结算{ref}（主动报，已由医疗机构撤销并退还现金）",
        "settled": f"暂存结算{ref}（主动报，补结算后已由医疗机构撤销该结算并退还现金）",
    }[what]


async def _refuse_a_bill_paid_already(conn: asyncpg.Connection, claim: Claim, total: int) -> None:
    """A claim for a bill the funds already pay is refused before anything is written: the
    person's bill at the same institution, on the same day, of the same total, settled (at the
    counter, by a 主动报 claim's replay, or as another claim under other invoices) or waiting as
    a 主动报 claim, or withdrawn as one, or replayed and then cancelled at the counter (either
    way its cash refunded at the counter). Found from outside:
    such a claim was settled and its reimbursement paid, the fund paying one bill twice (after a
    withdrawal: the patient had the refund and the reimbursement). A second bill of exactly the
    same total on the same day is left to the agency to settle by hand."""
    day = claim.begntime.date()
    found = await store.same_bill(
        conn, claim.fixmedins_code, claim.psn_no, day, total, SETTLEMENT_INFNO[claim.kind]
    )
    if found is None:
        return
    ref, what = found
    held = _held_words(what, ref)
    # Found from outside: a pending claim's words did not say it will be paid back by itself.
    waits = "该暂存结算待系统补结算后自动报销，无需零星报销；" if what == "claim" else ""
    raise Conflict(
        f"参保人{claim.psn_no}于{day.isoformat()}在{claim.fixmedins_code}已有金额相同的{held}"
        f"（{fen_text(total)}元），疑为同一费用重复报销，不予结算；{waits}如确为另一笔费用，"
        "请撤回本受理，在系统外按手工报销办理（系统无法区分同日金额相同的费用）"
    )


async def _refuse_a_stay_paid_already(conn: asyncpg.Connection, claim: Claim) -> None:
    """An inpatient claim whose stay overlaps one of the person at the institution that the
    funds already pay (settled by the hospital, by a 主动报 claim's replay or as another claim)
    or will (a 主动报 2304 claim waiting), or whose 主动报 claim's cash the counter refunded
    (withdrawn, or its replay cancelled), is refused, whatever its total. Found from outside:
    the agency reimbursed a stay the hospital had settled with another total (the exact-total
    check let it through), the funds paying one stay twice; the counter's side refuses the
    same overlap the other way round (`visit_settlement.refuse_reimbursed`)."""
    if claim.kind != "inpatient":
        return
    found = await store.stay_settled(
        conn, claim.psn_no, claim.fixmedins_code, claim.begntime, claim.endtime or dt.datetime.max
    )
    if found is None:
        return
    what, ref, begntime, endtime = found
    held = _held_words(what, ref)
    stay = f"{begntime:%Y-%m-%d %H:%M}至{f'{endtime:%Y-%m-%d %H:%M}' if endtime else '今'}"
    raise Conflict(
        f"参保人{claim.psn_no}在{claim.fixmedins_code}的住院（{stay}）已有{held}，与本受理的住院时间"
        "重叠，疑为同一次住院重复报销，不予结算；如确为另一次住院，请核实入出院时间后重新受理，"
        "或在系统外按手工报销办理"
    )


async def settle(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    claim_no: str,
    operator: str,
    now: dt.datetime,
) -> Claim:
    """结算: open the claim's visit, store its lines, settle them through the counter's build."""
    async with conn.transaction():
        claim = await store.get(conn, claim_no, lock=True)
        if claim.status in ("settled", "batch_reviewed"):
            return claim
        _require(claim, "reviewed", doing="结算")
        institution = snapshot.institution(claim.fixmedins_code)
        if institution is None:
            raise NotFound(f"定点医药机构编号{claim.fixmedins_code}未登记")
        # The person's lock before the look for a bill paid already: every settlement of the
        # person takes it, so the look sees any that committed meanwhile. Found from outside:
        # two claims of one bill settled by two clerks at the same moment were both paid. The
        # visit this opens is new, so taking the person first cannot reverse the lock order.
        await persons.lock_many(conn, [claim.psn_no])
        person, _ = await persons.read(conn, claim.psn_no)
        lines = await store.lines(conn, claim_no)
        await _refuse_a_bill_paid_already(conn, claim, sum(ln.amount_fen for ln in lines))
        await _refuse_a_stay_paid_already(conn, claim)
        msgid = store.settlement_msgid(claim_no)
        mdtrt_id = await encounters.new_mdtrt_id(conn, institution.admdvs, now)
        kind = Kind.INPATIENT if claim.kind == "inpatient" else Kind.OUTPATIENT
        await encounters.create(
            conn,
            mdtrt_id=mdtrt_id,
            fixmedins_code=claim.fixmedins_code,
            psn_no=claim.psn_no,
            insutype=person.insutype,
            kind=kind,
            med_type=claim.med_type,
            begntime=claim.begntime,
            ipt_otp_no=claim_no,
            insuplc_admdvs=person.insuplc_admdvs,
            msgid=msgid,
            dise_codg=claim.dise_codg,
            detail={"manual_claim": claim_no, "invoice_nos": claim.invoice_nos},
        )
        if kind is Kind.INPATIENT:
            await encounters.update(conn, mdtrt_id, status="discharged", endtime=claim.endtime)
        stored = [_stored(claim, ln, mdtrt_id) for ln in lines]
        await fees.insert(conn, stored, msgid)
        asked = VisitAsk(
            psn_no=claim.psn_no,
            mdtrt_id=mdtrt_id,
            med_type=claim.med_type,
            acct_used=claim.acct_used,
            mid_setl_flag="0",
            chrg_bchno=claim_no if kind is Kind.OUTPATIENT else fees.ALL,
            declared=settlements.Declared(medfee_sumamt=sum(ln.amount_fen for ln in lines)),
            insutype=person.insutype,
            cert_type="",
            cert=None,
        )
        origin = Origin(
            fixmedins_code=claim.fixmedins_code,
            infno=SETTLEMENT_INFNO[claim.kind],
            msgid=msgid,
            opter=operator,
        )
        job = visit_job(snapshot, origin, institution, now, asked, _record, kind=kind)
        built = await settle_alone(conn, job)
        rec: settlements.Record = built.output
        medfee = rec.amounts["medfee_sumamt"]
        # The patient paid the whole bill; the agency pays back all but the counter's cash part.
        owed = medfee - rec.amounts["psn_cash_pay"]
        await store.update(
            conn,
            claim_no,
            status="settled",
            settled_by=operator,
            mdtrt_id=mdtrt_id,
            setl_id=rec.setl_id,
            medfee_sumamt=medfee,
            reimbursement_fen=owed,
        )
        await _audit(
            conn,
            operator,
            "claim.settle",
            claim,
            f"结算{rec.setl_id}：医疗费总额{fen_text(medfee)}，应报销{fen_text(owed)}",
        )
        return await store.get(conn, claim_no)


# ------------------------------------------------------------------------------------ 结算审核


async def batch_review(
    conn: asyncpg.Connection, claim_nos: Sequence[str], operator: str
) -> list[Claim]:
    """结算审核 (batch): each settled claim reviewed by someone other than who settled it, its
    reimbursement recorded as owed to the patient. All or none."""
    if not claim_nos:
        raise BadRequest("请选择需要结算审核的零星报销")
    out: list[Claim] = []
    async with conn.transaction():
        for claim_no in sorted(set(claim_nos)):
            claim = await store.get(conn, claim_no, lock=True)
            if claim.status == "batch_reviewed":
                out.append(claim)
                continue
            _require(claim, "settled", doing="结算审核")
            if same_operator(operator, claim.settled_by):
                raise Conflict(f"零星报销{claim_no}：结算审核须由结算经办人以外的人员办理")
            await store.update(conn, claim_no, status="batch_reviewed", batch_reviewed_by=operator)
            if claim.reimbursement_fen:
                await payouts.add_owed(
                    conn, "manual", claim_no, claim.psn_no, claim.reimbursement_fen
                )
            await _audit(conn, operator, "claim.batch_review", claim, "结算审核通过")
            out.append(await store.get(conn, claim_no))
    return out


async def _audit(
    conn: asyncpg.Connection, operator: str, action: str, claim: Claim, reason: str
) -> None:
    """The step's audit row: the claim's state before it (`claim`, as read when the step began;
    none for its registration) and after it (found from outside: the row held the state before
    only, so a registration read as coming from 'registered')."""
    now = await store.get(conn, claim.claim_no)
    await audit.append(
        conn,
        operator=operator,
        action=action,
        target=f"manual_claim:{claim.claim_no}",
        reason=reason,
        before=None if action == "claim.register" else {"status": claim.status},
        after={"status": now.status},
    )
