"""The wire side of store-and-forward: what a deferred claim is read from, and how it is answered.

A deferred claim (2207/2304/2102 while the settlement class is deferred) is answered as a normal
settlement in which the patient pays everything in cash; the fund's share is reimbursed after
recovery. The journaled encounter calls of the same visits get provisional ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from adapters.national.envelope import Amount, Code, Request, decode_input, text
from adapters.national.output import amount, line_result, moment, ratio
from adapters.national.wire import (
    In2206,
    In2208,
    Node,
    certificate,
    certificate_if_sent,
    fen,
    fen_required,
    required,
    when,
    when_required,
)
from gateway.core.catalog import Snapshot
from gateway.core.model import FeeLine, LineSplit
from gateway.core.money import fen_text, to_fen
from gateway.core.settle import split_line
from gateway.core.timestamps import day_digits
from gateway.emergency.deferred import CLAIM_PREFIX, PROVISIONAL_PREFIX
from gateway.ledger import deferred, fees, idempotency, manual_claims, persons, settlements
from gateway.ledger.persons import Certificate
from gateway.ledger.settlements import AMOUNT_FIELDS
from gateway.protocol.errors import BadRequest, BatchSettled, Conflict, GatewayError, NotFound
from gateway.protocol.transaction import TRANSACTIONS, Answer, Call, Deferral, Kind, Transaction


def _tx(infno: str) -> Transaction | None:
    return TRANSACTIONS.get(infno)


def role(infno: str) -> Deferral:
    """What the plan's defer does with this transaction (its entry in the table)."""
    tx = _tx(infno)
    return Deferral.NONE if tx is None else tx.deferral


def kind_of(infno: str) -> Kind | None:
    """The visit kind a settlement transaction settles (None for any other)."""
    tx = _tx(infno)
    return None if tx is None else tx.kind


def opens_visit(infno: str) -> bool:
    tx = _tx(infno)
    return tx is not None and tx.opens_visit


# The fund's share only, and it may be none (found from outside: a pharmacy sale, whose fund pays
# nothing and whose account is not used at replay, was promised a reimbursement of 0).
DEFER_WARN = (
    "医保实时结算暂停（应急预案·主动报）：本次费用由参保人全额现金支付，结算单号{claim_id}；"
    "系统恢复后按规定计算医保基金应支付部分（个人账户不参与；无基金支付的则无报销），主动报销给参保人，"
    "无需参保人申请"
)
CALL_WARN = "医保系统应急处置中，本笔业务已暂存（{ref}），系统恢复后自动补办"
PENDING_MSG = (
    "{what}已按应急预案暂存为待结算（暂存结算单号{claim_id}），请待恢复后由系统补结算或先撤销暂存"
)
ELSEWHERE_MSG = (
    "{what}已在应急预案转原系统期间由原系统结算（原系统结算ID{setl_id}），不能在本系统重复结算："
    "如需重新结算，请先撤销原系统的该笔结算（转原系统期间以2208/2305办理）或联系医保经办机构"
)
# Found from outside: a batch settled by a claim's replay was told only "已结算", and a clerk
# could take it that the fund or the account had paid at the counter. The refusal cannot tell
# which it was (the build holds the batch's settled lines, not their settlement's origin), so
# the replayed case is said as a case, after the plain meaning: found from outside, said as the
# headline it read as if every settled batch had been paid in cash.
SETTLED_MSG = (
    "收费批次{batch}已结算，请勿重复结算，结算信息请用5203查询（仅当该批次曾按应急预案暂存、"
    "事后补结算时：参保人已全额现金支付，报销款由经办机构支付给参保人，无需再收或退款）"
)
FAILED_HELD_MSG = (
    "{what}已按应急预案暂存（暂存结算单号{claim_id}），补结算未成功，参保人已按现金全额支付："
    "请先以该暂存结算单号办理撤销（退还现金）后重新结算，或联系医保经办机构处理"
)


class _DrugClaim(Node):
    """The part of a 2101/2102 a claim is filed under (the pharmacy reads the rest)."""

    psn_no: Code = None
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    begntime: Code = None
    medfee_sumamt: Amount = None
    med_type: Code = None


class _Purchase(Node):
    druginfo: _DrugClaim | None = None
    drugdetail: list[Any] = []


