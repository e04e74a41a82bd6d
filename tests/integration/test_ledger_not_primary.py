"""A gateway whose ledger connection reaches a server that no longer takes writes (a primary
demoted in a failover, a standby reached through a stale route) answers "unavailable, retry the
same msgid" and counts it against the ledger's breaker, as for a dead network: never "internal
error", and nothing written. The loopback cluster's failover (tests/cluster/) shows the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL

PHARMACY = "P44180000001"
PERSON = "441800000000000001"


async def _read_only(dsn: str) -> str:
    # asyncpg passes an unknown DSN parameter on as a server setting: every transaction of the
    # gateway's connections is read-only, as on a hot standby (SQLSTATE 25006 on a write).
    return dsn + ("&" if "?" in dsn else "?") + "default_transaction_read_only=on"


async def test_a_read_only_ledger_is_unavailable_not_a_bug(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database, GENEROUS, serve_through=_read_only) as srv:
        pos = srv.client(PHARMACY)
        before = await srv.ledger_fingerprint()
        answers = []
        for _ in range(8):
            drug = pos.drug_input(PERSON, "2026-07-01 10:00:00", DRUG_TOTAL, DRUG_LINES, "1")
            answers.append(await pos.call("2102", drug))
            if answers[-1]["infcode"] == 0:
                break
            await asyncio.sleep(0.2)
        # Five in a row (the breaker's consecutive_failures), one institution's: retry the same
        # msgid, nothing written; the breaker's probe of the database fails as they did (it
        # writes nothing either), the breaker opens, and the plan defers the next sale (a DF
        # claim, journaled locally), as it would for a ledger that cannot be reached at all.
        *refused, deferred = answers
        assert 5 <= len(refused) <= 6, answers
        for answer in refused:
            assert answer["infcode"] == -1
            assert answer["err_msg"].startswith("医保结算服务暂时不可用，请稍后使用相同报文ID重试")
        assert deferred["infcode"] == 0
        assert deferred["output"]["setlinfo"]["setl_id"].startswith("DF")
        assert await srv.ledger_fingerprint() == before
