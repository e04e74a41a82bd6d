"""The emergency team's console (`/console`) and the same operations as a JSON API (`/api/…`).

Operators log in (role viewer or operator); only operators change anything, every change needs
a reason and lands in the hash-chained audit log, and takes effect in every process within 2 s
(this process at once, the others by the Redis announcement or their poll).

The agency's pages and API (manual claims and payouts, gateway.emergency.console.agency) are for
the roles clerk, reviewer and approver: each API route names the roles that may use it
(`ApiRoute.roles`), and its steps are the agency's services, audited there.

Log-ins are throttled (gateway.emergency.operators); the locks are listed on the page and at
`/api/console/lockouts`, and operators clear them there. Every change comes from the console's own
origin: forms carry the session's CSRF token, API calls are JSON and, when the session came from
the cookie, carry it in `X-CSRF-Token`; every answer forbids framing and scripts (CSP).

The routes are one table (`ROUTES`), each JSON API route marked with whether it changes things;
`install` adds the table, the security headers and the hasher's shutdown. The handlers find the
Gateway, the operators and the hasher on the application, under typed keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import asyncpg
import msgspec
from aiohttp import web

from adapters.national.repeated_keys import refuse_repeated_keys
from gateway.app.appkeys import GATEWAY
from gateway.emergency import operators
from gateway.emergency.console import agency, pages, parallel_run
from gateway.emergency.plan import status, store
from gateway.ledger import db
from gateway.ops import audit
from gateway.pipeline.edge import PACER
from gateway.protocol.errors import BadRequest, Conflict, GatewayError, NotFound, Unavailable
from gateway.services import claim_form

if TYPE_CHECKING:
    from gateway.app.runtime import Gateway

COOKIE = "sgw_console"
CSRF_HEADER = "X-CSRF-Token"
OPERATORS = web.AppKey("operators", dict[str, operators.Operator])  # by log-in name
HASHER = web.AppKey("hasher", operators.Hasher)
# The console's requests hold at most this many of the pool's connections at once: found from
# outside, four console reads waiting on locked tables took every connection of a small pool,
# and a counter's 1101 and /readyz failed while the page said the counters were unaffected.
CONSOLE_CONNECTIONS = 2
LOGIN_PATHS = ("/console/login", "/api/console/login")
SLOTS = web.AppKey("console_slots", asyncio.Semaphore)
log = logging.getLogger("gateway.emergency.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A JSON API handler, given the session its guard found (gateway.emergency.console._guarded).
ApiHandler = Callable[[web.Request, operators.Session], Awaitable[web.Response]]
# How long the page waits for each ledger cluster's count of deferred claims.
CLUSTER_WAIT = 2.0
LOGIN_MAX_BODY = 4096  # a name and a password
BUSY = "登录请求过多，请稍后再试"
# Served with every console page and API answer: no scripts, no framing, forms post only here;
# each page's one inline style is allowed by its hash.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src '{pages.STYLE_HASH}' '{claim_form.STYLE_HASH}'"
        f" '{parallel_run.STYLE_HASH}';"
        " form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` with the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A console request refused with a status and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def same_origin(request: web.Request) -> bool:
    """False for a request a browser sent from another site: its Origin names another host, or
    Fetch metadata says cross-site. Tools that send neither (curl, the CLI's clients) pass."""
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def refusal_text(lock: operators.Lockout, policy: operators.LoginPolicy) -> str:
    """What a refused log-in is told: a lock on this address (for every name or for this one),
    or a name slowed down because others are guessing at it."""
    until = lock.locked_until.astimezone() if lock.locked_until else None
    if lock.kind == "operator":
        when = f"{until:%H:%M:%S}" if until else ""
        return (
            f"该账号近期多次登录失败，正在限速（每{policy.guarded_interval_seconds:g}秒受理一次）："
            f"请于{when}后再试；常用的登录电脑不受此限"
        )
    whom = "本机地址" if lock.kind == "address" else "该账号在本机地址"
    return (
        f"登录失败次数过多，{whom}已锁定至{until:%H:%M}；请稍后再试或联系值班负责人解锁"
        if until
        else f"登录失败次数过多，{whom}已锁定；请联系值班负责人解锁"
    )


def flash_signature(session: operators.Session, kind: str, text: str) -> str:
    """A page message travels in the redirect's query with this signature, so that a link
    crafted elsewhere cannot make the console show words of its author's choosing."""
    key = operators.csrf_token(session).encode()
    return hmac.new(key, f"{kind}:{text}".encode(), hashlib.sha256).hexdigest()[:32]


CONTROL = "含有不可见的控制字符（如NUL），请检查后重新输入"


def has_nul(value: Any) -> bool:
    """Whether a NUL is in any text of a decoded document: PostgreSQL's text cannot hold one,
    and the statement failing on it answered HTTP 500 (found from outside)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def _decode_json(body: bytes) -> Any:
    try:
        doc = msgspec.json.decode(body)
    except RecursionError:
        raise Refused(400, "请求体JSON嵌套层数过多") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise Refused(400, "请求体不是合法的UTF-8 JSON") from None
    if has_nul(doc):
        raise Refused(400, CONTROL)
    try:
        # As the national envelope: which of two values of a key is read must not be a question
        # (found from outside: a reason sent twice, the second one audited).
        refuse_repeated_keys(body)
    except BadRequest as exc:
        raise Refused(400, exc.err_msg) from None
    return doc


def _see_other(location: str) -> web.Response:
    """A 303 that can carry cookies (an HTTPException is not a response to decorate)."""
    return web.Response(status=303, headers={"Location": location})


async def session_via(request: web.Request) -> tuple[operators.Session | None, bool]:
    """The session, and whether it came from the cookie (what a forged request carries)."""
    header = request.headers.get("Authorization", "")
    from_cookie = not header.startswith("Bearer ")
    token = request.cookies.get(COOKIE, "") if from_cookie else header[7:]
    async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
        return await operators.find_session(conn, token), from_cookie


async def session_of(request: web.Request) -> operators.Session | None:
    return (await session_via(request))[0]


async def credentials(request: web.Request, *, json_only: bool) -> tuple[str, str]:
    if request.content_length is not None and request.content_length > LOGIN_MAX_BODY:
        raise Refused(413, "请求过大")
    if request.content_type == "application/json":
        try:
            doc = _decode_json(await request.read())
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, "请求过大") from None
    elif json_only:
        raise Refused(415, "请求体须为JSON（Content-Type: application/json）")
    else:
        try:
            doc = dict(await request.post())
        except (ValueError, UnicodeDecodeError, web.HTTPRequestEntityTooLarge):
            raise Refused(400, "登录表单无法识别") from None
    if not isinstance(doc, dict):
        raise Refused(400, "请求体应为JSON对象")
    login, password = doc.get("operator", ""), doc.get("password", "")
    if not isinstance(login, str) or not isinstance(password, str):
        raise Refused(400, "账号和密码应为文本")
    return login, password


async def check_login(request: web.Request, *, json_only: bool) -> operators.Operator:
    """The operator these credentials prove; raises Refused. Throttled per name and per
    address; an unknown name is hashed like a known one, on the hasher's threads.

    The hashing budget is asked first, from memory: an attempt it refuses costs neither a
    hash nor the ledger's throttle rows (a flood of made-up names used to cost two ledger
    transactions a guess before it was answered busy). Only a known name can have desks, so
    only a known name past its budget is looked up before it is refused."""
    if not same_origin(request):
        raise Refused(403, "拒绝来自其他站点的登录请求")
    login, password = await credentials(request, json_only=json_only)
    gw = request.app[GATEWAY]
    policy = gw.config.login
    hasher = request.app[HASHER]
    hasher.configure(policy)
    if hasher.pending >= policy.hash_threads + policy.hash_queue:
        raise Refused(429, BUSY)
    found = request.app[OPERATORS].get(login)
    known = found is not None
    address = request.remote or ""
    paid = hasher.take(login, known=known)
    if not paid and not known:
        raise Refused(429, BUSY)
    async with gw.pool.acquire(timeout=5.0) as conn:
        if not paid and not (
            policy.trusted(address) or await operators.is_desk(conn, login, address)
        ):
            raise Refused(429, BUSY)
        lock = await operators.reserve_attempt(conn, policy, login, address)
        desk = lock is None and not paid
    if lock is not None:
        if paid:
            hasher.give_back(login, known=known)
        raise Refused(429, refusal_text(lock, policy))
    try:
        ok = await hasher.check(
            found.password if found else None, password, desk=desk, name=login, paid=paid
        )
    except operators.HashersBusy:
        if paid:
            hasher.give_back(login, known=known)
        raise Refused(429, BUSY) from None
    async with gw.pool.acquire(timeout=5.0) as conn:
        await operators.settle_attempt(conn, policy, login, address, ok)
    if found is None or not ok:
        raise Refused(401, "账号或密码不正确")
    return found


async def held(request: web.Request, refused: Refused) -> None:
    """A log-in refused busy or locked is answered after the edge's pause: it cost little,
    and a guesser that sends the next one as soon as it is answered gets one a pause per
    connection instead of as many as it can send."""
    pacer = request.app.get(PACER)
    if refused.status == 429 and pacer is not None:
        await pacer.hold()


async def overview(request: web.Request) -> dict[str, Any]:
    gw = request.app[GATEWAY]
    async with gw.pool.acquire(timeout=5.0) as conn, _clusters(gw) as (clusters, unreachable):
        return await status.overview(
            conn,
            gw.plan,
            gw.breaker_states(),
            dt.datetime.now(),
            [c for _, c in clusters],
            unreachable,
        )


@contextlib.asynccontextmanager
async def _clusters(
    gw: Gateway,
) -> AsyncIterator[tuple[list[tuple[str, asyncpg.Connection]], list[str]]]:
    """A connection to each ledger cluster that answers (none unless the ledger is split by
    region), and the names of those that do not. A cluster whose breaker is open is the outage
    the team is looking at: the page says so instead of waiting on it."""
    async with contextlib.AsyncExitStack() as stack:
        reached, unreachable = [], []
        for cluster in gw.ledgers.clusters:
            try:
                if gw.ledger_breaker(cluster.name).is_open:
                    raise TimeoutError
                conn = await stack.enter_async_context(db.leased(cluster.pool, CLUSTER_WAIT))
                reached.append((cluster.name, conn))
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                unreachable.append(cluster.name)
        yield reached, unreachable


async def recent_audit(gw: Gateway, limit: int) -> list[dict[str, Any]]:
    """The latest audit rows of every ledger database that answers, newest first: a desk's step
    is audited in the database it ran in (each database keeps its own chain); `ledger` names it."""
    async with gw.pool.acquire(timeout=5.0) as conn, _clusters(gw) as (clusters, _):
        rows = []
        for name, c in [("main", conn), *clusters]:
            rows += [{**r, "ledger": name} for r in await audit.recent(c, limit)]
    return sorted(rows, key=lambda r: str(r["at"]), reverse=True)[:limit]


async def set_rule(
    request: web.Request, session: operators.Session, values: dict[str, str]
) -> None:
    """Set a rule as this operator; raises GatewayError with a clerk's message."""
    gw = request.app[GATEWAY]
    store.check_routable(values.get("action", ""), gw.config.legacy.url, values.get("class", ""))
    async with gw.pool.acquire(timeout=5.0) as conn:
        await store.set_rule(
            conn,
            scope=values.get("scope", "").strip(),
            klass=values.get("class", ""),
            action=values.get("action", ""),
            reason=values.get("reason", ""),
            operator=session.login,
        )
    await gw.reload_plan(force=True)
    await gw.announce_plan_change()


