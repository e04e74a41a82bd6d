"""Staged writes sent as one statement per table (each row one JSON text, bytea beside them)
leave exactly what the same rows written one by one leave: every column type the ledger uses,
NULLs, JSON arrays and objects, and an upsert or update staged twice for one key (a person
settling twice in one group commit)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger.db import create_pool
from gateway.ledger.writes import Writes, insert_statement, many_form, update_statement

COLUMNS = [
    ("k", "text"),
    ("n", "int8"),
    ("doc", "jsonb"),
    ("at", "timestamp"),
    ("flag", "bool"),
    ("raw", "bytea"),
    ("day", "date"),
    ("m", "int4"),
    ("note", "text"),
]
TABLE = (
    "(k text PRIMARY KEY, n bigint, doc jsonb, at timestamp, flag boolean, raw bytea,"
    " day date, m integer, note text, state text NOT NULL)"
)
DAY = dt.date(2026, 6, 30)
# Text the JSON document must carry exactly: quotes, backslashes, control characters, braces.
TRICKY = 'a "quoted" \\ back\\slash,\n{brace} \t 药房 😀 \u007f'

AT = dt.datetime(2026, 7, 1, 10, 0, 0)
ROWS: list[tuple[object, ...]] = [
    ("a", 1, {"lines": [1, 2], "name": "药"}, AT, True, b"\x00\x01", DAY, 7, TRICKY),
    ("b", None, [{"x": 1}, {"x": 2}], None, None, None, None, None, None),
    ("c", -9_000_000_000, [], AT + dt.timedelta(microseconds=1), False, b"", DAY, -1, ""),
    ("d", 9_007_199_254_740_993, "a JSON string", AT, True, b"\xff" * 300, DAY, 0, "null"),
    ('e"\\', 0, 12.5, AT, False, bytes(range(256)), DAY, 2_147_483_647, "{1,2}"),
]


async def _tables(conn: asyncpg.Connection, *names: str) -> None:
    for name in names:
        await conn.execute(f"CREATE TABLE {name} {TABLE}")


async def _rows(conn: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY k")]


@pytest.fixture
async def conn(new_database: Callable[..., Any]) -> Any:
    pool = await create_pool(await new_database("writes"), min_size=1, max_size=1)
    try:
        async with pool.acquire() as c:
            yield c
    finally:
        await pool.close()


async def test_many_rows_in_one_statement_equal_one_by_one(conn: asyncpg.Connection) -> None:
    await _tables(conn, "one_by_one", "at_once")
    by_row = insert_statement("one_by_one", COLUMNS, fixed=[("state", "'open'")])
    at_once = insert_statement("at_once", COLUMNS, fixed=[("state", "'open'")])
    form = many_form(at_once)
    assert form is not None and "unnest(" in form.many and "unnest(" not in at_once
    for row in ROWS:
        await conn.execute(by_row, *row)
    staged = Writes()
    staged.extend(at_once, ROWS)
    await staged.flush(conn)
    written = await _rows(conn, "at_once")
    assert written == await _rows(conn, "one_by_one")
    assert written[0][2] == {"lines": [1, 2], "name": "药"} and written[1][2] == [
        {"x": 1},
        {"x": 2},
    ]
    assert [r[-1] for r in written] == ["open"] * len(ROWS)
    assert written[0][8] == TRICKY and written[3][1] == 9_007_199_254_740_993


async def test_an_upsert_staged_twice_for_one_key_ends_as_the_last(
    conn: asyncpg.Connection,
) -> None:
    await _tables(conn, "sequential", "batched")
    suffix = " ON CONFLICT (k) DO UPDATE SET n = EXCLUDED.n, doc = EXCLUDED.doc"
    staged_rows = [ROWS[0], ROWS[1], (*ROWS[0][:1], 2, {"after": "second"}, *ROWS[0][3:])]
    for table in ("sequential", "batched"):
        await conn.execute(
            f"INSERT INTO {table} VALUES ('a', 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'x')"
        )
    sequential = insert_statement("sequential", COLUMNS, fixed=[("state", "'y'")], suffix=suffix, key_columns=1)  # fmt: skip
    for row in staged_rows:
        await conn.execute(sequential, *row)
    batched = insert_statement("batched", COLUMNS, fixed=[("state", "'y'")], suffix=suffix, key_columns=1)  # fmt: skip
    staged = Writes()
    staged.extend(batched, staged_rows)
    await staged.flush(conn)  # without the key, PostgreSQL refuses to touch row 'a' twice
    assert await _rows(conn, "batched") == await _rows(conn, "sequential")
    assert (await _rows(conn, "batched"))[0][1:3] == (2, {"after": "second"})


async def test_an_update_staged_twice_for_one_key_ends_as_the_last(
    conn: asyncpg.Connection,
) -> None:
    await _tables(conn, "accounts_like")
    for k, n in (("a", 100), ("b", 200), ("c", 300)):
        await conn.execute("INSERT INTO accounts_like (k, n, state) VALUES ($1, $2, 'x')", k, n)
    balance = update_statement("accounts_like", [("k", "text")], [("n", "int8"), ("doc", "jsonb")])  # fmt: skip
    assert balance == "UPDATE accounts_like SET n = $2, doc = $3 WHERE k = $1"
    staged = Writes()
    staged.extend(balance, [("a", 90, [1]), ("c", 250, None), ("a", 70, {"last": True})])
    await staged.flush(conn)
    assert [r[:3] for r in await _rows(conn, "accounts_like")] == [
        ("a", 70, {"last": True}),
        ("b", 200, None),
        ("c", 250, None),
    ]


async def test_a_duplicate_in_one_statement_is_refused_whole(conn: asyncpg.Connection) -> None:
    """An upload naming a line twice fails as one statement: nothing of it is kept."""
    await _tables(conn, "lines_like")
    lines = insert_statement("lines_like", COLUMNS, fixed=[("state", "'open'")])
    staged = Writes()
    staged.extend(lines, [ROWS[0], ROWS[1], ROWS[0]])
    with pytest.raises(asyncpg.UniqueViolationError):
        async with conn.transaction():
            await staged.flush(conn)
    assert await _rows(conn, "lines_like") == []


class _Sent:
    """The statements the connection sent, as the server received them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._queries: list[str] = []
        conn.add_query_logger(lambda record: self._queries.append(record.query))

    async def queries(self, naming: str) -> list[str]:
        """Those naming a table of the test (not asyncpg's look-ups of types)."""
        await asyncio.sleep(0)  # asyncpg calls its loggers soon after, not during, the query
        return [q for q in self._queries if naming in q]


