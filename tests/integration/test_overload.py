"""Overload: past the in-flight limit a request is answered busy at once, and nothing is done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from msgspec.structs import replace

from gateway.app.config import Overload
from gateway.ops import metrics
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.his_client import decode

PHARMACY = "P44180000001"
HELD = "441800000000000001"
OTHER = "441800000000000002"
DAY = "2026-04-01 10:00:00"
LINE = [
    {
        "feedetl_sn": "1",
        "medins_list_codg": "YP0007",
        "pric": "9.90",
        "cnt": "1",
        "det_item_fee_sumamt": "9.90",
    }
]


def shed_count() -> float:
    return sum(
        s.value for f in metrics.SHED.collect() for s in f.samples if s.name.endswith("_total")
    )


async def test_past_the_limit_requests_are_shed_fast_and_nothing_is_written(
    new_database: Callable[..., Any],
) -> None:
    config = replace(GENEROUS, overload=Overload(max_in_flight=2))
    async with running_gateway(new_database, config) as server:
        pos = server.client(PHARMACY)
        # Hold the person's account row: the two settlements for them stay in flight.
        blocker = await asyncpg.connect(server.dsn)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE psn_no = $1 FOR UPDATE", HELD)
        try:
            held = [
                asyncio.ensure_future(pos.ok("2102", pos.drug_input(HELD, DAY, "9.90", LINE)))
                for _ in range(2)
            ]
            await asyncio.sleep(0.5)
            assert not any(t.done() for t in held)
            shed_before = shed_count()
            envelope = pos.envelope("2102", pos.drug_input(OTHER, DAY, "9.90", LINE))
            started = time.perf_counter()
            status, raw = await pos.post_raw(msgspec.json.encode(envelope))
            elapsed = time.perf_counter() - started
            answer = decode(raw)
            assert status == 200
            assert answer["infcode"] == -1
            assert "繁忙" in answer["err_msg"] and "相同报文ID" in answer["err_msg"]
            assert elapsed < 0.5  # answered while the other two still wait on the lock
            assert shed_count() == shed_before + 1
            assert not any(t.done() for t in held)
        finally:
            await tx.rollback()
            await blocker.close()
        outputs = await asyncio.gather(*held)
        assert all(o["setlinfo"]["setl_id"] for o in outputs)
        # The shed request did nothing: no visit, no settlement, no msgid journaled ...
        for sql in (
            "SELECT count(*) FROM encounters WHERE created_msgid = $1",
            "SELECT count(*) FROM idempotency WHERE msgid = $1",
        ):
            assert await server.fetchval(sql, envelope["msgid"]) == 0
        # ... so the same msgid settles once the load is gone.
        status, raw = await pos.post_raw(msgspec.json.encode(envelope))
        assert decode(raw)["infcode"] == 0
        assert await server.check_ledger() == []
