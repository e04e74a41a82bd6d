"""A retry while an earlier attempt of the same message may still commit.

Found from outside, on the high-availability cluster: with both synchronous standbys gone, a
sale's commit waited for them past its deadline ("retry the same msgid"); its retries timed out
on the key it held until the ledger's breaker opened, and the next retry was deferred as an
all-cash claim. When the standbys came back the first attempt committed: the patient paid cash
and the personal account paid too, and the retry's answer changed. A retry under an open breaker
whose key another transaction still holds is now refused "still settling, retry", nothing kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.app.appkeys import GATEWAY
from gateway.app.config import Breakers, GatewayConfig
from gateway.emergency.breaker import BreakerConfig
from gateway.ledger.partitions import MAIN
from gateway.pipeline.dispatch import STILL_SETTLING_MSG
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
PERSON = "441800000000000001"
# Open once tripped for the whole test: the prober would close it on a ledger that answers.
HELD_OPEN = BreakerConfig(
    window_seconds=60.0,
    min_calls=3,
    consecutive_failures=3,
    min_open_seconds=600.0,
    action="defer",
)


async def test_a_retry_whose_first_attempt_may_still_commit_is_not_deferred(
    new_database: Callable[..., Any],
) -> None:
    config = GatewayConfig(rate_limit=GENEROUS.rate_limit, breakers=Breakers(postgres=HELD_OPEN))
    async with running_gateway(new_database, config) as srv:
        assert srv.app is not None
        gw = srv.app[GATEWAY]
        pos = srv.client(PHARMACY)
        msgid = pos.msgid()
        sale = pos.drug_input(PERSON, "2026-07-01 10:00:00", DRUG_TOTAL, DRUG_LINES, "1")
        # The first attempt: its transaction holds the key, its commit not done.
        holder = await asyncpg.connect(srv.dsn)
        first = holder.transaction()
        await first.start()
        await holder.execute(
            "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256)"
            " VALUES ($1, $2, '2102', $3)",
            PHARMACY,
            msgid,
            b"\x01" * 32,
        )
        breaker = gw.ledger_breaker(MAIN)
        for _ in range(3):  # its timeouts, as the ledger's breaker counted them
            breaker.record(False, timeout=True)
        if breaker.suspected:
            breaker.confirmed(False)  # its probe failing, as a failing ledger answers it
        assert breaker.is_open
        try:
            retry = await pos.call("2102", sale, msgid=msgid)
            assert retry["infcode"] == -1, retry
            assert retry["err_msg"] == STILL_SETTLING_MSG
            assert gw.journal.answered(PHARMACY, msgid) is None  # not deferred
        finally:
            await first.rollback()
            await holder.close()
        # Nothing of the refusal was kept: the attempt having come to nothing, the plan's
        # answer (a deferred claim, the patient paying cash) is the retry's now.
        again = await pos.call("2102", sale, msgid=msgid)
        assert again["infcode"] == 0, again
        assert again["output"]["setlinfo"]["setl_id"].startswith("DF")
