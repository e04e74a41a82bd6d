"""A visit is settled within the late-billing bound of the day it is settled.

Found from outside (a gateway under libfaketime across the new year): a visit registered on 31
December 2026 with a begntime of 1 January 2024, the bound's first day then, was settled at
00:00:01 on 1 January 2027 from the 2024 year (its policy, a fresh 2024 deductible), one second
after a registration dated 31 December 2024 was refused as past the bound. Here the year's turn
is a second gateway over the same ledger whose bound is a year shorter: the day the first
gateway took the visit, the second's bound already excludes it.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.app.config import GatewayConfig
from gateway.core.dates import DateRules
from tests.integration.conftest import GENEROUS, another_worker, running_gateway
from tests.integration.parity_helpers import line, total

HOSPITAL = "H44180000001"
EMPLOYEE = "441800000000000001"
LINES = [line("1", "ZL0004", "30", 2)]


async def test_a_visit_past_the_bound_when_settled_is_refused_whatever_its_registration(
    new_database: Callable[..., Any],
) -> None:
    first_day = dt.date(dt.date.today().year - 2, 1, 1)  # the default bound's first day
    begntime = f"{first_day} 09:00:00"
    journal = Path(tempfile.mkdtemp(prefix="gw-journal-"))
    a_year_later = GatewayConfig(rate_limit=GENEROUS.rate_limit, dates=DateRules(late_years=1))
    async with (
        running_gateway(new_database, journal_dir=journal) as then,
        another_worker(then.dsn, journal, config=a_year_later) as now,
    ):
        his = then.client(HOSPITAL)
        mdtrt_id = await his.register(EMPLOYEE, "310", begntime, "MZ-LATE")
        await his.visit_info(mdtrt_id, EMPLOYEE, "11", begntime)
        rows = his.fee_rows(mdtrt_id, EMPLOYEE, LINES, f"{first_day} 09:10:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", total(LINES), "310", "1", chrg_bchno="B1")
        assert (await his.ok("2206", data))["setlinfo"]["medfee_sumamt"]  # within it then

        later = now.client(HOSPITAL)
        for infno in ("2206", "2207"):
            refused = await later.call(infno, data)
            assert refused["infcode"] == -1, refused
            assert f"早于本地区可补办结算的最早日期{first_day.year + 1}-01-01" in refused["err_msg"]
            assert "已超过结算时限" in refused["err_msg"]
        settled = "SELECT count(*) FROM settlements WHERE mdtrt_id = $1"
        assert await then.fetchval(settled, mdtrt_id) == 0
        # Within the bound of the gateway that took it, the same visit settles.
        assert (await his.ok("2207", data))["setlinfo"]["setl_id"]
        assert await then.fetchval(settled, mdtrt_id) == 1
