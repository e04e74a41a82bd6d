"""The console's JSON API and pages: login, roles, reasons, audit rows, escaping."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.emergency import console
from gateway.emergency.plan import store
from tests.integration.conftest import Server

OPERATOR = {"operator": "duty", "password": "duty-2026"}
VIEWER = {"operator": "watch", "password": "watch-2026"}


async def _login(server: Server, who: dict[str, str]) -> str:
    async with server.session.post(server.url + "/api/console/login", json=who) as r:
        assert r.status == 200
        body = await r.json()
    token = body["token"]
    assert isinstance(token, str)
    return token


async def _post(server: Server, path: str, token: str, doc: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with server.session.post(server.url + path, json=doc, headers=headers) as r:
        return r.status, await r.json()


async def _counts(server: Server) -> tuple[int, int]:
    return (
        await server.fetchval("SELECT count(*) FROM plan_rules"),
        await server.fetchval("SELECT count(*) FROM audit_log"),
    )


async def test_login_roles_and_audited_changes(server: Server) -> None:
    async with server.session.post(
        server.url + "/api/console/login", json={"operator": "duty", "password": "wrong"}
    ) as r:
        assert r.status == 401
    async with server.session.get(server.url + "/api/plan") as r:
        assert r.status == 401
    viewer = await _login(server, VIEWER)
    before = await _counts(server)
    rule = {"scope": "region:520500", "class": "settlement", "action": "reject", "reason": "演练"}
    status, body = await _post(server, "/api/plan/rules", viewer, rule)
    assert status == 403 and "只有应急值班账号" in body["error"]
    assert await _counts(server) == before  # nothing written

    token = await _login(server, OPERATOR)
    status, body = await _post(server, "/api/plan/rules", token, {**rule, "reason": ""})
    assert status == 400 and "原因" in body["error"]
    assert await _counts(server) == before
    status, body = await _post(server, "/api/plan/rules", token, rule)
    assert status == 200
    shown = [r for r in body["rules"] if r["scope"] == "region:520500"]
    assert shown[0]["action"] == "reject" and shown[0]["operator"] == "duty"
    assert body["state"] == "degraded"
    row = (await server.fetch("SELECT * FROM audit_log ORDER BY audit_id DESC LIMIT 1"))[0]
    assert (row["operator"], row["action"], row["reason"]) == ("duty", "plan.set", "演练")
    assert row["before"] is None and row["after"]["action"] == "reject"

    clear = {"scope": "region:520500", "class": "settlement"}
    status, body = await _post(server, "/api/plan/rules/clear", token, clear)
    assert status == 400 and "原因" in body["error"]
    # A clear that says which rule it saw is refused once another was set in its place (found
    # from outside: a page left open cleared another operator's newer rule, unsaid).
    set_at = shown[0]["set_at"]
    earlier = (dt.datetime.fromisoformat(set_at) - dt.timedelta(seconds=1)).isoformat()
    # Either field alone is held to as well (found from outside: an action alone was ignored).
    for seen in (
        {"action": "defer", "set_at": set_at},
        {"action": "defer"},
        {"set_at": earlier},
    ):
        status, body = await _post(
            server, "/api/plan/rules/clear", token, {**clear, **seen, "reason": "结束"}
        )
        assert status == 409 and "设为reject" in body["error"], (seen, body)
        assert "请刷新页面" in body["error"]
    assert await server.fetchval("SELECT count(*) FROM plan_rules WHERE scope = 'region:520500'")
    status, body = await _post(
        server, "/api/plan/rules/clear", token, {**clear, "set_at": "yesterday", "reason": "结束"}
    )
    assert status == 400 and "不是时间" in body["error"], body
    # The same moment however written (found from outside: with a T it was refused as changed).
    same = dt.datetime.fromisoformat(set_at).astimezone(dt.timezone(dt.timedelta(hours=8)))
    seen = {"action": "reject", "set_at": same.isoformat()}
    status, body = await _post(
        server, "/api/plan/rules/clear", token, {**clear, **seen, "reason": "结束"}
    )
    assert status == 200 and not [r for r in body["rules"] if r["scope"] == "region:520500"]
    async with server.session.get(
        server.url + "/api/audit?limit=1", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        latest = (await r.json())[0]
    assert latest["action"] == "plan.clear" and latest["before"]["action"] == "reject"
    # A limit that is not 1–500 is refused in words (found from outside: answered 200).
    for bad in ("abc", "-1", "0", "501", "1" + "0" * 20, "１"):
        async with server.session.get(
            server.url + "/api/audit",
            params={"limit": bad},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            assert r.status == 400 and "limit" in (await r.json())["error"], bad


async def test_a_reason_or_scope_that_is_not_text_is_refused(server: Server) -> None:
    """Found from outside: a null or false reason was written down as "None" or "False", the
    rule came into force, and every counter was told "（None）". Each field is text or refused,
    and nothing is written."""
    token = await _login(server, OPERATOR)
    rule = {"scope": "region:520500", "class": "settlement", "action": "reject", "reason": "演练"}
    before = await _counts(server)
    for field, value in [
        ("reason", None),
        ("reason", False),
        ("reason", ["演练"]),
        ("reason", {"text": "演练"}),
        ("scope", None),
        ("action", True),
    ]:
        status, body = await _post(server, "/api/plan/rules", token, {**rule, field: value})
        assert status == 400 and f"{field}应为文本" in body["error"], (field, value, body)
        assert await _counts(server) == before, (field, value)
    # Too short, or with a control character: said so, not "fill in a reason".
    for reason, words in (("x", "过短"), ("演\x01练", "控制字符")):
        status, body = await _post(server, "/api/plan/rules", token, {**rule, "reason": reason})
        assert status == 400 and words in body["error"], (reason, body)
        assert await _counts(server) == before
    status, _ = await _post(server, "/api/plan/rules", token, rule)
    assert status == 200
    set_ = await _counts(server)
    clear = {"scope": "region:520500", "class": "settlement"}
    for value in (None, False):
        status, body = await _post(
            server, "/api/plan/rules/clear", token, {**clear, "reason": value}
        )
        assert status == 400 and "reason应为文本" in body["error"]
    assert await _counts(server) == set_
    status, _ = await _post(server, "/api/plan/rules/clear", token, {**clear, "reason": "结束"})
    assert status == 200
    reasons = [
        r["reason"]
        for r in await server.fetch(
            "SELECT reason FROM audit_log WHERE audit_id > $1 ORDER BY audit_id", 0
        )
    ]
    assert "None" not in reasons and "False" not in reasons


async def test_pages_need_login_escape_values_and_logout_ends_the_session(server: Server) -> None:
    async with server.session.get(server.url + "/console", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/login"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(server.url + "/console/login", data=OPERATOR) as r:
            assert r.status == 200 and "应急控制台" in await r.text()
        token = await _login(server, OPERATOR)
        hostile = {"scope": "institution:H44180000003", "class": "catalog", "action": "reject",
                   "reason": "<script>alert(1)</script>"}  # fmt: skip
        assert (await _post(server, "/api/plan/rules", token, hostile))[0] == 200
        async with browser.get(server.url + "/console") as r:
            html = await r.text()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        # The role in the words every page uses (found from outside: "operator" here, where
        # the agency's pages said 经办员 and the like).
        assert f"{OPERATOR['operator']}（应急值班员）" in html, html[:400]
        # The replayed claims' reimbursements are a sum, paid ones too, not what is still owed
        # (found from outside: "应支付参保人 2206.11 元" beside 2067.98 owed on the payouts page).
        owed = re.search(r'<p id="deferred">[^<]*', html)
        assert owed is not None and "补结算报销参保人合计" in owed.group(0), html
        assert "应支付参保人" not in owed.group(0) and "含已支付" in owed.group(0)
        # A form without the session's CSRF token is refused, and changes nothing.
        before = await _counts(server)
        async with browser.post(
            server.url + "/console/rules/clear",
            data={"scope": "institution:H44180000003", "class": "catalog", "reason": "x"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403
        assert await _counts(server) == before
        # Logging out (with the page's CSRF token) ends the session.
        async with browser.get(server.url + "/console") as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        async with browser.post(
            server.url + "/console/logout", data={"csrf": csrf.group(1)}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with browser.get(server.url + "/console", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/login"
    status, _ = await _post(server, "/api/plan/rules/clear", token,
                            {"scope": "institution:H44180000003", "class": "catalog", "reason": "收尾"})  # fmt: skip
    assert status == 200


async def test_a_viewer_refused_an_agency_step_is_told_on_a_page_it_may_read(
    server: Server,
) -> None:
    """Found from outside: a viewer's refused claim registration was sent to the claims list,
    which answers a viewer 403; it is told on the console's own page."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(server.url + "/console/login", data=VIEWER) as r:
            assert r.status == 200
        async with browser.get(server.url + "/console") as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        async with browser.post(
            server.url + "/console/claims/register",
            data={"csrf": csrf.group(1), "cert_no": "441800000000000001"},
            headers={"Origin": server.url},
            allow_redirects=False,
        ) as r:
            assert r.status == 303, await r.text()
            where = r.headers["Location"]
        assert where.startswith("/console?err="), where
        async with browser.get(server.url + where) as r:
            assert r.status == 200 and "当前账号（观察员）不能办理此项业务" in await r.text()


