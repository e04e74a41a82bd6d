"""Statements a counter's request runs find their rows by an index, never by reading a table
through: the ledger's tables grow by every visit ever settled, and a test database's few rows
hide a full scan (PostgreSQL scans a small table whatever its indexes). With sequential scans
priced out, a plan that still reads a table through has no index to use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db, encounters, fees, idempotency, persons, settlements

# (what it is, the statement, its arguments as SQL literals)
PER_REQUEST = [
    ("a cancellation's lines released (2208, 2103, 2305)", fees.RELEASE, ("'M1'", "'S1'")),
    ("a settlement's lines read (bulk correction)", fees.OF_SETTLEMENT, ("'M1'", "'S1'")),
    (
        "lines attached to their settlement",
        fees.MARK_SETTLED,
        ("'M1'", "ARRAY['1', '2']", "'S1'"),
    ),
]


@pytest.fixture
async def conn(new_database: Callable[..., Any]) -> Any:
    c = await asyncpg.connect(await new_database("keys"))
    try:
        await db.migrate(c)
        yield c
    finally:
        await c.close()


async def _plan(conn: asyncpg.Connection, sql: str, args: tuple[str, ...]) -> str:
    """The plan of the statement prepared, as a connection's cached statement runs it."""
    await conn.execute(f"PREPARE probe AS {sql}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({', '.join(args)})")
    finally:
        await conn.execute("DEALLOCATE probe")
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(("what", "sql", "args"), PER_REQUEST, ids=[p[0] for p in PER_REQUEST])
async def test_a_request_finds_its_rows_by_an_index(
    conn: asyncpg.Connection, what: str, sql: str, args: tuple[str, ...]
) -> None:
    await conn.execute("SET enable_seqscan = off")
    plan = await _plan(conn, sql, args)
    assert "Seq Scan" not in plan, f"{what}: {plan}"


# Reads of many keys at once whose plan must not depend on the table's statistics: run in every
# batch of the group commit, their plan is made on a ledger's first requests (a fresh ledger, a
# new year) and cached on the connection while the table grows.
TWO_VISITS = ("ARRAY['M1', 'M2']",)
BATCH_READS = [
    (
        "a batch's accumulators (group commit)",
        persons._ACC_READ_MANY,
        ("ARRAY['441800000000000001', '441800000000000002']", "ARRAY[2026, 2026]"),
        "accumulators",
    ),
    ("a batch's visits, locked (group commit)", encounters._LOCK_MANY, TWO_VISITS, "encounters"),
    ("a batch's visits (group read)", encounters._READ_MANY, TWO_VISITS, "encounters"),
    ("a batch's unsettled lines", fees._UNSETTLED_MANY, TWO_VISITS, "fee_lines"),
    ("a batch's settled charge batches", fees._SETTLED_BATCHES, TWO_VISITS, "fee_lines"),
    ("a batch's stays beside another stay", settlements._OTHER_STAYS, TWO_VISITS, "encounters"),
    (
        "a batch's refunds not yet replaced",
        settlements._UNREPLACED_REFUNDS,
        TWO_VISITS,
        "settlements",
    ),
    (
        "a batch's msgid journal look-ups (group read)",
        idempotency._LOOKUP_MANY,
        ("ARRAY['P1', 'P1']", "ARRAY['M1', 'M2']"),
        "idempotency",
    ),
]


@pytest.mark.parametrize(
    ("what", "sql", "args", "table"), BATCH_READS, ids=[p[0] for p in BATCH_READS]
)
async def test_a_batch_read_goes_by_the_key_on_a_fresh_ledger(
    conn: asyncpg.Connection, what: str, sql: str, args: tuple[str, ...], table: str
) -> None:
    """On the fresh ledger's empty table, with the plan made once for every later call (as
    the connection's prepared statement ends up), the read still goes by the primary key."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    plan = await _plan(conn, sql, args)
    assert "Seq Scan" not in plan, f"{what}: {plan}"
    assert f"Index Scan using {table}_" in plan, f"{what}: {plan}"
