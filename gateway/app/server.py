"""The HTTP face: the national endpoints, health, and the process's resources."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import logging
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

import adapters.his.transactions
import adapters.pos.pharmacy  # noqa: F401 - registers the pharmacy transactions
from adapters.national.envelope import (
    NOT_UTF8,
    REVISIONS,
    as_utf8,
    base_infno,
    encode_response,
)
from adapters.national.service_paths import SERVICE_PATHS
from gateway.app import heap
from gateway.app.appkeys import GATEWAY
from gateway.app.config import DEFAULT_REFERENCE as DEFAULT_REFERENCE
from gateway.app.config import Settings
from gateway.app.reference import load_reference
from gateway.app.runtime import Gateway
from gateway.core.settle import FUND_NAMES
from gateway.emergency import hook as emergency
from gateway.emergency import shadow as parallel_run
from gateway.emergency.console import install as install_console
from gateway.jobs import reconcile
from gateway.ledger import db, partitions, reference_store
from gateway.ops import metrics
from gateway.ops.access_log import AccessLog
from gateway.pipeline import dispatch
from gateway.pipeline.auth import AuthError, Verifier, load_credentials
from gateway.pipeline.deadlines import finished_within
from gateway.pipeline.edge import (
    GUARD,
    PACER,
    BodyRefused,
    ConnectionGuard,
    EdgeConfig,
    EdgeRunner,
    Pacer,
    awaits_continue,
    continue_when_read,
    declared_too_large,
    mark_requests,
    read_body,
)
from gateway.pipeline.group_commit import GroupCommit
from gateway.pipeline.group_read import GroupRead
from gateway.pipeline.overload import SHED_MESSAGE, Admission, UploadBudget
from gateway.protocol import transaction
from gateway.protocol.errors import BadRequest, Busy

VERIFIER = web.AppKey("verifier", Verifier)
ADMISSION = web.AppKey("admission", Admission)
UPLOADS = web.AppKey("uploads", UploadBudget)
SHADOW = web.AppKey("shadow", parallel_run.Shadow)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
access = logging.getLogger("gateway.access")
log = logging.getLogger("gateway.app.server")
ANSWER_GRACE_SECONDS = 1.0  # past the call deadline, the counter is answered regardless
CONSOLE_MAX_BODY = 64 * 1024
_PATH_INFNO = re.compile(r"[0-9]{4}[A-Z]?")


async def prepare_database(settings: Settings) -> None:
    """Migrate the main database and every ledger cluster, and load the demo data set into an
    empty main database; persons of a cluster's regions still in the main database (the demo
    set is loaded whole) move into their cluster."""
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            if settings.load_demo_if_empty and await reference_store.is_empty(conn):
                await reference_store.load(conn, load_reference(settings.reference_dir))
            await partitions.prepare_clusters(conn, settings.config.ledger_clusters)
    finally:
        await pool.close()


def _envelope_error(message: str) -> web.Response:
    now = dt.datetime.now()
    body = encode_response(region="000000", received=now, output=None, err_msg=message)
    return web.Response(body=body, content_type="application/json")


def _refusal(
    outcome: dispatch.Outcome, started: float, *, keep_alive: bool = False
) -> web.Response:
    """An answer given before the body was read: the connection is not reused, so a client
    that is refused cannot keep the socket (what is left of its body is drained, not kept);
    `keep_alive` where the body is all in already (nothing left to drain or to trickle)."""
    observe(outcome, time.perf_counter() - started)
    response = web.Response(body=outcome.body, content_type="application/json")
    if not keep_alive:
        response.force_close()
    return response


class _InfnoOnly(msgspec.Struct):
    infno: str | int | None = None


_infno_only = msgspec.json.Decoder(_InfnoOnly)


async def _answer(request: web.Request, path_infno: str | None) -> web.Response:
    """Admission, then the signature, then the institution's upload budget, then the body:
    nobody gets the process to buffer a body before it is known who sent it and that there is
    room for it."""
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    if path_infno is not None and not _PATH_INFNO.fullmatch(path_infno):
        bad = BadRequest(
            "地址中的交易编号格式错误（应为4位数字，修订版本另加一位大写字母，如2207A）"
        )
        return _refusal(dispatch.refused(gw, bad, ""), started)
    admission = request.app[ADMISSION]
    if not admission.enter():
        # Past the in-flight limit a request waits behind all the others and its latency grows
        # without bound; a fast "busy" lets the counter retry (same msgid) or switch to plan B.
        return _shed(request, gw, path_infno, started)
    uploader: str | None = None  # the institution an admitted heavy upload is charged to
    over_budget: web.Response | None = None
    try:
        verifier = request.app.get(VERIFIER)
        authenticated: str | None = None
        if verifier is not None:
            try:
                authenticated = await verifier.verify(request.headers)
            except AuthError as exc:
                # Counted by whom it claims to be and why (found from outside: a wrong key, a
                # terminal's clock off and a replay were one count under infno "unknown").
                metrics.AUTH_FAILURES.labels(verifier.claimed(request.headers), exc.reason).inc()
                return _refusal(dispatch.refused(gw, exc, path_infno or ""), started)
        # A body that can never pass is told so (send it in parts), not to come back later.
        too_large = declared_too_large(request, gw.config.http, path_infno)
        if too_large is not None:
            return _refusal(dispatch.refused(gw, too_large, path_infno or ""), started)
        budget = request.app[UPLOADS]
        payer = authenticated or f"address:{request.remote or ''}"
        if budget.active and _heavy_from_headers(request, gw.config.http, path_infno):
            refused = budget.take(payer, request.content_length or 0, time.monotonic())
            if refused is not None:
                over_budget = _refusal(_over_budget(gw, refused, path_infno), started)
                return over_budget
            uploader = payer
        senders = _senders(request, authenticated)
        if not admission.start_body(senders):
            return _shed(request, gw, path_infno, started)
        try:
            body = await read_body(request, gw.config.http, path_infno)
            if path_infno is None and len(body) > gw.config.http.body_limit_bytes:
                _within_envelope_limit(body, gw.config.http)
        except BodyRefused as exc:
            return _refusal(dispatch.refused(gw, exc, path_infno or ""), started)
        finally:
            admission.end_body(senders)
        utf8 = as_utf8(body, request.charset)
        if utf8 is None:
            return _refusal(dispatch.refused(gw, BadRequest(NOT_UTF8), path_infno or ""), started)
        body = utf8
        if (
            budget.active
            and uploader is None
            and (
                len(body) > gw.config.http.body_limit_bytes
                or (path_infno is None and _names_upload(body, gw.config.http))
            )
        ):
            # An upload the headers did not tell: sent chunked, or a small one on the national
            # path, which names itself only inside the body. Read (within its limit), it is
            # charged before anything else is done with it.
            refused = budget.take(payer, len(body), time.monotonic())
            if refused is not None:
                over_budget = _refusal(_over_budget(gw, refused, path_infno), started)
                return over_budget
            uploader = payer
        return await _admitted(request, gw, body, path_infno, authenticated, started)
    finally:
        # An upload's time is its size's, not the load's: not judged against the target.
        admission.leave(None if uploader is not None else time.perf_counter() - started)
        if uploader is not None:
            budget.release(uploader)
        if over_budget is not None:
            # Answered after the pause, holding no slot: a sender that retries at once is
            # slowed to one refusal per pause per connection.
            await request.app[PACER].hold()


def _heavy_from_headers(request: web.Request, edge: EdgeConfig, path_infno: str | None) -> bool:
    """An upload by its headers: a transaction in the upload list by its path, or a body past
    the general limit (only the batches may be that large; a larger one is refused anyway)."""
    if path_infno is not None and base_infno(path_infno) in edge.upload_transactions:
        return True
    declared = request.content_length
    return declared is not None and declared > edge.body_limit_bytes


@functools.cache
def _upload_codes(upload_transactions: tuple[str, ...]) -> tuple[bytes, ...]:
    """Every infno text that stands for an upload: the codes and their revisions' codes."""
    codes = {*upload_transactions}
    codes.update(rev for rev, base in REVISIONS.items() if base in upload_transactions)
    return tuple(sorted(code.encode() for code in codes))


