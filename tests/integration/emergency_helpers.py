"""Shared by the emergency-plan tests: plan changes, waiting for them, the CLI, answers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp import web

from gateway.emergency.plan import store

OUTPATIENT_LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1", "det_item_fee_sumamt": "25.00"},
    {"feedetl_sn": "2", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"},
    {"feedetl_sn": "3", "medins_list_codg": "YP0010", "pric": "35", "cnt": "1", "det_item_fee_sumamt": "35.00"},
]  # fmt: skip
OUTPATIENT_TOTAL = "140.00"
# Large enough to pass the outpatient deductible, so the fund has a share to reimburse.
BIG_LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1", "det_item_fee_sumamt": "25.00"},
    {"feedetl_sn": "2", "medins_list_codg": "YP0003", "pric": "40", "cnt": "40", "det_item_fee_sumamt": "1600.00"},
]  # fmt: skip
BIG_TOTAL = "1625.00"
DRUG_LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"},
    {"feedetl_sn": "2", "medins_list_codg": "YP0010", "pric": "35", "cnt": "1", "det_item_fee_sumamt": "35.00"},
]  # fmt: skip
DRUG_TOTAL = "115.00"


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        yield conn
    finally:
        await conn.close()


async def set_rule(dsn: str, scope: str, klass: str, action: str, reason: str = "测试演练") -> None:
    async with connect(dsn) as conn:
        await store.set_rule(
            conn, scope=scope, klass=klass, action=action, reason=reason, operator="test"
        )


async def clear_rule(dsn: str, scope: str, klass: str, reason: str = "演练结束") -> None:
    async with connect(dsn) as conn:
        await store.clear_rule(conn, scope=scope, klass=klass, reason=reason, operator="test")


async def until(
    check: Callable[[], Awaitable[bool]],
    within: float = 5.0,
    seen: Callable[[], object] | None = None,
) -> float:
    """Seconds until `check()` held; fails the test past `within` seconds, saying what `seen()`
    reports then (what the check last saw)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started >= within:
            raise AssertionError(
                "condition not reached in time" + (f"; last seen: {seen()}" if seen else "")
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def cli(*args: str, check: bool = True, tz: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m gateway …` as an operator runs it (`tz`: in a shell with that TZ)."""
    env = None if tz is None else {**os.environ, "TZ": tz}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def yuan(value: Any) -> Decimal:
    return Decimal(str(value))


OLD_SYSTEM_PATH = "/fsi/api/rsfComIfsService/callService"


@asynccontextmanager
async def old_system(
    answer: Callable[[web.Request], Awaitable[web.Response]],
    *,
    every_method: bool = False,
) -> AsyncIterator[str]:
    """The old system behind route_legacy and the parallel run, on a free loopback port: its
    callService answered by `answer` (its POSTs, or with `every_method` its breaker's probes
    too); yields its URL."""
    app = web.Application()
    app.router.add_route("*" if every_method else "POST", OLD_SYSTEM_PATH, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{OLD_SYSTEM_PATH}"
    finally:
        await runner.cleanup()
