"""A real gateway on loopback for synchronous tests (hypothesis state machines): it runs on an
event loop of its own thread, over a fresh database dropped at the end."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.integration.conftest import Server, running_gateway

T = TypeVar("T")
PG = os.environ.get("GATEWAY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# One HTTP call or ledger check; far above any answer's time, so a hang fails instead of waiting.
CALL_TIMEOUT_S = 60


class Harness:
    """The gateway, its event loop and its database; `run` awaits a coroutine from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.databases: list[str] = []
        self._gateway: AbstractAsyncContextManager[Server] | None = None
        self.server: Server = self.run(self._start())
        self.conn: asyncpg.Connection = self.run(self._connect())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    async def _new_database(self, prefix: str) -> str:
        name = f"gwtest_{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.databases.append(name)
        parts = urlsplit(PG)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    async def _start(self) -> Server:
        self._gateway = running_gateway(self._new_database)
        return await self._gateway.__aenter__()

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.server.dsn)
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        return conn

    async def _stop(self) -> None:
        await self.conn.close()
        if self._gateway is not None:
            await self._gateway.__aexit__(None, None, None)
        conn = await asyncpg.connect(PG)
        try:
            for name in self.databases:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
