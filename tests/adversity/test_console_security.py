"""The operators' console under attack: password guessing, log-in floods, forged requests,
framing and hostile bodies, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from msgspec.structs import replace

from gateway.app.server import Settings, prepare_database
from gateway.emergency import operators
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import cli, until

pytestmark = pytest.mark.integration

DUTY = {"operator": "duty", "password": "duty-2026"}
WATCH = {"operator": "watch", "password": "watch-2026"}
LOGIN = "/api/console/login"
RULE = {"scope": "region:520500", "class": "settlement", "action": "reject", "reason": "演练"}


# A guarded name's interval far longer than the module takes: "the last checked guess came
# moments ago" must hold however slowly a loaded box runs the guesses (at 30 s it once did not).
PATIENT_GUARD = replace(GENEROUS, login=replace(GENEROUS.login, guarded_interval_seconds=3600.0))


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database, PATIENT_GUARD) as srv:
        yield srv


def _from(address: str) -> aiohttp.ClientSession:
    """A client whose connections leave from this loopback address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _login(session: aiohttp.ClientSession, url: str, who: dict[str, str]) -> tuple[int, Any]:
    async with session.post(url + LOGIN, json=who) as r:
        return r.status, await r.json()


async def _login_within_the_budget(
    session: aiohttp.ClientSession, url: str, who: dict[str, str]
) -> Any:
    """A log-in that may first meet the per-second hashing budget the test's guesses spent."""
    for _ in range(30):
        status, body = await _login(session, url, who)
        if status != 429 or "登录请求过多" not in body["error"]:
            assert status == 200, body
            return body
        await asyncio.sleep(0.25)
    raise AssertionError("the hashing budget never refilled")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, check=False)


# ------------------------------------------------------------------------------ guessing


async def test_guessing_locks_the_guesser_and_guards_the_name_until_the_duty_team_clears_them(
    server: Server,
) -> None:
    url = server.url
    async with _from("127.0.0.2") as attacker, _from("127.0.0.1") as desk:
        statuses = [
            (await _login(attacker, url, {"operator": "duty", "password": f"guess-{n}"}))[0]
            for n in range(30)
        ]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        status, body = await _login(attacker, url, DUTY)  # the right password, while locked
        assert status == 429 and "token" not in body and "锁定" in body["error"]
        # The refused attempts were never checked and count nothing; the guesser locks its
        # address by guessing at other names, twenty checked guesses in all.
        others = [
            (await _login(attacker, url, {"operator": name, "password": f"guess-{n}"}))[0]
            for name in ("ghost-a", "ghost-b", "ghost-c")
            for n in range(5)
        ]
        assert others == [401] * 15, others
        status, body = await _login(attacker, url, WATCH)  # another name, the right password
        assert status == 429 and "本机地址已锁定" in body["error"], body
        # Elsewhere the name is not locked, only slowed down (one attempt per guarded interval;
        # the last guess that was checked came moments ago).
        status, body = await _login(desk, url, DUTY)
        assert status == 429 and "token" not in body and "限速" in body["error"]

        status, body = await _login(desk, url, WATCH)  # other operators still get in
        assert status == 200
        viewer = body["token"]
        async with desk.get(url + "/api/console/lockouts", headers=_bearer(viewer)) as r:
            locks = {(x["kind"], x["key"]): x for x in await r.json()}
        assert locks[("operator", "duty")]["locked_until"] is not None  # guarded
        assert locks[("pair", "duty@127.0.0.2")]["locked_until"] is not None
        assert locks[("address", "127.0.0.2")]["locked_until"] is not None
        unlock = {"kind": "operator", "key": "duty", "reason": "值班员本人确认"}
        async with desk.post(
            url + "/api/console/lockouts/clear", json=unlock, headers=_bearer(viewer)
        ) as r:
            assert r.status == 403  # a viewer sees, only the duty role clears

        # The shell clears the name: its guard and its locks at every address.
        done = _cli("operators", "unlock", "--login", "duty", "--reason", "值班员本人确认",
                    "--database-url", server.dsn)  # fmt: skip
        assert done.returncode == 0, done.stderr
        listed = _cli("operators", "lockouts", "--json", "--database-url", server.dsn)
        assert '"127.0.0.2"' in listed.stdout and "duty" not in listed.stdout
        # The text in local time, as the refusal says it (found from outside: UTC, and "locked
        # until not locked" for an entry not locked).
        text = _cli("operators", "lockouts", "--database-url", server.dsn).stdout
        locked = next(line for line in text.splitlines() if "127.0.0.2" in line)
        assert re.search(r"locked until \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", locked), text
        assert "+00:00" not in text and "until not locked" not in text
        status, body = await _login(desk, url, DUTY)
        assert status == 200
        duty = body["token"]
        unlock = {"kind": "address", "key": "127.0.0.2", "reason": "演练结束"}
        # A null reason is no reason (it was written down as "None" and taken).
        async with desk.post(
            url + "/api/console/lockouts/clear",
            json={**unlock, "reason": None},
            headers=_bearer(duty),
        ) as r:
            assert r.status == 400 and "reason应为文本" in (await r.json())["error"]
        # As a plan change's (found from outside: "x" and invisible characters were taken).
        for reason, words in (("x", "过短"), ("\u202e\u202e", "控制字符")):
            async with desk.post(
                url + "/api/console/lockouts/clear",
                json={**unlock, "reason": reason},
                headers=_bearer(duty),
            ) as r:
                assert r.status == 400 and words in (await r.json())["error"], reason
        async with desk.post(
            url + "/api/console/lockouts/clear", json=unlock, headers=_bearer(duty)
        ) as r:
            assert r.status == 200
            still = {(x["kind"], x["key"]) for x in await r.json() if x["locked_until"]}
            # Only the made-up names the guesser tried stay guarded, at no real operator's cost.
            assert {key.split("@")[0] for _, key in still} <= {f"ghost-{c}" for c in "abc"}, still
        status, _ = await _login(attacker, url, DUTY)
        assert status == 200

    rows = await server.fetch(
        "SELECT operator, action, target, reason FROM audit_log"
        " WHERE action LIKE 'console.login.%' ORDER BY audit_id"
    )
    seen = [(r["operator"], r["action"], r["target"]) for r in rows]
    # The lock's time in the words of the audit row is local, as the page says it (found from
    # outside: "+0000" beside the page's Beijing time).
    locks = [r["reason"] for r in rows if r["action"] == "console.login.locked"]
    assert locks and all(re.search(r"锁定至\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", w) for w in locks)
    assert ("system:console-login", "console.login.guarded", "operator:duty") in seen
    assert ("system:console-login", "console.login.locked", "pair:duty@127.0.0.2") in seen
    assert ("system:console-login", "console.login.locked", "address:127.0.0.2") in seen
    assert ("duty", "console.login.unlock", "address:127.0.0.2") in seen
    assert any(a == "console.login.unlock" and t == "operator:duty" for _, a, t in seen)


