"""Day-end reconciliation: the institution's totals and detail against the ledger (3201/3202).

Which settlements count: the institution's settlements with `clr_optins` = the requested
`setl_optins`, settled on a day of [stmt_begndate, stmt_enddate]. With `refd_setl_flag` 0 (the
default) only settlements in force count; with 1, refunded (cancelled) ones are counted too, with
their original amounts, as the Hunan centre's REFD_SETL_FLAG does, except those a 2601
reversed: a reversal (冲正) undoes the message as if it never came, so the institution's HIS has
no record of that settlement to count.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import io
import multiprocessing
import os
import re
import struct
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from gateway.core.money import AmountError, fen_text, shown, typed
from gateway.ledger.reconciliations import CentreRow, Totals, Uncounted
from gateway.ops import orphans, priority
from gateway.protocol.errors import BadRequest, Busy

T = TypeVar("T")

BALANCED, CENTRE_MORE, INSTITUTION_MORE, INCONSISTENT = "0", "1", "2", "3"
RESULT_NAMES = {
    BALANCED: "对平",
    CENTRE_MORE: "中心多",
    INSTITUTION_MORE: "医药机构多",
    INCONSISTENT: "数据不一致",
}
DETAIL_COLUMNS = (
    "setl_id",
    "mdtrt_id",
    "psn_no",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "refd_setl_flag",
)
RESULT_COLUMNS = (
    "psn_no",
    "mdtrt_id",
    "setl_id",
    "msgid",
    "stmt_rslt",
    "refd_setl_flag",
    "memo",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
)


@dataclass(frozen=True, slots=True)
class DetailRow:
    setl_id: str
    mdtrt_id: str
    psn_no: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    refd_setl_flag: str


def compare_totals(
    declared: Totals, centre: Totals, *, with_cash: bool = False, mismatched: int = 0
) -> tuple[str, str]:
    """stmt_rslt and its explanation for a totals check (3201, and 3202's header: `mismatched`,
    its detail rows that differ, make even equal totals 数据不一致)."""
    same_amounts = (
        declared.medfee_sumamt == centre.medfee_sumamt
        and declared.fund_pay_sumamt == centre.fund_pay_sumamt
        and (
            declared.cash_payamt == centre.cash_payamt
            if with_cash
            else declared.acct_pay == centre.acct_pay
        )
    )
    # 3202's own header points at its result file, not at 3202 (found from outside: a clerk
    # who had just run 3202 was told to run it).
    then = "请下载本次对账结果文件（9102）逐笔核对" if with_cash else "请下载明细对账（3202）核对"
    if declared.count == centre.count and same_amounts:
        if mismatched:
            # Worded as the rest (found from outside: "总额一致但有8笔明细不一致" alone, no
            # totals and no word of the result file).
            return (
                INCONSISTENT,
                f"{RESULT_NAMES[INCONSISTENT]}：总额一致（中心与医药机构上报均为"
                f"{centre.describe(with_cash=with_cash)}），但有{mismatched}笔明细不一致。{then}",
            )
        return BALANCED, f"对平：{centre.describe(with_cash=with_cash)}"
    if centre.count > declared.count:
        rslt = CENTRE_MORE
    elif centre.count < declared.count:
        rslt = INSTITUTION_MORE
    else:
        rslt = INCONSISTENT
    return (
        rslt,
        f"{RESULT_NAMES[rslt]}：中心{centre.describe(with_cash=with_cash)}；"
        f"医药机构上报{declared.describe(with_cash=with_cash)}；"
        f"{_gaps(declared, centre, with_cash=with_cash)}。{then}",
    )


def _gaps(declared: Totals, centre: Totals, *, with_cash: bool) -> str:
    """Which of the compared figures differ, and by how much, from the institution's side
    (found from outside: both sides' totals were given, and a fen's difference in one of them
    had to be found by eye)."""
    last = ("现金支付", "cash_payamt") if with_cash else ("个人账户", "acct_pay")
    gaps = []
    if declared.count != centre.count:
        more = "多" if declared.count > centre.count else "少"
        gaps.append(f"笔数医药机构{more}{abs(declared.count - centre.count)}笔")
    for name, field in (("医疗费总额", "medfee_sumamt"), ("基金支付", "fund_pay_sumamt"), last):
        gap = getattr(declared, field) - getattr(centre, field)
        if gap:
            gaps.append(f"{name}医药机构{'多' if gap > 0 else '少'}{fen_text(abs(gap))}")
    return "差异：" + "，".join(gaps)


class FileLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one detail file may cost (config/gateway.toml [reconcile_files]).

    A file is read in a thread, never on the event loop, and every step is bounded: the members
    of the zip, the bytes actually produced by decompression (declared sizes can lie), the rows,
    the length of a line and the time. `parsers` files are read at once per process; another is
    answered busy, so uploads cannot take the pool's connections or the CPU from settlement.
    A file at the limits costs about ten times its unpacked size while it is read (the text,
    then one object per row): the defaults keep one parse under ~0.3 GB.
    """

    max_unpacked_bytes: int = 32 * 1024 * 1024
    max_members: int = 8
    max_rows: int = 300_000
    max_line_bytes: int = 2048
    parse_seconds: float = 3.0
    parsers: int = 2


