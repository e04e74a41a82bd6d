"""The HTTP edge: what a client may cost the process before anything is known about it.

Three bounds, all from `[http]` in config/gateway.toml:

- bodies: a limit per transaction (the path's infno, or the envelope's for the national path),
  checked against Content-Length first and then against the bytes actually streamed (chunked
  bodies too), and a deadline that grows with the bytes received: `body_grace_seconds` plus one
  second per `body_min_rate` bytes, never past `body_seconds` (a 4 KB sale has about 2 s, an
  8 MB batch up to 30 s); the caller reads a body only after the signature and the in-flight
  bound have admitted the request;
- request heads: a connection gets `header_seconds` to deliver each request line and headers,
  counted from the connection or from the first byte of the next request on it;
- connections: at most `connections_per_address` open at once from one client address.

The last two live in the connection's protocol (`EdgeRunner`), below the application: a socket
that never completes a request never reaches a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from adapters.national.envelope import encode_response
from gateway.protocol.errors import BadRequest

log = logging.getLogger("gateway.pipeline.edge")

KIB = 1024
MIB = 1024 * KIB


def _upload_limits() -> dict[str, int]:
    # Batches of fee lines, catalog rows and the reconciliation file; everything else is small.
    return {"2204": 8 * MIB, "2301": 8 * MIB, "3301": 8 * MIB, "9101": 8 * MIB}


class EdgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[http]` in config/gateway.toml."""

    body_limit_bytes: int = 256 * KIB  # any transaction not named in body_limits
    body_limits: dict[str, int] = msgspec.field(default_factory=_upload_limits)
    body_seconds: float = 30.0  # the whole body, from the end of the headers, at most
    # A body trickled in holds an in-flight slot: past a short grace it must keep arriving at
    # this many bytes per second on average (a sale of 4 KB is refused after about 2 s).
    body_grace_seconds: float = 2.0
    body_min_rate: int = 16 * KIB  # 0: only body_seconds applies
    header_seconds: float = 10.0  # each request line and headers
    idle_seconds: float = 60.0  # a keep-alive connection with no request in progress
    connections_per_address: int = 256  # a hospital's counters often share one NAT address
    # Heavy uploads, per institution (gateway.pipeline.overload.UploadBudget): a body past
    # body_limit_bytes (only the batches may be that large), or one of these transactions at any
    # size (a detail file costs the parser up to its unpacked bound however small it is sent).
    upload_transactions: tuple[str, ...] = ("9101",)
    uploads_per_institution: int = 2  # at once, from the headers to the answer (0: no bound)
    upload_bytes_per_second: int = 1 * MIB  # refilled per institution (0: no byte budget)
    upload_burst_bytes: int = 8 * MIB  # at once after a pause: the largest body, or 8 small files
    upload_min_bytes: int = 1 * MIB  # each heavy request is charged at least this
    # A request refused by a budget (an upload past its institution's, a console log-in past
    # the hashing budget or from a locked address) is answered after this pause, holding no
    # in-flight slot: a client that sends again as soon as it is refused gets one refusal per
    # connection per pause, instead of as many as it can send. At most held_refusals are held
    # at once; past that the answer is immediate. 0: answer at once.
    refusal_hold_seconds: float = 1.0
    held_refusals: int = 256

    def limit(self, infno: str) -> int:
        return self.body_limits.get(infno, self.body_limit_bytes)

    @property
    def largest(self) -> int:
        return max([self.body_limit_bytes, *self.body_limits.values()])


class BodyRefused(BadRequest):
    """The body is too large or too slow; nothing of it was processed."""


_INFNO_IN_BODY = re.compile(rb'"infno"\s*:\s*"?\s*([0-9]{4}[A-Z]?)')


def sniff_infno(prefix: bytes) -> str:
    """The infno an envelope names near its start ("" when not found): only to choose how much
    of the body to read; the decoded envelope is checked again afterwards."""
    found = _INFNO_IN_BODY.search(prefix)
    return found.group(1).decode() if found else ""


