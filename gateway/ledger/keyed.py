"""Reads of many keys at once that go by the table's index whatever the planner thinks of it.

A read of a batch's keys written as a join or `= ANY($1)` is planned from the table's
statistics. On a fresh ledger (or a table autovacuum has not analyzed yet) the table looks
tiny, the plan reads it through, and asyncpg's prepared statement keeps that plan while the
table grows. In the harness the visit chain's line and visit reads ran as sequential scans on
about half their calls, 2.5 ms each, and the group commit's accumulators read took 1.1 ms a
batch at ten thousand rows (benchmarks/RESULTS.md). Here each distinct key drives a lateral
subquery, kept apart by OFFSET 0 so that it can only be run once per key: a key on an index's
leading columns is then an index look-up on any table, planned once and for all.
"""

from __future__ import annotations

from collections.abc import Sequence

Column = tuple[str, str]  # (name, PostgreSQL type)


def per_key(
    columns: str,
    table: str,
    keys: Sequence[Column],
    *,
    where: str = "",
    lock: bool = False,
    order_by: str = "",
) -> str:
    """`SELECT columns FROM table` for the rows of each distinct key, the keys given as one
    array parameter per key column ($1, $2, … in `keys`' order). `where`: a further condition
    on the table's columns (the table's alias is `t`; a subquery in it is best kept per row
    with OFFSET 0 too); `lock`: FOR UPDATE, taken key by key in the keys' sorted order (two
    batches locking overlapping keys queue in the same order); `order_by`: of the result, over
    `columns`' names."""
    names = [name for name, _ in keys]
    arrays = ", ".join(f"${i}::{type_}[]" for i, (_, type_) in enumerate(keys, 1))
    listed = ", ".join(names)
    match = " AND ".join(f"t.{name} = k.{name}" for name in names)
    if where:
        match += f" AND {where}"
    return (
        f"SELECT r.* FROM (SELECT DISTINCT * FROM unnest({arrays}) AS u({listed})"
        f" ORDER BY {listed}) AS k CROSS JOIN LATERAL"
        f" (SELECT {columns} FROM {table} t WHERE {match} OFFSET 0"
        f"{' FOR UPDATE' if lock else ''}) AS r" + (f" ORDER BY {order_by}" if order_by else "")
    )
