"""One ledger cluster unreachable: only its regions are deferred.

The ledger is split (tests/integration/test_partitions.py): 毕节 520500 in a cluster reached
through a TCP proxy, 温州 330300 in another, 清远 441800 in the main database. The proxy is cut
(packets swallowed): 毕节's sales become deferred claims once its breaker opens, while 温州's and
清远's keep settling in real time, and their breakers stay closed. Restored, the claims drain
into 毕节's cluster, exactly once, and replay settles them there.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from msgspec.structs import replace

from gateway.app.config import (
    Breakers,
    Deadlines,
    InstitutionTrigger,
    LedgerCluster,
    Triggers,
)
from tests.adversity.proxy import Proxy
from tests.adversity.test_ledger_outage import FAST_BREAKER, _tcp, _through
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL, cli, until

pytestmark = pytest.mark.integration

SALES = {  # region: (pharmacy, person)
    "520500": ("P52050000001", "520500000000000001"),
    "330300": ("P33030000001", "330300000000000001"),
    "441800": ("P44180000001", "441800000000000001"),
}


async def _count(dsn: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def _split_behind_a_proxy(
    new_database: Callable[..., Any], suffix: str
) -> tuple[str, str, Proxy, Any]:
    """毕节's cluster (behind a started proxy) and 温州's, their DSNs, the proxy and the
    configuration naming them. The institution trigger as quick as the cluster's breaker: the
    same failures reach both."""
    bijie, wenzhou = await new_database(f"bijie{suffix}"), await new_database(f"wenzhou{suffix}")
    proxy = Proxy(*_tcp(bijie))
    await proxy.start()
    config = replace(
        GENEROUS,
        deadlines=Deadlines(call_seconds=2.0),
        breakers=Breakers(postgres=FAST_BREAKER),
        triggers=Triggers(institution=InstitutionTrigger(consecutive_failures=3, min_calls=5)),
        ledger_clusters=(
            LedgerCluster(name="bijie", dsn=_through(bijie, proxy.port), regions=("520500",)),
            LedgerCluster(name="wenzhou", dsn=wenzhou, regions=("330300",)),
        ),
    )
    return bijie, wenzhou, proxy, config


async def test_a_cluster_down_defers_only_its_regions(
    new_database: Callable[..., Any], tmp_path: Any
) -> None:
    bijie, wenzhou, proxy, config = await _split_behind_a_proxy(new_database, "")
    try:
        async with running_gateway(new_database, config, journal_dir=tmp_path) as srv:

            async def sell(region: str) -> str:
                pharmacy, person = SALES[region]
                pos = srv.client(pharmacy, region)
                drug = pos.drug_input(person, "2026-07-05 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
                answer = await pos.call("2102", drug)
                if answer["infcode"] != 0:
                    return f"-1 {answer['err_msg']}"
                return str(answer["output"]["setlinfo"]["setl_id"])

            for region in SALES:
                assert not (await sell(region)).startswith(("DF", "-1"))
            proxy.cut()
            claims: list[str] = []
            seen: list[str] = []

            async def deferring() -> bool:
                got = await sell("520500")
                seen.append(got)
                if got.startswith("DF"):
                    claims.append(got)
                return len(claims) >= 3

            await until(deferring, within=30.0, seen=lambda: seen[-5:])
            # The other regions settle in real time meanwhile, their breakers closed.
            for region in ("330300", "441800"):
                for _ in range(3):
                    got = await sell(region)
                    assert not got.startswith(("DF", "-1")), (region, got)
            states = await srv.fetch("SELECT 1")  # the main database answers the test too
            assert states
            async with srv.session.get(srv.url + "/metrics") as r:
                text = await r.text()
            assert 'sgw_breaker_state{dependency="postgres:bijie"} 2' in text or (
                'sgw_breaker_state{dependency="postgres:bijie"} 1' in text
            ), [ln for ln in text.splitlines() if ln.startswith("sgw_breaker_state")]
            assert 'sgw_breaker_state{dependency="postgres"} 0' in text
            assert 'sgw_breaker_state{dependency="postgres:wenzhou"} 0' in text
            proxy.restore()

            async def drained() -> bool:
                n = await _count(
                    bijie, "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[])", claims
                )
                return n == len(claims)

            await until(drained, within=30.0)

            # Back to real time for 毕节, and no institution was blamed for its cluster's outage
            # (an institution rule, recovered by hand, would have kept the pharmacy deferring).
            async def real_time() -> bool:
                return not (await sell("520500")).startswith(("DF", "-1"))

            await until(real_time, within=15.0)
            rules = await srv.fetch("SELECT scope, operator FROM plan_rules")
            assert rules == [], rules
        # Nowhere else: the claims are 毕节's money.
        for other in (srv.dsn, wenzhou):
            assert (
                await _count(
                    other, "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[])", claims
                )
                == 0
            )
        config_file = tmp_path / "split.toml"
        config_file.write_text(
            "[[ledger_clusters]]\n"
            f'name = "bijie"\ndsn = "{bijie}"\nregions = ["520500"]\n'
            "[[ledger_clusters]]\n"
            f'name = "wenzhou"\ndsn = "{wenzhou}"\nregions = ["330300"]\n',
            encoding="utf-8",
        )
        done = cli(
            "deferred", "replay", "--json", "--database-url", srv.dsn, "--config", str(config_file)
        )
        summary = json.loads(done.stdout)
        assert summary["failed"] == [] and summary["settled"] >= len(claims)
        settled = await _count(
            bijie,
            "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[]) AND status = 'settled'",
            claims,
        )
        assert settled == len(claims)
    finally:
        await proxy.close()


async def test_what_looks_into_a_cluster_that_is_down_is_not_the_main_databases_failure(
    new_database: Callable[..., Any], tmp_path: Any
) -> None:
    """Found from outside: with only 毕节's cluster down, five 3201s, 5203s or 2601s from 清远's
    hospitals (each looking into every region's database: a reconciliation, a settlement not
    found where it was asked, a 2601 of a message never seen) counted against the main
    database's breaker, which opened: 清远's own patients' sales became cash claims. A failure
    in another region's database is that database's; a 3201 of 清远's patients reads only
    theirs."""
    _, _, proxy, config = await _split_behind_a_proxy(new_database, "_q")
    try:
        async with running_gateway(new_database, config, journal_dir=tmp_path) as srv:
            his = srv.client("H44180000001")
            pharmacy, person = SALES["441800"]
            pos = srv.client(pharmacy)
            proxy.cut()
            today = dt.date.today().isoformat()
            period = {"insutype": "310", "clr_type": "11", "stmt_begndate": today,
                      "stmt_enddate": today, "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00",
                      "acct_pay": "0.00", "fixmedins_setl_cnt": "0"}  # fmt: skip
            for n in range(3):
                # 清远's patients' reconciliation reads 清远's database only: answered.
                own = await his.ok("3201", {"data": {**period, "setl_optins": "441800"}})
                assert own["stmtinfo"]["stmt_rslt"] == "0", own
                # 毕节's patients' needs 毕节's: retry, the same msgid.
                for infno, data in [
                    ("3201", {**period, "setl_optins": "520500"}),
                    ("2601", {"psn_no": person, "omsgid": f"H44180000001{n:018d}",
                              "oinfno": "2207"}),
                    ("5203", {"setl_id": f"5205002026070500000000009{n}", "psn_no": ""}),
                ]:  # fmt: skip
                    answer = await his.call(infno, {"data": data})
                    assert answer["infcode"] == -1, (infno, answer)
                    assert "相同报文ID重试" in answer["err_msg"], (infno, answer)
            async with srv.session.get(srv.url + "/metrics") as r:
                text = await r.text()
            states = [ln for ln in text.splitlines() if ln.startswith("sgw_breaker_state")]
            assert 'sgw_breaker_state{dependency="postgres"} 0' in text, states
            # 清远's sales settle in real time.
            drug = pos.drug_input(person, "2026-07-05 10:00:00", DRUG_TOTAL, DRUG_LINES, "0")
            sold = await pos.ok("2102", drug)
            assert not sold["setlinfo"]["setl_id"].startswith("DF"), sold
            # ... and are queried (found from outside: every 5203/5204 looked for a replayed
            # claim in every database, and none was answered, of any region).
            named = {"setl_id": sold["setlinfo"]["setl_id"], "psn_no": person}
            shown = await pos.ok("5203", {"data": named})
            assert shown["setlinfo"]["setl_id"] == named["setl_id"], shown
            lines = await pos.call("5204", {"data": named})
            assert lines["infcode"] == 0 and lines["output"], lines
            proxy.restore()
    finally:
        await proxy.close()