def _names_upload(body: bytes, edge: EdgeConfig) -> bool:
    """Whether an envelope's own infno (decoded, not sniffed: an `infno` inside `input` must
    not hide it) is in the upload list."""
    # Decoding reads the whole body, and this runs for every request on the national path. An
    # infno that names an upload is written out in the body as its code's digits, unless the
    # JSON spells characters as \u escapes: a body with neither cannot name one.
    if b"\\u" not in body and not any(
        code in body for code in _upload_codes(edge.upload_transactions)
    ):
        return False
    try:
        infno = _infno_only.decode(body).infno
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False  # not an envelope: dispatch refuses it with the reason
    return base_infno(str(infno or "").strip()) in edge.upload_transactions


def _over_budget(gw: Gateway, message: str, path_infno: str | None) -> dispatch.Outcome:
    return dispatch.refused(gw, Busy(message), path_infno or "", outcome=dispatch.Result.BUSY)


def _shed(
    request: web.Request, gw: Gateway, path_infno: str | None, started: float
) -> web.Response:
    """Busy. A request whose body has all arrived (a counter's, sent with its head in one
    segment) keeps its connection: closed, every retry of a shed request paid for a new
    connection, and at twice the saturated rate those reconnections took the CPU the accepted
    settlements needed (benchmarks/RESULTS.md, P6). A body still arriving is not waited for:
    that connection is closed, as any refusal's."""
    metrics.SHED.inc()
    outcome = dispatch.refused(
        gw, Busy(SHED_MESSAGE), path_infno or "", outcome=dispatch.Result.BUSY
    )
    return _refusal(outcome, started, keep_alive=request.content.is_eof())


