"""What a batch's rows cost to send, as arrays per column or as one JSON text per row.

The group commit sends each table's rows in one statement (gateway/ledger/writes.py). This
script times the two ways of passing them on one connection: the client's CPU (asyncpg's
encoding, msgspec's) and the backend's (from /proc, so run it on the database's machine), per
row, for four shapes of row: thirty integers, thirty texts, a 4 KB bytea (a stored answer) and a
3 KB JSON document (a settlement's lines).

    python benchmarks/row_encoding.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

_encode = msgspec.json.Encoder().encode
ROWS = 12  # about a batch's settlements
ROUNDS = 500


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SHAPES: dict[str, tuple[list[str], Callable[[int], tuple[Any, ...]]]] = {
    "30 int8": (["int8"] * 30, lambda i: tuple(i * 1000 + j for j in range(30))),
    "30 text": (["text"] * 30, lambda i: tuple(f"t{i}-{j}-abcdefgh" for j in range(30))),
    "4 KB bytea": (["text", "bytea"], lambda i: (f"k{i}", bytes(range(256)) * 16)),
    "3 KB jsonb": (
        ["text", "jsonb"],
        lambda i: (
            f"k{i}",
            [
                {"sn": str(k), "amt": k * 100, "name": "药品名称" * 3, "m": {"a": 1}}
                for k in range(12)
            ],
        ),
    ),
}


def _per_column(types: list[str]) -> str:
    """The rows as one array per column (`unnest`), jsonb as text cast per element."""
    names = ", ".join(f"c{i}" for i in range(len(types)))
    arrays = ", ".join(f"${i + 1}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(types))
    used = " AND ".join(
        f"c{i}::jsonb IS NOT NULL" if t == "jsonb" else f"c{i} IS NOT NULL"
        for i, t in enumerate(types)
    )
    return (
        f"SELECT count(*) FROM (SELECT {names} FROM unnest({arrays}) AS u({names})) s WHERE {used}"
    )


def _per_row(types: list[str]) -> str:
    """The rows as JSON texts, read back column by column; bytea in base64 inside the JSON (the
    gateway sends bytea as arrays of their own instead: this shows why)."""
    picks = []
    for i, t in enumerate(types):
        if t == "jsonb":
            picks.append(f"NULLIF(r.e -> {i}, 'null') AS c{i}")
        elif t == "bytea":
            picks.append(f"decode(r.e ->> {i}, 'base64') AS c{i}")
        else:
            picks.append(f"(r.e ->> {i})::{t} AS c{i}")
    used = " AND ".join(f"c{i} IS NOT NULL" for i in range(len(types)))
    rows = "(SELECT x.t::jsonb AS e FROM unnest($1::text[]) AS x(t) OFFSET 0) AS r"
    return f"SELECT count(*) FROM (SELECT {', '.join(picks)} FROM {rows}) s WHERE {used}"


async def main(url: str) -> None:
    conn = await asyncpg.connect(url)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    print(
        "| rows | arrays per column: client, server µs/row | JSON text per row: client, server µs/row |"
    )
    print("|---|---|---|")
    for name, (types, make) in SHAPES.items():
        rows = [make(i) for i in range(ROWS)]
        columns = await conn.prepare(_per_column(types))
        per_row = await conn.prepare(_per_row(types))

        def column_args(rows: list[tuple[Any, ...]] = rows, types: list[str] = types) -> list[Any]:
            cols: list[Any] = [list(c) for c in zip(*rows, strict=True)]
            for i, t in enumerate(types):
                if t == "jsonb":
                    cols[i] = [_encode(v).decode() for v in cols[i]]
            return cols

        def row_args(rows: list[tuple[Any, ...]] = rows) -> list[Any]:
            return [[_encode(r).decode() for r in rows]]

        assert await columns.fetchval(*column_args()) == ROWS
        assert await per_row.fetchval(*row_args()) == ROWS
        cells = []
        for statement, args in ((columns, column_args), (per_row, row_args)):
            client, server = time.process_time(), _cpu_seconds(pid)
            for _ in range(ROUNDS):
                await statement.fetchval(*args())
            n = ROUNDS * ROWS
            cells.append(
                f"{1e6 * (time.process_time() - client) / n:.1f}, "
                f"{1e6 * (_cpu_seconds(pid) - server) / n:.1f}"
            )
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    await conn.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main(p.parse_args().database_url))
