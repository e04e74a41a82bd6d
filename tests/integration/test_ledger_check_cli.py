"""`ledger check`: the checker the suites run after every flow, as ops run it after a load test
or a drill (found from outside: the docs named it, no command ran it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import cli
from tests.integration.split_helpers import BIJIE, BIJIE_WORKER, PHARMACY_OF, split_gateway
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


async def test_ledger_check_over_a_ledger_split_by_region(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside (the failover drill): over a split ledger every cluster's settlement
    was reported refused ("定点医药机构…未登记"), the rules read from the cluster's own
    institutions table, which only the main database fills."""
    async with split_gateway(new_database) as split:
        pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)  # sent with its insured region
        sale = pos.drug_input(BIJIE_WORKER, "2026-03-02 09:30:00", "19.80", basket("9.90", 2))
        setl_id = (await pos.ok("2102", sale))["setlinfo"]["setl_id"]
        held = await split.rows(
            split.clusters[BIJIE], "SELECT 1 FROM settlements WHERE setl_id = $1", setl_id
        )
        assert len(held) == 1  # in the Bijie cluster's database
        done = cli(
            "ledger", "check", "--database-url", split.srv.dsn,
            "--config", str(split.config_file(tmp_path)), check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        # Which databases it read, each by its configured name (found from outside: the
        # clusters went unsaid, and a finding named "cluster 1").
        assert (
            "the ledger balances: no finding (the main database, cluster bijie, cluster wenzhou)"
            in done.stdout
        ), done.stdout
        await split.rows(
            split.clusters[BIJIE],
            "UPDATE accounts SET balance_fen = balance_fen + 1 WHERE psn_no = $1",
            BIJIE_WORKER,
        )
        found = cli(
            "ledger", "check", "--database-url", split.srv.dsn,
            "--config", str(split.config_file(tmp_path)), check=False,
        )  # fmt: skip
        assert found.returncode == 1, found.stdout
        assert (
            f"cluster bijie: person {BIJIE_WORKER}: balance is not opening minus account payments"
            in found.stdout
        ), found.stdout