# Magic numbers of the archive and compression formats a detail file must not hide inside.
ARCHIVE_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"PK\x07\x08", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!", "rar"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".bz2", ".xz", ".lzma", ".7z", ".rar", ".tar", ".zst")
CHUNK = 256 * 1024
PARSERS_BUSY = "对账文件处理繁忙，请稍后使用相同报文ID重试"


def _archive_kind(head: bytes) -> str:
    for magic, kind in ARCHIVE_MAGIC:
        if head.startswith(magic):
            return kind
    return ""


def _too_big(limits: FileLimits) -> BadRequest:
    mib = limits.max_unpacked_bytes // (1024 * 1024)
    return BadRequest(f"明细文件解压后超过{mib}MB，请按日期分批对账")


def _in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise BadRequest("明细文件内容过多，未能在规定时间内处理完毕，请按日期分批对账")


def read_upload(encoded: str, limits: FileLimits, max_file_bytes: int) -> bytes:
    """The 9101 file from its Base64 text, read through once to refuse what cannot be read."""
    if len(encoded) > (max_file_bytes + 2) // 3 * 4:
        raise BadRequest(f"上传文件超过{max_file_bytes // (1024 * 1024)}MB")
    try:
        try:
            content = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            # MIME-style Base64, a line break every 76 characters (Java's MIME encoder; found
            # from outside: refused as not Base64): the breaks and blanks are not the content.
            content = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("文件内容in不是有效的Base64编码") from exc
    if not content:
        raise BadRequest("上传文件为空")
    read_detail_file(content, limits)
    return content


def read_detail_file(content: bytes, limits: FileLimits | None = None) -> list[DetailRow]:
    """The 9101 detail file: a zip holding a tab-separated .txt, or the .txt itself.

    CPU-bound and bounded by `limits`: call it through `off_loop`.
    """
    limits = limits or FileLimits()
    deadline = time.monotonic() + limits.parse_seconds
    zipped = content[:2] == b"PK"
    return _rows(_unpacked(content, limits, deadline), limits, deadline, zipped=zipped)