PARENT = [("k", "text"), ("n", "int8")]
CHILD = [("k", "text"), ("parent", "text"), ("doc", "jsonb")]


async def _family(conn: asyncpg.Connection, prefix: str) -> tuple[str, str]:
    """A parent table, a child table whose rows must name a parent, and a statement trigger
    over the parent's transition table (as settlements' events are recorded)."""
    await conn.execute(f"CREATE TABLE {prefix}_parent (k text PRIMARY KEY, n bigint)")
    await conn.execute(
        f"CREATE TABLE {prefix}_child (k text PRIMARY KEY,"
        f" parent text NOT NULL REFERENCES {prefix}_parent, doc jsonb)"
    )
    await conn.execute(f"CREATE TABLE {prefix}_seen (k text, rows_then bigint)")
    await conn.execute(
        f"CREATE FUNCTION {prefix}_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" INSERT INTO {prefix}_seen SELECT n.k, (SELECT count(*) FROM {prefix}_child)"
        f" FROM inserted n; RETURN NULL; END $$"
    )
    await conn.execute(
        f"CREATE TRIGGER {prefix}_noted AFTER INSERT ON {prefix}_parent"
        f" REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION {prefix}_note()"
    )
    parent = insert_statement(f"{prefix}_parent", PARENT)
    child = insert_statement(f"{prefix}_child", CHILD)
    return parent, child


async def _everything(conn: asyncpg.Connection, prefix: str) -> list[list[tuple[Any, ...]]]:
    return [await _rows(conn, f"{prefix}_{t}") for t in ("parent", "child")] + [
        sorted(tuple(r) for r in await conn.fetch(f"SELECT * FROM {prefix}_seen"))
    ]


async def test_writes_to_different_tables_go_as_one_statement(conn: asyncpg.Connection) -> None:
    """A parent and the children naming it, staged together, are one round trip; the foreign
    key and the statement trigger are checked at its end, with every row there, and what is
    written equals the same rows sent one statement at a time."""
    parents = [("p1", 1), ("p2", 2)]
    children = [("c1", "p1", {"x": 1}), ("c2", "p2", [1, 2]), ("c3", "p1", None)]
    written = []
    for prefix, together in (("apart", False), ("together", True)):
        parent, child = await _family(conn, prefix)
        sent = _Sent(conn)
        if together:
            staged = Writes()
            staged.extend(parent, parents)
            staged.extend(child, children)
            await staged.flush(conn)
            queries = await sent.queries(prefix)
            assert len(queries) == 1 and queries[0].startswith("WITH w0 AS (INSERT")
        else:
            for table, rows in ((parent, parents), (child, children)):
                staged = Writes()
                staged.extend(table, rows)
                await staged.flush(conn)
        written.append(await _everything(conn, prefix))
    apart, together = written
    assert apart[:2] == together[:2] and len(together[1]) == 3
    # The trigger ran after the whole statement: it saw the children of the same statement.
    assert together[2] == [("p1", 3), ("p2", 3)] and apart[2] == [("p1", 0), ("p2", 0)]


