"""Hostile 9101 detail files: each is refused at once with a clear message, the upload costs
bounded memory, and the event loop keeps serving the other institutions meanwhile; a loop that
stands still does not open the ledger's breaker either.

The bombs are built here, streamed through zipfile from a generator of zero blocks, so a few
hundred KB that unpack to hundreds of MB cost the test about a second to make.
"""

from __future__ import annotations

import asyncio
import base64
import bz2
import gzip
import io
import lzma
import os
import struct
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from msgspec.structs import replace

from gateway.app.config import Breakers, Deadlines, GatewayConfig
from gateway.emergency.breaker import BreakerConfig
from gateway.jobs import reconcile
from gateway.pipeline.edge import EdgeConfig
from gateway.protocol.errors import BadRequest, Busy
from tests.adversity.test_ledger_outage import ProxiedLedger
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000002"
PHARMACY = "P44180000001"  # another institution, selling while the hospital uploads
PERSON = "441800000000000001"
MB = 1024 * 1024
LINE = b"DF1\tMZ1\t441800000000000001\t10.00\t6.00\t0.00\t0\n"
# The whole refusal must stay well under the unpacked sizes below (32 MiB cap, 300 MiB bombs).
MEMORY_BOUND = 100 * MB
# A loop that serves others never stands still this long; the bombs used to hold it for seconds.
LOOP_GAP_BOUND = 1.0


def _zeros(megabytes: int) -> Iterator[bytes]:
    block = bytes(MB)
    for _ in range(megabytes):
        yield block


def _zip(
    members: list[tuple[str, Iterator[bytes] | bytes]],
    method: int = zipfile.ZIP_DEFLATED,
    level: int | None = 9,
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method, compresslevel=level) as zf:
        for name, data in members:
            with zf.open(name, "w") as member:
                for chunk in [data] if isinstance(data, bytes) else data:
                    member.write(chunk)
    return out.getvalue()


def _lying(packed: bytes, declared: int) -> bytes:
    """The same zip with a small uncompressed size declared in both headers."""
    raw = bytearray(packed)
    local = raw.find(b"PK\x03\x04")
    struct.pack_into("<L", raw, local + 22, declared)
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<L", raw, central + 24, declared)
    return bytes(raw)


def _upload(content: bytes | str, filename: str = "detail.zip") -> dict[str, Any]:
    encoded = content if isinstance(content, str) else base64.b64encode(content).decode()
    return {"fsUploadIn": {"in": encoded, "filename": filename, "fixmedins_code": HOSPITAL}}


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    # One hospital sends every bomb in a row: what is tested is each refusal's reason, not the
    # institution's upload budget (tests/adversity/test_upload_budget.py), which is off here.
    config = replace(GENEROUS, http=EdgeConfig(upload_bytes_per_second=0))
    async with running_gateway(new_database, config) as srv:
        yield srv


class Pharmacy:
    """A till of another institution pre-settling (2101) for as long as the hospital uploads,
    and a heartbeat on the loop measuring how long it ever stood still."""

    def __init__(self, pos: HisClient) -> None:
        self.pos = pos
        self.answers: list[dict[str, Any]] = []
        self.longest_gap = 0.0
        self.stop = asyncio.Event()

    async def sell(self) -> None:
        drug = self.pos.drug_input(PERSON, "2026-07-01 10:00:00", DRUG_TOTAL, DRUG_LINES)
        while not self.stop.is_set():
            self.answers.append(await self.pos.call("2101", drug))

    async def heartbeat(self) -> None:
        last = time.perf_counter()
        while not self.stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now