def _senders(request: web.Request, authenticated: str | None) -> tuple[str, ...]:
    """Who a body in transit is charged to: its client address and, once the signature named
    it, its institution (a hospital's counters behind one NAT address share that address)."""
    address = f"address:{request.remote or ''}"
    return (address, f"institution:{authenticated}") if authenticated else (address,)


def _within_envelope_limit(body: bytes, edge: EdgeConfig) -> None:
    """A national-path body past the general limit was read for the infno its first bytes
    named; the envelope's own infno must allow it too."""
    try:
        infno = str(_infno_only.decode(body).infno or "")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return  # not an envelope at all: dispatch refuses it with the reason
    if len(body) > edge.limit(infno):
        raise BodyRefused(
            f"请求报文过大（交易{infno}上限{edge.limit(infno) // 1024}KB），请分批上传"
        )


async def _admitted(
    request: web.Request,
    gw: Gateway,
    body: bytes,
    path_infno: str | None,
    authenticated: str | None,
    started: float,
) -> web.Response:
    request_id = f"{_REQUEST_TAG}{next(_request_serial) & _SERIAL_MASK:010x}"
    # Shielded: a client that hangs up must not cut a settlement's commit in half. Bounded: a
    # request stuck on a dead dependency past its deadline is still answered (retry the same
    # msgid); the work goes on in the background and either commits with its answer journaled
    # or rolls back.
    waits = gw.waits
    wait = waits.begin()
    try:
        work = asyncio.ensure_future(dispatch.handle(gw, body, path_infno, authenticated, wait))
        limit = gw.config.deadlines.call_seconds + ANSWER_GRACE_SECONDS
        if await finished_within(work, limit, wait):
            outcome = work.result()
        elif wait.released:
            # Its ledger's breaker opened: its work ends now, as at a deadline (a connection it
            # holds is dropped, a batch not yet written drops it), so that it cannot commit when
            # a hung network heals, beside the claim its retry becomes.
            work.cancel()
            # Named by the request it answers (found from outside: counted and logged under
            # infno "unknown", no msgid, where the request had been read).
            outcome = dispatch.released(gw, wait.infno or path_infno or "", wait.msgid, wait.code)
        else:
            outcome = dispatch.overdue(gw, wait.infno or path_infno or "", wait.msgid, wait.code)
    finally:
        waits.end(wait)
    elapsed = time.perf_counter() - started
    observe(outcome, elapsed)
    request.app[ACCESS_LOG].answered(
        request_id,
        outcome.infno,
        outcome.msgid,
        # The signer, where the request was signed: found from outside, a refused
        # impersonation was logged under the institution it named, and a body refused before
        # its envelope was read under none.
        authenticated or outcome.fixmedins_code,
        outcome.terminal,
        outcome.outcome,
        elapsed,
    )
    return web.Response(
        body=outcome.body, content_type=outcome.content_type, headers={"X-Request-Id": request_id}
    )