async def clear_rule(
    request: web.Request, session: operators.Session, values: dict[str, str]
) -> None:
    """Clear a rule as this operator; raises GatewayError with a clerk's message."""
    gw = request.app[GATEWAY]
    # The rule as the page showed it, where the request says (the console's form does; an API
    # caller may, either or both): cleared only if it is still that rule.
    try:
        async with gw.pool.acquire(timeout=5.0) as conn:
            await store.clear_rule(
                conn,
                scope=values.get("scope", "").strip(),
                klass=values.get("class", ""),
                reason=values.get("reason", ""),
                operator=session.login,
                shown_action=values.get("action") or None,
                shown_set_at=values.get("set_at") or None,
            )
    except Conflict:
        # Refused as out of date: the page that answers shows the rule as it is now, not the
        # process's copy of the plan from before the other operator's change.
        await gw.reload_plan(force=True)
        raise
    await gw.reload_plan(force=True)
    await gw.announce_plan_change()


async def lockout_list(request: web.Request) -> list[dict[str, Any]]:
    gw = request.app[GATEWAY]
    async with gw.pool.acquire(timeout=5.0) as conn:
        found = await operators.lockouts(conn, gw.config.login)
    return [lock.as_json() for lock in found]


async def unlock(request: web.Request, session: operators.Session, values: dict[str, Any]) -> str:
    """Clear one name's or address's lock as this operator; raises GatewayError."""
    kind, key = agency.text_field(values, "kind"), agency.text_field(values, "key")
    reason = audit.reason_given(agency.text_field(values, "reason"), "解除登录锁定必须填写原因")
    async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
        try:
            await operators.clear_lockout(conn, kind, key, operator=session.login, reason=reason)
        except operators.NoSuchLockout:
            raise NotFound("没有这条登录锁定记录") from None
    return f"{pages.LOCK_KINDS.get(kind, kind)} {key} 已解除锁定"