_decimal_json = msgspec.json.Decoder(float_hook=Decimal)


def new_claim_id(admdvs: str, now: dt.datetime, fixmedins_code: str, msgid: str) -> str:
    """Unique without the ledger (the journal may be where it is first written), and the same
    for the same message wherever it is taken: found from outside, a till's retry that reached
    another worker while the ledger was away was given a second claim number, and the one on
    the patient's receipt vanished when the journals were drained (one claim per msgid)."""
    return f"{CLAIM_PREFIX}{admdvs[:6]}{day_digits(now)}{_of_message(fixmedins_code, msgid)}"


def new_provisional_id(admdvs: str, now: dt.datetime, fixmedins_code: str, msgid: str) -> str:
    """A visit's id while its registration waits, the same for the same message (as above)."""
    return f"{PROVISIONAL_PREFIX}{admdvs[:6]}{day_digits(now)}{_of_message(fixmedins_code, msgid)}"


def _of_message(fixmedins_code: str, msgid: str) -> str:
    """14 hex digits of the message's key: 30 characters in all, as the ids were."""
    key = f"{fixmedins_code}\x00{msgid}".encode()
    return hashlib.sha256(key).hexdigest()[:14].upper()


def is_claim_id(setl_id: str) -> bool:
    return setl_id.startswith(CLAIM_PREFIX)


@dataclass(frozen=True, slots=True)
class ClaimFacts:
    """What a claim is filed under; the rest stays in the stored envelope."""

    psn_no: str
    mdtrt_id: str  # "" for a pharmacy purchase (its visit is made when it is replayed)
    medfee_sumamt: int
    service_date: dt.date | None  # known from the request (pharmacy) or from the visit
    med_type: str
    declared: dict[str, int]  # the split the client sent, when it sent one
    cert: Certificate | None = None  # checked against psn_no before a claim is taken


def read_claim(req: Request) -> ClaimFacts:
    """The claim's facts, validated as strictly as the settlement itself would read them."""
    kind = kind_of(req.infno)
    if kind is Kind.PHARMACY:
        node = decode_input(req, _Purchase)
        info = node.druginfo
        if info is None:
            raise BadRequest("缺少输入节点druginfo")
        if not node.drugdetail:
            raise BadRequest("药品明细drugdetail不能为空")
        cert = certificate(info.mdtrt_cert_type, info.mdtrt_cert_no, "druginfo")
        return ClaimFacts(
            psn_no=required(info.psn_no, "druginfo.psn_no"),
            mdtrt_id="",
            medfee_sumamt=fen_required(info.medfee_sumamt, "druginfo.medfee_sumamt"),
            service_date=when_required(info.begntime, "druginfo.begntime").date(),
            med_type=text(info.med_type) or "41",
            declared={},
            cert=cert,
        )
    data = decode_input(req, In2206).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    if kind is Kind.OUTPATIENT:
        required(data.chrg_bchno, "data.chrg_bchno")
    declared: dict[str, int] = {}
    for name in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"):
        value = fen(getattr(data, name), f"data.{name}", optional=True)
        if value is not None:
            declared[name] = value
    return ClaimFacts(
        psn_no=required(data.psn_no, "data.psn_no"),
        mdtrt_id=required(data.mdtrt_id, "data.mdtrt_id"),
        medfee_sumamt=fen_required(data.medfee_sumamt, "data.medfee_sumamt"),
        service_date=None,
        # 2304 carries no med_type (protocol.md §2.4): the admission's applies when replayed.
        med_type=text(data.med_type)
        if kind is Kind.INPATIENT
        else required(data.med_type, "data.med_type"),
        declared=declared,
        cert=certificate_if_sent(data.mdtrt_cert_type, data.mdtrt_cert_no, "data"),
    )


