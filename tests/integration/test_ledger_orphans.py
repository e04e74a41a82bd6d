"""A fee line, fund row or settlement event without its parent, or a settlement without its
visit or person: no foreign key refuses one on each write any more (migrations 024 and 026: the
staging code writes parent and children in one statement, or under the parent's lock), so the
ledger checker is what finds it; the visits', accumulators' and accounts' keys on persons, which
stop a person with a ledger history from being moved out from under it, stay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.ledger import checker, db


async def _ledger(new_database: Callable[..., Any]) -> asyncpg.Connection:
    conn = await asyncpg.connect(await new_database("orphans"))
    await db.migrate(conn)
    return conn


async def test_the_checker_names_each_child_without_its_parent(
    new_database: Callable[..., Any],
) -> None:
    conn = await _ledger(new_database)
    try:
        assert await checker.check(conn) == []
        await conn.execute(
            "INSERT INTO fee_lines (mdtrt_id, feedetl_sn, psn_no, medins_list_codg, pric_micro,"
            " cnt, amount_fen, fee_ocur_time, uploaded_msgid)"
            " VALUES ('V404', '1', 'P1', 'YP0001', 1000000, 10000, 100, now(), 'M1')"
        )
        await conn.execute(
            "INSERT INTO settlement_funds VALUES ('S404', '310100', '统筹基金', 500, 500, 0)"
        )
        await conn.execute("INSERT INTO settlement_events VALUES (1, 'S405', 'in_force')")
        # A settlement of a visit and a person the ledger does not hold (its fund rows and
        # event absent too, which the checker names on its own account).
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'settlements' AND is_nullable = 'NO' AND column_default IS NULL"
        )
        values = {
            r["column_name"]: ("'{}'" if r["data_type"] == "jsonb" else "0")
            if r["data_type"] in ("jsonb", "bigint", "integer")
            else "now()"
            if r["data_type"].startswith("timestamp")
            else "current_date"
            if r["data_type"] == "date"
            else "'x'"
            for r in columns
        }
        values |= {"setl_id": "'S406'", "mdtrt_id": "'V406'", "psn_no": "'P406'",
                   "status": "'settled'", "year": "2026", "in_force_seq": "1000"}  # fmt: skip
        await conn.execute(
            f"INSERT INTO settlements ({', '.join(values)}) VALUES ({', '.join(values.values())})"
        )
        assert [p for p in await checker.check(conn) if "406" in p][:2] == [
            "settlement of visit V406: no such visit",
            "settlement of person P406: no such person",
        ]
        await conn.execute("DELETE FROM settlements WHERE setl_id = 'S406'")
        await conn.execute("DELETE FROM settlement_events WHERE setl_id = 'S406'")
        assert await checker.check(conn) == [
            "fee line of visit V404: no such visit",
            "fund row of settlement S404: no such settlement",
            "settlement event of settlement S405: no such settlement",
        ]
    finally:
        await conn.close()


async def test_only_the_children_written_with_their_parent_lost_their_keys(
    new_database: Callable[..., Any],
) -> None:
    conn = await _ledger(new_database)
    try:
        keys = {
            (r["child"], r["parent"])
            for r in await conn.fetch(
                "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent"
                " FROM pg_constraint WHERE contype = 'f'"
            )
        }
        for child in ("fee_lines", "settlement_funds", "settlement_events"):
            assert not any(c == child for c, _ in keys), child
        assert not any(c == "settlements" and p != "settlements" for c, p in keys)
        for child in ("encounters", "accumulators", "accounts"):
            assert (child, "persons") in keys, child
    finally:
        await conn.close()
