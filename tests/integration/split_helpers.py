"""The ledger split by pooling region, as the tests set it up: three databases on the test
PostgreSQL stand for the main database and two ledger clusters (毕节 520500 in one, 温州 330300
in the other; 清远 441800 stays in the main one), under one running gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from msgspec.structs import replace

from gateway.app.config import LedgerCluster
from gateway.ledger import checker
from tests.integration.conftest import GENEROUS, Server, running_gateway

BIJIE, WENZHOU, QINGYUAN = "520500", "330300", "441800"
BIJIE_WORKER = "520500000000000001"  # 800.00 in the account
WENZHOU_RETIREE = "330300000000000001"  # ID 330302195209093333
QINGYUAN_WORKER = "441800000000000001"
PHARMACY_OF = {BIJIE: "P52050000001", WENZHOU: "P33030000001", QINGYUAN: "P44180000001"}
# Money fields of a settlement answer that must not depend on where the ledger is.
MONEY = ("medfee_sumamt", "fund_pay_sumamt", "hifp_pay", "acct_pay", "psn_cash_pay", "balc")


@dataclass
class Split:
    srv: Server
    clusters: dict[str, str]  # region -> its cluster's DSN

    async def rows(self, dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def config_file(self, folder: Path) -> Path:
        """A gateway.toml naming the clusters, for the commands that read every database."""
        path = folder / "split.toml"
        path.write_text(
            "".join(
                f'[[ledger_clusters]]\nname = "{name}"\ndsn = "{self.clusters[region]}"\n'
                f'regions = ["{region}"]\n'
                for name, region in (("bijie", BIJIE), ("wenzhou", WENZHOU))
            ),
            encoding="utf-8",
        )
        return path

    def everywhere(self) -> dict[str, str]:
        """Each database by name: main and the clusters."""
        return {"main": self.srv.dsn, **{f"cluster {r}": d for r, d in self.clusters.items()}}

    async def holding(self, sql: str, *args: Any) -> list[str]:
        """The databases in which `sql` (a count) is not zero."""
        found = []
        for name, dsn in self.everywhere().items():
            if (await self.rows(dsn, sql, *args))[0][0]:
                found.append(name)
        return found

    async def findings(self) -> dict[str, list[str]]:
        """The ledger checker over each database, with the institutions of the main one (a
        cluster holds no reference data): what it finds, by database (empty: all balance)."""
        main = await asyncpg.connect(self.srv.dsn)
        try:
            rules = await checker.core_rules(main)
        finally:
            await main.close()
        out: dict[str, list[str]] = {}
        for name, dsn in self.everywhere().items():
            conn = await asyncpg.connect(dsn)
            try:
                await conn.set_type_codec(
                    "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
                )
                if found := await checker.check(conn, rules=rules):
                    out[name] = found
            finally:
                await conn.close()
        return out


@asynccontextmanager
async def split_gateway(new_database: Callable[..., Any]) -> AsyncIterator[Split]:
    """A gateway over the main database and the two clusters."""
    clusters = {BIJIE: await new_database("bijie"), WENZHOU: await new_database("wenzhou")}
    config = replace(
        GENEROUS,
        ledger_clusters=(
            LedgerCluster(name="bijie", dsn=clusters[BIJIE], regions=(BIJIE,)),
            LedgerCluster(name="wenzhou", dsn=clusters[WENZHOU], regions=(WENZHOU,)),
        ),
    )
    async with running_gateway(new_database, config) as srv:
        yield Split(srv, clusters)