# A request's id (X-Request-Id, the access log): 16 hex digits, a tag drawn once per process
# and the process's serial. Drawn from the kernel's random source for each request, it cost a
# system call on every answer; workers are spawned, so each draws its own tag.
_REQUEST_TAG = secrets.token_hex(3)
_request_serial = itertools.count(1)
_SERIAL_MASK = (1 << 40) - 1


# Each answer's two series by (infno, outcome), looked up once: prometheus_client's labels()
# takes a lock and builds its key on every call. Both labels come from closed sets (the
# transaction table and the outcomes), so the map stays small.
_answer_series: dict[tuple[str, str], tuple[Any, Any]] = {}
_done_series: dict[str, Any] = {}


def observe(outcome: dispatch.Outcome, seconds: float) -> None:
    """Metrics for one answer; the infno label only takes values from the transaction table."""
    infno = outcome.infno if outcome.infno in transaction.TRANSACTIONS else "unknown"
    series = _answer_series.get((infno, outcome.outcome))
    if series is None:
        series = _answer_series[(infno, outcome.outcome)] = (
            metrics.REQUESTS.labels(infno, outcome.outcome),
            metrics.DURATION.labels(infno),
        )
    series[0].inc()
    series[1].observe(seconds)
    if outcome.outcome is dispatch.Result.OK:
        done = _done_series.get(infno)
        if done is None:
            done = _done_series[infno] = metrics.DONE_DURATION.labels(infno)
        done.observe(seconds)
    elif outcome.outcome is dispatch.Result.REPLAYED:
        metrics.REPLAYS.inc()
    if outcome.outcome is dispatch.Result.ERROR and outcome.fixmedins_code:
        kind = "timeout" if outcome.timeout else "error"
        metrics.INSTITUTION_ERRORS.labels(outcome.fixmedins_code, kind).inc()
    if outcome.identity_failure:
        terminal = metrics.terminal_label(outcome.fixmedins_code, outcome.terminal)
        metrics.IDENTITY_FAILURES.labels(outcome.fixmedins_code, terminal).inc()
    if outcome.mismatch:
        metrics.RECONCILE_MISMATCHES.labels(outcome.fixmedins_code).inc()
    for fund in outcome.paid:
        metrics.FUND_PAID.labels(fund.fund_pay_type).inc(fund.fund_payamt)


async def openapi_endpoint(request: web.Request) -> web.Response:
    """GET /openapi.json — generated from the transactions' input types."""
    from gateway.app.openapi import openapi

    return web.json_response(openapi())


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics — Prometheus text exposition."""
    gw = request.app[GATEWAY]
    metrics.CATALOG_VERSION.set(gw.snapshot.version)
    metrics.DB_POOL_SIZE.labels("total").set(gw.pool.get_size())
    metrics.DB_POOL_SIZE.labels("idle").set(gw.pool.get_idle_size())
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")


async def call_service(request: web.Request) -> web.Response:
    """POST /fsi/api/rsfComIfsService/callService — infno in the envelope."""
    return await _answer(request, None)


async def call_by_path(request: web.Request) -> web.Response:
    """POST /hsa/hgs/{infno} — Guangdong's shape, infno in the path."""
    return await _answer(request, request.match_info["infno"])


