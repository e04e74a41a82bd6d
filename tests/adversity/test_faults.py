"""Faults between the gateway and its dependencies, with clients retrying the same msgid.

After each run the ledger checker must be clean: every acknowledged settlement exists exactly
once, accumulators and balances equal the settlements in force, no balance below 0, fund rows
sum to the settlement totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from gateway.app.config import Breakers, Deadlines, GatewayConfig, LedgerBreaker
from gateway.app.server import GATEWAY, Settings, prepare_database
from tests.adversity.proxy import Proxy
from tests.adversity.test_ledger_outage import CONFIG_TOML, ProxiedLedger, _free_port
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL, until
from tests.integration.his_client import HisClient, decode

pytestmark = pytest.mark.integration

PERSONS = [f"44180000000000000{n}" for n in (1, 2, 3)]
RETRYABLE = ("重试", "稍后")  # "retry (the same msgid)", "later": the answer asks for a retry


@dataclass
class Retrying:
    """Counters that send each 2102 until it is answered, retrying the same msgid."""

    pos: HisClient
    acknowledged: dict[str, str] = field(default_factory=dict)  # msgid -> setl_id
    refused: list[str] = field(default_factory=list)
    retries: int = 0

    async def sale(self, n: int) -> None:
        person = PERSONS[n % len(PERSONS)]
        drug = self.pos.drug_input(person, "2026-08-01 10:00:00", DRUG_TOTAL, DRUG_LINES, "1")
        msgid = self.pos.msgid()
        body = msgspec.json.encode(self.pos.envelope("2102", drug, msgid=msgid))
        for _ in range(200):
            try:
                status, raw = await self.pos.post_raw(body)
            except (aiohttp.ClientError, TimeoutError):
                self.retries += 1
                await asyncio.sleep(0.1)
                continue
            assert status == 200, raw
            answer = decode(raw)
            if answer["infcode"] == 0:
                self.acknowledged[msgid] = answer["output"]["setlinfo"]["setl_id"]
                return
            if any(word in answer["err_msg"] for word in RETRYABLE):
                self.retries += 1
                await asyncio.sleep(0.1)
                continue
            self.refused.append(answer["err_msg"])
            return
        raise AssertionError(f"{msgid} never answered")

    async def run(self, sales: int, concurrency: int) -> None:
        queue = list(range(sales))

        async def counter() -> None:
            while queue:
                await self.sale(queue.pop())

        await asyncio.gather(*(counter() for _ in range(concurrency)))


async def _exactly_once(srv: Server, load: Retrying) -> None:
    """Each acknowledged sale is one settlement, or (when a trigger deferred it) one claim."""
    assert load.refused == []
    settled = await srv.fetch(
        "SELECT medins_setl_id AS msgid, count(*) AS n FROM settlements"
        " WHERE medins_setl_id = ANY($1::text[]) GROUP BY 1",
        list(load.acknowledged),
    )
    claims = await srv.fetch(
        "SELECT msgid, count(*) AS n FROM deferred WHERE msgid = ANY($1::text[]) GROUP BY 1",
        list(load.acknowledged),
    )
    found = {r["msgid"]: ("settlement", r["n"]) for r in settled}
    for r in claims:
        assert r["msgid"] not in found
        found[r["msgid"]] = ("claim", r["n"])
    expected = {
        msgid: ("claim" if setl_id.startswith("DF") else "settlement", 1)
        for msgid, setl_id in load.acknowledged.items()
    }
    assert found == expected
    assert await srv.check_ledger() == []


# The ledger's breaker is held closed here: these runs are about retries of the same msgid
# settling exactly once (deferral under outage is test_ledger_outage's subject).
SLOW = GatewayConfig(
    rate_limit=GENEROUS.rate_limit,
    deadlines=Deadlines(call_seconds=10.0),
    breakers=Breakers(
        postgres=LedgerBreaker(min_calls=10**6, consecutive_failures=10**6, probe_on_timeout=False)
    ),
)


async def test_ledger_200ms_away_and_connections_dropped(new_database: Callable[..., Any]) -> None:
    ledger = ProxiedLedger()
    async with running_gateway(new_database, SLOW, serve_through=ledger) as srv:
        proxy = ledger.started()
        try:
            proxy.delay = 0.1  # 200 ms round trip added to every exchange with the ledger
            load = Retrying(srv.client("P44180000001"))
            await load.run(sales=12, concurrency=4)
            assert len(load.acknowledged) == 12
            proxy.delay = 0.0

            # Connections reset again and again while counters keep selling and retrying.
            async def flapping() -> None:
                for _ in range(6):
                    await asyncio.sleep(0.15)
                    proxy.drop()

            dropped = Retrying(srv.client("P44180000001"))
            await asyncio.gather(dropped.run(sales=60, concurrency=8), flapping())
            assert len(dropped.acknowledged) == 60
            await _exactly_once(srv, load)
            await _exactly_once(srv, dropped)
        finally:
            await proxy.close()


async def test_redis_cut_under_load_never_stops_settlement(
    new_database: Callable[..., Any], redis_url: str
) -> None:
    host, _, rest = redis_url.removeprefix("redis://").partition("/")
    redis_host, _, redis_port = host.partition(":")
    proxy = Proxy(redis_host, int(redis_port or 6379))
    await proxy.start()
    try:
        via = f"redis://127.0.0.1:{proxy.port}/{rest}"
        async with running_gateway(new_database, GENEROUS, via) as srv:
            load = Retrying(srv.client("P44180000001"))

            async def cut_midway() -> None:
                await asyncio.sleep(0.3)
                proxy.cut()

            await asyncio.gather(load.run(sales=60, concurrency=8), cut_midway())
            assert len(load.acknowledged) == 60 and load.retries == 0
            await _exactly_once(srv, load)
    finally:
        await proxy.close()


async def test_a_burst_of_requests_leaves_a_healthy_redis_breaker_closed(
    new_database: Callable[..., Any], redis_url: str
) -> None:
    """Found from outside: a burst of 1,000 signed requests (256 in flight) opened the Redis
    breaker of a healthy Redis every time, paging the team: each request's nonce and rate
    bucket took a connection of their own, and every use past the pool's hundred failed at
    once ("Too many connections"). The uses share a bounded pool and wait for a connection;
    one that finds none is this process's shortage, not Redis's failure."""
    async with running_gateway(new_database, GENEROUS, redis_url) as srv:
        assert srv.app is not None
        breaker = srv.app[GATEWAY].breakers["redis"]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            pos = HisClient(session, srv.url, "P44180000001")
            drug = pos.drug_input(
                "441800000000000001", "2026-07-04 10:00:00", DRUG_TOTAL, DRUG_LINES
            )
            answers = await asyncio.gather(*(pos.call("2101", drug) for _ in range(400)))
        settled = [a for a in answers if a["infcode"] == 0]
        assert settled and all(a["infcode"] == 0 or "繁忙" in a["err_msg"] for a in answers), {
            a["err_msg"] for a in answers
        }
        assert (breaker.state, breaker.reason) == ("closed", ""), breaker.reason


def _workers(pid: int) -> list[int]:
    """The serving worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(c)
        for c in children
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