async def test_an_unknown_name_is_answered_and_hashed_like_a_known_one(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[tuple[str, bool]] = []
    real = operators.check_password

    def watching(stored: str, password: str) -> bool:
        hashed.append((stored, threading.current_thread() is threading.main_thread()))
        return real(stored, password)

    monkeypatch.setattr(operators, "check_password", watching)
    async with _from("127.0.0.3") as client:
        known = await _login(client, server.url, {"operator": "duty", "password": "nope-1"})
        unknown = await _login(client, server.url, {"operator": "nobody", "password": "nope-1"})
        assert known == unknown == (401, {"error": "账号或密码不正确"})
        assert len(hashed) == 2  # scrypt ran for the unknown name too (a dummy hash)
        assert not any(on_loop for _, on_loop in hashed)  # and never on the event loop
        for n in range(5):  # an unknown name locks like a known one: nothing to tell them apart
            await _login(client, server.url, {"operator": "ghost", "password": f"x{n}"})
        status, body = await _login(client, server.url, {"operator": "ghost", "password": "x"})
        assert status == 429 and "该账号在本机地址已锁定" in body["error"]
    async with _from("127.0.0.1") as desk:
        body = await _login_within_the_budget(desk, server.url, DUTY)
        for key in ("ghost", "127.0.0.3"):
            kind = "operator" if key == "ghost" else "address"
            clear = {"kind": kind, "key": key, "reason": "测试结束"}
            async with desk.post(
                server.url + "/api/console/lockouts/clear",
                json=clear,
                headers=_bearer(body["token"]),
            ) as r:
                assert r.status in (200, 400)


# -------------------------------------------------------------------------------- flooding

FLOOD_TOML = """
[console]
operator_failures = 1000000
address_failures = 1000000
hashes_per_second = 4.0
[http]
refusal_hold_seconds = 0.0
[journal]
dir = "{journal}"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _process(dsn: str, config: Path) -> AsyncIterator[str]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
        "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as r:
                        return r.status == 200
                return False

            await until(ready, within=60.0)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_a_login_flood_does_not_stall_the_gateway(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """48 clients guessing as fast as they can (no lockout, a budget of four hashes a second
    and busy answers not held in this configuration, so the hash threads stay busy): the loop
    still answers /livez within a second, every time."""
    dsn = await new_database("flood")
    await prepare_database(Settings(dsn))
    config = tmp_path / "gateway.toml"
    config.write_text(FLOOD_TOML.format(journal=tmp_path / "journal"), encoding="utf-8")
    async with _process(dsn, config) as url, aiohttp.ClientSession() as session:
        flooding = True
        answers: dict[int, int] = {}

        async def flood() -> None:
            while flooding:
                guess = {"operator": "duty", "password": uuid.uuid4().hex}
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(url + LOGIN, json=guess) as r:
                        answers[r.status] = answers.get(r.status, 0) + 1

        floods = [asyncio.create_task(flood()) for _ in range(48)]

        async def flooding_now() -> bool:
            return sum(answers.values()) >= 20

        await until(flooding_now, within=10.0)
        probes = 0
        try:
            for _ in range(20):
                async with asyncio.timeout(1.0), session.get(url + "/livez") as r:
                    assert r.status == 200
                probes += 1
                await asyncio.sleep(0.1)
            assert all(not f.done() for f in floods)  # answered while the flood was running
        finally:
            flooding = False
            await asyncio.gather(*floods)
        assert probes == 20
        assert answers.get(401, 0) >= 10  # guesses were really hashed
        assert set(answers) <= {401, 429}  # past the hash queue: busy, never an error
        print(f"\nlogin flood: {answers}, 20/20 /livez answered within 1 s")


# ------------------------------------------------------------------------- forged requests


async def _cookie_session(server: Server) -> tuple[aiohttp.ClientSession, str]:
    """A browser-like client logged in through the form; its CSRF token from the page."""
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with browser.post(server.url + "/console/login", data=DUTY) as r:
        page = await r.text()
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    if found is None:
        await browser.close()
        raise AssertionError(f"no console page after logging in: {page[:200]}")
    return browser, found.group(1)


async def test_cookie_authenticated_api_changes_need_json_and_the_token(server: Server) -> None:
    browser, csrf = await _cookie_session(server)
    body = '{"scope": "region:520500", "class": "settlement", "action": "reject", "reason": "x"}'
    rules = server.url + "/api/plan/rules"
    try:
        before = await server.fetchval("SELECT count(*) FROM audit_log")
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            async with browser.post(rules, data=body, headers={"Content-Type": content_type}) as r:
                assert r.status == 415, content_type
        async with browser.post(rules, json=RULE) as r:  # JSON, but no token: not from the page
            assert r.status == 403
        async with browser.post(
            rules, json=RULE, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403
        async with browser.post(rules, json=RULE, headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        assert await server.fetchval("SELECT count(*) FROM plan_rules") == 0
        assert await server.fetchval("SELECT count(*) FROM audit_log") == before
        async with browser.post(
            rules, json=RULE, headers={"X-CSRF-Token": csrf, "Origin": server.url}
        ) as r:
            assert r.status == 200  # the console's own script-free client path still works
        clear = {"scope": RULE["scope"], "class": "settlement", "reason": "结束"}
        async with browser.post(
            server.url + "/api/plan/rules/clear", json=clear, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200
        # The page's own forms: right token, foreign origin.
        form = {"csrf": csrf, **RULE}
        async with browser.post(
            server.url + "/console/rules/set",
            data=form,
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403
        assert await server.fetchval("SELECT count(*) FROM plan_rules") == 0
    finally:
        await browser.close()


async def test_bearer_clients_are_refused_from_a_foreign_origin(server: Server) -> None:
    async with _from("127.0.0.1") as client:
        _, body = await _login(client, server.url, DUTY)
        headers = {**_bearer(body["token"]), "Origin": "http://evil.example"}
        async with client.post(server.url + "/api/plan/rules", json=RULE, headers=headers) as r:
            assert r.status == 403
        async with client.post(server.url + LOGIN, json=DUTY, headers=headers) as r:
            assert r.status == 403
    assert await server.fetchval("SELECT count(*) FROM plan_rules") == 0


async def test_pages_forbid_framing_and_do_not_repeat_the_query(server: Server) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(server.url + "/console/login") as r:
            csp = r.headers.get("Content-Security-Policy", "")
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
            assert r.headers.get("X-Frame-Options") == "DENY"
        async with anonymous.post(server.url + LOGIN, json={"operator": "x"}) as r:
            assert "frame-ancestors 'none'" in r.headers.get("Content-Security-Policy", "")
    browser, csrf = await _cookie_session(server)
    try:
        bait = "系统升级，请拨打4008000000提供密码"
        async with browser.get(server.url + "/console", params={"err": bait, "msg": bait}) as r:
            assert bait not in await r.text()
        # The console's own message after a change is still shown.
        form = {"csrf": csrf, **RULE, "reason": ""}
        async with browser.post(server.url + "/console/rules/set", data=form) as r:
            page = await r.text()
        assert 'id="error"' in page and "原因" in page
    finally:
        await browser.close()


# ------------------------------------------------------------------------------ hostile bodies


@pytest.mark.parametrize(
    ("body", "content_type", "status", "expected"),
    [
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json", 413, "过大"),
        (b'{"operator":' + b"[" * 1500 + b"]" * 1500 + b"}", "application/json", 400, "嵌套"),
        ('{"operator": "值班"}'.encode("gbk"), "application/json", 400, "UTF-8"),
        ('{"operator": "值班"}'.encode("utf-16"), "application/json", 400, "UTF-8"),
        (b'["duty", "duty-2026"]', "application/json", 400, "对象"),
        (b'{"operator": ["duty"], "password": {"a": 1}}', "application/json", 400, "文本"),
        (b"operator=duty&password=duty-2026", "application/x-www-form-urlencoded", 415, "JSON"),
    ],
    ids=["too large", "deep", "gbk", "utf-16", "array", "not text", "form"],
)
async def test_hostile_login_bodies_get_a_json_refusal(
    server: Server, body: bytes, content_type: str, status: int, expected: str
) -> None:
    async with server.session.post(
        server.url + LOGIN, data=body, headers={"Content-Type": content_type}
    ) as r:
        assert r.status == status
        assert expected in (await r.json())["error"]


async def test_a_deep_body_to_a_console_change_gets_a_json_refusal(server: Server) -> None:
    async with server.session.post(server.url + LOGIN, json=DUTY) as r:
        token = (await r.json())["token"]
    deep = b"[" * 3000 + b"]" * 3000
    async with server.session.post(
        server.url + "/api/plan/rules",
        data=deep,
        headers={**_bearer(token), "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400 and "嵌套" in (await r.json())["error"]


async def test_an_operator_retrying_while_locked_out_does_not_lock_the_desk(
    server: Server,
) -> None:
    """Found from outside: five wrong passwords locked the name at the desk's address, as they
    should; its owner's retries with the right password, refused while locked, then counted
    against the address until every operator behind that NAT address was locked out too."""
    url = server.url
    async with _from("127.0.0.4") as desk:
        for n in range(5):
            status, _ = await _login(desk, url, {"operator": "clerk1", "password": f"wrong-{n}"})
            assert status == 401
        for _ in range(25):  # the right password, again and again, while locked
            status, body = await _login(
                desk, url, {"operator": "clerk1", "password": "clerk1-2026"}
            )
            assert status == 429 and "锁定" in body["error"], body
        status, body = await _login(desk, url, {"operator": "clerk2", "password": "clerk2-2026"})
        assert status == 200, body  # the rest of the desk still gets in


async def _page_styles_allowed(client: aiohttp.ClientSession, url: str) -> None:
    async with client.get(url) as r:
        assert r.status == 200, (url, r.status)
        csp = r.headers.get("Content-Security-Policy", "")
        page = await r.text()
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert styles, url
    allowed = set(re.findall(r"'(sha256-[A-Za-z0-9+/=]+)'", csp))
    for css in styles:
        digest = "sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
        assert digest in allowed, (url, digest, csp)
    # No style attribute either: the policy allows none.
    assert not re.search(r"<[^>]+\sstyle=", page), url


async def test_every_console_pages_style_is_allowed_by_its_policy(server: Server) -> None:
    """Found from outside, in a real browser: the parallel-run page's style was not in the
    policy, and the page showed unstyled. Each page's inline style is allowed by its hash."""
    async with aiohttp.ClientSession() as anonymous:
        await _page_styles_allowed(anonymous, server.url + "/console/login")
    browser, _ = await _cookie_session(server)
    try:
        for path in ("/console", "/console/parallel-run"):
            await _page_styles_allowed(browser, server.url + path)
    finally:
        await browser.close()
    # An agency operator no other test of this module locks out by failed log-ins.
    clerk = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        login = {"operator": "reviewer2", "password": "reviewer2-2026"}
        async with clerk.post(server.url + "/console/login", data=login) as r:
            assert r.status == 200, await r.text()
        for path in ("/console/claims", "/console/payouts"):
            await _page_styles_allowed(clerk, server.url + path)
    finally:
        await clerk.close()
