"""The gateway's connections never compile a statement (PostgreSQL's JIT).

Found measuring two workers after an outage's backlog of pharmacy claims: the claims holding a
visit's lines, read on every settlement of a visit, was estimated at every pending claim (the
visits' provisional ids are a parameter the planner cannot see), passed jit_above_cost, and was
compiled on every call: 45-70 ms for a statement that reads no row, 96% of PostgreSQL's time,
the visit chain at a fifth of its rate exactly while the backlog was being replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db, deferred

CLAIMS = 20_000  # an outage's backlog of pharmacy sales


async def _plans_of(conn: asyncpg.Connection) -> list[str] | None:
    """Every plan the connection runs from now on, with what it cost (auto_explain's words sent
    to this client), until `conn.remove_log_listener(_heard)`; None where the server has no
    auto_explain."""
    try:
        await conn.execute("LOAD 'auto_explain'")
    except asyncpg.PostgresError:
        return None
    await conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;"
        " SET client_min_messages = log"
    )
    _HEARD.clear()
    conn.add_log_listener(_heard)
    return _HEARD


_HEARD: list[str] = []


def _heard(_conn: object, message: Any) -> None:
    _HEARD.append(str(message.message))


async def test_a_visits_claims_are_read_without_compiling_after_an_outage(
    new_database: Callable[..., Any],
) -> None:
    dsn = await new_database("nojit")
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        # A pharmacy sale's claim names no visit; the visits opened during the outage have
        # their provisional ids mapped to the visits they became.
        await conn.execute(
            "INSERT INTO deferred (kind, claim_id, fixmedins_code, msgid, infno, psn_no,"
            " service_date, body, received_at, source)"
            " SELECT 'claim', 'DF' || g, 'P44180000001', 'm' || g, '2102', '441800000000000001',"
            " current_date, convert_to(repeat('x', 1500), 'UTF8'), now(), 'ledger'"
            " FROM generate_series(1, $1) AS g",
            CLAIMS,
        )
        await conn.execute(
            "INSERT INTO deferred_ids (provisional_id, mdtrt_id)"
            " SELECT 'LS' || g, '4418002026120800000000' || g FROM generate_series(1000, 1300) g"
        )
        await conn.execute("ANALYZE deferred")
        await conn.execute("ANALYZE deferred_ids")
    finally:
        await conn.close()
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as pooled:
            assert await pooled.fetchval("SHOW jit") == "off"
            plans = await _plans_of(pooled)
            if plans is None:
                pytest.skip("this PostgreSQL has no auto_explain to show its plans")
            # Past asyncpg's switch to a generic plan (after five runs of a statement).
            try:
                for _ in range(7):
                    held = await deferred.pending_on_visits(
                        pooled, ["44180020261208000000006383", "44180020261208000000006385"]
                    )
                    assert held == []
            finally:
                pooled.remove_log_listener(_heard)
        ran = [p for p in plans if "deferred_claims_by_visit" in p or "deferred d" in p]
        assert ran, plans
        assert not [p for p in ran if "JIT:" in p], ran[-1]
    finally:
        await pool.close()