def _by_service_path(infno: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST to one service's own path (Hebei's shape, adapters.national.service_paths): the
    path names the transaction, as /hsa/hgs/{infno} does."""

    async def call_by_service_path(request: web.Request) -> web.Response:
        return await _answer(request, infno)

    return call_by_service_path


async def livez(request: web.Request) -> web.Response:
    """The process is alive and its loop turns."""
    return web.json_response({"status": "ok"})


READY_DATABASE_SECONDS = 0.6
READY_REDIS_SECONDS = 0.2  # reported, never required


async def readyz(request: web.Request) -> web.Response:
    """Ready when the main database answers and a catalog snapshot is loaded."""
    gw = request.app[GATEWAY]
    checks: dict[str, object] = {"catalog_version": gw.snapshot.version}
    ok = True
    # Within a load balancer's check timeout (HAProxy's `timeout check 1s` in
    # config/cluster/haproxy.cfg): found from outside, with the database hung /readyz took 2-4 s,
    # and a probe that gave up first saw a hang, not the 503.
    try:
        async with asyncio.timeout(READY_DATABASE_SECONDS):
            async with gw.pool.acquire(timeout=READY_DATABASE_SECONDS) as conn:
                await db.ping(conn)
        checks["database"] = "ok"
    except (OSError, TimeoutError, Exception) as exc:
        ok = False
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(READY_REDIS_SECONDS):
            checks["redis"] = await gw.limiter.redis_status()
    except TimeoutError:
        checks["redis"] = "unreachable"
    if gw.ledgers.split:
        # Each cluster's breaker, for the duty team: a cluster down defers its regions only, so
        # the node stays ready for every other region.
        checks["ledger_clusters"] = {
            c.name: gw.ledger_breaker(c.name).state for c in gw.ledgers.clusters
        }
    checks["status"] = "ok" if ok else "unavailable"
    return web.json_response(checks, status=200 if ok else 503)


SETTLEMENT_PATHS = ("/fsi/", "/hsa/")
INTERNAL_ERROR = "医保结算服务内部错误，交易未生效，请稍后使用相同报文ID重试"


@web.middleware
async def answer_always(request: web.Request, handler: Any) -> web.StreamResponse:
    """Whatever escapes a handler becomes an answer in the caller's own terms: an envelope on
    the settlement endpoints, a JSON error on the console's API; never aiohttp's bare 500."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if isinstance(request.match_info, MatchInfoError) and exc.status in (404, 405):
            # No route could take it at all (`OPTIONS *`, a path without its leading slash):
            # the catch-all routes never saw it, and it got aiohttp's plain text (found from
            # outside).
            return _wrong_address(request, exc.status)
        raise
    except Exception:
        access.exception("unhandled failure", extra={"path": request.path})
        if request.path.startswith(SETTLEMENT_PATHS):
            return _envelope_error(INTERNAL_ERROR)
        return web.json_response({"error": "服务内部错误，操作未生效，请稍后重试"}, status=500)


def build_app(settings: Settings) -> web.Application:
    """The application with its resources tied to its lifetime."""
    # Settlement bodies are read by gateway.pipeline.edge with their own limits; this bound is for the
    # console's forms and JSON, which are small.
    app = web.Application(
        client_max_size=CONSOLE_MAX_BODY, middlewares=[mark_requests, answer_always]
    )
    emergency.install()
    overload, edge = settings.config.overload, settings.config.http
    admission = Admission(overload.max_in_flight, overload.share, overload.latency_target_ms / 1000)
    guard = ConnectionGuard(edge)
    uploads = UploadBudget(
        per_institution=edge.uploads_per_institution,
        rate=edge.upload_bytes_per_second,
        burst=edge.upload_burst_bytes,
        floor=edge.upload_min_bytes,
    )
    pacer = Pacer(edge)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        gw = await Gateway.start(
            settings, group_commit=GroupCommit.for_process, group_read=GroupRead.for_process
        )
        app[GATEWAY] = gw
        await gw.recall_answers()
        await emergency.take_over_dead_segments(gw)
        reconcile.start_readers(gw.config.reconcile_files)
        metrics.prime(
            transaction.TRANSACTIONS,
            [i.fixmedins_code for i in gw.snapshot.institutions],
            list(FUND_NAMES),
        )
        if settings.auth:
            credentials = await asyncio.to_thread(load_credentials, settings.credentials_path)
            verifier = app[VERIFIER] = Verifier(credentials, gw.redis, gw.nonces)
            gw.institution_secrets = credentials
            verifier.gate.breaker = gw.breakers["redis"]
        tasks = [
            asyncio.create_task(gw.watch_catalog()),
            asyncio.create_task(gw.watch_plan()),
            asyncio.create_task(emergency.watch_ledger(gw)),
            asyncio.create_task(gw.purge_idempotency()),
        ]
        if gw.redis is not None:
            tasks.append(asyncio.create_task(gw.listen_catalog_changes()))
        shadow = app[SHADOW] = parallel_run.Shadow(gw)
        parallel_run.install(shadow)
        heap.settle_after_start()
        try:
            yield
        finally:
            await parallel_run.uninstall(shadow)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            reconcile.stop_readers()
            await gw.close()
            app[ACCESS_LOG].flush()

    app.cleanup_ctx.append(resources)
    app[ACCESS_LOG] = AccessLog(access)
    app[ADMISSION] = admission
    app[GUARD] = guard
    app[UPLOADS] = uploads
    app[PACER] = pacer
    app.router.add_post(
        "/fsi/api/rsfComIfsService/callService", call_service, expect_handler=continue_when_read
    )
    app.router.add_post("/hsa/hgs/{infno}", call_by_path, expect_handler=continue_when_read)
    for path, infno in SERVICE_PATHS.items():
        app.router.add_post(path, _by_service_path(infno), expect_handler=continue_when_read)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_endpoint)
    install_console(app, settings.operators_path)
    # Last: what no route above takes (their methods' and paths' neighbours).
    # (A body they would never read is not invited either: `Expect` is answered with the
    # envelope, not "100 Continue".)
    app.router.add_route(
        "*",
        "/fsi/api/rsfComIfsService/callService",
        not_an_interface,
        expect_handler=continue_when_read,
    )
    app.router.add_route(
        "*", "/hsa/hgs/{infno}", not_an_interface, expect_handler=continue_when_read
    )
    for path in SERVICE_PATHS:
        app.router.add_route("*", path, not_an_interface, expect_handler=continue_when_read)
    app.router.add_route("*", "/{tail:.*}", not_an_interface, expect_handler=continue_when_read)
    return app