async def test_a_page_or_a_read_answers_when_the_database_is_slow(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: with the plan's tables locked the console page waited as long as
    the lock (19 s), saying nothing, while the counters were served. A page or a read answers
    within its deadline that the database is slow; nothing is written."""
    monkeypatch.setattr(console, "READ_SECONDS", 1.0)
    token = await _login(server, OPERATOR)
    locker = await asyncpg.connect(server.dsn)
    try:
        async with locker.transaction():
            await locker.execute(
                "LOCK TABLE plan_rules, audit_log, operator_sessions IN ACCESS EXCLUSIVE MODE"
            )
            started = time.monotonic()
            async with server.session.get(
                server.url + "/api/plan", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                api = (r.status, await r.json())
            async with server.session.get(
                server.url + "/console", headers={"Cookie": f"{console.COOKIE}={token}"}
            ) as r:
                page = (r.status, await r.text())
            waited = time.monotonic() - started
            # Many reads at once hold at most the console's share of the pool (found from
            # outside: four reads waiting on the lock took a small pool's every connection, and
            # the counters' calls and /readyz failed).
            most = await _most_waiting_while(server, locker, _reads(server, token, 6))
    finally:
        await locker.close()
    assert most <= console.CONSOLE_CONNECTIONS, most
    assert api[0] == 503 and "数据库繁忙" in api[1]["error"], api
    assert page[0] == 503 and "数据库繁忙" in page[1] and "熔断" in page[1], page
    assert waited < 5.0, waited  # two deadlines of a second, not the lock's length
    async with server.session.get(
        server.url + "/api/plan", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200  # the lock gone, read as usual


async def _reads(server: Server, token: str, n: int) -> list[int]:
    async def read() -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with server.session.get(server.url + "/api/plan", headers=headers) as r:
            return r.status

    return list(await asyncio.gather(*(read() for _ in range(n))))


async def _most_waiting_while(
    server: Server, locker: asyncpg.Connection, reads: Awaitable[list[int]]
) -> int:
    """The most of the gateway's connections waiting on a lock while `reads` run."""
    task = asyncio.ensure_future(reads)
    most = 0
    while not task.done():
        waiting = await locker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        most = max(most, waiting)
        await asyncio.sleep(0.05)
    assert set(await task) == {503}
    return int(most)


async def test_a_change_waits_a_bounded_time_for_the_plans_locks_and_the_same_rule_is_none(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: with the plan's tables locked, a rule set through the API waited the
    whole lock (23 s), where reads answer 503 within their deadline; and the same rule posted
    again counted as a change (a new version, an audit row, a page). A change waits for its
    locks a bounded time and is then refused whole, said so; the same rule again changes
    nothing."""
    monkeypatch.setattr(store, "CHANGE_WAIT_SECONDS", 1.0)
    token = await _login(server, OPERATOR)
    rule = {"scope": "region:330300", "class": "settlement", "action": "reject", "reason": "演练"}
    status, _ = await _post(server, "/api/plan/rules", token, rule)
    assert status == 200
    version = "SELECT version FROM plan_version"
    before, then = await _counts(server), await server.fetchval(version)
    status, body = await _post(server, "/api/plan/rules", token, rule)
    assert status == 200 and [r["action"] for r in body["rules"] if r["scope"] == rule["scope"]]
    assert (await _counts(server), await server.fetchval(version)) == (before, then)
    locker = await asyncpg.connect(server.dsn)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE plan_rules, audit_log IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            status, body = await _post(
                server, "/api/plan/rules", token, {**rule, "action": "defer", "reason": "改为暂存"}
            )
            waited = time.monotonic() - started
    finally:
        await locker.close()
    assert status == 503 and "本次变更未执行" in body["error"], (status, body)
    assert waited < 5.0, waited
    assert (await _counts(server), await server.fetchval(version)) == (before, then)
    kept = "SELECT action FROM plan_rules WHERE scope = 'region:330300'"
    assert await server.fetchval(kept) == "reject"
    status, _ = await _post(server, "/api/plan/rules/clear", token, {**rule, "reason": "演练结束"})
    assert status == 200


async def test_the_apis_times_are_in_the_gateways_local_time_as_the_plans_are(
    server: Server,
) -> None:
    """Found from outside: /api/audit and the log-in's expires_at were in UTC, /api/plan's
    set_at in local time, so a duty officer comparing an audit row with the rule it set saw
    eight hours between them. Every time the console's API gives carries the local offset."""
    local = dt.datetime.now().astimezone().strftime("%z")
    offset = f"{local[:3]}:{local[3:]}"
    async with server.session.post(server.url + "/api/console/login", json=OPERATOR) as r:
        login = await r.json()
    assert login["expires_at"].endswith(offset), login
    token = login["token"]
    rule = {"scope": "region:520500", "class": "catalog", "action": "reject", "reason": "时区"}
    status, body = await _post(server, "/api/plan/rules", token, rule)
    assert status == 200, body
    set_at = next(r["set_at"] for r in body["rules"] if r["scope"] == "region:520500")
    async with server.session.get(
        server.url + "/api/audit?limit=1", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        latest = (await r.json())[0]
    assert latest["at"].endswith(offset), latest
    # The same moment, to the second, in both.
    assert latest["at"].replace("T", " ")[:19] == set_at[:19], (latest["at"], set_at)
    status, body = await _post(server, "/api/plan/rules/clear", token, {**rule, "reason": "结束"})
    assert status == 200, body
