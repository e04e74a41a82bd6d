"""A stop does not hang on a ledger connection some task still holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger.db import close_pool, create_pool


async def test_a_held_connection_is_terminated_after_the_bound(
    new_database: Callable[..., Any],
) -> None:
    pool = await create_pool(await new_database("close"), min_size=1, max_size=2)
    held = await pool.acquire()  # never released, as a task stuck on a dead network would
    started = time.monotonic()
    assert await close_pool(pool, 0.5) is False
    assert time.monotonic() - started < 5.0
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # the held connection is gone with the pool
        await held.fetchval("SELECT 1")


async def test_released_connections_close_gracefully(new_database: Callable[..., Any]) -> None:
    pool = await create_pool(await new_database("close"), min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")

    async def release_later() -> None:
        conn = await pool.acquire()
        await asyncio.sleep(0.2)
        await pool.release(conn)

    task = asyncio.create_task(release_later())
    await asyncio.sleep(0.05)
    assert await close_pool(pool, 5.0) is True
    await task
