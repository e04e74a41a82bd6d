"""Statements a counter's request runs find their rows by an index, never by reading a table
through: the ledger's tables grow by every visit ever settled, and a test database's few rows
hide a full scan (PostgreSQL scans a small table whatever its indexes). With sequential scans
priced out, a plan that still reads a table through has no index to use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db, fees

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


@pytest.mark.parametrize(("what", "sql", "args"), PER_REQUEST, ids=[p[0] for p in PER_REQUEST])
async def test_a_request_finds_its_rows_by_an_index(
    conn: asyncpg.Connection, what: str, sql: str, args: tuple[str, ...]
) -> None:
    await conn.execute("SET enable_seqscan = off")
    await conn.execute(f"PREPARE probe AS {sql}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({', '.join(args)})")
    finally:
        await conn.execute("DEALLOCATE probe")
    plan = "\n".join(r[0] for r in rows)
    assert "Seq Scan" not in plan, f"{what}: {plan}"