def _size(limit: int) -> str:
    return f"{limit // MIB}MB" if limit >= MIB else f"{max(limit // KIB, 1)}KB"


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(f"请求报文过大（本交易上限{_size(limit)}），请分批上传；本次交易未处理")


def _body_deadline(config: EdgeConfig, started: float, received: int) -> float:
    """When the body must be complete, given the bytes received so far: a sender that keeps up
    the minimum rate is never cut off before `body_seconds`, one that stalls soon is."""
    allowed = config.body_seconds
    if config.body_min_rate > 0:
        allowed = min(allowed, config.body_grace_seconds + received / config.body_min_rate)
    return started + allowed


def declared_too_large(
    request: web.Request, config: EdgeConfig, path_infno: str | None
) -> BodyRefused | None:
    """The refusal of a body whose Content-Length is past what its transaction may send (on
    the national path: past the largest any transaction may), or None."""
    declared = request.content_length
    if declared is None:
        return None
    if path_infno is not None:
        limit = config.limit(path_infno)
        return _too_large(limit) if declared > limit else None
    if declared > config.largest:
        # The transaction is not known from the headers on the national path: found from
        # outside, a 9 MB 3301 was told its limit was the general 256KB, not the uploads' 8MB.
        return BodyRefused(
            f"请求报文过大（超过各交易中最大的上限{_size(config.largest)}；非上传交易上限"
            f"{_size(config.body_limit_bytes)}），请分批上传；本次交易未处理"
        )
    return None


# The request asked for "100 Continue" before sending its body.
_CONTINUE = web.RequestKey("edge.continue", bool)
_CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def continue_when_read(request: web.Request) -> web.StreamResponse | None:
    """The routes' `Expect` handler: "100 Continue" is promised only when the body is about to
    be read (`read_body`), after the signature, the in-flight bound and the declared length
    have admitted the request. Found from outside: aiohttp's own handler sent it at once, so an
    unsigned or oversized request was invited to send its body before being refused."""
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no interim answers; its body comes anyway
    if request.headers.get("Expect", "").strip().lower() == "100-continue":
        request[_CONTINUE] = True
        return None
    # Its body, if any follows, is not read.
    return _closing_refusal("请求头Expect只支持100-continue，请去掉该请求头后重发", 417)


def _closing_refusal(words: str, status: int) -> web.Response:
    """A refusal in the envelope given before the request's body is read, on a connection that
    is then closed (what is left of the body is not taken for a next request)."""
    body = encode_response(region="000000", received=dt.datetime.now(), output=None, err_msg=words)
    response = web.Response(body=body, content_type="application/json", status=status)
    response.force_close()
    return response


def awaits_continue(request: web.Request) -> bool:
    """Whether the client still holds its body back for "100 Continue": an answer without
    reading it must close the connection, or the body's bytes would be read as the next
    request."""
    return bool(request.get(_CONTINUE, False))


