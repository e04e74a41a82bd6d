"""`ledger check`: the checker the suites run after every flow, as ops run it after a load test
or a drill (found from outside: the docs named it, no command ran it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import cli
from tests.integration.test_group_commit import basket

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
PERSON = "441800000000000001"


async def test_ledger_check_says_whether_the_ledger_balances(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        sold = await pos.ok(
            "2102", pos.drug_input(PERSON, "2026-03-02 09:30:00", "19.80", basket("9.90", 2))
        )
        setl_id = sold["setlinfo"]["setl_id"]
        clean = cli("ledger", "check", "--database-url", srv.dsn, check=False)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "the ledger balances" in clean.stdout
        # The account's fund row lost: the money moved is no longer told by its rows.
        await srv.fetch("DELETE FROM settlement_funds WHERE setl_id = $1", setl_id)
        found = cli("ledger", "check", "--database-url", srv.dsn, check=False)
        assert found.returncode == 1, found.stdout + found.stderr
        assert f"main: settlement {setl_id}: fund rows do not sum to the totals" in found.stdout
        assert "Traceback" not in found.stderr