# ------------------------------------------------------------------------------ the page


def flash(session: operators.Session, kind: str, text: str) -> web.HTTPSeeOther:
    query = urlencode({kind: text, "sig": flash_signature(session, kind, text)})
    return web.HTTPSeeOther("/console?" + query)


def shown(request: web.Request, session: operators.Session, kind: str) -> str:
    text = request.query.get(kind, "")
    sig = request.query.get("sig", "")
    if text and hmac.compare_digest(sig.encode(), flash_signature(session, kind, text).encode()):
        return text
    return ""  # not one this console wrote: not shown


async def login_page(request: web.Request) -> web.Response:
    return web.Response(text=pages.login(), content_type="text/html")


async def login_post(request: web.Request) -> web.StreamResponse:
    try:
        found = await check_login(request, json_only=False)
    except Refused as exc:
        await held(request, exc)
        return web.Response(
            text=pages.login(exc.message), content_type="text/html", status=exc.status
        )
    async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
        session = await operators.open_session(conn, found)
    response = _see_other("/console")
    response.set_cookie(
        COOKIE,
        session.token,
        httponly=True,
        samesite="Strict",
        max_age=operators.SESSION_HOURS * 3600,
        path="/",
    )
    return response


async def form_of(request: web.Request, session: operators.Session) -> dict[str, str]:
    """A console form's fields, once it is known to come from the console's own page."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="拒绝来自其他站点的请求")
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="表单无法识别") from None
    agency.refuse_unreadable(form)
    if not hmac.compare_digest(
        str(form.get("csrf", "")).encode(), operators.csrf_token(session).encode()
    ):
        raise web.HTTPForbidden(text="表单已失效，请刷新页面后重试")
    fields = {k: str(v) for k, v in form.items() if k != "csrf"}
    if has_nul(fields):
        raise web.HTTPBadRequest(text=CONTROL)
    return fields


async def logout(request: web.Request) -> web.StreamResponse:
    session = await session_of(request)
    if session is not None:
        await form_of(request, session)
        async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
            await operators.close_session(conn, session.token)
    response = _see_other("/console/login")
    response.del_cookie(COOKIE, path="/")
    return response


async def page(request: web.Request) -> web.Response:
    session = await session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    view = await overview(request)
    rows = await recent_audit(request.app[GATEWAY], 30)
    html = pages.console(
        view,
        rows,
        login_name=session.login,
        role=session.role,
        csrf=operators.csrf_token(session),
        message=shown(request, session, "msg"),
        error=shown(request, session, "err"),
        lockouts=await lockout_list(request),
    )
    return web.Response(text=html, content_type="text/html")


# Found from outside: an agency clerk clearing a log-in lock was told it was read-only and that
# the plan could not be changed: neither was what it had asked.
NOT_THE_DUTY_TEAM = (
    "只有应急值班账号（operator）能修改应急预案或解除登录锁定，当前账号（只读或经办）不能办理"
)


async def changing_form(request: web.Request) -> tuple[operators.Session, dict[str, str]]:
    """The session and fields of a form that changes something; a visitor without a session
    is sent to log in, a viewer is refused."""
    session = await session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    if not session.may_change:
        raise web.HTTPForbidden(text=NOT_THE_DUTY_TEAM)
    return session, await form_of(request, session)


async def set_rule_form(request: web.Request) -> web.StreamResponse:
    session, values = await changing_form(request)
    try:
        await set_rule(request, session, values)
    except GatewayError as exc:
        raise flash(session, "err", exc.err_msg) from None
    raise flash(session, "msg", f"{_rule_target(values)} 已生效")


async def clear_rule_form(request: web.Request) -> web.StreamResponse:
    session, values = await changing_form(request)
    try:
        await clear_rule(request, session, values)
    except GatewayError as exc:
        raise flash(session, "err", exc.err_msg) from None
    raise flash(session, "msg", f"{_rule_target(values)} 已恢复正常")


async def unlock_form(request: web.Request) -> web.StreamResponse:
    session, values = await changing_form(request)
    try:
        done = await unlock(request, session, values)
    except GatewayError as exc:
        raise flash(session, "err", exc.err_msg) from None
    raise flash(session, "msg", done)


def _rule_target(values: dict[str, str]) -> str:
    return f"{values.get('scope', '').strip()}/{values.get('class', '')}"


# -------------------------------------------------------------------------------- the API


async def api_login(request: web.Request) -> web.Response:
    try:
        found = await check_login(request, json_only=True)
    except Refused as exc:
        await held(request, exc)
        return web.json_response({"error": exc.message}, status=exc.status)
    async with request.app[GATEWAY].pool.acquire(timeout=5.0) as conn:
        session = await operators.open_session(conn, found)
    return web.json_response(
        {
            "token": session.token,
            "role": session.role,
            "expires_at": session.expires_at.astimezone().isoformat(),  # local, as the plan's
        }
    )


def _guarded(handler: ApiHandler, *, changes: bool, roles: tuple[str, ...] = ()) -> Handler:
    """The API handler behind its guard: a session (cookie or bearer token); for a change, the
    console's own origin, a JSON body, the CSRF header when the session came from the cookie,
    and one of `roles` (an operator's role when none are named)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if changes and not same_origin(request):
            return web.json_response({"error": "拒绝来自其他站点的请求"}, status=403)
        session, from_cookie = await session_via(request)
        if session is None:
            return web.json_response({"error": "请先登录"}, status=401)
        if changes:
            # A browser sends the cookie with any cross-site POST, even a text/plain one; it
            # cannot send JSON or a custom header there without asking first (CORS).
            if request.content_type != "application/json":
                return web.json_response(
                    {"error": "请求体须为JSON（Content-Type: application/json）"}, status=415
                )
            if from_cookie and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, "").encode(),
                operators.csrf_token(session).encode(),
            ):
                return web.json_response({"error": f"缺少或错误的{CSRF_HEADER}请求头"}, status=403)
            if not roles and not session.may_change:
                return web.json_response({"error": NOT_THE_DUTY_TEAM}, status=403)
        if roles and session.role not in roles:
            return web.json_response({"error": agency.refused_role(session)}, status=403)
        return await handler(request, session)

    return guarded