async def _breaker_state(srv: Server) -> str:
    async with srv.session.get(srv.url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith('sgw_breaker_state{dependency="postgres"}'):
            return line.split()[-1]
    raise AssertionError("sgw_breaker_state for postgres not exported")


BOMBS: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    # 300 MiB of zeros in ~300 KB: refused on its declared size, nothing inflated.
    ("deflate bomb", lambda: _upload(_zip([("detail.txt", _zeros(300))])), "解压后超过"),
    # The same, declaring 100 bytes: the bytes produced are what count.
    (
        "lying sizes",
        lambda: _upload(_lying(_zip([("detail.txt", _zeros(300))]), 100)),
        "不是有效的zip压缩包",
    ),
    # A zip inside the zip, named as one and not.
    (
        "nested zip",
        lambda: _upload(_zip([("inner.zip", _zip([("detail.txt", _zeros(300))]))])),
        "嵌套",
    ),
    (
        "nested zip, renamed",
        lambda: _upload(_zip([("detail.txt", _zip([("detail.txt", _zeros(300))]))])),
        "嵌套",
    ),
    # Thousands of members: the first one is a good file.
    (
        "many members",
        lambda: _upload(_zip([("detail.txt", LINE)] + [(f"x{n}.txt", b"") for n in range(5000)])),
        "文件过多",
    ),
    # One line of 30 MiB (unpacked under the cap), and a plain text line of 600 KB.
    (
        "huge line in a zip",
        lambda: _upload(_zip([("detail.txt", (b"7" * MB for _ in range(30)))])),
        "第1行超过",
    ),
    ("huge line as text", lambda: _upload(b"7" * 600_000, "detail.txt"), "第1行超过"),
    # Other compressions inside the zip, and compressed files that are not zips.
    (
        "bzip2 member",
        lambda: _upload(_zip([("detail.txt", _zeros(30))], zipfile.ZIP_BZIP2)),
        "压缩方式",
    ),
    (
        "lzma member",
        lambda: _upload(_zip([("detail.txt", _zeros(5))], zipfile.ZIP_LZMA, None)),
        "压缩方式",
    ),
    ("gzip file", lambda: _upload(gzip.compress(bytes(50 * MB)), "detail.gz"), "gzip"),
    ("bzip2 file", lambda: _upload(bz2.compress(bytes(20 * MB)), "detail.bz2"), "bzip2"),
    ("xz file", lambda: _upload(lzma.compress(bytes(5 * MB)), "detail.xz"), "xz"),
    # Not Base64 at all.
    ("bad base64", lambda: _upload("UEsDBBQ!!不是base64=="), "Base64"),
]


