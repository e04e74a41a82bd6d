"""Payouts to patients' bank accounts: what is owed, batches, four approvals, the bank's files.

The Guizhou guide's 拨付: 银行报盘 (a batch of what is owed, exported as the bank's payment
file) → 初审 → 一级复核 → 二级复核 → 三级复核 → 银行回盘处理 (the bank's return file: each
line paid or failed). Here:

- what is owed comes from manual claims after their 结算审核 and from replayed deferred claims
  (主动报) whose reimbursement replay recorded (`gather`); once per source;
- a batch takes owed lines whose person has a payout account (FOR UPDATE SKIP LOCKED; the unique
  index payout_items_once refuses a line in two open batches whatever runs);
- four approvals in order, by four operators, none of them the batch's maker, nobody at two
  levels; a rejection at any level releases the lines (owed again);
- an approved batch exports its payment file once (then locked: exporting again gives the same
  bytes);
- the return file is checked whole against the batch (number, count, total, every line, the
  checksum) or refused whole; paid lines are paid, failed ones owed again with the bank's
  reason, ready for a later batch; the same file imported again changes nothing.

The file formats are in docs/agency.md. Account numbers are masked in everything shown; only
the bank's own files carry them whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
import msgspec

from gateway.core.model import same_operator
from gateway.core.money import fen_text
from gateway.jobs import clearing
from gateway.ledger import payouts as store
from gateway.ledger.payouts import Account, Batch
from gateway.ops import audit, metrics
from gateway.protocol.errors import BadRequest, Conflict, NotFound

LEVELS = {1: "初审", 2: "一级复核", 3: "二级复核", 4: "三级复核"}
STATUS_NAMES = {
    "pending": "待审批",
    "approved": "审批完成",
    "exported": "已报盘",
    "returned": "已回盘",
    "rejected": "已退回",
}
SEP = "|"
MAX_BATCH_LINES = 1_000_000
# What is owed comes from: manual claims and replayed deferred claims (to patients), and the
# institutions' monthly clearing amounts (to institutions, in batches of their own).
SOURCES = {"manual": "零星报销", "deferred": "主动报", "clearing": "定点机构月结算"}
PAYMENT_MARK = "PAY"
RETURN_MARK = "RET"
PAID, FAILED = "S", "F"
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,15})\.[0-9]{2}$")
_ACCOUNT = re.compile(r"^[0-9]{8,32}$")
_BANK_CODE = re.compile(r"[0-9]{3,12}")


def mask(account_no: str) -> str:
    """An account number as shown anywhere but the bank's files: first 4 and last 4 digits."""
    if len(account_no) <= 8:
        return account_no[:2] + "*" * max(0, len(account_no) - 2)
    return f"{account_no[:4]}{'*' * (len(account_no) - 8)}{account_no[-4:]}"


def _masked(a: Account | None) -> dict[str, str] | None:
    if a is None:
        return None
    out: dict[str, str] = msgspec.to_builtins(a)
    out["account_no"] = mask(a.account_no)
    return out


# ------------------------------------------------------------------------------------ accounts


# A field of a payment line: the longest name of a bank branch or an account holder (a company's
# full name) is well under this; a 5,000-character holder was taken (found from outside) and
# would have gone whole into the bank's file.
FIELD_MAX = 100