def _unpacked(content: bytes, limits: FileLimits, deadline: float) -> bytes | bytearray:
    if content[:2] != b"PK":
        kind = _archive_kind(content)
        if kind:
            raise BadRequest(f"明细文件应为zip压缩包或制表符分隔的文本文件，不支持{kind}格式")
        if len(content) > limits.max_unpacked_bytes:
            raise _too_big(limits)
        return content
    _check_directory(content, limits)
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise BadRequest(f"明细文件压缩包内文件过多（超过{limits.max_members}个）")
            files = [i for i in infos if not i.is_dir()]
            if not files:
                raise BadRequest("明细文件压缩包为空")
            for i in files:
                if i.filename.lower().endswith(ARCHIVE_SUFFIXES):
                    raise BadRequest("明细文件压缩包内不能再嵌套压缩文件，请直接压缩明细文本文件")
            # A Mac's archiver adds its resource forks beside the file: not the institution's.
            files = [i for i in files if not i.filename.startswith("__MACOSX/")] or files
            if len(files) > 1:
                # Found from outside: a zip of two text files was taken, only the first read,
                # and the second's settlements reported as missing from the institution's side.
                names = "、".join(shown(i.filename) for i in files[:4])
                raise BadRequest(
                    f"明细文件压缩包内有{len(files)}个文件（{names}），应只含一个制表符分隔的"
                    "明细文本文件：请合并为一个.txt后重新上传"
                )
            info = files[0]
            if info.flag_bits & 0x1:
                raise BadRequest("明细文件压缩包不能加密")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BadRequest("明细文件压缩包只支持标准（Deflate）压缩方式")
            if info.file_size > limits.max_unpacked_bytes:
                raise _too_big(limits)
            return _inflate(zf, info, limits, deadline)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        OSError,
        struct.error,
        # zipfile's own reading of a damaged directory: an offset that points before the
        # file's start ("negative seek value"), a name that does not decode
        ValueError,
    ) as exc:
        raise BadRequest("明细文件不是有效的zip压缩包") from exc
    except (NotImplementedError, RuntimeError) as exc:
        raise BadRequest("明细文件压缩包格式不受支持（加密或特殊压缩方式）") from exc


def _inflate(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: FileLimits, deadline: float
) -> bytearray:
    """The member's bytes, judged as they are produced: a lying header stops at the cap, and a
    file that is not lines of a detail file is refused at its first chunk, not its last."""
    out = bytearray()
    lines = 0
    with zf.open(info) as member:
        while chunk := member.read(CHUNK):
            if not out and _archive_kind(chunk):
                raise BadRequest("明细文件压缩包内不能再嵌套压缩文件，请直接压缩明细文本文件")
            out += chunk
            if len(out) > limits.max_unpacked_bytes:
                raise _too_big(limits)
            lines += chunk.count(b"\n")
            if lines >= limits.max_rows:
                raise _too_many_rows(limits)
            if len(out) - (out.rfind(b"\n") + 1) > limits.max_line_bytes:
                raise _too_long(lines + 1, limits)
            _in_time(deadline)
    return out


_EOCD = struct.Struct("<4s4H2LH")


def _check_directory(content: bytes, limits: FileLimits) -> None:
    """Count the members from the end record before zipfile reads every directory entry."""
    at = content.rfind(b"PK\x05\x06", max(0, len(content) - 65_535 - _EOCD.size))
    if at < 0 or at + _EOCD.size > len(content):
        raise BadRequest("明细文件不是有效的zip压缩包")
    _, _, _, on_disk, total, _, _, _ = _EOCD.unpack_from(content, at)
    if max(on_disk, total) > limits.max_members:
        raise BadRequest(f"明细文件压缩包内文件过多（超过{limits.max_members}个）")


def _too_many_rows(limits: FileLimits) -> BadRequest:
    return BadRequest(f"明细文件超过{limits.max_rows}行，请按日期分批对账")


def _too_long(n: int, limits: FileLimits) -> BadRequest:
    return BadRequest(f"明细文件第{n}行超过{limits.max_line_bytes}字节，不是对账明细格式")


# The seventh column, refd_setl_flag, came with later revisions of the interface (protocol.md
# §2.7: 3201's own flag is CQ's and DG's): a file of six columns is read as normal settlements.
MIN_COLUMNS = len(DETAIL_COLUMNS) - 1


def _short(n: int, fields: list[str], *, zipped: bool, first: bool) -> BadRequest:
    """A line of too few columns; the file's first line of a file that is not a zip says so
    (found from outside: the Base64 of "hello" was told only of its columns, though the
    interface's upload is a zip holding a .txt)."""
    if first and not zipped:
        return BadRequest(
            "上传文件不是zip压缩包（9101应上传内含制表符分隔.txt明细文件的zip压缩包），"
            f"按明细文本读取，第{n}行只有{len(fields)}列，不是对账明细"
        )
    return BadRequest(
        f"明细文件第{n}行字段数不足：有{len(fields)}列，应为{len(DETAIL_COLUMNS)}列"
        f"（制表符分隔，依次为{'、'.join(DETAIL_COLUMNS)}；"
        "最后一列退费结算标志可省略，省略按0）"
    )