async def api_plan(request: web.Request, session: operators.Session) -> web.Response:
    return web.json_response(await overview(request))


async def api_audit(request: web.Request, session: operators.Session) -> web.Response:
    # Refused in words, as every other bad parameter of the API (found from outside: "abc",
    # -1 and 10**20 answered 200 with a list the asker did not ask for).
    sent = request.query.get("limit", "50")
    limit = int(sent) if sent.isascii() and sent.isdigit() and len(sent) <= 3 else 0
    if not 1 <= limit <= 500:
        return web.json_response({"error": f"limit应为1至500的整数，收到{sent[:20]}"}, status=400)
    return web.json_response(await recent_audit(request.app[GATEWAY], limit))


async def api_lockouts(request: web.Request, session: operators.Session) -> web.Response:
    return web.json_response(await lockout_list(request))


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        doc = _decode_json(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "请求过大") from None
    if not isinstance(doc, dict):
        raise Refused(400, "请求体应为JSON对象")
    return doc


RuleChange = Callable[[web.Request, operators.Session, dict[str, str]], Awaitable[None]]


_RULE_FIELDS = ("scope", "class", "action", "reason", "set_at")


async def _api_rule_change(
    request: web.Request, session: operators.Session, change: RuleChange
) -> web.Response:
    """A rule set or cleared from a JSON body; answers the plan as it is now."""
    try:
        doc = await json_body(request)
    except Refused as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    try:
        # Each field as text: a null or false reason written down as "None" or "False" was
        # taken (found from outside), and told every counter so.
        values = {k: agency.text_field(doc, k) for k in _RULE_FIELDS if k in doc}
        await change(request, session, values)
    except Conflict as exc:  # the rule changed since the caller saw it
        return web.json_response({"error": exc.err_msg}, status=409)
    except Unavailable as exc:  # the plan's tables held past the change's wait: not done
        return web.json_response({"error": exc.err_msg}, status=503)
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=400)
    return web.json_response(await overview(request))