async def not_an_interface(request: web.Request) -> web.Response:
    """A path or method no interface answers, in the envelope: found from outside, a trailing
    slash, a case change or a GET was answered aiohttp's plain-text 404/405, which a HIS reads
    as a network failure (no infcode). The status stays 404/405, so that no health check or
    proxy takes a wrong address for a live one."""
    known = "tail" not in request.match_info  # an interface's address, asked the wrong way
    return _wrong_address(request, 405 if known else 404)


def _wrong_address(request: web.Request, status: int) -> web.Response:
    path = request.path if len(request.path) <= 60 else request.path[:60] + "…"
    body = encode_response(
        region=request.app[GATEWAY].region,
        received=dt.datetime.now(),
        output=None,
        err_msg=(
            f"接口地址或请求方法错误（{request.method} {path}）：医保交易请以POST发送至"
            "/fsi/api/rsfComIfsService/callService、/hsa/hgs/{交易编号}或该交易的服务地址"
            "（如1101：/fsi/api/fsiPsnInfoService/queryPsnInfo）"
        ),
    )
    response = web.Response(body=body, content_type="application/json", status=status)
    if awaits_continue(request):
        response.force_close()
    return response


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _serve(app: web.Application, host: str, port: int, reuse_port: bool, idle: float) -> None:
    # The stop signals set an event, not aiohttp's GracefulExit: raised from the loop's signal
    # callback, that left the loop at once, and asyncio.run then cancelled every task, the
    # requests in flight among them, whose tills were reset mid-sale (found from outside, on
    # every stop and every deploy). Here the runner's cleanup runs first, in the loop: the
    # listening sockets close, requests in flight get `shutdown_timeout` to be answered.
    runner = EdgeRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=10, keepalive_timeout=idle
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def stopping(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping, sig)
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        await stop.wait()
        # Said in the log (found from outside: a clean stop and a kill left the same silence).
        log.warning(
            "stopping: the requests in flight are answered first",
            extra={"signal": received[0].name, "in_flight": app[ADMISSION].in_flight},
        )
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # graceful: in-flight requests get shutdown_timeout to finish
    log.warning("stopped", extra={"signal": received[0].name})


def serve(settings: Settings, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, with every connection under the edge's guard."""
    idle = settings.config.http.idle_seconds
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(_serve(build_app(settings), host, port, reuse_port, idle))