async def read_body(request: web.Request, config: EdgeConfig, path_infno: str | None) -> bytes:
    """The request body within its transaction's limit and the body deadline.

    The national path carries its infno inside the body: the general limit applies until the
    envelope's first bytes name an upload transaction, and only then the larger one.
    """
    codings = request.headers.getall("Content-Encoding", [])
    if len(codings) > 1 or (codings and codings[0].strip().lower() not in _DECODED_CODINGS):
        # A coding aiohttp does not decode went through as if there were none (found from
        # outside: plain JSON labelled "x-gzip" or "foo" was settled, and gzip labelled so was
        # refused as "not UTF-8", the clerk told to fix the character set).
        raise BodyRefused(undecodable_encoding(", ".join(codings)))
    known = path_infno is not None
    limit = config.limit(path_infno) if path_infno is not None else config.body_limit_bytes
    too_large = declared_too_large(request, config, path_infno)
    if too_large is not None:
        raise too_large
    # The header first: a request's mapping answers a missing key by raising inside (350 ns
    # on every request), the header look-up costs a quarter of that.
    if "Expect" in request.headers and request.pop(_CONTINUE, False):
        # Everything the headers could refuse has passed: now the client may send.
        try:
            await request.writer.write(_CONTINUE_LINE)
        except ConnectionError:
            # Found from outside: a client that shut its side before it was invited was
            # logged as the gateway's unhandled failure. Nothing was read, nothing runs.
            raise BodyRefused("请求报文接收不完整，本次交易未处理") from None
        request.writer.output_size = 0  # the interim line is not the answer's size
    chunks: list[bytes] = []
    size = 0
    started = asyncio.get_running_loop().time()
    reader = request.content
    # A settlement's few KB usually arrive with the headers: with the whole body in hand
    # nothing is waited for, and the deadline's timer (a timer per request) is not set.
    waits = not reader.is_eof()
    try:
        async with (
            asyncio.timeout_at(_body_deadline(config, started, 0))
            if waits
            else contextlib.nullcontext()
        ) as deadline:
            while chunk := await reader.readany():
                size += len(chunk)
                chunks.append(chunk)
                if deadline is not None:
                    deadline.reschedule(_body_deadline(config, started, size))
                if size <= limit:
                    continue
                if not known:
                    known = True  # decided once, on the first bytes past the general limit
                    limit = max(limit, config.limit(sniff_infno(b"".join(chunks))))
                    if size <= limit:
                        continue
                raise _too_large(limit)
    except TimeoutError:
        raise BodyRefused("请求报文接收超时，请检查网络后使用相同报文ID重试") from None
    except RequestPayloadError as exc:
        # Found from outside: a body its Content-Encoding does not decode (plain JSON sent as
        # `br` or `deflate`, broken gzip) was answered as an internal failure, to retry.
        # Ended here, the body is not read again after the answer (aiohttp's lingering read,
        # which met the same failure and logged it as unhandled).
        reader.feed_eof()
        if isinstance(exc.__cause__, ContentEncodingError):
            raise BodyRefused(
                undecodable_encoding(request.headers.get("Content-Encoding"))
            ) from None
        raise BodyRefused("请求报文接收不完整，本次交易未处理") from None
    except (ConnectionError, HttpProcessingError):
        # The client hung up or broke the framing (a bad chunk, a short body): nothing to run.
        raise BodyRefused("请求报文接收不完整，本次交易未处理") from None
    if not chunks and codings and request.body_exists:
        # Compressed bytes that decode to nothing (a gzip header and no stream) were refused as
        # an empty body (found from outside): the clerk was told nothing had been sent.
        raise BodyRefused(undecodable_encoding(codings[0]))
    return b"".join(chunks)


# aiohttp's words: "…content-encoding: deflate", "…content-encoding: zstandard (zstd). …", or
# the bare name ("deflate") where its C parser met the failure.
_NAMED_ENCODING = re.compile(
    r"content-encoding: (?:[^(\s]+ \((?P<named>[\w-]+)\)|(?P<plain>[\w-]+))|^(?P<bare>[\w-]+)$"
)


# What the body's reader decodes (aiohttp: br and zstd where their libraries are installed,
# refused in words where not); a list of codings, or any other name, is refused.
_DECODED_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


def undecodable_encoding(encoding: str | None) -> str:
    """The refusal of a body its declared compression does not decode."""
    named = f"（Content-Encoding: {encoding[:20]}）" if encoding else ""
    return (
        f"请求报文的压缩格式{named}无法解码，本次交易未处理："
        "请以未压缩的UTF-8 JSON发送，或以gzip正确压缩"
    )


# ------------------------------------------------------------------------------ refusals