def _rows(
    raw: bytes | bytearray, limits: FileLimits, deadline: float, *, zipped: bool = True
) -> list[DetailRow]:
    if raw.count(b"\n") >= limits.max_rows:
        raise _too_many_rows(limits)
    start = 0
    n = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        n += 1
        if end - start > limits.max_line_bytes:
            raise _too_long(n, limits)
        start = end + 1
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("gbk", errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest("明细文件编码无法识别，请使用UTF-8或GBK编码的文本") from exc
    _in_time(deadline)
    rows: list[DetailRow] = []
    try:
        for n, fields in enumerate(csv.reader(io.StringIO(text), delimiter="\t"), start=1):
            if n % 4096 == 0:
                _in_time(deadline)
            if not fields or all(not f.strip() for f in fields):
                continue
            if fields[0].strip() == "setl_id":
                continue  # a header line
            if len(fields) < MIN_COLUMNS:
                raise _short(n, fields, zipped=zipped, first=not rows)
            f = [x.strip() for x in fields] + [""] * len(DETAIL_COLUMNS)
            for i, cell in enumerate(f[: len(DETAIL_COLUMNS)]):
                if _CONTROL.search(cell):
                    # Found from outside: a NUL inside psn_no was taken, and the row reported
                    # as a mismatch the clerk could not see.
                    raise BadRequest(
                        f"明细文件第{n}行{DETAIL_COLUMNS[i]}含有控制字符，请删除后重新上传"
                    )
            rows.append(_detail_row(n, f))
    except csv.Error as exc:
        raise BadRequest(f"明细文件格式错误：{exc}") from exc
    return rows


_SETL_ID_LENGTH = 30  # protocol.md: setl_id (30)
# Within a cell (its tab and line ends are the file's own): as the envelope's texts are held.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _detail_row(n: int, f: list[str]) -> DetailRow:
    """Line `n`'s row, its fields as the interface defines them. Found from outside: amounts in
    full-width digits or with an exponent, a flag of 2, an empty or 200-character setl_id and
    a normal settlement's negative total were stored and compared as if they were figures."""
    setl_id, flag = f[0], f[6] or "0"
    if not setl_id or len(setl_id) > _SETL_ID_LENGTH:
        raise BadRequest(f"明细文件第{n}行结算ID（setl_id）{'为空' if not setl_id else '超过30位'}")
    if flag not in ("0", "1"):
        raise BadRequest(
            f"明细文件第{n}行退费结算标志（refd_setl_flag）为“{shown(flag)}”，应为0（正常结算）"
            "或1（退费）"
        )
    try:
        medfee, fund, acct = (typed(f[i], 2, DETAIL_COLUMNS[i]) for i in (3, 4, 5))
    except AmountError as exc:
        raise BadRequest(f"明细文件第{n}行金额格式错误：{exc}") from exc
    if flag == "0" and min(medfee, fund, acct) < 0:
        raise BadRequest(f"明细文件第{n}行为正常结算（退费结算标志0），金额不能为负数；退费请标1")
    return DetailRow(setl_id, f[1], f[2], medfee, fund, acct, flag)


_parsers: tuple[ThreadPoolExecutor, threading.BoundedSemaphore] | None = None
_parsers_lock = threading.Lock()


def _parser_pool(size: int) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
    global _parsers
    with _parsers_lock:
        if _parsers is None:
            size = max(1, size)
            executor = ThreadPoolExecutor(size, thread_name_prefix="reconcile-file")
            _parsers = (executor, threading.BoundedSemaphore(size))
        return _parsers


async def off_loop(limits: FileLimits, fn: Callable[..., T], *args: object) -> T:
    """Run a file's parse in one of the process's parser threads; busy when all are taken.

    The slot is given back when the thread is done, not when the caller stops waiting (a caller
    past its deadline does not free a thread that is still parsing)."""
    executor, slots = _parser_pool(limits.parsers)
    if not slots.acquire(blocking=False):
        raise Busy(PARSERS_BUSY)
    try:
        job: Future[T] = executor.submit(fn, *args)
    except BaseException:
        slots.release()
        raise
    job.add_done_callback(lambda _: slots.release())
    return await asyncio.wrap_future(job)


# Uploads are read in processes of their own: a hostile file is parsed by Python code that
# holds the interpreter lock for as long as the parse runs, and parsed in a thread it made the
# event loop wait for the lock on every step of every other institution's requests. A process
# shares only the CPU, which the operating system divides fairly. One pool per process, started
# with the gateway (`start_readers`) so that no upload pays for starting it.
_readers: tuple[ProcessPoolExecutor, threading.BoundedSemaphore] | None = None
_readers_lock = threading.Lock()

READ_FAILED = "明细文件无法读取（读取进程异常终止），请检查文件后使用新的报文ID重新上传"


def _nothing() -> None:
    """Run once in each reader as it starts: the spawn and the imports are paid then."""


def _reader_started(gateway: int) -> None:
    """Each reader as it starts: at the lowest priority, and gone once its gateway (the pid
    that started it) is gone (a worker killed outright runs no `stop_readers`)."""
    priority.lower_this_process()
    orphans.end_with_parent(gateway)


def _reader_pool(size: int) -> tuple[ProcessPoolExecutor, threading.BoundedSemaphore]:
    global _readers
    with _readers_lock:
        if _readers is None:
            size = max(1, size)
            # spawn, not fork: the gateway has threads and an event loop a fork would copy.
            context = multiprocessing.get_context("spawn")
            _readers = (
                ProcessPoolExecutor(
                    size,
                    mp_context=context,
                    initializer=_reader_started,
                    initargs=(os.getpid(),),
                ),
                threading.BoundedSemaphore(size),
            )
        return _readers


def _drop_readers(broken: ProcessPoolExecutor) -> None:
    """Forget a pool whose process died (the next upload starts a new one)."""
    global _readers
    with _readers_lock:
        if _readers is not None and _readers[0] is broken:
            _readers = None
    broken.shutdown(wait=False, cancel_futures=True)


def start_readers(limits: FileLimits) -> None:
    """Start the upload readers now, at start-up, not on the first upload."""
    executor, _ = _reader_pool(limits.parsers)
    for _ in range(max(1, limits.parsers)):
        executor.submit(_nothing)


def stop_readers() -> None:
    """End the readers with the gateway: a parse still running is abandoned (its upload is
    answered or retried by the same msgid), and the processes are ended, not waited for. Left to
    finish, a reader kept the worker from exiting for as long as its parse ran, and once (a CI
    run) the pool's own shutdown at interpreter exit waited on readers that never got their
    stop signal: the worker never exited."""
    global _readers
    with _readers_lock:
        pool, _readers = _readers, None
    if pool is None:
        return
    executor = pool[0]
    # The pool's processes (no public way to end them before Python 3.14's terminate_workers).
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()


READERS_HELD = "本机构已有对账文件正在读取，请待其处理完毕后使用相同报文ID重试"
# Readers held per institution (a share of the pool: found from outside, one institution
# keeping two slow uploads in flight held both readers, and every other institution's 9101 was
# answered busy).
_holding: Counter[str] = Counter()
_holding_lock = threading.Lock()


def reader_share(limits: FileLimits) -> int:
    """How many readers one institution may hold at once: half the pool, at least one."""
    return max(1, limits.parsers // 2)


def _hold(holder: str, share: int) -> bool:
    with _holding_lock:
        if _holding[holder] >= share:
            return False
        _holding[holder] += 1
        return True


def _unhold(holder: str) -> None:
    with _holding_lock:
        _holding[holder] -= 1
        if _holding[holder] <= 0:
            del _holding[holder]


async def off_process(limits: FileLimits, holder: str, fn: Callable[..., T], *args: object) -> T:
    """Run an upload's first read in one of the reader processes for `holder` (the uploading
    institution); busy when it holds its share of them already, or when all are taken.

    As with `off_loop`, the slot is given back when the reader is done. `fn` and its arguments
    cross to the reader by pickling: a module-level function over bytes, text and limits."""
    executor, slots = _reader_pool(limits.parsers)
    if not _hold(holder, reader_share(limits)):
        raise Busy(READERS_HELD)
    if not slots.acquire(blocking=False):
        _unhold(holder)
        raise Busy(PARSERS_BUSY)

    def give_back() -> None:
        slots.release()
        _unhold(holder)

    try:
        job: Future[T] = executor.submit(fn, *args)
    except BrokenProcessPool:
        give_back()
        _drop_readers(executor)
        raise Busy(PARSERS_BUSY) from None
    except BaseException:
        give_back()
        raise
    job.add_done_callback(lambda _: give_back())
    try:
        return await asyncio.wrap_future(job)
    except BrokenProcessPool:
        _drop_readers(executor)
        raise BadRequest(READ_FAILED) from None


@dataclass(frozen=True, slots=True)
class ResultRow:
    psn_no: str
    mdtrt_id: str
    setl_id: str
    msgid: str
    stmt_rslt: str
    refd_setl_flag: str
    memo: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int


def compare_details(
    detail: list[DetailRow], centre: list[CentreRow], why: dict[str, Uncounted] | None = None
) -> list[ResultRow]:
    """One result row per settlement on either side, named by setl_id, and one for each time
    the file lists a settlement again (found from outside: a row listed twice vanished from the
    result, every row read 对平, and the file's count was one more than the centre's)."""
    mine: dict[str, DetailRow] = {}
    repeated: list[DetailRow] = []
    for r in detail:
        if r.setl_id in mine:
            repeated.append(r)
        else:
            mine[r.setl_id] = r
    out: list[ResultRow] = []
    for c in centre:
        flag = "1" if c.refunded else "0"
        d = mine.pop(c.setl_id, None)
        if d is None:
            rslt, memo = CENTRE_MORE, "中心有此结算，医药机构明细中没有"
        else:
            memo = "；".join(_differences(d, c))
            rslt = INCONSISTENT if memo else BALANCED
        out.append(
            ResultRow(
                c.psn_no,
                c.mdtrt_id,
                c.setl_id,
                c.msgid,
                rslt,
                flag,
                memo,
                c.medfee_sumamt,
                c.fund_pay_sumamt,
                c.acct_pay,
            )
        )
    out += [
        _only_here(d, (why or {}).get(d.setl_id, Uncounted("医药机构有此结算，中心没有")))
        for d in mine.values()
    ]
    listed = {c.setl_id: c for c in centre}
    out += [_only_here(d, _listed_again(d, listed.get(d.setl_id))) for d in repeated]
    return out


REFUND_ROW_LISTED_AGAIN = (
    "医药机构明细文件重复列出此结算：此行为退费冲销行（负数金额），中心按原结算金额计一笔退费结算"
    "（退费标志1、正数金额），请删除冲销行，并将原结算行的退费标志改为1"
)


def _listed_again(d: DetailRow, c: CentreRow | None) -> Uncounted:
    """A row of a settlement the file lists again. A refunded settlement listed as its original
    row and then a refund row of negative amounts flagged 1 (a HIS's own book of it) is told how
    the centre counts it (found from outside: told only that the row was listed twice, where
    the same row listed alone, or first, was told to write the original amounts)."""
    if (
        c is not None
        and c.refunded
        and d.refd_setl_flag == "1"
        and (d.medfee_sumamt, d.fund_pay_sumamt, d.acct_pay)
        == (-c.medfee_sumamt, -c.fund_pay_sumamt, -c.acct_pay)
    ):
        return Uncounted(REFUND_ROW_LISTED_AGAIN)
    return Uncounted("医药机构明细文件重复列出此结算，多出的一笔中心没有")


# A row's flag against the centre's state (found from outside: with the request's flag 1, the
# centre's cancelled settlements listed as normal ones read 对平, and the hospital went on
# believing them in force). The amounts are compared as the centre counts the settlement, by
# its original amounts whatever its flag; the flag says whether it is in force, and a flag that
# disagrees is a difference of its own, whichever way.
CANCELLED_LISTED_IN_FORCE = (
    "中心此结算已撤销（退费），医药机构明细记为正常结算（退费结算标志0，未退费）："
    "请核对并登记退费，明细中此行退费结算标志填1"
)
IN_FORCE_LISTED_CANCELLED = (
    "中心此结算为正常结算（未撤销），医药机构明细记为退费（退费结算标志1）："
    "如已为参保人退费，须向中心办理结算撤销；未退费请将此行退费结算标志改为0"
)


def _differences(d: DetailRow, c: CentreRow) -> list[str]:
    """What differs between the institution's row and the centre's settlement, in the clerk's
    words; empty where they agree."""
    found: list[str] = []
    if (d.medfee_sumamt, d.fund_pay_sumamt, d.acct_pay) != (
        c.medfee_sumamt,
        c.fund_pay_sumamt,
        c.acct_pay,
    ):
        memo = (
            f"金额不一致：医药机构医疗费总额{fen_text(d.medfee_sumamt)}、基金{fen_text(d.fund_pay_sumamt)}、"
            f"账户{fen_text(d.acct_pay)}"
        )
        if (d.medfee_sumamt, d.fund_pay_sumamt, d.acct_pay) == (
            -c.medfee_sumamt,
            -c.fund_pay_sumamt,
            -c.acct_pay,
        ) and (c.refunded or d.refd_setl_flag == "1"):
            # The refund booked as negative amounts (found from outside: a HIS following
            # the file's rule for refund rows could never balance): the centre counts a
            # refunded settlement by its original amounts, flagged 1; said so, not left as
            # a bare difference.
            memo += "（中心按原结算金额计退费结算，退费标志为1的行请填写原结算的正数金额）"
        found.append(memo)
    if c.refunded and d.refd_setl_flag == "0":
        found.append(CANCELLED_LISTED_IN_FORCE)
    elif not c.refunded and d.refd_setl_flag == "1":
        found.append(IN_FORCE_LISTED_CANCELLED)
    if d.psn_no != c.psn_no or d.mdtrt_id != c.mdtrt_id:
        found.append("人员编号或就诊ID不一致")
    return found


def _only_here(d: DetailRow, found: Uncounted) -> ResultRow:
    """A row of the institution's file the centre's side does not match (医药机构多), with what
    the centre holds for it where it holds the settlement uncounted."""
    return ResultRow(
        d.psn_no,
        d.mdtrt_id,
        d.setl_id,
        found.msgid,
        INSTITUTION_MORE,
        d.refd_setl_flag,
        found.memo,
        found.medfee_sumamt,
        found.fund_pay_sumamt,
        found.acct_pay,
    )


def result_file(rows: list[ResultRow], filename: str) -> bytes:
    """The 3202 result: a zip holding one tab-separated .txt with a header line."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for r in rows:
        w.writerow(
            [
                r.psn_no,
                r.mdtrt_id,
                r.setl_id,
                r.msgid,
                r.stmt_rslt,
                r.refd_setl_flag,
                r.memo,
                fen_text(r.medfee_sumamt),
                fen_text(r.fund_pay_sumamt),
                fen_text(r.acct_pay),
            ]
        )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(filename.removesuffix(".zip") + ".txt", buf.getvalue().encode("utf-8"))
    return out.getvalue()


def detail_result(
    detail: list[DetailRow], centre: list[CentreRow], filename: str, why: dict[str, Uncounted]
) -> tuple[list[ResultRow], bytes]:
    """3202's work on the file once read (`read_detail_file`): compare it with the ledger's
    rows, write the result zip (in a parser thread: every step grows with the file)."""
    rows = compare_details(detail, centre, why)
    return rows, result_file(rows, filename)