async def api_set_rule(request: web.Request, session: operators.Session) -> web.Response:
    return await _api_rule_change(request, session, set_rule)


async def api_clear_rule(request: web.Request, session: operators.Session) -> web.Response:
    return await _api_rule_change(request, session, clear_rule)


async def api_unlock(request: web.Request, session: operators.Session) -> web.Response:
    """A lock cleared from a JSON body; answers the locks as they are now."""
    try:
        doc = await json_body(request)
    except Refused as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    try:
        await unlock(request, session, doc)
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=400)
    return web.json_response(await lockout_list(request))


async def parallel_run_page(request: web.Request) -> web.Response:
    """GET /console/parallel-run: the parallel run's differences, for any operator."""
    session = await session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    try:
        begins, ends = parallel_run.period(request.query, dt.datetime.now().astimezone())
    except parallel_run.PeriodRefused as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    html = parallel_run.render(await parallel_run.view(request, begins, ends))
    return web.Response(text=html, content_type="text/html")


async def api_parallel_run(request: web.Request, session: operators.Session) -> web.Response:
    try:
        begins, ends = parallel_run.period(request.query, dt.datetime.now().astimezone())
    except parallel_run.PeriodRefused as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(await parallel_run.view(request, begins, ends))


# ----------------------------------------------------------------------- routes and install


