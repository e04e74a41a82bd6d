"""Writes staged in memory, then sent as one statement per table.

Settlement code stages its rows here instead of executing them one by one, so the same staging
serves one request (a batch of one) and a group commit of many (`gateway.pipeline.group_commit`): the
rules of what a settlement writes live in one place. A statement declared with
`insert_statement` or `update_statement` has a second form taking all its rows as one JSON
document (`json_to_recordset`): the rows a group commit staged for it are one execution in the
database, not one per row (an `executemany` pipelines the round trips but PostgreSQL still plans,
starts and finishes the statement for every row, which was most of its CPU per settlement).

The rows travel as JSON rather than as one array per column (`unnest`): asyncpg checks every
element of an array parameter against the collection ABCs in Python to find nested arrays, and
that encoding was a fifth of the gateway's CPU per durable 2102 (the wrk harness's profile);
msgspec writes the whole document in C. Other statements keep `executemany`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

Column = tuple[str, str]  # (name, PostgreSQL type)

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement for one row (`one`: what `execute` and `Writes.add` take) and `many`, the same
    effect for many rows at once, its one parameter the rows as a JSON array of objects.

    `key_columns`: the leading columns naming the row written (an upsert's conflict target, an
    update's WHERE). Rows staged later for the same key carry the values as they stand after the
    earlier ones (a person's accumulators after a second settlement in the batch), so only the
    last is sent: one statement cannot touch a row twice, and the outcome is the sequential one.
    """

    one: str
    many: str
    names: tuple[str, ...]
    key_columns: int = 0

    def payload(self, rows: Sequence[tuple[object, ...]]) -> str:
        """The parameter of `many` for these rows."""
        if self.key_columns:
            last = {row[: self.key_columns]: row for row in rows}
            if len(last) < len(rows):
                rows = list(last.values())
        names = self.names
        # bytes as base64 (decoded by the statement), dates and times as ISO 8601, jsonb
        # values as the JSON they are
        return _encode([dict(zip(names, row, strict=True)) for row in rows]).decode()


# The statements declared below, by their one-row text (asyncpg takes exactly `str`, so modules
# keep the text as their constant and the many-row form is found here).
_FORMS: dict[str, Statement] = {}


def _declared(statement: Statement) -> str:
    _FORMS[statement.one] = statement
    return statement.one


def many_form(sql: str) -> Statement | None:
    """The declaration of a one-row statement made with `insert_statement`/`update_statement`."""
    return _FORMS.get(sql)


def _rows_of(columns: Sequence[Column]) -> str:
    """The JSON rows as a relation `u`; bytea travels as base64 text (see `_picked`)."""
    types = (f"{name} {'text' if t == 'bytea' else t}" for name, t in columns)
    return f"json_to_recordset($1::json) AS u({', '.join(types)})"


def _picked(column: Column) -> str:
    name, type_ = column
    return f"decode(u.{name}, 'base64')" if type_ == "bytea" else f"u.{name}"


def insert_statement(
    table: str,
    columns: Sequence[Column],
    *,
    fixed: Sequence[tuple[str, str]] = (),
    suffix: str = "",
    key_columns: int = 0,
) -> str:
    """`INSERT INTO table (columns) VALUES ($1, …)`, declared with its many-row form; `fixed`:
    columns set to an SQL constant; `suffix`: an ON CONFLICT clause (then name its key in
    `key_columns`)."""
    names = [name for name, _ in columns]
    target = ", ".join([*names, *(name for name, _ in fixed)])
    constants = [value for _, value in fixed]
    values = ", ".join([*(f"${i}" for i in range(1, len(columns) + 1)), *constants])
    picks = ", ".join([*(_picked(c) for c in columns), *constants])
    return _declared(
        Statement(
            f"INSERT INTO {table} ({target}) VALUES ({values}){suffix}",
            f"INSERT INTO {table} ({target}) SELECT {picks} FROM {_rows_of(columns)}{suffix}",
            tuple(names),
            key_columns=key_columns,
        )
    )


def update_statement(table: str, keys: Sequence[Column], sets: Sequence[Column]) -> str:
    """`UPDATE table SET sets WHERE keys` (parameters: the keys, then the values), declared
    with its many-row form."""
    columns = [*keys, *sets]
    first = len(keys) + 1
    return _declared(
        Statement(
            f"UPDATE {table} SET "
            + ", ".join(f"{name} = ${i}" for i, (name, _) in enumerate(sets, first))
            + " WHERE "
            + " AND ".join(f"{name} = ${i}" for i, (name, _) in enumerate(keys, 1)),
            f"UPDATE {table} AS t SET "
            + ", ".join(f"{name} = {_picked((name, t))}" for name, t in sets)
            + f" FROM {_rows_of(columns)} WHERE "
            + " AND ".join(f"t.{name} = u.{name}" for name, _ in keys),
            tuple(name for name, _ in columns),
            key_columns=len(keys),
        )
    )


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
            elif rows and (form := _FORMS.get(sql)) is not None:
                await conn.execute(form.many, form.payload(rows))
            elif rows:
                await conn.executemany(sql, rows)
        self._rows.clear()
