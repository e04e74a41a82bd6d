"""A visit's rows written again in its life find room on their own page (027), so the update
touches no index: its diagnosis (2203) on the visit's row, its settlement (2207) on each of its
uploaded lines. Enough visits and lines to fill several pages of both tables, each step for all
of them at once, as a busy hospital's counters would send them; on pages packed full by the
earlier step, the later one's rows left the page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Server, running_gateway
from tests.integration.test_group_commit import EMPLOYEE, HOSPITAL, RETIREE, VISIT_DAY

pytestmark = pytest.mark.integration

VISITS = 60
LINES = 6  # each ZL0004 at 10.00: 60.00 a visit


def _lines() -> list[dict[str, Any]]:
    return [
        {
            "feedetl_sn": str(n),
            "medins_list_codg": "ZL0004",
            "pric": "10",
            "cnt": "1",
            "det_item_fee_sumamt": "10.00",
        }
        for n in range(1, LINES + 1)
    ]


async def _updates(srv: Server, table: str, at_least: int) -> tuple[int, int]:
    """The table's updates and how many of them stayed on their page (HOT), once the
    gateway's backends have reported at least `at_least` (they report within seconds of going
    idle)."""
    deadline = time.monotonic() + 30
    while True:
        row = await srv.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1", table
        )
        assert row is not None
        if row["n_tup_upd"] >= at_least or time.monotonic() > deadline:
            return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])
        await asyncio.sleep(0.5)


async def test_diagnoses_and_settlements_update_their_rows_in_place(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        people = [EMPLOYEE if i % 2 else RETIREE for i in range(VISITS)]
        visits = await asyncio.gather(
            *(his.register(p, "310", VISIT_DAY, f"MZ-PG-{i}") for i, p in enumerate(people))
        )
        await asyncio.gather(
            *(his.visit_info(m, p, "11", VISIT_DAY) for p, m in zip(people, visits, strict=True))
        )
        await asyncio.gather(
            *(
                his.ok("2204", {"feedetail": his.fee_rows(m, p, _lines(), VISIT_DAY, "B1")})
                for p, m in zip(people, visits, strict=True)
            )
        )
        pages = await srv.fetchval("SELECT count(DISTINCT (ctid::text::point)[0]) FROM fee_lines")
        assert pages >= 3, "the lines must fill pages for the test to say anything"
        answers = await asyncio.gather(
            *(
                his.ok(
                    "2207",
                    his.settle_data(p, m, "11", f"{LINES * 10}.00", "310", "1", chrg_bchno="B1"),
                )
                for p, m in zip(people, visits, strict=True)
            )
        )
        assert len({a["setlinfo"]["setl_id"] for a in answers}) == VISITS
        assert await srv.fetchval("SELECT count(*) FROM fee_lines WHERE setl_id IS NULL") == 0

        updated, in_place = await _updates(srv, "fee_lines", VISITS * LINES)
        assert updated >= VISITS * LINES
        assert in_place == updated
        updated, in_place = await _updates(srv, "encounters", VISITS)
        assert updated >= VISITS
        assert in_place == updated
        assert await srv.check_ledger() == []