async def test_kill_9_of_a_worker_under_load_while_clients_retry(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    dsn = await new_database("kill9w")
    await prepare_database(Settings(dsn))
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG_TOML.format(journal=tmp_path / "journal"), encoding="utf-8")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
        "--database-url", dsn, "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    try:
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/readyz") as r:
                    return r.status == 200
            return False

        await until(ready, within=30.0)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        load = Retrying(HisClient(session, url, "P44180000001"))

        async def kill_one() -> None:
            await asyncio.sleep(0.5)
            os.kill(workers[0], signal.SIGKILL)

        await asyncio.gather(load.run(sales=80, concurrency=8), kill_one())
        assert len(load.acknowledged) == 80
        await _exactly_once(Server(url, dsn, session), load)
    finally:
        await session.close()
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_ledger_backends_terminated_under_load(new_database: Callable[..., Any]) -> None:
    """What a PostgreSQL restart does to its clients: every connection killed at once, twice,
    while counters sell and retry."""
    async with running_gateway(new_database, SLOW) as srv:

        async def restart_like() -> None:
            for _ in range(2):
                await asyncio.sleep(0.3)
                killed = await srv.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                assert killed > 0

        load = Retrying(srv.client("P44180000001"))
        await asyncio.gather(load.run(sales=60, concurrency=8), restart_like())
        assert len(load.acknowledged) == 60
        await _exactly_once(srv, load)


async def test_postgresql_restart_under_load(tmp_path: Path) -> None:
    """A real restart: an embedded PostgreSQL of the test's own is stopped and started again on
    the same socket while counters sell and retry."""
    from gateway.app.embedded import socket_dsn, start_embedded

    data = tmp_path / "pg"
    server = await asyncio.to_thread(start_embedded, data, "stop")

    async def make(prefix: str) -> str:
        conn = await asyncpg.connect(socket_dsn(server, "postgres"))
        try:
            await conn.execute("CREATE DATABASE gw")
        finally:
            await conn.close()
        return socket_dsn(server, "gw")

    try:
        async with running_gateway(make, SLOW) as srv:

            async def restart() -> None:
                nonlocal server
                # In the middle of the selling: after the first sales are acknowledged, however
                # long a busy machine takes to answer them.
                for _ in range(3000):  # at most 30 s
                    if len(load.acknowledged) >= 5:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(server.cleanup)  # pg_ctl stop: every connection ends
                sold_before_restart.append(len(load.acknowledged))
                await asyncio.sleep(1.0)  # down for a second
                server = await asyncio.to_thread(start_embedded, data, "stop")

            sold_before_restart: list[int] = []
            load = Retrying(srv.client("P44180000001"))
            await asyncio.gather(load.run(sales=400, concurrency=8), restart())
            assert 0 < sold_before_restart[0] < 400  # the restart came in the middle
            assert len(load.acknowledged) == 400 and load.retries > 0
            await _exactly_once(srv, load)
    finally:
        await asyncio.to_thread(server.cleanup)
