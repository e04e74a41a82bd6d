"""The console's route table: what the application serves, and which API routes change things."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.emergency.console import ROUTES, ApiRoute, install


def test_the_application_serves_the_table() -> None:
    app = web.Application()
    install(app, Path("/nonexistent/operators.toml"))  # no file: nobody may log in
    served = sorted((r.method, r.resource.canonical) for r in app.router.routes() if r.resource)
    table = [(r.method, r.path) for r in ROUTES]
    heads = [("HEAD", path) for method, path in table if method == "GET"]
    assert served == sorted(table + heads)
    assert len(set(table)) == len(table)


def test_the_api_routes_that_change_things_are_its_posts() -> None:
    api = [r for r in ROUTES if isinstance(r, ApiRoute)]
    assert api and all(r.path.startswith("/api/") for r in api)
    assert all(r.changes == (r.method == "POST") for r in api)


async def test_a_change_from_another_site_is_refused_before_its_session_is_looked_up() -> None:
    # The application holds no gateway: a guard that looked for the session would fail.
    app = web.Application()
    install(app, Path("/nonexistent/operators.toml"))
    refused = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path", "")
        if route.method != "POST" or not path.startswith("/api/") or path.endswith("/login"):
            continue
        request = make_mocked_request(
            "POST",
            info["path"],
            headers={"Origin": "https://elsewhere.example", "Host": "gateway.example"},
            app=app,
        )
        response = await route.handler(request)
        assert isinstance(response, web.Response) and response.status == 403, info
        assert json.loads(response.text or "") == {"error": "拒绝来自其他站点的请求"}
        refused.append(path)
    agency = [
        f"/api/console/claims/{name}"
        for name in ("batch-review", "lines", "register", "review", "settle", "withdraw")
    ] + [
        f"/api/console/payouts/{name}"
        for name in ("account", "approve", "batch", "export", "return")
    ]
    assert sorted(refused) == sorted(
        ["/api/console/lockouts/clear", "/api/plan/rules", "/api/plan/rules/clear", *agency]
    )