async def test_a_table_written_twice_starts_another_statement(conn: asyncpg.Connection) -> None:
    """One statement sees one snapshot: an update staged after an insert into the same table
    must see the inserted row, so it is sent after it, as the rows were staged."""
    parent, child = await _family(conn, "twice")
    renamed = update_statement("twice_parent", [("k", "text")], [("n", "int8")])
    staged = Writes()
    staged.extend(parent, [("p1", 1)])
    staged.extend(child, [("c1", "p1", None)])
    staged.extend(renamed, [("p1", 10)])
    sent = _Sent(conn)
    await staged.flush(conn)
    assert [q.split(" ", 3)[:3] for q in await sent.queries("twice_")] == [
        ["WITH", "w0", "AS"],
        ["UPDATE", "twice_parent", "SET"],
    ]
    assert await _rows(conn, "twice_parent") == [("p1", 10)]


async def test_an_undeclared_statement_keeps_its_place(conn: asyncpg.Connection) -> None:
    """A statement without an array form runs where it was staged: it sees what was staged
    before it and nothing staged after."""
    parent, child = await _family(conn, "between")
    count = "INSERT INTO between_seen SELECT $1, count(*) FROM between_parent"
    staged = Writes()
    staged.extend(parent, [("p1", 1), ("p2", 2)])
    staged.add(count, "counted")
    staged.extend(child, [("c1", "p1", None)])
    await staged.flush(conn)
    seen = [tuple(r) for r in await conn.fetch("SELECT * FROM between_seen ORDER BY k")]
    assert ("counted", 2) in seen
    assert [r[0] for r in await _rows(conn, "between_child")] == ["c1"]


async def test_a_fault_in_any_part_keeps_nothing(conn: asyncpg.Connection) -> None:
    """A child naming no parent fails the one statement, and a statement is kept whole or not
    at all: the parent staged with it is not kept either, even outside a transaction."""
    parent, child = await _family(conn, "fault")
    staged = Writes()
    staged.extend(parent, [("p1", 1)])
    staged.extend(child, [("c1", "p1", None), ("c2", "nobody", None)])
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await staged.flush(conn)
    assert await _everything(conn, "fault") == [[], [], []]


async def test_bytes_beside_the_rows_keep_their_place_in_one_statement(
    conn: asyncpg.Connection,
) -> None:
    """bytea columns travel as arrays of their own beside the rows' JSON: two such tables in one
    statement number their parameters one after the other and write what one by one writes."""
    await _tables(conn, "first_by_row", "second_by_row", "first_at_once", "second_at_once")
    by_row = [insert_statement(t, COLUMNS, fixed=[("state", "'s'")]) for t in ("first_by_row", "second_by_row")]  # fmt: skip
    at_once = [insert_statement(t, COLUMNS, fixed=[("state", "'s'")]) for t in ("first_at_once", "second_at_once")]  # fmt: skip
    second_rows = [(f"{row[0]}2", *row[1:5], bytes(reversed(row[5] or b"")), *row[6:]) for row in ROWS]  # fmt: skip
    for sql, rows in zip(by_row, (ROWS, second_rows), strict=True):
        for row in rows:
            await conn.execute(sql, *row)
    sent = _Sent(conn)
    staged = Writes()
    for sql, rows in zip(at_once, (ROWS, second_rows), strict=True):
        staged.extend(sql, rows)
    await staged.flush(conn)
    assert len(await sent.queries("_at_once")) == 1
    for name in ("first", "second"):
        assert await _rows(conn, f"{name}_at_once") == await _rows(conn, f"{name}_by_row")
    assert (await _rows(conn, "second_at_once"))[4][5] == bytes(reversed(range(256)))


async def test_array_columns_at_once_equal_one_by_one(conn: asyncpg.Connection) -> None:
    """A text[] column (a deferred claim's lines) travels inside the row's JSON and is read
    back as the array it was: NULL, empty, and elements that need quoting in an array literal."""
    columns = [("k", "text"), ("lines", "text[]")]
    for name in ("arrays_by_row", "arrays_at_once"):
        await conn.execute(f"CREATE TABLE {name} (k text PRIMARY KEY, lines text[])")
    rows: list[tuple[object, ...]] = [
        ("a", None),
        ("b", []),
        ("c", ["1", "0002", 'a "b", {c}', "null", "药"]),
    ]
    by_row = insert_statement("arrays_by_row", columns)
    for row in rows:
        await conn.execute(by_row, *row)
    staged = Writes()
    staged.extend(insert_statement("arrays_at_once", columns), rows)
    await staged.flush(conn)
    written = await _rows(conn, "arrays_at_once")
    assert written == await _rows(conn, "arrays_by_row")
    assert written == [("a", None), ("b", []), ("c", ["1", "0002", 'a "b", {c}', "null", "药"])]