def _plain(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise BadRequest(f"{what}不能为空")
    if len(value) > FIELD_MAX:
        raise BadRequest(f"{what}不能超过{FIELD_MAX}个字符")
    # Any character a reader may take for the end of a line (\v, \f, \x1c-\x1e, U+2028,
    # U+2029, NEL: str.splitlines() splits on all of them) or any other control character
    # would cut a payment line in the bank's file in two; a lone surrogate is a byte the
    # clerk's terminal could not encode (found from outside).
    if SEP in value or any(_unprintable(c) for c in value):
        raise BadRequest(f"{what}不能包含“{SEP}”、换行或控制字符")
    return value


def _unprintable(c: str) -> bool:
    # Cf: invisible format characters (found from outside: a holder "\u202e丁", a
    # right-to-left override, was taken for the bank file).
    return unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _account(payee: str, bank_code: str, bank_name: str, account_no: str, holder: str) -> Account:
    account_no = account_no.replace(" ", "")
    if not _ACCOUNT.match(account_no):
        raise BadRequest("银行账号须为8至32位数字")
    bank_code = _plain(bank_code, "开户行行号")
    # Digits only (found from outside: "=1+1" was taken into the bank's file as a bank code).
    if not _BANK_CODE.fullmatch(bank_code):
        raise BadRequest("开户行行号须为3至12位数字（如12位联行号）")
    return Account(
        psn_no=payee,
        bank_code=bank_code,
        bank_name=_plain(bank_name, "开户行名称"),
        account_no=account_no,
        holder=_plain(holder, "户名"),
    )


async def set_account(
    conn: asyncpg.Connection,
    psn_no: str,
    *,
    bank_code: str,
    bank_name: str,
    account_no: str,
    holder: str,
    operator: str,
    reason: str,
) -> dict[str, str] | None:
    """The person's payout account, new or changed, with an audit row (numbers masked);
    the same account again changes nothing. Returns it masked."""
    return await _change_account(
        conn,
        _account(psn_no, bank_code, bank_name, account_no, holder),
        reason,
        operator,
        _PERSON_ACCOUNTS,
    )


async def set_institution_account(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    *,
    bank_code: str,
    bank_name: str,
    account_no: str,
    holder: str,
    operator: str,
    reason: str,
) -> dict[str, str] | None:
    """The institution's account for its monthly clearing amounts, as `set_account` (the
    masked answer's psn_no is the institution's code)."""
    return await _change_account(
        conn,
        _account(fixmedins_code, bank_code, bank_name, account_no, holder),
        reason,
        operator,
        _INSTITUTION_ACCOUNTS,
    )


@dataclass(frozen=True, slots=True)
class _Payees:
    """Whose accounts these are: how the payee is known, its account read and written, and
    what the audit row and a refusal call it."""

    known: Callable[[asyncpg.Connection, str], Awaitable[bool]]
    read: Callable[..., Awaitable[Account | None]]
    put: Callable[[asyncpg.Connection, Account, str], Awaitable[None]]
    action: str
    scope: str
    missing: str


_PERSON_ACCOUNTS = _Payees(
    store.person_known,
    store.account,
    store.put_account,
    "payout.account",
    "person",
    "人员编号{payee}不存在",
)
_INSTITUTION_ACCOUNTS = _Payees(
    store.institution_known,
    store.institution_account,
    store.put_institution_account,
    "payout.institution_account",
    "institution",
    "定点医药机构编号{payee}未登记",
)


async def _change_account(
    conn: asyncpg.Connection, new: Account, reason: str, operator: str, payees: _Payees
) -> dict[str, str] | None:
    """One payee's account set, with an audit row (numbers masked); the same again changes
    nothing."""
    reason = audit.reason_given(reason, "变更收款账户须填写原因")
    payee = new.psn_no
    async with conn.transaction():
        if not await payees.known(conn, payee):
            raise NotFound(payees.missing.format(payee=payee))
        old = await payees.read(conn, payee, lock=True)
        refused = await store.refused_by_bank(conn, payee, new.bank_code, new.account_no)
        if refused is not None:
            # Never paid again (found from outside: entered again, it was answered as taken,
            # and only the next batch said the payee still needed an account).
            raise Conflict(
                f"账户{mask(new.account_no)}曾被银行退回（{refused or '未注明原因'}），不能再作为"
                "收款账户；请登记收款人的其他银行账户"
            )
        if old == new:
            return _masked(new)
        await payees.put(conn, new, operator)
        await audit.append(
            conn,
            operator=operator,
            action=payees.action,
            target=f"{payees.scope}:{payee}",
            reason=reason,
            before=_masked(old),
            after=_masked(new),
        )
    return _masked(new)


async def institution_account_of(
    conn: asyncpg.Connection, fixmedins_code: str
) -> dict[str, str] | None:
    """The institution's clearing account, masked."""
    return _masked(await store.institution_account(conn, fixmedins_code))


async def account_of(conn: asyncpg.Connection, psn_no: str) -> dict[str, str] | None:
    """The person's payout account, masked."""
    return _masked(await store.account(conn, psn_no))


# ------------------------------------------------------------------------------------- batches


def check_month(month: str) -> None:
    """A 费款所属期 as yyyy-MM, or a refusal (the grammar: gateway.jobs.clearing)."""
    try:
        clearing.check_month(month)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def check_month_closed(month: str, today: dt.date | None = None) -> None:
    """A 费款所属期 whose last day has passed, or a refusal: its clearing amounts are recorded
    once, so recorded while the month runs they would leave the rest of it unpaid for good
    (found from outside)."""
    check_month(month)
    if not clearing.month_ended(month, today):
        raise Conflict(f"费款所属期{month}尚未结束，月结算拨付须在月末之后登记")


async def gather_clearing(
    conn: asyncpg.Connection, month: str, amounts: Sequence[tuple[str, int]], operator: str
) -> store.Gathered:
    """Record each institution's clearing amount of the month (its declared total from the
    monthly clearing report: what the funds and accounts pay it), once per institution and
    month: the report run again later does not change what was recorded. A negative total is
    recorded as owed back, and kept back from the institution's next positive months."""
    check_month_closed(month)
    async with conn.transaction():
        before = await store.recoveries_left(conn)
        done = await store.gather_clearing(conn, month, amounts)
        if done.recorded or done.netted or done.owed_back != before:
            await audit.append(
                conn,
                operator=operator,
                action="payout.gather_clearing",
                target=f"clearing:{month}",
                reason=f"定点机构月结算拨付登记{done.recorded}家",
                before={"owed_back": {c: fen_text(f) for c, f in before.items()}},
                after={
                    "amounts": {code: fen_text(fen) for code, fen in amounts if fen > 0},
                    "netted": {c: fen_text(f) for c, f in done.netted.items()},
                    "owed_back": {c: fen_text(f) for c, f in done.owed_back.items()},
                },
            )
        return done


async def gather(conn: asyncpg.Connection) -> int:
    """Record as owed every replayed deferred claim's reimbursement not recorded yet."""
    async with conn.transaction():
        return await store.gather_deferred(conn)


class NothingToPay(Conflict):
    """No line payable: the refusal names how many payees wait for an account (`missing`). A
    state that forbids a batch now (409), not an unknown thing (404): found from outside, a
    clerk batching at the same moment as another was told 404."""

    def __init__(self, source: str | None, missing: Sequence[str]) -> None:
        self.source, self.missing = source, list(missing)
        if source == "clearing":
            extra = f"（{len(missing)}家机构待拨付但未登记或需更正收款账户）" if missing else ""
            super().__init__(f"没有可拨付的定点机构月结算款项{extra}")
        else:
            extra = f"（{len(missing)}人待付款但未登记收款账户或需更正收款账户）" if missing else ""
            super().__init__(f"没有可支付的待付款项{extra}")


async def create_batch(
    conn: asyncpg.Connection,
    operator: str,
    now: dt.datetime,
    *,
    limit: int | None = None,
    source: str | None = None,
) -> Batch:
    """银行报盘 (制单): a batch of what is owed to persons with a payout account, oldest first.
    Lines another batch being made holds are skipped, never shared."""
    if limit is not None and not 0 < limit <= MAX_BATCH_LINES:
        raise BadRequest(f"每批笔数须大于0且不超过{MAX_BATCH_LINES}")
    if source not in (None, *SOURCES):
        raise BadRequest(
            "来源只能为manual（零星报销）、deferred（主动报）或clearing（定点机构月结算，单独制单）"
        )
    async with conn.transaction():
        batch_no = await store.new_batch_no(conn, now)
        count, _ = await store.make_batch(conn, batch_no, limit, source, operator)
        if not count:
            raise NothingToPay(source, await store.owed_without_account(conn, source))
        made = await store.batch(conn, batch_no)
        await _audit(conn, operator, "payout.batch", made, "银行报盘制单")
        return made


async def _approval_state(
    conn: asyncpg.Connection, batch_no: str, level: int
) -> tuple[Batch, list[store.Approval]]:
    """The batch locked, with the steps done so far."""
    if level not in LEVELS:
        raise BadRequest("审批级别只能为1（初审）、2（一级复核）、3（二级复核）、4（三级复核）")
    b = await store.batch(conn, batch_no, lock=True)
    done = await store.approvals(conn, batch_no)
    return b, done


def _check_approver(b: Batch, done: list[store.Approval], level: int, operator: str) -> None:
    """The checks every approval step makes, in the order a clerk reads them."""
    if b.status != "pending":
        raise Conflict(f"支付批次{b.batch_no}{STATUS_NAMES[b.status]}，不能再审批")
    if level != len(done) + 1:
        if level <= len(done):
            raise Conflict(f"支付批次{b.batch_no}的{LEVELS[level]}已完成")
        raise Conflict(
            f"支付批次{b.batch_no}须先完成{LEVELS[len(done) + 1]}，才能进行{LEVELS[level]}"
        )
    if same_operator(operator, b.created_by):
        raise Conflict(f"制单人{operator}不能审批本人制作的支付批次")
    for a in done:
        if same_operator(a.operator, operator):
            raise Conflict(f"{operator}已办理本批次的{LEVELS[a.level]}，同一人不能再审批其他级别")


async def approve(conn: asyncpg.Connection, batch_no: str, level: int, operator: str) -> Batch:
    """One approval step; the fourth makes the batch approved. The same step by the same
    operator again changes nothing."""
    async with conn.transaction():
        b, done = await _approval_state(conn, batch_no, level)
        step = done[level - 1] if level <= len(done) else None
        if step is not None and step.operator == operator and step.decision == "approved":
            return b  # this step, by this operator, is done
        _check_approver(b, done, level, operator)
        await store.add_approval(conn, batch_no, level, operator, "approved", "")
        if level == max(LEVELS):
            await store.set_batch_status(conn, batch_no, "approved")
        await _audit(conn, operator, f"payout.approve.{level}", b, f"{LEVELS[level]}通过")
        return await store.batch(conn, batch_no)


async def reject(
    conn: asyncpg.Connection, batch_no: str, level: int, operator: str, reason: str
) -> Batch:
    """A rejection at its level: the batch is closed and its lines are owed again.

    A batch approved at every level and not yet sent to the bank is returned by the approver
    of one of its levels, who withdraws that approval: the counter is told to have an approver
    return a batch before it cancels a settlement whose reimbursement is in it, and found from
    outside, once all four had approved nobody could (the only way on was the bank)."""
    reason = audit.reason_given(reason, "退回须填写原因")
    async with conn.transaction():
        b, done = await _approval_state(conn, batch_no, level)
        if b.status == "rejected":
            return b
        if b.status == "approved":
            step = done[level - 1]
            if not same_operator(step.operator, operator):
                raise Conflict(
                    f"支付批次{b.batch_no}已审批完成，尚未报盘：只能由{LEVELS[level]}"
                    f"审批人{step.operator}退回"
                )
            await store.set_approval_decision(conn, batch_no, level, "rejected", reason)
            note = f"{LEVELS[level]}撤回审批并退回：{reason}"
        else:
            _check_approver(b, done, level, operator)
            await store.add_approval(conn, batch_no, level, operator, "rejected", reason)
            note = f"{LEVELS[level]}退回：{reason}"
        await store.release(conn, batch_no)
        await store.set_batch_status(conn, batch_no, "rejected")
        await _audit(conn, operator, f"payout.reject.{level}", b, note)
        return await store.batch(conn, batch_no)


# ------------------------------------------------------------------------------- 报盘 (export)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


FILE_CHUNK = 2000  # lines joined and encoded at a time (a thread holds the GIL per call)


def payment_file(b: Batch, items: Sequence[store.Item]) -> bytes:
    """The bank payment file (docs/agency.md): header, one line per payment, trailer with the
    count, the total and the SHA-256 of everything before it. Built in pieces: one join of
    100,000 lines would hold the interpreter (and the event loop) for ~10 ms."""
    head = SEP.join(
        (
            "H",
            PAYMENT_MARK,
            b.batch_no,
            # The batch's day as its number says it (Beijing time, when it was made): found
            # from outside, the header took created_at's UTC date, a day before the number's
            # for a batch made between 00:00 and 08:00.
            b.batch_no[2:10],
            str(b.line_count),
            fen_text(b.total_fen),
        )
    )
    pieces = [(head + "\n").encode()]
    for start in range(0, len(items), FILE_CHUNK):
        rows = [
            SEP.join(
                (
                    "D",
                    str(i.seq),
                    i.psn_no,
                    i.holder,
                    i.bank_code,
                    i.account_no,
                    fen_text(i.amount_fen),
                )
            )
            for i in items[start : start + FILE_CHUNK]
        ]
        pieces.append(("\n".join(rows) + "\n").encode())
    body = b"".join(pieces)
    total = sum(i.amount_fen for i in items)
    trailer = SEP.join(("T", str(len(items)), fen_text(total), _digest(body)))
    return body + (trailer + "\n").encode()


def _payment_file_of(b: Batch, items: list[store.Item]) -> tuple[bytes, str]:
    body = payment_file(b, items)
    items.clear()  # freed here, in the thread (see _let_go)
    return body, _digest(body)


async def _let_go(*big: list[Any]) -> None:
    """Large lists emptied in a thread: 100,000 objects freed on the event loop (where the
    last reference to them goes) would hold it ~5 ms."""
    if any(len(b) > FILE_CHUNK for b in big):
        await asyncio.to_thread(_empty, big)


def _empty(big: tuple[list[Any], ...]) -> None:
    for b in big:
        b.clear()


async def export(conn: asyncpg.Connection, batch_no: str, operator: str) -> tuple[str, bytes]:
    """The approved batch's payment file: (file name, bytes). Made once; the batch is then
    locked, and exporting it again gives the same bytes."""
    async with conn.transaction():
        b = await store.batch(conn, batch_no, lock=True)
        if b.status in ("exported", "returned"):
            stored = await store.file_of(conn, batch_no)
            assert stored is not None  # exported: its file was stored with the status
            return stored
        if b.status == "rejected":
            # Found from outside: a returned batch was told to finish its approvals, which it
            # can no longer take; its lines are owed again and go out in a new batch.
            raise Conflict(
                f"支付批次{batch_no}已被审批人退回，不能报盘：其明细已退回待支付，"
                "请更正后重新制作支付批次"
            )
        if b.status != "approved":
            raise Conflict(
                f"支付批次{batch_no}{STATUS_NAMES[b.status]}，须完成初审和三级复核后才能报盘"
            )
        refused = await store.refused_since(conn, batch_no)
        if refused:
            # Found from outside: a batch made while another was at the bank went out to an
            # account that other batch's return file had just refused.
            named = "、".join(refused[:5]) + ("等" if len(refused) > 5 else "")
            raise Conflict(
                f"支付批次{batch_no}中{len(refused)}个收款人（{named}）的收款账户已被银行退回"
                "（另一批次回盘失败），不能报盘：请由审批人退回该支付批次，更正收款账户后重新制单"
            )
        items = await store.items_chunked(conn, batch_no)
        # A batch may hold 100,000 lines: the file is built and hashed off the event loop.
        body, digest = await asyncio.to_thread(_payment_file_of, b, items)
        name = f"{batch_no}.txt"
        await store.save_file(conn, batch_no, name, body, digest, operator)
        await store.set_batch_status(conn, batch_no, "exported")
        await _audit(conn, operator, "payout.export", b, f"银行报盘文件{name}")
        return name, body


# ------------------------------------------------------------------------------- 回盘 (import)


class ReturnSummary(msgspec.Struct, frozen=True, kw_only=True):
    batch_no: str
    paid_count: int
    paid_fen: int
    failed_count: int
    failed_fen: int
    again: bool  # the same file was imported before: nothing changed


class _ReturnLine(msgspec.Struct, frozen=True, gc=False):
    seq: int
    account_no: str
    amount_fen: int
    result: str
    reason: str


_SEQ = re.compile(r"[1-9][0-9]{0,8}")


def _amount(text: str, where: str) -> int:
    if not _AMOUNT.match(text):
        raise BadRequest(f"回盘文件{where}金额“{text}”格式不正确（须为两位小数的元）")
    yuan, fen = text.split(".")
    return int(yuan) * 100 + int(fen)


def _refused(why: str) -> BadRequest:
    return BadRequest(f"回盘文件不符，整批拒绝导入：{why}")


def _is_day(text: str) -> bool:
    """Whether the text is a date written yyyyMMdd."""
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return False
    try:
        dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def parse_return(body: bytes) -> tuple[str, int, int, list[_ReturnLine]]:
    """A return file's batch number, count, total and lines, every check of the file itself
    made (shape, trailer, checksum); refused whole otherwise."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise _refused("文件不是UTF-8编码") from exc
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    if len(rows) < 3:
        raise _refused("缺少表头、明细或表尾")
    head, trailer = rows[0].split(SEP), rows[-1].split(SEP)
    if len(head) != 6 or head[0] != "H" or head[1] != RETURN_MARK:
        raise _refused("表头格式不正确")
    if not _is_day(head[3]):
        # Found from outside: "2026-12-05" was taken where the format says yyyyMMdd.
        raise _refused(f"表头日期“{head[3][:20]}”应为yyyyMMdd，如20261205")
    if len(trailer) != 4 or trailer[0] != "T":
        raise _refused("表尾格式不正确")
    if "\r" in text:
        # Found from outside: a file saved with Windows line endings was told its checksum did
        # not match, "perhaps modified", where only its line endings were not the format's.
        raise _refused(
            "文件行尾为回车换行（CRLF，Windows格式），应为换行（LF）：请导入银行原样发回的文件"
        )
    covered = body[: len(body) - len((rows[-1] + "\n").encode())]
    if not body.endswith(b"\n") or _digest(covered) != trailer[3]:
        raise _refused("校验码（SHA-256）不一致，文件可能被修改")
    lines: list[_ReturnLine] = []
    for n, row in enumerate(rows[1:-1], 2):
        f = row.split(SEP)
        # The seq as it was sent: ASCII digits without leading zeros (found from outside: "01"
        # was read as 1, where an amount "0130.00" is refused as malformed; isdigit() also
        # takes "١" and "²").
        if len(f) != 6 or f[0] != "D" or not _SEQ.fullmatch(f[1]):
            raise _refused(f"第{n}行明细格式不正确")
        if f[4] not in (PAID, FAILED):
            raise _refused(f"第{n}行处理结果只能为{PAID}（成功）或{FAILED}（失败）")
        if f[4] == FAILED and not f[5].strip():
            raise _refused(f"第{n}行失败明细缺少失败原因")
        lines.append(_ReturnLine(int(f[1]), f[2], _amount(f[3], f"第{n}行"), f[4], f[5]))
    if not head[4].isdigit():
        raise _refused("表头笔数格式不正确")
    count, total = int(head[4]), _amount(head[5], "表头")
    if not trailer[1].isdigit() or int(trailer[1]) != len(lines):
        raise _refused(f"表尾笔数{trailer[1]}与明细{len(lines)}笔不一致")
    if _amount(trailer[2], "表尾") != sum(ln.amount_fen for ln in lines):
        raise _refused("表尾金额与明细合计不一致")
    return head[2], count, total, lines


def _parsed(body: bytes) -> tuple[str, int, int, list[_ReturnLine], str]:
    return (*parse_return(body), _digest(body))


def _outcome(sent: Sequence[store.Item], lines: Sequence[_ReturnLine]) -> dict[int, str]:
    """Every line of the return file against what was sent (pure: runs in a thread): the
    failed seqs with the bank's reason (every other one is paid); refused whole on any
    difference."""
    items = {i.seq: i for i in sent}
    seen: set[int] = set()
    for ln in lines:
        item = items.get(ln.seq)
        if item is None or ln.seq in seen:
            raise _refused(f"明细序号{ln.seq}不属于本批次或重复")
        seen.add(ln.seq)
        if ln.account_no != item.account_no or ln.amount_fen != item.amount_fen:
            raise _refused(f"明细序号{ln.seq}的账号或金额与报盘不一致")
    if seen != set(items):
        raise _refused(f"回盘缺少明细序号{min(set(items) - seen)}")
    return {ln.seq: ln.reason.strip() for ln in lines if ln.result == FAILED}


class ReturnFile(NamedTuple):
    """A bank return file read and checked on its own: the batch it answers, its totals, lines
    and digest."""

    batch_no: str
    line_count: int
    total_fen: int
    lines: list[_ReturnLine]
    digest: str


async def read_return(body: bytes) -> ReturnFile:
    """The return file parsed and hashed off the event loop (a file of 100,000 lines)."""
    return ReturnFile(*await asyncio.to_thread(_parsed, body))


async def import_return(conn: asyncpg.Connection, body: bytes, operator: str) -> ReturnSummary:
    """银行回盘处理: the bank's return file applied to its batch, whole or not at all."""
    return await apply_return(conn, await read_return(body), operator)


async def apply_return(
    conn: asyncpg.Connection, returned: ReturnFile, operator: str
) -> ReturnSummary:
    """A read return file applied to its batch (in this database), whole or not at all."""
    try:
        return await _import(conn, *returned, operator)
    finally:
        await _let_go(returned.lines)


async def _import(
    conn: asyncpg.Connection,
    batch_no: str,
    count: int,
    total: int,
    lines: list[_ReturnLine],
    digest: str,
    operator: str,
) -> ReturnSummary:
    async with conn.transaction():
        try:
            b = await store.batch(conn, batch_no, lock=True)
        except NotFound as exc:
            # Unknown, as the API says of a batch it cannot find (404), in the return's words.
            raise NotFound(f"回盘文件不符，整批拒绝导入：支付批次号{batch_no}不存在") from exc
        before = await store.return_digest(conn, batch_no)
        if before is not None:
            if before != digest:
                raise Conflict(f"支付批次{batch_no}已导入回盘，不能再导入另一份回盘文件")
            return await _summary(conn, b, again=True)
        if b.status != "exported":
            raise Conflict(f"支付批次{batch_no}{STATUS_NAMES[b.status]}，未报盘不能导入回盘")
        if count != b.line_count or total != b.total_fen:
            raise _refused(
                f"回盘{count}笔、{fen_text(total)}元与批次{batch_no}的{b.line_count}笔、"
                f"{fen_text(b.total_fen)}元不一致"
            )
        sent = await store.items_chunked(conn, batch_no)
        try:
            failed = await asyncio.to_thread(_outcome, sent, lines)
        finally:
            await _let_go(sent)
        await store.apply_return(conn, batch_no, failed, digest, operator)
        await store.set_batch_status(conn, batch_no, "returned")
        summary = await _summary(conn, b, again=False)
        await _audit(
            conn,
            operator,
            "payout.return",
            b,
            f"回盘：成功{summary.paid_count}笔{fen_text(summary.paid_fen)}元，"
            f"失败{summary.failed_count}笔{fen_text(summary.failed_fen)}元",
        )
        return summary


async def _summary(conn: asyncpg.Connection, b: Batch, *, again: bool) -> ReturnSummary:
    paid_count, paid_fen, failed_count, failed_fen = await store.return_totals(conn, b.batch_no)
    return ReturnSummary(
        batch_no=b.batch_no,
        paid_count=paid_count,
        paid_fen=paid_fen,
        failed_count=failed_count,
        failed_fen=failed_fen,
        again=again,
    )


# ---------------------------------------------------------------------------------- metrics


def summed(parts: Iterable[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """(count, fen) per state of several ledger databases' `totals`, added up."""
    out: dict[str, tuple[int, int]] = {}
    for part in parts:
        for state, (n, fen) in part.items():
            had_n, had_fen = out.get(state, (0, 0))
            out[state] = (had_n + n, had_fen + fen)
    return out


async def refresh_metrics(conns: Sequence[asyncpg.Connection], now: dt.datetime) -> None:
    """The payout gauges from every ledger database (one per region group when the ledger is
    split): amounts and lines per state, the oldest owed age."""
    states = summed([await store.totals(conn) for conn in conns])
    oldest: dt.datetime | None = None
    for conn in conns:
        at = await store.oldest_owed(conn)
        if at is not None and (oldest is None or at < oldest):
            oldest = at
    for state, (n, fen) in states.items():
        metrics.PAYOUT_LINES.labels(state).set(n)
        metrics.PAYOUT_YUAN.labels(state).set(fen / 100)  # a gauge, for dashboards only
    metrics.PAYOUT_OWED_OLDEST.set(0 if oldest is None else (now - oldest).total_seconds())


# ---------------------------------------------------------------------------------- showing


async def batch_view(conn: asyncpg.Connection, batch_no: str) -> dict[str, Any]:
    """A batch as the CLI and the API show it: amounts as decimal text, accounts masked."""
    b = await store.batch(conn, batch_no)
    return {
        "batch_no": b.batch_no,
        "status": b.status,
        "status_name": STATUS_NAMES[b.status],
        "count": b.line_count,
        "total": fen_text(b.total_fen),
        "created_by": b.created_by,
        "created_at": b.created_at.astimezone().isoformat(),  # local (Beijing) time, as the console
        "approvals": [
            {
                "level": a.level,
                "name": LEVELS[a.level],
                "operator": a.operator,
                "decision": a.decision,
                "reason": a.reason,
                "at": a.at.astimezone().isoformat(),
            }
            for a in await store.approvals(conn, batch_no)
        ],
        "items": [
            {
                "seq": i.seq,
                "psn_no": i.psn_no,
                "holder": i.holder,
                "bank_code": i.bank_code,
                "account_no": mask(i.account_no),
                "amount": fen_text(i.amount_fen),
                "status": i.status,
                "bank_reason": i.bank_reason,
            }
            for i in await store.items(conn, batch_no)
        ],
    }


async def _audit(
    conn: asyncpg.Connection, operator: str, action: str, b: Batch, reason: str
) -> None:
    await audit.append(
        conn,
        operator=operator,
        action=action,
        target=f"payout_batch:{b.batch_no}",
        reason=reason,
        before={"status": b.status, "count": b.line_count, "total": fen_text(b.total_fen)},
    )