class Route(NamedTuple):
    """A page, a form's target or the API's log-in: the handler answers the request."""

    method: str
    path: str
    handler: Handler


class ApiRoute(NamedTuple):
    """A JSON API route: its handler runs behind the guard (`_guarded`), which hands it the
    session; `changes` says whether it changes the plan or the log-in locks."""

    method: str
    path: str
    handler: ApiHandler
    changes: bool
    # Who may act here (a read too, where named); (): for a change, the plan's operators.
    roles: tuple[str, ...] = ()


ROUTES: tuple[Route | ApiRoute, ...] = (
    Route("GET", "/console/login", login_page),
    Route("POST", "/console/login", login_post),
    Route("POST", "/console/logout", logout),
    Route("GET", "/console", page),
    Route("POST", "/console/rules/set", set_rule_form),
    Route("POST", "/console/rules/clear", clear_rule_form),
    Route("POST", "/console/lockouts/clear", unlock_form),
    Route("POST", "/api/console/login", api_login),
    ApiRoute("GET", "/api/plan", api_plan, changes=False),
    ApiRoute("POST", "/api/plan/rules", api_set_rule, changes=True),
    ApiRoute("POST", "/api/plan/rules/clear", api_clear_rule, changes=True),
    ApiRoute("GET", "/api/audit", api_audit, changes=False),
    ApiRoute("GET", "/api/console/lockouts", api_lockouts, changes=False),
    Route("GET", "/console/parallel-run", parallel_run_page),
    ApiRoute("GET", "/api/parallel-run", api_parallel_run, changes=False),
    ApiRoute("POST", "/api/console/lockouts/clear", api_unlock, changes=True),
    # The agency (gateway.emergency.console.agency): claims and payouts, pages and API.
    Route("GET", "/console/claims", agency.claims_page),
    Route("GET", "/console/claims/{claim_no}", agency.claim_page),
    Route("GET", "/console/claims/{claim_no}/form", agency.claim_print),
    Route("GET", "/console/payouts", agency.payouts_page),
    Route("GET", "/console/payouts/{batch_no}", agency.batch_page),
    *(
        Route("POST", f"/console/{a.group}/{a.name}", agency.form_handler(a))
        for a in agency.ACTIONS
    ),
    # The agency's records (patients, their bills, bank accounts) are its staff's alone: found
    # from outside, the emergency team's viewer and operator read them.
    ApiRoute("GET", "/api/console/claims", agency.api_claims, False, agency.STAFF),
    ApiRoute("GET", "/api/console/claims/{claim_no}", agency.api_claim, False, agency.STAFF),
    ApiRoute("GET", "/api/console/payouts", agency.api_payouts, False, agency.STAFF),
    ApiRoute("GET", "/api/console/payouts/{batch_no}", agency.api_batch, False, agency.STAFF),
    *(
        ApiRoute(
            "POST",
            f"/api/console/{a.group}/{a.name}",
            agency.api_handler(a),
            changes=True,
            roles=a.roles,
        )
        for a in agency.ACTIONS
    ),
)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(("/console", "/api/")):
        response.headers.update(SECURITY_HEADERS)


