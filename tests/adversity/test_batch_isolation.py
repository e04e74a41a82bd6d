"""One institution's rows held by a long transaction do not hold another institution's sales.

Found from outside: a transaction holding one region's persons for 25 s (a stuck session, a
long maintenance statement) timed out a sale of another institution that the group commit had
batched with one of theirs: the whole batch waited on the lock, the healthy pharmacy's till was
told to retry after 5 s, and the timeout was counted against that pharmacy's fault trigger.
A batch gives up a row lock after a quarter of a second and its requests go the single path,
each waiting for its own locks only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from msgspec.structs import replace

from gateway.app.config import GroupCommitConfig
from gateway.ops import metrics
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.test_group_commit import basket

pytestmark = pytest.mark.integration

# One writer: every sale goes through the one batch queue, as when the writers are all busy.
ONE_WRITER = replace(GENEROUS, group_commit=GroupCommitConfig(writers=1, max_batch=64))
HELD_PHARMACY, HELD_PERSON = "P52050000001", "520500000000000001"
HEALTHY_PHARMACY = "P44180000001"
HEALTHY_PERSONS = ["441800000000000001", "441800000000000002", "441800000000000003"]
HELD_SECONDS = 2.5  # within the held sale's own 5 s deadline: it settles once released
DAY = "2026-03-02 09:30:00"


def _timeouts(code: str) -> float:
    value = metrics.INSTITUTION_ERRORS.labels(code, "timeout")._value.get()
    return float(value)


async def test_a_held_person_does_not_time_out_another_institutions_sales(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database, ONE_WRITER) as srv:
        held_pos, healthy_pos = srv.client(HELD_PHARMACY), srv.client(HEALTHY_PHARMACY)
        before = _timeouts(HEALTHY_PHARMACY)
        holder = await asyncpg.connect(srv.dsn)
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute("SELECT 1 FROM persons WHERE psn_no = $1 FOR UPDATE", HELD_PERSON)

            async def timed(pos: Any, person: str, total: str) -> tuple[float, dict[str, Any]]:
                started = time.monotonic()
                answer = await pos.call("2102", pos.drug_input(person, DAY, total, basket(total)))
                return time.monotonic() - started, answer

            held = asyncio.ensure_future(timed(held_pos, HELD_PERSON, "12.00"))
            await asyncio.sleep(0.05)  # its batch is waiting on the lock when the others come
            healthy = await asyncio.gather(
                *(timed(healthy_pos, p, f"{10 + i}.00") for i, p in enumerate(HEALTHY_PERSONS))
            )
            for seconds, answer in healthy:
                assert answer["infcode"] == 0, answer
                assert seconds < 1.5, (seconds, answer)
            assert not held.done()  # still waiting for its own person, alone
            await asyncio.sleep(HELD_SECONDS - 0.05 - max(s for s, _ in healthy))
            await lock.rollback()
            seconds, answer = await held
            assert answer["infcode"] == 0, answer  # settled once the person was released
        finally:
            await holder.close()
        assert _timeouts(HEALTHY_PHARMACY) == before
        sold = await srv.fetchval(
            "SELECT count(*) FROM settlements WHERE fixmedins_code = ANY($1::text[])",
            [HELD_PHARMACY, HEALTHY_PHARMACY],
        )
        assert sold == 1 + len(HEALTHY_PERSONS)
        assert await srv.check_ledger() == []
