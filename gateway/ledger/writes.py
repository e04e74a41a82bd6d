"""Writes staged in memory, then sent as one pipelined batch per statement.

Settlement code stages its rows here instead of executing them one by one, so the same staging
serves one request (a batch of one) and a group commit of many (`gateway.pipeline.group_commit`): the
rules of what a settlement writes live in one place, and the database sees a handful of
`executemany` round trips per transaction instead of a dozen per settlement.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg


class Writes:
    """Statements in first-staged order, each with its rows in staged order."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[object, ...]]] = {}

    def add(self, sql: str, *args: object) -> None:
        """Stage one row of a statement."""
        rows = self._rows.get(sql)
        if rows is None:
            self._rows[sql] = [args]
        else:
            rows.append(args)

    def extend(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        """Stage rows of a statement; the statement takes its place in the order even with none,
        so every settlement stages the same statements in the same order and merged batches keep
        parents (visits, settlements) ahead of the rows that refer to them."""
        self._rows.setdefault(sql, []).extend(rows)

    def merge(self, other: Writes) -> None:
        """Append another staging's rows after this one's."""
        for sql, rows in other._rows.items():
            self.extend(sql, rows)

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Execute everything in order (the caller holds the transaction)."""
        for sql, rows in self._rows.items():
            if len(rows) == 1:
                await conn.execute(sql, *rows[0])
            elif rows:
                await conn.executemany(sql, rows)
        self._rows.clear()
