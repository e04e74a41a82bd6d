"""A real gateway on loopback over a fresh PostgreSQL database per test module."""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.app.config import GatewayConfig
from gateway.app.server import Settings, build_app, prepare_database
from gateway.emergency.operators import LoginPolicy
from gateway.ledger import checker
from gateway.pipeline.ratelimit import Limits
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration

LEDGER_TABLES = (
    "encounters",
    "fee_lines",
    "settlements",
    "settlement_funds",
    "accumulators",
    "sign_ins",
)


@dataclass
class Server:
    url: str
    dsn: str
    session: aiohttp.ClientSession
    app: web.Application | None = None  # the gateway's own, where a test looks inside it

    def client(self, fixmedins_code: str, region: str = "441800") -> HisClient:
        return HisClient(self.session, self.url, fixmedins_code, region)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    async def check_ledger(self) -> list[str]:
        """The ledger checker's findings (empty when the ledger balances)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            return await checker.check(conn)
        finally:
            await conn.close()

    async def ledger_fingerprint(self) -> dict[str, Any]:
        """Row counts and money totals of every ledger table: proof that nothing was written."""
        conn = await asyncpg.connect(self.dsn)
        try:
            out: dict[str, Any] = {
                t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in LEDGER_TABLES
            }
            out["balances"] = await conn.fetchval(
                "SELECT coalesce(sum(balance_fen), 0) FROM accounts"
            )
            out["encounter_states"] = await conn.fetchval(
                "SELECT string_agg(mdtrt_id || status, ',' ORDER BY mdtrt_id) FROM encounters"
            )
            out["settlement_states"] = await conn.fetchval(
                "SELECT string_agg(setl_id || status, ',' ORDER BY setl_id) FROM settlements"
            )
            return out
        finally:
            await conn.close()


async def _make_database(new_database: Callable[..., Any], prefix: str) -> str:
    made = new_database(prefix)
    dsn = await made if inspect.isawaitable(made) else made
    assert isinstance(dsn, str)
    return dsn


GENEROUS = GatewayConfig(
    # Test clients fire hundreds of requests a second from one terminal; counters do not.
    rate_limit=Limits(
        terminal_rate=1e6, terminal_burst=10**6, institution_rate=1e6, institution_burst=10**6
    ),
    # Tests log in several times a second; the hashing budget has a test of its own
    # (tests/unit/test_operators.py), with a clock it controls.
    login=LoginPolicy(hashes_per_second=1e6),
)


@asynccontextmanager
async def running_gateway(
    new_database: Callable[..., Any],
    config: GatewayConfig = GENEROUS,
    redis_url: str | None = None,
    *,
    serve_through: Callable[[str], Awaitable[str]] | None = None,
    journal_dir: Path | None = None,
    pool_min: int = 2,
) -> AsyncIterator[Server]:
    """Migrated, demo-loaded database and a gateway serving it on 127.0.0.1.

    `serve_through(dsn)` gives the DSN the gateway itself uses (e.g. through a TCP proxy); the
    test's own connections (Server.fetch) stay direct.
    """
    dsn = await _make_database(new_database, "gw")
    await prepare_database(Settings(dsn, config=config))
    gateway_dsn = dsn if serve_through is None else await serve_through(dsn)
    journal = journal_dir or Path(tempfile.mkdtemp(prefix="gw-journal-"))
    settings = Settings(
        gateway_dsn,
        pool_max=24,
        pool_min=pool_min,
        config=config,
        redis_url=redis_url,
        journal_dir=journal,
    )
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    try:
        yield Server(f"http://127.0.0.1:{port}", dsn, session, runner.app)
    finally:
        await session.close()
        await runner.cleanup()


@asynccontextmanager
async def another_worker(
    dsn: str, journal_dir: Path, config: GatewayConfig = GENEROUS, **settings: Any
) -> AsyncIterator[Server]:
    """Another gateway process's state over `dsn` (the first's, as `serve_through` gave it) and
    the same journal directory, as `serve --workers 2` runs them on one host; its own port."""
    runner = web.AppRunner(
        build_app(
            Settings(
                dsn, pool_max=8, pool_min=2, config=config, journal_dir=journal_dir, **settings
            )
        ),
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    session = aiohttp.ClientSession()
    try:
        yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", dsn, session, runner.app)
    finally:
        await session.close()
        await runner.cleanup()


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    """A gateway of the module's own, over a fresh database."""
    async with running_gateway(new_database) as srv:
        yield srv
