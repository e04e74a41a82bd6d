"""Heavy uploads have a budget per institution, decided before the body is read.

One hospital posting detail files back to back used to take reading, unpacking and a ledger
write per file from every other institution's counters. Now an institution has at most
`uploads_per_institution` heavy uploads at once and a byte budget per second; past either, its
next upload is refused from its headers (infcode -1, nothing read, nothing written, the
connection closed), while other institutions upload as before, and the budget comes back as
its uploads finish and its bytes refill. Over real loopback HTTP, signing on.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from gateway.pipeline.auth import sign_headers
from gateway.pipeline.edge import EdgeConfig
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import until
from tests.integration.his_client import CALL_SERVICE, CREDENTIALS, decode

pytestmark = pytest.mark.integration

UPLOADER = "H44180000002"  # the institution spending its budget
OTHER = "H44180000001"  # another hospital uploading meanwhile
MIB = 1024 * 1024
LINE = b"DF1\tMZ1\t441800000000000001\t10.00\t6.00\t0.00\t0\n"
AT_ONCE = "正在处理的大文件上传已达2个"
BYTES = "超出流量限额"


def _detail_file(code: str) -> dict[str, Any]:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("detail.txt", LINE)
    packed = base64.b64encode(out.getvalue()).decode()
    return {"fsUploadIn": {"in": packed, "filename": "detail.zip", "fixmedins_code": code}}


def _head(path: str, code: str, length: int) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(length),
        **sign_headers(code, CREDENTIALS[code], uuid.uuid4().hex),
    }
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines).encode() + b"\r\n\r\n"


async def _open(srv: Server, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(srv.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def _response(reader: asyncio.StreamReader, within: float = 5.0) -> dict[str, Any]:
    """One HTTP/1.1 response with a Content-Length body, decoded as an envelope."""
    async with asyncio.timeout(within):
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
    assert status.split()[1] == b"200", status
    return decode(body)


async def _files(srv: Server, code: str) -> int:
    count = await srv.fetchval(
        "SELECT count(*) FROM exchange_files WHERE fixmedins_code = $1", code
    )
    return int(count)


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    # Only the count at first (no byte budget); bodies may pause for long without being cut off,
    # and refusals are answered at once.
    edge = EdgeConfig(
        uploads_per_institution=2,
        upload_bytes_per_second=0,
        body_grace_seconds=30.0,
        refusal_hold_seconds=0.0,
    )
    async with running_gateway(new_database, replace(GENEROUS, http=edge)) as srv:
        yield srv


async def test_a_third_upload_at_once_is_refused_before_its_body_while_others_upload(
    server: Server,
) -> None:
    uploader, other = server.client(UPLOADER), server.client(OTHER)
    await uploader.ok("9101", _detail_file(UPLOADER))  # within the budget: accepted
    # Two uploads whose bodies are still on their way (a slow link) hold the hospital's two.
    pending = [
        await _open(server, _head("/hsa/hgs/9101", UPLOADER, MIB) + b'{"infno":') for _ in "ab"
    ]
    try:

        async def third_refused() -> bool:
            answer = await uploader.call("9101", _detail_file(UPLOADER))
            return answer["infcode"] == -1 and AT_ONCE in answer["err_msg"]

        await until(third_refused, within=5.0)
        files_before = await _files(server, UPLOADER)
        # A third declaring 1 MiB is answered before a byte of it is sent.
        reader, writer = await _open(server, _head(CALL_SERVICE, UPLOADER, MIB))
        try:
            answer = await _response(reader)
            assert answer["infcode"] == -1 and AT_ONCE in answer["err_msg"], answer
            assert "相同报文ID重试" in answer["err_msg"]
        finally:
            writer.close()
        # Another hospital's file goes through meanwhile.
        done = await other.ok("9101", _detail_file(OTHER))
        assert done["file_qury_no"].startswith("F")
        assert await _files(server, UPLOADER) == files_before  # nothing of the refused kept
    finally:
        for _, writer in pending:
            writer.close()

    # The two hang up: their share comes back, and the hospital's next file is taken.
    async def accepted_again() -> bool:
        answer = await uploader.call("9101", _detail_file(UPLOADER))
        return answer["infcode"] == 0

    await until(accepted_again, within=5.0)
    assert await _files(server, UPLOADER) == files_before + 1


async def test_an_infno_inside_input_does_not_hide_a_small_upload(server: Server) -> None:
    """A small upload on the national path names itself only inside the body: it is charged
    by the envelope's own infno, not by the first "infno" a sniff would find."""
    uploader = server.client(UPLOADER)
    pending = [await _open(server, _head("/hsa/hgs/9101", UPLOADER, MIB) + b"{") for _ in "ab"]
    try:

        async def budget_spent() -> bool:
            answer = await uploader.call("9101", _detail_file(UPLOADER))
            return AT_ONCE in answer["err_msg"]

        await until(budget_spent, within=5.0)
        envelope = uploader.envelope("9101", {"infno": "2101", **_detail_file(UPLOADER)})
        disguised = b'{"input": ' + msgspec.json.encode(envelope.pop("input")) + b", "
        disguised += msgspec.json.encode(envelope)[1:]
        assert disguised.index(b'"2101"') < disguised.index(b'"9101"')
        status, raw = await uploader.post_raw(disguised)
        assert status == 200 and AT_ONCE in decode(raw)["err_msg"]
    finally:
        for _, writer in pending:
            writer.close()


