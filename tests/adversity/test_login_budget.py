"""A flood of console log-ins past the hashing budget costs the gateway (nearly) nothing.

Guesses at made-up names from many addresses used to cost each two ledger transactions (the
throttle's count) before the hashing budget answered them busy. Now the budget is asked first,
from memory: past it the answer is 429 "busy" with no hash, no ledger row and no query (a
made-up name has no desks to look up), held for `refusal_hold_seconds` so that a client which
asks again at once gets one answer per pause; the budget refills, and a known operator's own
budget is not spent by the flood. Over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from msgspec.structs import replace

from gateway.emergency import operators
from gateway.emergency.operators import LoginPolicy
from gateway.pipeline.edge import EdgeConfig
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import until

pytestmark = pytest.mark.integration

LOGIN = "/api/console/login"
DUTY = {"operator": "duty", "password": "duty-2026"}
BUSY = "登录请求过多"


def _from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _login(session: aiohttp.ClientSession, url: str, who: dict[str, str]) -> tuple[int, Any]:
    async with session.post(url + LOGIN, json=who) as r:
        return r.status, await r.json()


def _made_up() -> dict[str, str]:
    return {"operator": f"ghost-{uuid.uuid4().hex[:10]}", "password": uuid.uuid4().hex}


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    # One hash every two seconds for made-up names (and as much for each operator's own name);
    # busy answers at once, so the flood below is fast.
    config = replace(
        GENEROUS,
        login=LoginPolicy(hashes_per_second=0.5),
        http=EdgeConfig(refusal_hold_seconds=0.0),
    )
    async with running_gateway(new_database, config) as srv:
        yield srv


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored hashes scrypt was run against, in order."""
    seen: list[str] = []
    real = operators.check_password

    def counting(stored: str, password: str) -> bool:
        seen.append(stored)
        return real(stored, password)

    monkeypatch.setattr(operators, "check_password", counting)
    return seen


async def _failure_rows(srv: Server) -> int:
    count = await srv.fetchval(
        "SELECT count(*) FROM console_login_failures WHERE key LIKE 'ghost-%'"
    )
    return int(count)


async def test_made_up_names_past_the_budget_cost_no_hash_and_no_ledger_row(
    server: Server, hashed: list[str]
) -> None:
    answers = []
    for n in range(12):  # twelve addresses, one guess each, none of them ever locked
        async with _from(f"127.0.3.{n + 1}") as guesser:
            answers.append(await _login(guesser, server.url, _made_up()))
    statuses = [status for status, _ in answers]
    refused = [body["error"] for status, body in answers if status == 429]
    assert statuses[0] == 401 and statuses.count(401) <= 2, statuses  # the budget's one hash
    assert len(refused) >= 10 and all(BUSY in text for text in refused), answers
    assert len(hashed) == statuses.count(401)  # no hash for a busy answer
    # The ledger counted only the hashed ones: a name row and a name-at-address row each.
    assert await _failure_rows(server) == 2 * statuses.count(401)

    # The flood spent the budget of made-up names only: an operator still gets in at once,
    # from an address it never used.
    async with _from("127.0.3.200") as laptop:
        status, body = await _login(laptop, server.url, DUTY)
    assert status == 200 and "token" in body


async def test_the_hashing_budget_refills(server: Server, hashed: list[str]) -> None:
    async with _from("127.0.3.100") as guesser:

        async def spent() -> bool:
            return (await _login(guesser, server.url, _made_up()))[0] == 429

        await until(spent, within=10.0)
        hashed.clear()

        async def hashed_again() -> bool:
            return (await _login(guesser, server.url, _made_up()))[0] == 401

        await until(hashed_again, within=10.0)  # two seconds a hash
    assert len(hashed) == 1


@pytest.fixture(scope="module")
async def pacing(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    config = replace(
        GENEROUS,
        login=LoginPolicy(hashes_per_second=0.001),
        http=EdgeConfig(refusal_hold_seconds=0.5),
    )
    async with running_gateway(new_database, config) as srv:
        yield srv


async def test_a_busy_answer_is_held_without_holding_the_loop(pacing: Server) -> None:
    async with _from("127.0.3.150") as guesser:
        assert (await _login(guesser, pacing.url, _made_up()))[0] == 401  # the one hash
        started = time.monotonic()
        busy = asyncio.create_task(_login(guesser, pacing.url, _made_up()))
        await asyncio.sleep(0.1)
        async with pacing.session.get(pacing.url + "/livez") as r:  # served meanwhile
            assert r.status == 200
        assert not busy.done()
        status, body = await busy
    assert status == 429 and BUSY in body["error"]
    assert time.monotonic() - started >= 0.5