async def warm_hasher(app: web.Application) -> None:
    await app[HASHER].warm()


async def stop_hasher(app: web.Application) -> None:
    app[HASHER].close()


# Found from outside: with the ledger stopped, the console page, its API and its log-in
# answered HTTP 500 and logged a traceback each, at the moment the team needed them most.
LEDGER_DOWN_MSG = (
    "医保结算数据库暂时无法连接：应急预案、登录会话和审计记录都保存在数据库中，暂不能查看或变更"
    "（命令行同样需要数据库）；各网关的熔断器按配置自动执行保护动作，请稍后刷新"
)
# The page adds what this process knows without the database (found from outside: the words
# sent the officer to a command that needs the same database, and the API's to a table).
LEDGER_DOWN_PAGE_MSG = LEDGER_DOWN_MSG + "；本进程的熔断状态见下表"


_DOWN: tuple[type[Exception], ...] = (*db.UNAVAILABLE, Unavailable)


# A page or a read of the API answers within this, or says the database is slow: found from
# outside, with the plan's tables locked the console page waited 19 s, saying nothing, while the
# counters were served. Changes are not cut short (a write is either done or not; its answer
# waits for it).
READ_SECONDS = 10.0
LEDGER_SLOW_MSG = (
    "医保结算数据库繁忙：未能在时限内读出应急预案、登录会话或审计记录，请稍后刷新"
    f"（本控制台最多占用数据库连接池中的{CONSOLE_CONNECTIONS}个连接，不影响柜台结算；"
    "各网关的熔断器按配置自动执行保护动作）"
)


def _ledger_answers(handler: Handler, *, slotted: bool = True) -> Handler:
    """The handler, with an unreachable or slow database answered 503 in the caller's terms:
    the page says why and shows this process's breakers; the API a JSON error."""

    async def answered(request: web.Request) -> web.StreamResponse:
        deadline = asyncio.timeout(READ_SECONDS if request.method in ("GET", "HEAD") else None)
        slots = request.app[SLOTS] if slotted else contextlib.nullcontext()
        try:
            async with deadline, slots:
                return await handler(request)
        except _DOWN as exc:
            # Past the read's deadline, or no connection free within the pool's wait: the
            # database is busy, not out of reach (found from outside: a pool held by waiting
            # reads was told "暂时无法连接").
            slow = deadline.expired() or type(exc) is TimeoutError
            log.warning(
                "console: database slow" if slow else "console: database unreachable",
                extra={"path": request.path, "error": type(exc).__name__},
            )
            words = LEDGER_SLOW_MSG if slow else LEDGER_DOWN_MSG
            if request.path.startswith("/api/"):
                return web.json_response({"error": words}, status=503)
            gw = request.app[GATEWAY]
            page = words + "；本进程的熔断状态见下表" if slow else LEDGER_DOWN_PAGE_MSG
            return web.Response(
                text=pages.ledger_down(page, gw.breaker_states()),
                content_type="text/html",
                status=503,
            )

    return answered


def install(app: web.Application, operators_path: Path) -> None:
    """Add the console's routes, its security headers and its hasher to the application."""
    app[OPERATORS] = operators.load_operators(operators_path)
    app[HASHER] = operators.Hasher()
    app[SLOTS] = asyncio.Semaphore(CONSOLE_CONNECTIONS)
    app.on_response_prepare.append(security_headers)
    app.on_startup.append(warm_hasher)
    app.on_cleanup.append(stop_hasher)
    for route in ROUTES:
        handler = _ledger_answers(
            _guarded(route.handler, changes=route.changes, roles=route.roles)
            if isinstance(route, ApiRoute)
            else route.handler,
            # A log-in hashes between its two short reads; the hashing budget bounds how many
            # run at once, and a page waiting on a slot must not wait on a hash.
            slotted=route.path not in LOGIN_PATHS,
        )
        if route.method == "GET":
            app.router.add_get(route.path, handler)  # HEAD too, as aiohttp's GET routes have
        else:
            app.router.add_route(route.method, route.path, handler)