@pytest.fixture(scope="module")
async def metered(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    # Two files' worth at once (each charged at least 1 MiB), one more every two seconds; a
    # refusal is held for half a second.
    edge = EdgeConfig(
        uploads_per_institution=0,
        upload_bytes_per_second=MIB // 2,
        upload_burst_bytes=2 * MIB,
        upload_min_bytes=MIB,
        refusal_hold_seconds=0.5,
    )
    async with running_gateway(new_database, replace(GENEROUS, http=edge)) as srv:
        yield srv


async def test_the_byte_budget_refuses_past_its_burst_and_refills(metered: Server) -> None:
    uploader, other = metered.client(UPLOADER), metered.client(OTHER)
    answers = [await uploader.call("9101", _detail_file(UPLOADER)) for _ in range(3)]
    assert [a["infcode"] for a in answers[:2]] == [0, 0], answers
    refused = answers[2]
    assert refused["infcode"] == -1 and BYTES in refused["err_msg"], refused
    assert await other.ok("9101", _detail_file(OTHER))  # its own budget, untouched
    # A declared body past the budget: answered after the pause, none of it read.
    reader, writer = await _open(metered, _head(CALL_SERVICE, UPLOADER, 4 * MIB))
    started = time.monotonic()
    try:
        answer = await _response(reader)
        assert BYTES in answer["err_msg"], answer
        assert time.monotonic() - started >= 0.5
    finally:
        writer.close()

    async def refilled() -> bool:
        return (await uploader.call("9101", _detail_file(UPLOADER)))["infcode"] == 0

    await until(refilled, within=10.0)
    assert await _files(metered, UPLOADER) == 3


async def test_a_body_past_its_limit_is_told_so_whatever_the_budget(metered: Server) -> None:
    """A spent budget says "later"; a body no transaction may send must hear "in parts", or
    its sender would retry it for ever."""
    uploader = metered.client(UPLOADER)

    async def spent() -> bool:
        return BYTES in (await uploader.call("9101", _detail_file(UPLOADER)))["err_msg"]

    await until(spent, within=10.0)
    for path, length in (("/hsa/hgs/9101", 9 * MIB), (CALL_SERVICE, 9 * MIB)):
        reader, writer = await _open(metered, _head(path, UPLOADER, length))
        try:
            answer = await _response(reader)
        finally:
            writer.close()
        assert answer["infcode"] == -1 and "过大" in answer["err_msg"], answer
