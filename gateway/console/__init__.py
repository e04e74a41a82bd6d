"""The emergency team's console (`/console`) and the same operations as a JSON API (`/api/…`).

Operators log in (role viewer or operator); only operators change anything, every change needs
a reason and lands in the hash-chained audit log, and takes effect in every process within 2 s
(this process at once, the others by the Redis announcement or their poll).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway import audit, operators
from gateway.console import pages
from gateway.errors import GatewayError
from gateway.plan import status, store

COOKIE = "sgw_console"
OPERATORS = web.AppKey("operators", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _see_other(location: str) -> web.Response:
    """A 303 that can carry cookies (an HTTPException is not a response to decorate)."""
    return web.Response(status=303, headers={"Location": location})


def install(app: web.Application, gateway_key: Any, operators_path: Path) -> None:
    """Add the console's routes to the application."""
    app[OPERATORS] = operators.load_operators(operators_path)

    def gw(request: web.Request) -> Any:
        return request.app[gateway_key]

    async def session_of(request: web.Request) -> operators.Session | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        async with gw(request).pool.acquire(timeout=5.0) as conn:
            return await operators.find_session(conn, token)

    async def check_login(request: web.Request) -> operators.Operator | None:
        if request.content_type == "application/json":
            try:
                doc = await request.json()
            except (ValueError, UnicodeDecodeError):
                return None
            if not isinstance(doc, dict):
                return None
            login, password = str(doc.get("operator", "")), str(doc.get("password", ""))
        else:
            form = await request.post()
            login, password = str(form.get("operator", "")), str(form.get("password", ""))
        found = request.app[OPERATORS].get(login)
        if found is None or not operators.check_password(found.password, password):
            return None
        return found  # type: ignore[no-any-return]

    async def overview(request: web.Request) -> dict[str, Any]:
        g = gw(request)
        async with g.pool.acquire(timeout=5.0) as conn:
            return await status.overview(conn, g.plan, g.breaker_states(), dt.datetime.now())

    async def change(
        request: web.Request, session: operators.Session, what: str, values: dict[str, str]
    ) -> None:
        """Set or clear a rule as this operator; raises GatewayError with a clerk's message."""
        g = gw(request)
        async with g.pool.acquire(timeout=5.0) as conn:
            if what == "set":
                await store.set_rule(
                    conn,
                    scope=values.get("scope", "").strip(),
                    klass=values.get("class", ""),
                    action=values.get("action", ""),
                    reason=values.get("reason", ""),
                    operator=session.login,
                )
            else:
                await store.clear_rule(
                    conn,
                    scope=values.get("scope", "").strip(),
                    klass=values.get("class", ""),
                    reason=values.get("reason", ""),
                    operator=session.login,
                )
        await g.reload_plan(force=True)
        await g.announce_plan_change()

    # ------------------------------------------------------------------------------ the page

    async def login_page(request: web.Request) -> web.Response:
        return web.Response(text=pages.login(), content_type="text/html")

    async def login_post(request: web.Request) -> web.StreamResponse:
        found = await check_login(request)
        if found is None:
            return web.Response(
                text=pages.login("账号或密码不正确"), content_type="text/html", status=401
            )
        async with gw(request).pool.acquire(timeout=5.0) as conn:
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

    async def logout(request: web.Request) -> web.StreamResponse:
        session = await session_of(request)
        if session is not None:
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), operators.csrf_token(session)):
                raise web.HTTPForbidden(text="表单已失效，请刷新页面后重试")
            async with gw(request).pool.acquire(timeout=5.0) as conn:
                await operators.close_session(conn, session.token)
        response = _see_other("/console/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def page(request: web.Request) -> web.Response:
        session = await session_of(request)
        if session is None:
            raise web.HTTPSeeOther("/console/login")
        view = await overview(request)
        async with gw(request).pool.acquire(timeout=5.0) as conn:
            rows = await audit.recent(conn, 30)
        html = pages.console(
            view,
            rows,
            login_name=session.login,
            role=session.role,
            csrf=operators.csrf_token(session),
            message=request.query.get("msg", ""),
            error=request.query.get("err", ""),
        )
        return web.Response(text=html, content_type="text/html")

    def form_change(what: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            session = await session_of(request)
            if session is None:
                raise web.HTTPSeeOther("/console/login")
            if not session.may_change:
                raise web.HTTPForbidden(text="只读账号不能修改应急预案")
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), operators.csrf_token(session)):
                raise web.HTTPForbidden(text="表单已失效，请刷新页面后重试")
            values = {k: str(v) for k, v in form.items() if k != "csrf"}
            try:
                await change(request, session, what, values)
            except GatewayError as exc:
                raise web.HTTPSeeOther("/console?" + urlencode({"err": exc.err_msg})) from None
            done = "已生效" if what == "set" else "已恢复正常"
            target = f"{values.get('scope', '').strip()}/{values.get('class', '')}"
            raise web.HTTPSeeOther("/console?" + urlencode({"msg": f"{target} {done}"}))

        return handler

    # -------------------------------------------------------------------------------- the API

    async def api_login(request: web.Request) -> web.Response:
        found = await check_login(request)
        if found is None:
            return web.json_response({"error": "账号或密码不正确"}, status=401)
        async with gw(request).pool.acquire(timeout=5.0) as conn:
            session = await operators.open_session(conn, found)
        return web.json_response(
            {
                "token": session.token,
                "role": session.role,
                "expires_at": session.expires_at.isoformat(),
            }
        )

    def api(
        handler: Callable[[web.Request, operators.Session], Awaitable[web.Response]],
        *,
        changes: bool,
    ) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await session_of(request)
            if session is None:
                return web.json_response({"error": "请先登录"}, status=401)
            if changes and not session.may_change:
                return web.json_response({"error": "只读账号不能修改应急预案"}, status=403)
            return await handler(request, session)

        return guarded

    async def api_plan(request: web.Request, session: operators.Session) -> web.Response:
        return web.json_response(await overview(request))

    async def api_audit(request: web.Request, session: operators.Session) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 500))
        except ValueError:
            limit = 50
        async with gw(request).pool.acquire(timeout=5.0) as conn:
            return web.json_response(await audit.recent(conn, limit))

    def api_change(
        what: str,
    ) -> Callable[[web.Request, operators.Session], Awaitable[web.Response]]:
        async def handler(request: web.Request, session: operators.Session) -> web.Response:
            try:
                doc = await request.json()
            except (ValueError, UnicodeDecodeError):
                return web.json_response({"error": "请求体不是有效的JSON"}, status=400)
            if not isinstance(doc, dict):
                return web.json_response({"error": "请求体应为JSON对象"}, status=400)
            try:
                await change(request, session, what, {k: str(v) for k, v in doc.items()})
            except GatewayError as exc:
                return web.json_response({"error": exc.err_msg}, status=400)
            return web.json_response(await overview(request))

        return handler

    app.router.add_get("/console/login", login_page)
    app.router.add_post("/console/login", login_post)
    app.router.add_post("/console/logout", logout)
    app.router.add_get("/console", page)
    app.router.add_post("/console/rules/set", form_change("set"))
    app.router.add_post("/console/rules/clear", form_change("clear"))
    app.router.add_post("/api/console/login", api_login)
    app.router.add_get("/api/plan", api(api_plan, changes=False))
    app.router.add_post("/api/plan/rules", api(api_change("set"), changes=True))
    app.router.add_post("/api/plan/rules/clear", api(api_change("clear"), changes=True))
    app.router.add_get("/api/audit", api(api_audit, changes=False))