class Pacer:
    """Holds the answers to requests refused by a budget for `refusal_hold_seconds`.

    A refusal decided from the headers costs the process a fraction of a millisecond, but a
    client that sends again the moment it is answered turns cheap refusals into a flood of
    them: the rate is set by how fast the answers come. Held, a connection gets one refusal
    per pause; what it costs meanwhile is a timer (of a body still being sent, aiohttp takes
    in at most its read buffer, ~128 KiB, and then TCP stops the sender). Past `held_refusals`
    held at once, answers are immediate.
    """

    __slots__ = ("config", "held")

    def __init__(self, config: EdgeConfig | None = None) -> None:
        self.config = config or EdgeConfig()
        self.held = 0

    async def hold(self) -> None:
        """Wait before answering a refused request."""
        seconds = self.config.refusal_hold_seconds
        if seconds <= 0 or self.held >= self.config.held_refusals:
            return
        self.held += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.held -= 1


PACER = web.AppKey("pacer", Pacer)


# ------------------------------------------------------------------------------ connections


class ConnectionGuard:
    """Per process: open connections per client address, and the limits a connection runs by."""

    __slots__ = ("config", "open", "refused")

    def __init__(self, config: EdgeConfig | None = None) -> None:
        self.config = config or EdgeConfig()
        self.open: Counter[str] = Counter()
        self.refused = 0


GUARD = web.AppKey("edge_guard", ConnectionGuard)


class GuardedHandler(RequestHandler):
    """aiohttp's protocol with a deadline on request heads and a cap per client address."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.address: str | None = None  # counted against the cap while set
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self.guard.open[address] >= self.guard.config.connections_per_address:
            self.guard.refused += 1
            log.warning("connection refused: too many from %s", address)
            transport.close()
            return
        self.guard.open[address] += 1
        self.address = address
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self.address is not None:
            self.guard.open[self.address] -= 1
            if self.guard.open[self.address] <= 0:
                del self.guard.open[self.address]
            self.address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self.in_request and self.head_timer is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def request_started(self) -> None:
        self.in_request = True
        self._disarm()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A compression aiohttp cannot even start to decode (zstd without its library), or a
        request whose HTTP is broken, refused while the head is read, before any handler: in
        the envelope, like every other refusal, not aiohttp's plain text."""
        if isinstance(exc, ContentEncodingError):
            # The head is all aiohttp kept of the request, in its words (the request has none).
            named = _NAMED_ENCODING.search(exc.message)
            words = undecodable_encoding(
                named["named"] or named["plain"] or named["bare"] if named else None
            )
        elif isinstance(exc, HttpProcessingError) and status < 500:
            # A request whose HTTP itself is broken (two Content-Lengths, a 100 KB header, a
            # bad chunk): the client's fault, said in the envelope and logged as one warning
            # line. Found from outside: aiohttp answered plain text and logged each as an
            # error with a traceback quoting the raw request, so that anyone, unsigned, could
            # fill the error log and its alert.
            log.warning(
                "malformed HTTP request",
                extra={"remote": request.remote, "error": str(exc)[:120]},
            )
            words = "HTTP请求格式错误，本次交易未处理：请检查请求行、请求头和报文长度后重新发送"
        else:
            return super().handle_error(request, status, exc, message)
        # The compression's refusal is a refusal of the body (200, as every other); a broken
        # request keeps its 400 for the proxies in between. Closed, as aiohttp's own answer.
        return _closing_refusal(words, 200 if isinstance(exc, ContentEncodingError) else status)

    def request_finished(self) -> None:
        self.in_request = False

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = asyncio.get_running_loop().call_later(
            self.guard.config.header_seconds, self._head_overdue
        )

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_overdue(self) -> None:
        self.head_timer = None
        if not self.in_request:
            self.force_close()


class EdgeServer(web.Server):
    """The connection factory: every connection gets a GuardedHandler."""

    def __init__(self, guard: ConnectionGuard, plain: web.Server) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose connections are guarded (the application must carry GUARD)."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return EdgeServer(self.app[GUARD], plain)


@web.middleware
async def mark_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection a request head is complete (its deadline no longer applies)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):
        response: web.StreamResponse = await handler(request)
        return response
    protocol.request_started()
    try:
        response = await handler(request)
        return response
    finally:
        protocol.request_finished()