async def test_hostile_detail_files_are_refused_while_others_are_served(server: Server) -> None:
    his = server.client(HOSPITAL)
    till = Pharmacy(server.client(PHARMACY))
    uploads = [(name, await asyncio.to_thread(build), want) for name, build, want in BOMBS]
    files_before = await server.fetchval("SELECT count(*) FROM exchange_files")
    workers = [asyncio.create_task(till.sell()) for _ in range(4)]
    heartbeat = asyncio.create_task(till.heartbeat())
    refusals: dict[str, str] = {}
    peaks: dict[str, int] = {}
    try:
        await asyncio.sleep(0.2)  # the till is selling before the first upload
        for name, upload, _ in uploads:
            tracemalloc.start()
            try:
                answer = await his.call("9101", upload)
                peaks[name] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert answer["infcode"] == -1, name
            refusals[name] = answer["err_msg"]
    finally:
        till.stop.set()
        await asyncio.gather(*workers, heartbeat)

    for name, _, want in uploads:
        assert want in refusals[name], (name, refusals[name])
        assert "内部错误" not in refusals[name], name
        assert peaks[name] < MEMORY_BOUND, (name, peaks[name] // MB)
    assert await server.fetchval("SELECT count(*) FROM exchange_files") == files_before
    # The other institution was served all along, normally: nothing deferred, nothing refused.
    assert len(till.answers) >= 4 * len(uploads)
    assert all(a["infcode"] == 0 for a in till.answers), [a["err_msg"] for a in till.answers]
    assert not any("应急" in str(a.get("warn_msg") or "") for a in till.answers)
    assert till.longest_gap < LOOP_GAP_BOUND, till.longest_gap
    assert await _breaker_state(server) == "0.0"

    # And a good file still goes through after all that.
    good = await his.ok("9101", _upload(_zip([("detail.txt", LINE)])))
    assert good["file_qury_no"].startswith("F")


async def test_a_stalled_loop_does_not_open_the_ledger_breaker(
    new_database: Callable[..., Any],
) -> None:
    """A freeze longer than the call deadline while every sale is waiting on the ledger (100 ms
    away): they all time out at once, but the ledger was not the one that was slow, so its
    breaker stays closed and the next sale settles instead of becoming a deferred claim."""
    breaker = BreakerConfig(
        window_seconds=10.0, min_calls=5, consecutive_failures=3, min_open_seconds=5.0
    )
    config = GatewayConfig(
        rate_limit=GENEROUS.rate_limit,
        deadlines=Deadlines(call_seconds=1.0),
        breakers=Breakers(postgres=breaker),
    )
    ledger = ProxiedLedger()
    async with running_gateway(new_database, config, serve_through=ledger) as srv:
        proxy = ledger.started()
        try:
            proxy.delay = 0.05
            pos = srv.client(PHARMACY)
            till = Pharmacy(pos)
            workers = [asyncio.create_task(till.sell()) for _ in range(8)]
            await asyncio.sleep(1.0)
            # What a runaway parse on the loop did: the whole process stands still. When the
            # loop resumes, a reply the ledger sent during the freeze and the expired deadline
            # are both due, and either may run first; the freeze is repeated until some sale
            # was caught by it (answered "retry"), each one more stall for the breaker to ignore.
            for _ in range(5):
                time.sleep(1.6)  # noqa: ASYNC251 (the point: the loop itself stands still)
                await asyncio.sleep(1.0)
                if any(a["infcode"] == -1 for a in till.answers):
                    break
            till.stop.set()
            await asyncio.gather(*workers)
            # Sales caught waiting on the ledger by a freeze were answered "retry".
            assert any(a["infcode"] == -1 for a in till.answers)
            assert await _breaker_state(srv) == "0.0"
            proxy.delay = 0.0
            drug = pos.drug_input(PERSON, "2026-07-01 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
            sale = await pos.ok("2102", drug)
            assert not sale["setlinfo"]["setl_id"].startswith("DF")
            assert await srv.fetchval("SELECT count(*) FROM deferred") == 0
        finally:
            await proxy.close()


def test_refusals_name_the_limit() -> None:
    """The reader itself, for the messages a clerk gets (no gateway needed)."""
    from gateway.jobs.reconcile import FileLimits, read_detail_file
    from gateway.protocol.errors import BadRequest

    small = FileLimits(max_unpacked_bytes=MB, max_rows=3, max_line_bytes=80, max_members=2)
    cases = [
        (_zip([("detail.txt", _zeros(2))]), "解压后超过1MB"),
        (LINE * 5, "超过3行"),
        (_zip([("a.txt", LINE), ("b.txt", LINE), ("c.txt", LINE)]), "超过2个"),
        (b"\xff\xfe\xfa" * 10 + b"\n", "编码"),
    ]
    for content, want in cases:
        with pytest.raises(BadRequest) as refused:
            read_detail_file(content, small)
        assert want in refused.value.err_msg, (want, refused.value.err_msg)
    assert len(read_detail_file(_zip([("detail.txt", LINE * 3)]))) == 3


async def test_a_reader_process_that_dies_refuses_its_file_and_the_next_is_read() -> None:
    """A file that kills its reader (the operating system ending it for memory, say) is refused
    with a message, not a 500; the pool is replaced and the next upload is read as usual."""
    limits = reconcile.FileLimits(parsers=1)
    reconcile.stop_readers()
    try:
        with pytest.raises(BadRequest) as refused:
            await reconcile.off_process(limits, HOSPITAL, os._exit, 1)
        assert refused.value.err_msg == reconcile.READ_FAILED
        text = base64.b64encode(b"a\tb\n").decode()
        with pytest.raises(BadRequest) as wrong:  # a real read, in a new reader
            await reconcile.off_process(limits, HOSPITAL, reconcile.read_upload, text, limits, MB)
        assert "明细文件" in wrong.value.err_msg
        assert await reconcile.off_process(limits, HOSPITAL, len, b"abc") == 3
    finally:
        reconcile.stop_readers()


def test_a_damaged_zip_directory_is_refused_with_its_reason() -> None:
    """Found from outside: bit-flipped uploads whose end record pointed before the file's start
    made zipfile raise ValueError ("negative seek value"), answered 内部错误 (retry later) for a
    file that will never read. Every single-bit flip of a small detail zip is refused with a
    clerk's message instead."""
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            zipfile.ZipInfo("detail.txt", (2026, 1, 1, 0, 0, 0)),
            "P1\tM1\tS1\t1.00\t1.00\t0.00\t0\n",
        )
    good = packed.getvalue()
    reconcile.read_detail_file(good)  # the file itself reads
    unexpected = []
    for at in range(len(good)):
        for bit in range(8):
            flipped = bytearray(good)
            flipped[at] ^= 1 << bit
            try:
                reconcile.read_detail_file(bytes(flipped))
            except BadRequest:
                pass
            except Exception as exc:  # what is asserted is that none escapes
                unexpected.append(f"byte {at} bit {bit}: {type(exc).__name__}: {exc}")
    assert unexpected == []


async def test_one_institution_holds_at_most_half_the_readers() -> None:
    """Found from outside: one institution keeping two slow uploads in flight held both readers,
    and every other institution's 9101 was answered busy. An institution now holds half of
    them (at least one); another institution is read meanwhile."""
    limits = reconcile.FileLimits(parsers=2)
    reconcile.stop_readers()
    try:
        slow = asyncio.ensure_future(reconcile.off_process(limits, HOSPITAL, time.sleep, 1.0))
        await asyncio.sleep(0.2)  # the hospital's first upload is being read
        with pytest.raises(Busy) as held:
            await reconcile.off_process(limits, HOSPITAL, len, b"second")
        assert held.value.err_msg == reconcile.READERS_HELD
        assert await reconcile.off_process(limits, "H44180000003", len, b"other") == 5
        await slow
        assert await reconcile.off_process(limits, HOSPITAL, len, b"later") == 5  # given back
    finally:
        reconcile.stop_readers()
