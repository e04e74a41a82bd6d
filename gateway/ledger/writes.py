"""Writes staged in memory, then sent as one statement per table.

Settlement code stages its rows here instead of executing them one by one, so the same staging
serves one request (a batch of one) and a group commit of many (`gateway.pipeline.group_commit`): the
rules of what a settlement writes live in one place. A statement declared with
`insert_statement` or `update_statement` has a second form taking all its rows at once: the rows
a group commit staged for it are one execution in the database, not one per row (an
`executemany` pipelines the round trips but PostgreSQL still plans, starts and finishes the
statement for every row, which was most of its CPU per settlement). Other statements keep
`executemany`.

The rows travel as one array of JSON texts, a row per element, read back column by column in the
statement, not as one array parameter per column: asyncpg checks every element of an array
parameter against abstract base classes in Python, which cost the gateway more per settlement
than the rest of the write (benchmarks/RESULTS.md); msgspec encodes a row in C, and PostgreSQL
reads the rows as fast as it read the columns (bytea columns excepted: they keep arrays of their
own, see `_rows`). The rows are still an array (`unnest`), not one JSON document, so the
planner's count of them is what it was: an array's elements are counted, a document's rows are
guessed at a hundred.

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
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement for one row (`one`: what `execute` and `Writes.add` take) and `many`, the same
    effect for many rows at once, its parameters the rows (`arguments`).

    `key_columns`: the leading columns naming the row written (an upsert's conflict target, an
    update's WHERE). Rows staged later for the same key carry the values as they stand after the
    earlier ones (a person's accumulators after a second settlement in the batch), so only the
    last is sent: one statement cannot touch a row twice, and the outcome is the sequential one.
    `binary_columns`: the bytea columns, sent as arrays of their own (see `_rows`).
    """

    one: str
    many: str
    table: str
    key_columns: int = 0
    binary_columns: tuple[int, ...] = ()

    @property
    def params(self) -> int:
        """How many parameters `many` takes."""
        return 1 + len(self.binary_columns)

    def arguments(self, rows: Sequence[tuple[object, ...]]) -> list[object]:
        """The parameters of `many` for these rows: each row a JSON array, a column per element
        (text: asyncpg sends it as it is, whatever codec the connection has for jsonb), then each
        bytea column as an array."""
        if self.key_columns:
            last = {row[: self.key_columns]: row for row in rows}
            if len(last) < len(rows):
                rows = list(last.values())
        binary = self.binary_columns
        if not binary:
            return [[_encode(row).decode() for row in rows]]
        keep = [i for i in range(len(rows[0])) if i not in binary]
        texts = [_encode([row[i] for i in keep]).decode() for row in rows]
        return [texts, *([row[i] for row in rows] for i in binary)]


# The statements declared below, by their one-row text (asyncpg takes exactly `str`, so modules
# keep the text as their constant and the many-row form is found here).
_FORMS: dict[str, Statement] = {}


def _declared(statement: Statement) -> str:
    _FORMS[statement.one] = statement
    return statement.one


def many_form(sql: str) -> Statement | None:
    """The declaration of a one-row statement made with `insert_statement`/`update_statement`."""
    return _FORMS.get(sql)


def form_of(sql: str) -> Statement:
    """`many_form` of a statement known to be declared here."""
    return _FORMS[sql]


def _rows(columns: Sequence[Column]) -> str:
    """The rows of `Statement.arguments` as a table `u` with the columns' names and types. A JSON
    null is SQL NULL in every column, jsonb ones included (as with one row at a time).

    bytea columns (a stored answer, a body's hash) are arrays of their own, unnested beside the
    rows: in JSON they would travel as base64, and decoding a few kilobytes of it cost PostgreSQL
    about ten times what the bytes cost as they are (benchmarks/RESULTS.md)."""
    picks, unnested, names = [], ["$1::text[]"], ["t"]
    element = 0
    for name, type_ in columns:
        if type_ == "bytea":
            unnested.append(f"${len(unnested) + 1}::bytea[]")
            names.append(f"b{len(names)}")
            picks.append(f"r.{names[-1]} AS {name}")
            continue
        if type_ == "jsonb":
            pick = f"NULLIF(r.e -> {element}, 'null')"
        elif type_.endswith("[]"):
            # A JSON array read back element by element (its text is not an array literal).
            pick = (
                f"CASE WHEN r.e -> {element} = 'null' THEN NULL ELSE"
                f" ARRAY(SELECT jsonb_array_elements_text(r.e -> {element}))::{type_} END"
            )
        else:
            pick = f"(r.e ->> {element})::{type_}"
        picks.append(f"{pick} AS {name}")
        element += 1
    # OFFSET 0 keeps the inner query apart, so each row's text is parsed once, not per column.
    rows = (
        f"(SELECT x.t::jsonb AS e{''.join(f', x.{n}' for n in names[1:])}"
        f" FROM unnest({', '.join(unnested)}) AS x({', '.join(names)}) OFFSET 0) AS r"
    )
    return f"(SELECT {', '.join(picks)} FROM {rows}) AS u"


def _binary(columns: Sequence[Column]) -> tuple[int, ...]:
    return tuple(i for i, (_, type_) in enumerate(columns) if type_ == "bytea")


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
    picks = ", ".join([*(f"u.{name}" for name in names), *constants])
    return _declared(
        Statement(
            f"INSERT INTO {table} ({target}) VALUES ({values}){suffix}",
            f"INSERT INTO {table} ({target}) SELECT {picks} FROM {_rows(columns)}{suffix}",
            table,
            key_columns=key_columns,
            binary_columns=_binary(columns),
        )
    )


def update_statement(table: str, keys: Sequence[Column], sets: Sequence[Column]) -> str:
    """`UPDATE table SET sets WHERE keys` (parameters: the keys, then the values), declared
    with its `unnest` form."""
    first = len(keys) + 1
    return _declared(
        Statement(
            f"UPDATE {table} SET "
            + ", ".join(f"{name} = ${i}" for i, (name, _) in enumerate(sets, first))
            + " WHERE "
            + " AND ".join(f"{name} = ${i}" for i, (name, _) in enumerate(keys, 1)),
            f"UPDATE {table} AS t SET "
            + ", ".join(f"{name} = u.{name}" for name, _ in sets)
            + f" FROM {_rows([*keys, *sets])} WHERE "
            + " AND ".join(f"t.{name} = u.{name}" for name, _ in keys),
            table,
            key_columns=len(keys),
            binary_columns=_binary([*keys, *sets]),
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
        args = [arg for form, rows in run for arg in form.arguments(rows)]
        await conn.execute(combined(tuple(form for form, _ in run)), *args)


async def _execute(
    conn: asyncpg.Connection, sql: str, form: Statement | None, rows: list[tuple[object, ...]]
) -> None:
    if len(rows) == 1:
        await conn.execute(sql, *rows[0])
    elif form is not None:
        await conn.execute(form.many, *form.arguments(rows))
    else:
        await conn.executemany(sql, rows)
