"""Writes staged in memory, then sent as one statement per table.

Settlement code stages its rows here instead of executing them one by one, so the same staging
serves one request (a batch of one) and a group commit of many (`gateway.pipeline.group_commit`): the
rules of what a settlement writes live in one place. A statement declared with
`insert_statement` or `update_statement` has a second form taking each column as an array (`unnest`): the rows a group commit
staged for it are one execution in the database, not one per row (an `executemany` pipelines the
round trips but PostgreSQL still plans, starts and finishes the statement for every row, which
was most of its CPU per settlement). Other statements keep `executemany`.

Declared statements staged one after another on different tables are sent together, as one
statement of data-modifying CTEs (`combined`): a settlement's six or seven writes are one round
trip, not one each. One statement sees one snapshot, so a table written twice starts a new one
(the second write must see the first); foreign keys and statement triggers run at its end, when
every part's rows are there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

Column = tuple[str, str]  # (name, PostgreSQL type)


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement for one row (`one`: what `execute` and `Writes.add` take) and `many`, the same
    effect for many rows at once, its parameters the columns as arrays.

    `key_columns`: the leading columns naming the row written (an upsert's conflict target, an
    update's WHERE). Rows staged later for the same key carry the values as they stand after the
    earlier ones (a person's accumulators after a second settlement in the batch), so only the
    last is sent: one statement cannot touch a row twice, and the outcome is the sequential one.
    """

    one: str
    many: str
    table: str
    params: int  # of `many`: one array per column
    key_columns: int = 0
    json_columns: tuple[int, ...] = ()

    def arrays(self, rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
        """The parameters of `many` for these rows."""
        if self.key_columns:
            last = {row[: self.key_columns]: row for row in rows}
            if len(last) < len(rows):
                rows = list(last.values())
        columns = [list(column) for column in zip(*rows, strict=True)]
        for i in self.json_columns:  # jsonb travels as text: a JSON array would read as a dimension
            columns[i] = [
                None if v is None else msgspec.json.encode(v).decode() for v in columns[i]
            ]
        return columns


# The statements declared below, by their one-row text (asyncpg takes exactly `str`, so modules
# keep the text as their constant and the many-row form is found here).
_FORMS: dict[str, Statement] = {}


def _declared(statement: Statement) -> str:
    _FORMS[statement.one] = statement
    return statement.one


def many_form(sql: str) -> Statement | None:
    """The declaration of a one-row statement made with `insert_statement`/`update_statement`."""
    return _FORMS.get(sql)


def _arrays(columns: Sequence[Column]) -> str:
    # jsonb as text[] and cast per element (see Statement.arrays)
    types = ("text" if t == "jsonb" else t for _, t in columns)
    return ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))


def _picked(column: Column) -> str:
    name, type_ = column
    return f"u.{name}::jsonb" if type_ == "jsonb" else f"u.{name}"


def insert_statement(
    table: str,
    columns: Sequence[Column],
    *,
    fixed: Sequence[tuple[str, str]] = (),
    suffix: str = "",
    key_columns: int = 0,
) -> str:
    """`INSERT INTO table (columns) VALUES ($1, …)`, declared with its `unnest` form; `fixed`: columns set
    to an SQL constant; `suffix`: an ON CONFLICT clause (then name its key in `key_columns`)."""
    names = [name for name, _ in columns]
    target = ", ".join([*names, *(name for name, _ in fixed)])
    constants = [value for _, value in fixed]
    values = ", ".join([*(f"${i}" for i in range(1, len(columns) + 1)), *constants])
    picks = ", ".join([*(_picked(c) for c in columns), *constants])
    return _declared(
        Statement(
            f"INSERT INTO {table} ({target}) VALUES ({values}){suffix}",
            f"INSERT INTO {table} ({target}) SELECT {picks}"
            f" FROM unnest({_arrays(columns)}) AS u({', '.join(names)}){suffix}",
            table,
            len(columns),
            key_columns=key_columns,
            json_columns=tuple(i for i, (_, t) in enumerate(columns) if t == "jsonb"),
        )
    )


def update_statement(table: str, keys: Sequence[Column], sets: Sequence[Column]) -> str:
    """`UPDATE table SET sets WHERE keys` (parameters: the keys, then the values), declared
    with its `unnest` form."""
    columns = [*keys, *sets]
    names = ", ".join(name for name, _ in columns)
    first = len(keys) + 1
    return _declared(
        Statement(
            f"UPDATE {table} SET "
            + ", ".join(f"{name} = ${i}" for i, (name, _) in enumerate(sets, first))
            + " WHERE "
            + " AND ".join(f"{name} = ${i}" for i, (name, _) in enumerate(keys, 1)),
            f"UPDATE {table} AS t SET "
            + ", ".join(f"{name} = {_picked((name, t))}" for name, t in sets)
            + f" FROM unnest({_arrays(columns)}) AS u({names}) WHERE "
            + " AND ".join(f"t.{name} = u.{name}" for name, _ in keys),
            table,
            len(columns),
            key_columns=len(keys),
            json_columns=tuple(i for i, (_, t) in enumerate(columns) if t == "jsonb"),
        )
    )


_PLACEHOLDER = re.compile(r"\$(\d+)")
_COMBINED: dict[tuple[Statement, ...], str] = {}


def combined(statements: tuple[Statement, ...]) -> str:
    """The `many` forms of statements on different tables as one statement: each a CTE, its
    parameters numbered after the previous ones'. PostgreSQL runs every part to completion
    whether or not the final SELECT reads it."""
    text = _COMBINED.get(statements)
    if text is None:
        parts, offset = [], 0
        for i, statement in enumerate(statements):
            parts.append(f"w{i} AS ({_shifted(statement.many, offset)})")
            offset += statement.params
        text = _COMBINED[statements] = "WITH " + ", ".join(parts) + " SELECT"
    return text


def _shifted(sql: str, by: int) -> str:
    return _PLACEHOLDER.sub(lambda m: f"${int(m.group(1)) + by}", sql)


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

    def __bool__(self) -> bool:
        """Whether any row is staged."""
        return any(self._rows.values())

    def merge(self, other: Writes) -> None:
        """Append another staging's rows after this one's."""
        for sql, rows in other._rows.items():
            self.extend(sql, rows)

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Execute everything in order (the caller holds the transaction): runs of declared
        statements on different tables as one statement each, the others one by one."""
        run: list[tuple[Statement, list[tuple[object, ...]]]] = []
        for sql, rows in self._rows.items():
            if not rows:
                continue
            form = _FORMS.get(sql)
            if form is None or any(form.table == earlier.table for earlier, _ in run):
                await _execute_run(conn, run)
                run = []
            if form is None:
                await _execute(conn, sql, None, rows)
            else:
                run.append((form, rows))
        await _execute_run(conn, run)
        self._rows.clear()


async def _execute_run(
    conn: asyncpg.Connection, run: list[tuple[Statement, list[tuple[object, ...]]]]
) -> None:
    if len(run) == 1:
        form, rows = run[0]
        await _execute(conn, form.one, form, rows)
    elif run:
        args = [column for form, rows in run for column in form.arrays(rows)]
        await conn.execute(combined(tuple(form for form, _ in run)), *args)


async def _execute(
    conn: asyncpg.Connection, sql: str, form: Statement | None, rows: list[tuple[object, ...]]
) -> None:
    if len(rows) == 1:
        await conn.execute(sql, *rows[0])
    elif form is not None:
        await conn.execute(form.many, *form.arrays(rows))
    else:
        await conn.executemany(sql, rows)