def cash_setlinfo(
    facts: ClaimFacts,
    *,
    claim_id: str | None,
    mdtrt_id: str | None,
    msgid: str,
    at: dt.datetime,
    balc: int,
    sign: int = 1,
    priced: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """结算信息 in which the patient pays everything in cash (negated for a withdrawal).

    `priced`: the four parts of the bill (全自费, 超限价, 先自付, 符合范围) as its lines split
    where the gateway has them (`priced_split`), when the HIS sent no split that adds up.

    `balc` is the account balance the claim leaves, which is the balance before it (the account
    is not touched): where the ledger holds the person, its balance; where the gateway cannot
    read it (the ledger away, a pre-settlement, which reads nothing), 0. Found from outside: it
    was null, which the interface marks required and numeric (a client binding it to a
    non-nullable decimal fails to parse the whole answer, at the counter, during an outage)."""
    values = dict.fromkeys(AMOUNT_FIELDS, 0)
    values["medfee_sumamt"] = facts.medfee_sumamt
    if sum(facts.declared.values()) == facts.medfee_sumamt:
        values.update(facts.declared)  # the split the HIS sent, when it adds up
    elif priced is not None and sum(priced.values()) == facts.medfee_sumamt:
        # The lines' split as the settlement would make it (found from outside: a wholly
        # self-pay line answered as within the policy range, which a HIS keeps).
        values.update(priced)
    else:
        # Not priced yet (replay prices it): the whole bill within the policy range, so that
        # medfee = fulamt + overlmt + preselfpay + inscp holds on this answer too (found from
        # outside: all four were 0.00 against the bill, which settlement-rules §6 forbids).
        values["inscp_scp_amt"] = facts.medfee_sumamt
    values["psn_part_amt"] = facts.medfee_sumamt
    values["psn_cash_pay"] = facts.medfee_sumamt
    out: dict[str, Any] = {
        "mdtrt_id": mdtrt_id,
        "setl_id": claim_id,
        "psn_no": facts.psn_no,
        "setl_time": moment(at) if claim_id else None,
        "med_type": facts.med_type,
    }
    for name in AMOUNT_FIELDS:
        if name != "balc":
            out[name] = amount(sign * values[name])
        if name == "hifp_pay":
            out["pool_prop_selfpay"] = ratio(0)
    out["balc"] = amount(balc)
    out["acct_mulaid_pay"] = amount(0)
    out["medins_setl_id"] = msgid
    out["clr_optins"] = None
    out["clr_way"] = None
    out["clr_type"] = None
    if sign < 0:
        out["pdn_cash_pay"] = out["psn_cash_pay"]
        out["setl_type"] = "2"
    return out


# The parts of a bill settlement-rules §6 sums to its total, by their setlinfo names.
SPLIT_FIELDS = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")


def priced_split(
    snapshot: Snapshot, fixmedins_code: str, lines: Sequence[FeeLine] | None
) -> dict[str, int] | None:
    """The parts of a claim's bill as its lines split under the catalog in force on each line's
    day (rules §1–2); None where the lines are not known or no longer split (a mapping changed
    since they were uploaded: replay says how)."""
    if not lines:
        return None
    try:
        return _parts([split_line(snapshot, fixmedins_code, ln) for ln in lines])
    except GatewayError:
        return None


def journaled_lines(bodies: Sequence[bytes]) -> list[fees.StoredLine]:
    """A provisional visit's lines as its waiting calls (`deferred.calls_on_visit`, in replay's
    order) will leave them once applied: each upload adds its lines, each withdrawal takes some
    away (`Transaction.journaled_lines`)."""
    lines: list[fees.StoredLine] = []
    for body in bodies:
        req = request_of(body)
        tx = _tx(req.infno)
        if tx is not None and tx.journaled_lines is not None:
            lines = tx.journaled_lines(req, lines)
    return lines


def withdrawn_lines(req: Request) -> str | None:
    """The lines a withdrawal takes away, as the claims that hold lines name them
    (`Transaction.withdraws`); None for any other call."""
    tx = _tx(req.infno)
    return None if tx is None or tx.withdraws is None else tx.withdraws(req)


def discharged(bodies: Sequence[bytes]) -> bool:
    """Whether a provisional stay's calls waiting to be applied leave it discharged (its last
    discharge not undone: `Transaction.discharges`)."""
    out = False
    for body in bodies:
        tx = _tx(request_of(body).infno)
        if tx is not None and tx.discharges is not None:
            out = tx.discharges
    return out


def refuse_other_parts(facts: ClaimFacts, priced: Mapping[str, int] | None) -> None:
    """A claim whose declared parts differ from those its lines make, where the lines make its
    bill, is refused as the settlement refuses it in real time (settlements.check_split)."""
    if priced is None or sum(priced.values()) != facts.medfee_sumamt:
        return  # the lines are not all known here: replay judges them
    settlements.check_split(facts.medfee_sumamt, facts.declared, priced)


def _parts(splits: Sequence[LineSplit]) -> dict[str, int]:
    parts = dict.fromkeys(SPLIT_FIELDS, 0)
    for split in splits:
        parts["fulamt_ownpay_amt"] += split.fulamt_ownpay_amt
        parts["overlmt_selfpay"] += split.overlmt_amt
        parts["preselfpay_amt"] += split.preselfpay_amt
        parts["inscp_scp_amt"] += split.inscp_scp_amt
    return parts


def carried_split(
    req: Request, snapshot: Snapshot
) -> tuple[dict[str, int] | None, list[Any] | None]:
    """The parts of the bill and the `detlcutinfo` rows of the lines a request carries (a
    pharmacy purchase's, `Transaction.carried_lines`), split by the catalog as its sale splits
    them; (None, None) for a request that carries none. Raises what its sale would refuse its
    lines for. Found from outside: with the ledger away a purchase's claim answered the whole
    bill within the policy range, a wholly self-pay drug included, and no `detlcutinfo`, which
    a POS reading the sale's answer into a list of lines takes as missing."""
    tx = _tx(req.infno)
    if tx is None or tx.carried_lines is None:
        return None, None
    splits = tx.carried_lines(req, snapshot)
    return _parts(splits), [line_result(s, with_lmt_flag=False) for s in splits]


def sale_split(output: Any) -> dict[str, int] | None:
    """The four parts of a built sale's answer (its `setlinfo`), in fen; None if it has none."""
    info = output.get("setlinfo") if isinstance(output, dict) else None
    if not isinstance(info, dict):
        return None
    try:
        return {name: to_fen(bytes(info[name]).decode()) for name in SPLIT_FIELDS}
    except (KeyError, TypeError, ValueError, GatewayError):
        return None


def claim_output(
    facts: ClaimFacts,
    claim_id: str,
    mdtrt_id: str,
    msgid: str,
    at: dt.datetime,
    balc: int,
    priced: Mapping[str, int] | None = None,
    lines: list[Any] | None = None,
) -> dict[str, Any]:
    """A claim's answer; `lines`, a purchase's `detlcutinfo` (its sale's answer has them)."""
    out: dict[str, Any] = {
        "setlinfo": cash_setlinfo(
            facts,
            claim_id=claim_id,
            mdtrt_id=mdtrt_id,
            msgid=msgid,
            at=at,
            balc=balc,
            priced=priced,
        ),
        "setldetail": [],
    }
    if lines is not None:
        out["detlcutinfo"] = lines
    return out


def presettle_output(
    req: Request,
    priced: Mapping[str, int] | None = None,
    lines: list[Any] | None = None,
    med_type: str = "",
) -> dict[str, Any]:
    """A pre-settlement while settlements are deferred: what the patient will pay (all of it),
    the bill's parts as its claim will answer them (`priced`, where the lines are known), a
    purchase's `detlcutinfo` (`lines`); `med_type`, the visit's, where the request names none
    (a 2303)."""
    facts = read_claim(req)  # a pre-settlement carries its settlement's nodes (same kind)
    if not facts.med_type and med_type:
        facts = dataclasses.replace(facts, med_type=med_type)
    out: dict[str, Any] = {
        "setlinfo": cash_setlinfo(
            facts,
            claim_id=None,
            # A pharmacy sale has no visit until it settles: null, as its 2101 answers outside
            # the plan (found from outside: "" under `defer`, null otherwise).
            mdtrt_id=facts.mdtrt_id or None,
            msgid=req.msgid,
            at=dt.datetime.now(),
            balc=0,
            priced=priced,
        ),
        "setldetail": [],
    }
    if lines is not None:
        out["detlcutinfo"] = lines
    return out


class _SetlInfo(msgspec.Struct):
    setl_id: Any = None


class _SettledOutput(msgspec.Struct):
    setlinfo: _SetlInfo | None = None


class _SettledAnswer(msgspec.Struct):
    output: _SettledOutput | None = None


_settled_answer = msgspec.json.Decoder(_SettledAnswer)


def answered_setl_id(answer: bytes) -> str:
    """The setl_id another system's settlement answer gives (output.setlinfo), or ""."""
    try:
        got = _settled_answer.decode(answer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    info = got.output.setlinfo if got.output is not None else None
    return text(info.setl_id) if info is not None else ""


def withdrawal_ref(req: Request) -> tuple[str, str, str]:
    """(setl_id, mdtrt_id, psn_no) of a 2208/2305/2103."""
    data = decode_input(req, In2208).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    return (
        required(data.setl_id, "data.setl_id"),
        text(data.mdtrt_id),
        required(data.psn_no, "data.psn_no"),
    )


def call_output(req: Request, provisional_id: str | None, snapshot: Snapshot) -> Any:
    """The answer to a journaled encounter call (its entry's `journal_answer`); a visit opened
    gets its provisional id, uploaded lines their splits by the catalog in memory. Raises the
    refusal of a call the ledger's path would refuse by its lines alone."""
    tx = _tx(req.infno)
    if tx is None or tx.journal_answer is None:
        return {}
    return tx.journal_answer(req, provisional_id, snapshot)


def call_person(req: Request) -> str:
    """The psn_no a kept visit call names (its first node that carries one: `data`, `mdtrtinfo`,
    `adminfo`, a fee line), for the list a clerk reads; "" when it names none. Read as the call
    was sent: the call itself is judged when it is applied."""
    return _first_named(req, "psn_no")


def call_visit(req: Request) -> str:
    """The mdtrt_id a kept visit call names (its first node that carries one), "" when none (a
    registration: its id is the provisional one it is given). Read as the call was sent: a
    settlement on a provisional id waits while a call naming that id waits to be applied."""
    return _first_named(req, "mdtrt_id")


def call_settlement(req: Request) -> str:
    """The setl_id a request names in its first node that carries one (a 5203, a 2208), ""
    when none."""
    return _first_named(req, "setl_id")


def _first_named(req: Request, key: str) -> str:
    """The text `key` holds in the first node of the call's input that carries one."""
    doc = _decimal_json.decode(req.input or b"{}")
    for node in doc.values() if isinstance(doc, dict) else ():
        row = node[0] if isinstance(node, list) and node else node
        if isinstance(row, dict) and isinstance(row.get(key), str):
            return str(row[key])
    return ""


def opened_visit_data(req: Request, provisional_id: str | None, _snapshot: Snapshot) -> Any:
    """A registration's answer: the visit in `data`, with the patient and the clinic number."""
    data = _decimal_json.decode(req.input or b"{}").get("data") or {}
    return {
        "data": {
            "mdtrt_id": provisional_id,
            "psn_no": text(data.get("psn_no")),
            "ipt_otp_no": text(data.get("ipt_otp_no")),
        }
    }


def opened_visit_result(_req: Request, provisional_id: str | None, _snapshot: Snapshot) -> Any:
    """An admission's answer: the visit in `result`."""
    return {"result": {"mdtrt_id": provisional_id}}


def service_times(req: Request) -> list[tuple[str, dt.datetime]]:
    """The service dates a deferred request carries, named for the clerk.

    A deferred request is answered before the ledger sees it, so its dates are judged when it
    is taken: a visit dated next year acknowledged now would only fail at replay, after the
    counter had sent the patient away.
    """
    doc = _decimal_json.decode(req.input or b"{}")
    if not isinstance(doc, dict):
        return []
    out: list[tuple[str, dt.datetime]] = []
    tx = _tx(req.infno)
    for node_name, many, field, name in tx.dated if tx is not None else ():
        node = doc.get(node_name)
        rows = node if many and isinstance(node, list) else [node]
        for row in rows:
            if isinstance(row, dict):
                moment = when(row.get(field), name, optional=True)
                if moment is not None:
                    out.append((name, moment))
    return out


def purchase_codes(req: Request, otherwise: dt.date) -> list[tuple[str, str, dt.date]]:
    """(item code, national code, day) of each line a pharmacy claim carries that names both
    codes; the day its fee occurred, or the sale's, or `otherwise`."""
    node = _decimal_json.decode(req.input or b"{}")
    if not isinstance(node, dict):
        return []
    info, rows = node.get("druginfo"), node.get("drugdetail")
    sale = _day(info.get("begntime") if isinstance(info, dict) else None) or otherwise
    out: list[tuple[str, str, dt.date]] = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            item, code = text(row.get("medins_list_codg")), text(row.get("med_list_codg"))
            if item and code:
                out.append((item, code, _day(row.get("fee_ocur_time")) or sale))
    return out


def _day(value: Any) -> dt.date | None:
    try:
        moment = when(value, "", optional=True)
    except BadRequest:
        return None  # the sale's own handler says what is wrong with it
    return None if moment is None else moment.date()


def with_purchase_codes(req: Request, corrected: dict[tuple[str, str], str]) -> Request:
    """The pharmacy claim with each line's national code replaced where `corrected` names its
    (item code, national code): what a catalog correction since the sale made of it."""
    if not corrected:
        return req
    node = _decimal_json.decode(req.input or b"{}")  # amounts stay exact
    for row in node.get("drugdetail") or []:
        if isinstance(row, dict):
            key = (text(row.get("medins_list_codg")), text(row.get("med_list_codg")))
            if key in corrected:
                row["med_list_codg"] = corrected[key]
    return msgspec.structs.replace(req, input=msgspec.json.encode(node))


def stored_request(req: Request) -> bytes:
    """What is kept of a deferred request: every envelope field the gateway reads, and the
    input node exactly as sent. Replay decodes it with `request_of`."""
    return msgspec.json.encode(req)


def request_of(stored: bytes) -> Request:
    return msgspec.json.decode(stored, type=Request)


def closes_stay(claim: deferred.PendingClaim) -> bool:
    """Whether a claim is a stay's closing settlement deferred (a 2304 not sent as mid-way, as
    2304 reads mid_setl_flag: absent is closing)."""
    if kind_of(claim.infno) is not Kind.INPATIENT or not claim.body:
        return False
    try:
        return closes(request_of(claim.body))
    except msgspec.DecodeError:
        return False


def closes(req: Request) -> bool:
    """Whether a stay's settlement request is its closing one (mid_setl_flag not 1)."""
    try:
        data = decode_input(req, In2206).data
    except GatewayError:
        return False
    return data is not None and text(data.mid_setl_flag) != "1"


def for_replay(req: Request, ids: dict[str, str]) -> Request:
    """The request as replay runs it: provisional visit ids replaced by the real ones, and for a
    claim the personal account not used, since the patient paid in cash (settlement-rules §7)."""
    raw = req.input
    for provisional, real in ids.items():
        raw = raw.replace(provisional.encode(), real.encode())
    if role(req.infno) is Deferral.CLAIM:
        node = _decimal_json.decode(raw or b"{}")  # amounts stay exact
        part = node.get("druginfo" if kind_of(req.infno) is Kind.PHARMACY else "data")
        if isinstance(part, dict):
            part["acct_used_flag"] = "0"
        raw = msgspec.json.encode(node)
    return msgspec.structs.replace(req, input=raw)


async def withdraw_claim(call: Call) -> Answer:
    """2208/2305/2103 of a claim number: a pending claim is withdrawn (the patient's cash is
    refunded at the counter); a claim already replayed must be cancelled as its settlement."""
    setl_id, mdtrt_id, psn_no = withdrawal_ref(call.req)
    code = call.req.fixmedins_code
    row = await deferred.withdraw(call.conn, setl_id, code, psn_no, call.req.msgid, mdtrt_id)
    if row is None:
        existing = await deferred.claim_row(call.conn, setl_id, code)
        if existing is None:
            raise NotFound(f"结算单号{setl_id}不存在或不属于本机构")
        if existing["psn_no"] != psn_no:
            raise Conflict(f"人员编号{psn_no}与暂存结算{setl_id}不一致")
        if mdtrt_id and mdtrt_id != deferred.visit_of_claim(
            existing["mdtrt_id"], existing["claim_id"]
        ):
            # Found from outside: withdrawn whatever visit was named, where a settlement's
            # cancellation is refused for a visit it is not of.
            raise Conflict(f"结算ID{setl_id}与就诊ID、人员编号不对应")
        if existing["status"] == "withdrawn":
            raise Conflict(f"暂存结算{setl_id}已撤销，不能重复撤销")
        if existing["status"] == "settled" and existing["setl_id"]:
            replayed = existing["setl_id"]
            if await settlements.status_of(call.conn, replayed) == "cancelled":
                # Found from outside: pointed to a settlement already cancelled.
                raise Conflict(
                    f"暂存结算{setl_id}已补结算为{replayed}，该结算已撤销（现金已全额退还），"
                    "无需再撤销"
                )
            raise Conflict(f"暂存结算{setl_id}已补结算为{replayed}，请按该结算单号撤销")
        # Found from outside: a claim replay could not settle was "已补结算为-".
        raise Conflict(
            deferred.unsettled_words(existing["status"], setl_id, existing["fail_reason"])
        )
    # Under the person's lock, which the agency's 结算 of a manual claim takes too, taken after
    # the claim's row as replay takes them: either the manual claim settled first and this is
    # refused (rolled back), or this commits first and 结算 sees the claim withdrawn. Found from
    # outside: looked at before any lock, both went through.
    await persons.lock_many(call.conn, [psn_no])
    await _not_reimbursed_by_hand(call.conn, row)
    claimed = await idempotency.lookup(call.conn, code, row["msgid"])
    return Answer(
        withdrawal_output(
            request_of(bytes(row["body"])),
            row,
            call.now,
            await persons.balance(call.conn, psn_no),
            call.req.msgid,
            claimed.answer if claimed is not None else None,
        ),
        warn_msg=f"暂存结算{setl_id}已撤销",
    )


async def _not_reimbursed_by_hand(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """A claim replay could not settle may be settled by the agency as a manual claim (零星报销)
    instead of withdrawn: once it is, the counter's withdrawal, which refunds the patient's cash,
    is refused (found from outside: withdrawn after the agency had reimbursed the bill, the
    patient got the cash back and the reimbursement too). The manual claim is matched as the
    agency's duplicate check matches bills: the person, the institution, the day and the total;
    the day is the claim's, its visit's, or the day its registration named where that failed.
    `row`: the claim as withdrawn, in the caller's transaction (a refusal rolls it back)."""
    setl_id, fixmedins_code, psn_no = row["claim_id"], row["fixmedins_code"], row["psn_no"]
    days = {row["service_date"], row["received_at"].date()}
    visit = str(row["mdtrt_id"] or "")
    if visit.startswith(PROVISIONAL_PREFIX):
        opened = await deferred.registration_of(conn, visit)
        if opened is not None:
            days.update(moment.date() for _, moment in service_times(request_of(opened)))
    found = await manual_claims.reimbursed_on(
        conn, [(psn_no, fixmedins_code, day) for day in sorted(days)]
    )
    total = int(row["medfee_sumamt"])
    for claim_no, medfee in (paid for bills in found.values() for paid in bills):
        if medfee == total:
            raise Conflict(
                f"暂存结算{setl_id}的费用（{fen_text(total)}元）已由经办机构零星报销"
                f"（受理号{claim_no}），不能再撤销退还现金；如有疑问请联系经办机构"
            )


class _AnsweredParts(msgspec.Struct):
    fulamt_ownpay_amt: Decimal | None = None
    overlmt_selfpay: Decimal | None = None
    preselfpay_amt: Decimal | None = None
    inscp_scp_amt: Decimal | None = None


class _PartsOutput(msgspec.Struct):
    setlinfo: _AnsweredParts | None = None


class _PartsAnswer(msgspec.Struct):
    output: _PartsOutput | None = None


_parts_answer = msgspec.json.Decoder(_PartsAnswer)


def answered_parts(answer: bytes | None) -> dict[str, int] | None:
    """The four parts of the bill a claim's answer gave (its setlinfo), in fen; None where the
    answer is not at hand or does not say them."""
    if not answer:
        return None
    try:
        got = _parts_answer.decode(answer)
        info = got.output.setlinfo if got.output is not None else None
        if info is None:
            return None
        parts = {name: getattr(info, name) for name in SPLIT_FIELDS}
        return {name: to_fen(value) for name, value in parts.items() if value is not None}
    except (msgspec.DecodeError, msgspec.ValidationError, GatewayError):
        return None


def withdrawal_output(
    claim: Request,
    row: Any,
    at: dt.datetime,
    balc: int,
    msgid: str,
    claim_answer: bytes | None = None,
) -> dict[str, Any]:
    """The claim's all-cash answer negated: the counter refunds the patient's cash (the account
    was not touched: `balc` is its balance, 0 where the ledger cannot be read). `msgid`: the
    withdrawal's own, its `medins_setl_id` as a 2103/2208 of a settlement answers it (protocol
    §3.1; found from outside: the claim's 2102 msgid was answered instead). `claim_answer`: the
    claim's own answer, whose parts of the bill are negated (found from outside: a claim answered
    先行自付 28.00 and 符合范围 252.00 was withdrawn as 0.00 and −280.00)."""
    facts = read_claim(claim)
    info = cash_setlinfo(
        facts,
        claim_id=row["claim_id"],
        mdtrt_id=deferred.visit_of_claim(row["mdtrt_id"], row["claim_id"]),
        msgid=msgid,
        at=at,
        balc=balc,
        sign=-1,
        priced=answered_parts(claim_answer),
    )
    info["setl_time"] = moment(at)
    if kind_of(claim.infno) is Kind.PHARMACY:
        # A POS reads the refund from psn_pay and cash_payamt, as in the 2103 of a sale; in
        # this one answer whichever path withdrew it (found from outside: the withdrawal with
        # the ledger away, from the local journal, answered neither).
        info["psn_pay"] = info["psn_part_amt"]
        info["cash_payamt"] = info["psn_cash_pay"]
    return {"setlinfo": info, "setldetail": []}


# ------------------------------------------------------------------ lines under a pending claim


def claim_scope(req: Request, *, priced: bool = False) -> tuple[str, str] | None:
    """(mdtrt_id, lines) a 2207/2304 settles or claims: its charge batch, or every unsettled
    line of the visit (a 2304, or chrg_bchno 0000). None for a pharmacy purchase, which has no
    batch (another msgid is another purchase), and for a request too incomplete to settle, which
    its handler refuses. `priced`: a 2206/2303's too, the lines it prices."""
    kind = kind_of(req.infno)
    roles = (Deferral.CLAIM, Deferral.PRESETTLEMENT) if priced else (Deferral.CLAIM,)
    if role(req.infno) not in roles or kind is Kind.PHARMACY:
        return None
    data = decode_input(req, In2206).data
    if data is None:
        return None
    mdtrt_id = text(data.mdtrt_id)
    lines = fees.ALL if kind is Kind.INPATIENT else text(data.chrg_bchno)
    if not mdtrt_id or not lines:
        return None
    return mdtrt_id, lines


def held_lines(claims: list[deferred.PendingClaim], fixmedins_code: str) -> list[deferred.Held]:
    """What the institution's own pending claims cover (another institution's claim naming this
    visit is refused at replay and must not block the visit's owner)."""
    out: list[deferred.Held] = []
    for c in claims:
        if c.fixmedins_code != fixmedins_code:
            continue
        if c.elsewhere_lines is not None:
            out.append(deferred.Held(c.claim_id, c.infno, c.elsewhere_lines, elsewhere=True))
            continue
        scope = claim_scope(request_of(c.body))
        lines = scope[1] if scope else fees.ALL
        out.append(
            deferred.Held(c.claim_id, c.infno, lines, failed=c.failed, received_at=c.received_at)
        )
    return out


def settled_already(batch: str) -> BatchSettled:
    """A charge batch settled before, by the counter or by a claim's replay."""
    return BatchSettled(SETTLED_MSG.format(batch=batch), batch)


def refuse_if_held(held: list[deferred.Held], lines: str) -> None:
    """A second claim or a real-time settlement of lines a claim covers is refused: the patient
    has paid them in full in cash under the claim, and replay settles them; a claim replay could
    not settle holds them until it is withdrawn (its cash refunded) or the agency settles it."""
    for h in held:
        if h.lines == lines or fees.ALL in (h.lines, lines):
            if h.lines != fees.ALL:
                what = f"收费批次{h.lines}"
            else:
                what = (
                    "本次住院费用" if kind_of(h.infno) is Kind.INPATIENT else "本次就诊的待结算费用"
                )
            if h.elsewhere:
                raise Conflict(ELSEWHERE_MSG.format(what=what, setl_id=h.claim_id))
            words = FAILED_HELD_MSG if h.failed else PENDING_MSG
            raise Conflict(words.format(what=what, claim_id=h.claim_id))
