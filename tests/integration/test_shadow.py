"""A parallel run against a real second system: another gateway process over its own database,
with one item mapped differently (YP0003 at the pharmacy P44180000001: a class-A drug there,
class B here) and one policy parameter changed (清远 residents' pharmacy pool ratio: 50% there,
0 here). The differences are found, attributed to exactly that item and that rule, stored and
counted; the counter's answers do not wait for the shadow, slow or down.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import json
import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from gateway.app.config import DEFAULT_REFERENCE, GatewayConfig, Legacy, Settings, Shadow
from gateway.app.server import prepare_database
from gateway.emergency.plan import store
from gateway.ledger import db
from gateway.ledger import shadow as comparisons
from gateway.protocol.errors import BadRequest
from tests.adversity.proxy import Proxy
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    clear_rule,
    cli,
    connect,
    set_rule,
    until,
)
from tests.integration.his_client import CALL_SERVICE, HisClient, amount_text, decode
from tests.integration.test_console import OPERATOR, _login

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
EMPLOYEE = "441800000000000001"
RESIDENT = "441800000000000004"
# The old system's mapping of YP0003: 奥美拉唑 (class 01) instead of 阿托伐他汀 (class 02).
THERE = "XA02BCA011A001010100001"
HERE = "XC10AAA140A001010100003"
WHEN = "2026-05-08 10:00:00"
HOSPITAL = "H44180000001"
ONE_A_DRUG = [{"feedetl_sn": "1", "medins_list_codg": "YP0001", "pric": "20", "cnt": "1", "det_item_fee_sumamt": "20.00"}]  # fmt: skip
UNCHANGED = [{"feedetl_sn": "1", "medins_list_codg": "YP0002", "pric": "20", "cnt": "1", "det_item_fee_sumamt": "20.00"}]  # fmt: skip
OLD_SYSTEM_TOML = """
[rate_limit]
terminal_rate = 1000000.0
terminal_burst = 1000000
institution_rate = 1000000.0
institution_burst = 1000000
"""


def _old_reference(target: Path) -> Path:
    """The demo reference data with the old system's two deliberate differences."""
    shutil.copytree(DEFAULT_REFERENCE, target)
    mappings = target / "mappings.csv"
    text = mappings.read_text(encoding="utf-8")
    mine = f"{PHARMACY},YP0003,阿托伐他汀钙片,101,{HERE},"
    assert mine in text
    text = text.replace(mine, f"{PHARMACY},YP0003,阿托伐他汀钙片,101,{THERE},")
    # The same mapping at the hospital, for its visits (mirrored, then compared line by line).
    theirs = f"{HOSPITAL},YP0003,阿托伐他汀钙片,101,{HERE},"
    assert theirs in text
    mappings.write_text(
        text.replace(theirs, f"{HOSPITAL},YP0003,阿托伐他汀钙片,101,{THERE},"), encoding="utf-8"
    )
    policies = target / "policies.toml"
    blocks = policies.read_text(encoding="utf-8").split("[[policy]]")
    for n, block in enumerate(blocks):
        if 'admdvs = "441800"' in block:
            head, resident = block.split("[policy.resident]")
            resident = re.sub(
                r"pharmacy\s*= \{ ratio_bp = 0 \}", "pharmacy = { ratio_bp = 5000 }", resident
            )
            blocks[n] = head + "[policy.resident]" + resident
    policies.write_text("[[policy]]".join(blocks), encoding="utf-8")
    return target


@dataclass
class OldSystem:
    url: str  # its callService, through the proxy
    proxy: Proxy
    dsn: str


@pytest.fixture(scope="module")
async def old_system(
    new_database: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OldSystem]:
    """The other gateway: its own process, database and reference data, behind a proxy the
    tests slow down and cut."""
    tmp = tmp_path_factory.mktemp("old-system")
    reference = _old_reference(tmp / "reference")
    config = tmp / "gateway.toml"
    config.write_text(OLD_SYSTEM_TOML, encoding="utf-8")
    dsn = await new_database("oldsys")
    await prepare_database(Settings(dsn, reference_dir=reference))
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
        "--config", str(config), "--reference-dir", str(reference), "--auth", "off",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    proxy = Proxy("127.0.0.1", port)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return r.status == 200
                return False

            await until(ready, within=60.0)
        yield OldSystem(
            f"http://127.0.0.1:{proxy.port}/fsi/api/rsfComIfsService/callService", proxy, dsn
        )
    finally:
        await proxy.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(old: OldSystem) -> GatewayConfig:
    return GatewayConfig(
        rate_limit=GENEROUS.rate_limit,
        login=GENEROUS.login,
        legacy=Legacy(url=old.url, timeout_seconds=5.0),
        shadow=Shadow(timeout_seconds=2.0),
    )


async def _comparisons(srv: Server) -> list[Any]:
    return await srv.fetch("SELECT * FROM shadow_comparisons ORDER BY comparison_id")


async def _next_comparison(srv: Server, seen: int, within: float = 30.0) -> Any:
    # Off the request path: on a busy machine the pricing and its storing may take a while.
    async def arrived() -> bool:
        return len(await _comparisons(srv)) > seen

    await until(arrived, within=within)
    return (await _comparisons(srv))[seen]


async def _metric(srv: Server, name: str, **labels: str) -> float:
    async with srv.session.get(srv.url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _in_force(srv: Server, pos: Any, drug: dict[str, Any]) -> None:
    """Until the serving process applies the shadow rule: a pre-settlement gets compared."""

    async def compared() -> bool:
        await pos.ok("2101", drug)
        await asyncio.sleep(0.2)
        return bool(await _comparisons(srv))

    await until(compared, within=10.0)


def _rate(differing: int, compared: int) -> str:
    bp = (differing * 20000 + compared) // (2 * compared)  # to the nearest basis point
    return f"{bp // 10000}.{bp % 10000:04d}"


async def test_we_answer_and_the_old_system_shadows(
    new_database: Callable[..., Any], old_system: OldSystem, tmp_path: Path
) -> None:
    async with running_gateway(new_database, _config(old_system)) as srv:
        pos = srv.client(PHARMACY)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        unchanged = pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED)
        await _in_force(srv, pos, unchanged)
        # Normal service, as sgw_plan_degraded says (found from outside: `plan show` said
        # degraded with this rule alone).
        shown = json.loads(cli("plan", "show", "--json", "--database-url", srv.dsn).stdout)
        assert shown["state"] == "normal" and [r["state"] for r in shown["rules"]] == ["normal"]
        agreeing = await _comparisons(srv)
        assert {r["differs"] for r in agreeing} == {False}  # an item mapped alike agrees
        assert agreeing[0]["answered_by"] == "gateway"
        assert agreeing[0]["request"] is None  # agreeing pairs are counted, not kept
        seen = len(agreeing)

        # The mapping: the employee's purchase of YP0003 differs there, by its class only.
        answer = await pos.ok("2102", pos.drug_input(EMPLOYEE, WHEN, DRUG_TOTAL, DRUG_LINES))
        assert answer["setlinfo"]["setl_id"]  # settled here, as without the shadow
        row = await _next_comparison(srv, seen)
        seen += 1
        assert (row["infno"], row["shadow_infno"]) == ("2102", "2101")
        assert row["differs"] and row["cause"] == "catalog_class" and row["item"] == "YP0003"
        assert (row["category"], row["med_type"], row["admdvs"]) == ("pharmacy", "41", "441800")
        assert row["diagnosis"]["causes"] == ["catalog_class"]
        assert row["diagnosis"]["lines"] == ["1"]
        assert (
            decode(row["answer"].encode())["output"]["setlinfo"]["setl_id"]
            == answer["setlinfo"]["setl_id"]
        )
        assert decode(row["shadow_answer"].encode())["output"]["setlinfo"]["setl_id"] is None
        lines = await srv.fetch(
            "SELECT cause, place, item, field, answered, shadowed FROM shadow_differences"
            " WHERE comparison_id = $1 AND place LIKE 'line:%' ORDER BY field",
            row["comparison_id"],
        )
        assert {(r["cause"], r["place"], r["item"]) for r in lines} == {
            ("catalog_class", "line:1", "YP0003")
        }
        lv = next(r for r in lines if r["field"] == "chrgitm_lv")
        assert (lv["answered"], lv["shadowed"]) == ("02", "01")
        # "目录匹配错误 at institution X, item Y" is one query:
        assert (
            await srv.fetchval(
                "SELECT count(*) FROM shadow_differences WHERE fixmedins_code = $1"
                " AND cause = 'catalog_class' AND item = 'YP0003' AND field = 'chrgitm_lv'",
                PHARMACY,
            )
            == 1
        )

        # The policy parameter: a resident's class-A purchase differs by the pool ratio only.
        await pos.ok(
            "2102",
            pos.drug_input(RESIDENT, WHEN, "20.00", ONE_A_DRUG, acct_used_flag="0", insutype="390"),
        )
        row = await _next_comparison(srv, seen)
        seen += 1
        assert row["cause"] == "pool_ratio" and row["item"] is None
        assert row["diagnosis"]["causes"] == ["pool_ratio"]
        ratio = await srv.fetchrow(
            "SELECT answered, shadowed FROM shadow_differences WHERE comparison_id = $1"
            " AND field = 'pool_prop_selfpay'",
            row["comparison_id"],
        )
        assert ratio is not None and (ratio["answered"], ratio["shadowed"]) == ("0.0000", "0.5000")
        differing = {"fixmedins_code": PHARMACY, "category": "pharmacy"}
        assert await _metric(srv, "sgw_shadow_differing_total", **differing) == 2
        for cause in ("catalog_class", "pool_ratio"):
            found = {"admdvs": "441800", "category": "pharmacy", "cause": cause}
            assert await _metric(srv, "sgw_shadow_causes_total", **found) == 1
        assert await _metric(srv, "sgw_shadow_compared_total", fixmedins_code=PHARMACY) == seen
        # Nothing was settled at the shadow: its pre-settlement writes nothing.
        assert await srv.check_ledger() == []

        # Slow: the counter is answered while the shadow's pricing still waits on the old system.
        timeouts = await _metric(srv, "sgw_shadow_failures_total", shadow="legacy", kind="timeout")
        old_system.proxy.cut()
        try:
            answer = await pos.ok("2102", pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
            assert answer["setlinfo"]["setl_id"]
            assert (
                await _metric(srv, "sgw_shadow_failures_total", shadow="legacy", kind="timeout")
                == timeouts
            )
            assert len(await _comparisons(srv)) == seen  # still being priced

            async def timed_out() -> bool:
                now = await _metric(
                    srv, "sgw_shadow_failures_total", shadow="legacy", kind="timeout"
                )
                return now == timeouts + 1

            await until(timed_out, within=10.0)
            assert len(await _comparisons(srv)) == seen  # no answer, no comparison
        finally:
            old_system.proxy.restore()

        # Down (its port refuses connections): the counter's settlements go on, the shadow's
        # failures are counted (then its breaker stops asking it: "unavailable").
        failures_before = await _metric(srv, "sgw_shadow_failures_total", shadow="legacy")
        upstream = old_system.proxy.upstream
        old_system.proxy.upstream = ("127.0.0.1", _free_port())
        try:
            for _ in range(3):
                settled = await pos.ok("2102", pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
                assert settled["setlinfo"]["setl_id"]

            async def failed() -> bool:
                now = await _metric(srv, "sgw_shadow_failures_total", shadow="legacy")
                return now >= failures_before + 3

            await until(failed, within=10.0)
        finally:
            old_system.proxy.upstream = upstream
        assert await srv.check_ledger() == []

        # The cut-over meeting's report: the rates, the causes and the item to fix.
        today = dt.date.today()
        span = (
            "--from",
            str(today - dt.timedelta(days=1)),
            "--to",
            str(today + dt.timedelta(days=1)),
        )
        sheet = tmp_path / "differences.csv"
        done = cli(
            "shadow", "report", *span, "--json", "--csv", str(sheet), "--database-url", srv.dsn
        )
        report = json.loads(done.stdout)
        compared = len(await _comparisons(srv))
        assert (report["compared"], report["differing"]) == (compared, 2)
        # The whole run's rate rounded as each row's (found from outside: it was cut off).
        assert report["rate"] == _rate(2, compared)
        assert {r["cause"]: r["settlements"] for r in report["by_cause"]} == {
            "catalog_class": 1,
            "pool_ratio": 1,
        }
        assert report["by_category"] == [
            {"key": "pharmacy", "compared": compared, "differing": 2, "rate": _rate(2, compared)}
        ]
        worst = [(i["fixmedins_code"], i["item"], i["cause"]) for i in report["worst_items"]]
        assert worst == [(PHARMACY, "YP0003", "catalog_class")]
        assert [d["cause"] for d in report["differences"]] == ["catalog_class", "pool_ratio"]
        assert report["differences"][0]["shadow_answer"]  # both answers, side by side
        with sheet.open(encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        assert [(r["fixmedins_code"], r["cause"], r["item"]) for r in rows] == [
            (PHARMACY, "catalog_class", "YP0003"),
            (PHARMACY, "pool_ratio", ""),
        ]
        text = cli("shadow", "report", *span, "--database-url", srv.dsn).stdout
        assert "目录匹配/收费项目等级不一致" in text and "YP0003" in text


async def test_the_old_system_answers_and_we_shadow_writing_nothing(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    async with running_gateway(new_database, _config(old_system)) as srv:
        pos = srv.client(PHARMACY)
        await set_rule(
            srv.dsn, "region:441800", "settlement", "route_legacy_shadow", "切换前并行比对"
        )
        unchanged = pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED)
        await _in_force(srv, pos, unchanged)
        seen = len(await _comparisons(srv))
        before = await srv.ledger_fingerprint()

        body = msgspec.json.encode(
            pos.envelope("2102", pos.drug_input(EMPLOYEE, WHEN, DRUG_TOTAL, DRUG_LINES))
        )
        status, raw = await pos.post_raw(body)
        assert status == 200
        answer = decode(raw)
        assert answer["infcode"] == 0, answer["err_msg"]
        row = await _next_comparison(srv, seen)
        assert row["answered_by"] == "legacy" and row["answer"] == raw.decode()
        assert row["cause"] == "catalog_class" and row["item"] == "YP0003"
        lv = await srv.fetchrow(
            "SELECT answered, shadowed FROM shadow_differences WHERE comparison_id = $1"
            " AND field = 'chrgitm_lv'",
            row["comparison_id"],
        )
        assert lv is not None and (lv["answered"], lv["shadowed"]) == ("01", "02")
        # Our pre-settlement in the shadow wrote nothing in our ledger.
        assert await srv.ledger_fingerprint() == before
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0


async def test_a_full_queue_drops_and_counts_and_the_counter_never_waits(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    config = msgspec.structs.replace(
        _config(old_system), shadow=Shadow(queue_size=1, workers=1, timeout_seconds=3.0)
    )
    async with running_gateway(new_database, config) as srv:
        pos = srv.client(PHARMACY)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        unchanged = pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED)
        await _in_force(srv, pos, unchanged)
        compared = len(await _comparisons(srv))
        dropped = await _metric(srv, "sgw_shadow_failures_total", shadow="legacy", kind="dropped")
        old_system.proxy.cut()  # the one worker waits on the old system; the queue fills
        try:
            for _ in range(4):
                assert (await pos.ok("2101", unchanged))["setlinfo"]["psn_no"] == EMPLOYEE
            now = await _metric(srv, "sgw_shadow_failures_total", shadow="legacy", kind="dropped")
            # One pricing in the worker, one waiting in the queue: the others were dropped.
            assert dropped + 2 <= now <= dropped + 3
            assert len(await _comparisons(srv)) == compared  # none priced yet
        finally:
            old_system.proxy.restore()


async def test_the_shadow_actions_name_the_settlement_class_only(
    new_database: Callable[..., Any],
) -> None:
    dsn = await new_database("shadowplan")
    await prepare_database(Settings(dsn))
    now = dt.datetime.now()
    async with connect(dsn) as conn:
        for action in ("shadow", "route_legacy_shadow"):
            with pytest.raises(BadRequest, match="只适用于settlement"):
                await store.set_rule(
                    conn, scope="global", klass="encounter", action=action, reason="演练",
                    operator="test",
                )  # fmt: skip
            with pytest.raises(BadRequest, match="只适用于settlement"):
                await store.add_window(
                    conn, name="切换", scope="region:441800", classes=["settlement", "encounter"],
                    action=action, begins=now, ends=now + dt.timedelta(days=1), operator="test",
                    reason="演练",
                )  # fmt: skip
        # The ledger takes both (013 relaxed the CHECK), each change audited.
        await store.set_rule(
            conn, scope="region:441800", klass="settlement", action="route_legacy_shadow",
            reason="切换前并行比对", operator="test",
        )  # fmt: skip
        await store.add_window(
            conn, name="切换后并行比对", scope="region:441800", classes=["settlement"],
            action="shadow", begins=now, ends=now + dt.timedelta(days=7), operator="test",
            reason="切换后一周",
        )  # fmt: skip
        actions = await conn.fetch(
            "SELECT action FROM plan_rules UNION ALL SELECT action FROM plan_windows"
        )
        assert sorted(r["action"] for r in actions) == ["route_legacy_shadow", "shadow"]
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE target LIKE 'region:441800%'"
        )
        assert audited == 2


async def test_past_the_bound_the_institution_goes_back_to_the_old_system_until_cleared(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    shadow = Shadow(
        timeout_seconds=3.0,
        protect_action="route_legacy_shadow",
        protect_rate_bp=2000,
        protect_min_compared=2,
    )
    config = msgspec.structs.replace(_config(old_system), shadow=shadow)
    async with running_gateway(new_database, config) as srv:
        pos = srv.client(PHARMACY)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        scope = f"institution:{PHARMACY}"
        differing = pos.drug_input(EMPLOYEE, WHEN, DRUG_TOTAL, DRUG_LINES)

        async def rule() -> Any:
            return await srv.fetchrow(
                "SELECT action, operator, reason FROM plan_rules WHERE scope = $1", scope
            )

        for _ in range(8):
            seen = len(await _comparisons(srv))
            await pos.ok("2102", differing)
            await _next_comparison(srv, seen)
            if await rule() is not None:
                break
        found = await rule()
        assert found is not None, "no protective rule after 8 differing settlements"
        assert (found["action"], found["operator"]) == ("route_legacy_shadow", "trigger:shadow")
        assert "catalog_class" in found["reason"]
        audited = await srv.fetchrow(
            "SELECT operator, action FROM audit_log WHERE target = $1", f"{scope}/settlement"
        )
        assert audited is not None and tuple(audited) == ("trigger:shadow", "plan.set")

        # The institution's counter is now answered by the old system, still compared.
        seen = len(await _comparisons(srv))
        await pos.ok("2102", differing)
        assert (await _next_comparison(srv, seen))["answered_by"] == "legacy"

        # Cleared by a person: answered here again, and counted afresh from the clearing. (Sales
        # before the serving process has the clearing still go to the old system and spend the
        # person's account there, which later tests price against: wait for it first.)
        await clear_rule(srv.dsn, scope, "settlement", "目录已更正")

        async def cleared_in_force() -> bool:
            return await _metric(srv, "sgw_plan_degraded", scope=scope, **{"class": "settlement"}) == 0  # fmt: skip

        await until(cleared_in_force, within=10.0)
        # A pricing the shadow did not answer in time (a busy machine) leaves no comparison: it
        # is counted as the shadow's failure, and the next settlement is tried.
        missed = 0
        for _ in range(20):
            seen = len(await _comparisons(srv))
            await pos.ok("2102", differing)
            try:
                row = await _next_comparison(srv, seen, within=10.0)
            except AssertionError:
                missed += 1
                continue
            if row["answered_by"] == "gateway":
                break
        else:
            failures = await _metric(srv, "sgw_shadow_failures_total")
            raise AssertionError(
                f"the cleared rule never left the serving process ({missed} pricings missed,"
                f" {failures:g} shadow failures counted)"
            )
        assert missed <= 2, f"{missed} pricings missed"  # a miss or two on a busy box, not more
        assert await rule() is None  # one difference since the clearing: under the minimum


OUTPATIENT_LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1", "det_item_fee_sumamt": "25.00"},
    {"feedetl_sn": "2", "medins_list_codg": "YP0002", "pric": "20", "cnt": "1", "det_item_fee_sumamt": "20.00"},
]  # fmt: skip


DIFFERING_LINE = [{"feedetl_sn": "3", "medins_list_codg": "YP0003", "pric": "30", "cnt": "1", "det_item_fee_sumamt": "30.00"}]  # fmt: skip
DAY = "2026-05-08"


def _no(prefix: str) -> str:
    """A visit number unique in both ledgers (the old system's lives through the module)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _open_visit(his: HisClient, no: str, batches: dict[str, list[dict[str, Any]]]) -> str:
    """2201 + 2203 + one 2204 per batch."""
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{DAY} 08:30:00", no)
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{DAY} 08:30:00")
    for batch, lines in batches.items():
        rows = his.fee_rows(mdtrt_id, EMPLOYEE, lines, f"{DAY} 08:40:00", batch)
        await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


async def _shadow_id(srv: Server, mdtrt_id: str, within: float = 30.0) -> str:
    """The shadow's number of the visit, once its opening call is mirrored."""

    async def mapped() -> bool:
        found = await srv.fetchval(
            "SELECT shadow_mdtrt_id FROM shadow_mirror_visits WHERE mdtrt_id = $1", mdtrt_id
        )
        return found is not None

    await until(mapped, within=within)
    found = await srv.fetchval(
        "SELECT shadow_mdtrt_id FROM shadow_mirror_visits WHERE mdtrt_id = $1", mdtrt_id
    )
    assert isinstance(found, str)
    return found


async def test_an_outpatient_visit_opened_during_the_run_is_mirrored_and_compared(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    """Under `shadow` the visit's 2201/2203/2204/2205 are replayed at the old system, under
    its own visit number, and the 2207 priced there as 2206 of that visit: equal when the
    lines are priced alike, the mapping difference named on its item, a withdrawn batch
    withdrawn there too."""
    async with running_gateway(new_database, _config(old_system)) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        pos = srv.client(PHARMACY)
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))

        # (a) Lines mapped alike: the same money.
        mdtrt_id = await _open_visit(his, _no("MZ-MR"), {"B1": OUTPATIENT_LINES})
        seen = len(await _comparisons(srv))
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "45.00", "310", "1", chrg_bchno="B1")
        settled = await his.ok("2207", data)
        assert settled["setlinfo"]["setl_id"]
        row = await _next_comparison(srv, seen)
        seen += 1
        assert (row["infno"], row["shadow_infno"]) == ("2207", "2206")
        assert (row["category"], row["med_type"], row["differs"]) == ("outpatient", "11", False)
        theirs = await _shadow_id(srv, mdtrt_id)
        async with connect(old_system.dsn) as old:
            visit = await old.fetchrow(
                "SELECT fixmedins_code, psn_no FROM encounters WHERE mdtrt_id = $1", theirs
            )
            assert visit is not None and tuple(visit) == (HOSPITAL, EMPLOYEE)
            assert (
                await old.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", theirs)
                == 2
            )
            # Priced there, never settled there.
            assert (
                await old.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", theirs)
                == 0
            )
        assert await _metric(srv, "sgw_shadow_mirrored_total", shadow="legacy", outcome="ok") >= 3

        # (a) A line mapped differently there: the difference is that item's class. The 2207
        # declares the bill's parts as this gateway's 2206 answered them, as a HIS copies them
        # (found from outside: the old system's pre-settlement refused them as not its own
        # figures, and the comparison was counted a refusal).
        mdtrt_id = await _open_visit(his, _no("MZ-MR"), {"B1": OUTPATIENT_LINES + DIFFERING_LINE})
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "75.00", "310", "1", chrg_bchno="B1")
        priced = (await his.ok("2206", data))["setlinfo"]
        parts = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
        data["data"].update({k: amount_text(priced[k]) for k in parts})
        await his.ok("2207", data)
        # The two comparisons, the 2206's and the 2207's, in whichever order they were priced.
        both = {r["infno"]: r for r in [await _next_comparison(srv, seen + n) for n in (0, 1)]}
        seen += 2
        for infno in ("2206", "2207"):
            row = both[infno]
            assert row["differs"] and (row["cause"], row["item"]) == (
                "catalog_class",
                "YP0003",
            ), row["shadow_answer"]
        row = both["2207"]
        assert row["diagnosis"]["lines"] == ["3"]
        lv = await srv.fetchrow(
            "SELECT answered, shadowed FROM shadow_differences WHERE comparison_id = $1"
            " AND field = 'chrgitm_lv'",
            row["comparison_id"],
        )
        assert lv is not None and (lv["answered"], lv["shadowed"]) == ("02", "01")

        # (b) The batch withdrawn (2205) and uploaded again without the differing line: the
        # withdrawal and the new upload reach the old system too, and the two agree.
        mdtrt_id = await _open_visit(his, _no("MZ-MR"), {"B1": OUTPATIENT_LINES + DIFFERING_LINE})
        withdrawal = {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": EMPLOYEE}}
        await his.ok("2205", withdrawal)
        rows = his.fee_rows(mdtrt_id, EMPLOYEE, OUTPATIENT_LINES, f"{DAY} 08:50:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "45.00", "310", "1", chrg_bchno="B1")
        await his.ok("2207", data)
        row = await _next_comparison(srv, seen)
        seen += 1
        assert (row["differs"], row["cause"]) == (False, None)
        theirs = await _shadow_id(srv, mdtrt_id)
        async with connect(old_system.dsn) as old:
            standing = await old.fetchval(
                "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = '3'",
                theirs,
            )
        assert standing == 0
        # Nothing refused, nothing lost: no pricing counted as not mirrored.
        assert await _metric(srv, "sgw_shadow_failures_total", kind="not_mirrored") == 0
        assert await _metric(srv, "sgw_shadow_mirrored_total", outcome="failed") == 0


async def test_an_inpatient_stay_opened_during_the_run_is_mirrored_and_compared(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    async with running_gateway(new_database, _config(old_system)) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        pos = srv.client(PHARMACY)
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        admission = {
            "mdtrtinfo": {
                "psn_no": EMPLOYEE, "insutype": "310", "begntime": f"{DAY} 09:00:00",
                "mdtrt_cert_type": "01", "mdtrt_cert_no": EMPLOYEE, "med_type": "21",
                "ipt_no": _no("ZY-MR"),
            },
            "diseinfo": [],
        }  # fmt: skip
        mdtrt_id = (await his.ok("2401", admission))["result"]["mdtrt_id"]
        lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}, *DIFFERING_LINE]  # fmt: skip
        rows = his.fee_rows(mdtrt_id, EMPLOYEE, lines, f"{DAY} 10:00:00", "")
        await his.ok("2301", {"feedetail": rows})
        await his.ok(
            "2402",
            {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE, "insutype": "310",
                          "endtime": "2026-05-10 10:00:00", "dscg_dept_codg": "K1",
                          "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
        )  # fmt: skip
        seen = len(await _comparisons(srv))
        settle = his.settle_data(EMPLOYEE, mdtrt_id, "21", "150.00", "310", "0", mid_setl_flag="0")
        assert (await his.ok("2304", settle))["setlinfo"]["setl_id"]
        row = await _next_comparison(srv, seen)
        assert (row["infno"], row["shadow_infno"], row["category"]) == ("2304", "2303", "inpatient")
        assert row["differs"] and (row["cause"], row["item"]) == ("catalog_class", "YP0003")
        theirs = await _shadow_id(srv, mdtrt_id)
        async with connect(old_system.dsn) as old:
            stay = await old.fetchrow("SELECT status FROM encounters WHERE mdtrt_id = $1", theirs)
            assert stay is not None  # admitted, charged and discharged there, under its number
            assert (
                await old.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", theirs)
                == 2
            )
            assert (
                await old.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", theirs)
                == 0
            )
        assert await _metric(srv, "sgw_shadow_mirrored_total", shadow="legacy", outcome="ok") >= 3


async def test_before_go_live_the_old_systems_visits_are_mirrored_here_and_priced_here(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    """(route_legacy_shadow, the encounter class routed to the old system.) The visit is
    written here under this gateway's own number, with its lines, and priced here; no
    settlement, no money written here."""
    async with running_gateway(new_database, _config(old_system)) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(
            srv.dsn, "region:441800", "settlement", "route_legacy_shadow", "切换前并行比对"
        )
        await set_rule(srv.dsn, "region:441800", "encounter", "route_legacy", "切换前由原系统办理")
        pos = srv.client(PHARMACY)  # both rules are in force once a pricing is compared
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        no = _no("MZ-RL")

        theirs = await _open_visit(his, no, {"B1": OUTPATIENT_LINES})
        # A till's retry of an encounter call (same msgid and body) is answered again by the old
        # system from its own journal: mirrored here once, not twice.
        info = {"mdtrtinfo": {"mdtrt_id": theirs, "psn_no": EMPLOYEE, "med_type": "11",
                              "begntime": "2026-05-08 08:30:00", "dise_codg": "", "dise_name": ""},
                "diseinfo": []}  # fmt: skip
        retried = msgspec.json.encode(his.envelope("2203", info))
        first = [decode((await his.post_raw(retried))[1]) for _ in range(2)]
        assert [a["infcode"] for a in first] == [0, 0], first
        msgid = msgspec.json.decode(retried)["msgid"]

        async def written() -> bool:
            return bool(
                await srv.fetchval(
                    "SELECT count(*) FROM shadow_mirror_calls WHERE msgid = $1", msgid
                )
            )

        await until(written, within=30.0)
        async with connect(old_system.dsn) as old:
            assert (
                await old.fetchval("SELECT count(*) FROM encounters WHERE mdtrt_id = $1", theirs)
                == 1
            )
        seen = len(await _comparisons(srv))
        data = his.settle_data(EMPLOYEE, theirs, "11", "45.00", "310", "1", chrg_bchno="B1")
        await his.ok("2207", data)
        row = await _next_comparison(srv, seen)
        assert (row["answered_by"], row["infno"], row["shadow_infno"]) == ("legacy", "2207", "2206")
        assert (row["differs"], row["category"]) == (False, "outpatient")
        ours = await _shadow_id(srv, theirs)
        visit = await srv.fetchrow(
            "SELECT ipt_otp_no, psn_no FROM encounters WHERE mdtrt_id = $1", ours
        )
        assert visit is not None and tuple(visit) == (no, EMPLOYEE)
        assert await srv.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", ours) == 2
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
        assert await srv.check_ledger() == []
        assert await _metric(srv, "sgw_shadow_mirrored_total", shadow="gateway", outcome="ok") >= 3
        assert (
            await srv.fetchval("SELECT count(*) FROM shadow_mirror_calls WHERE msgid = $1", msgid)
            == 1
        )


async def test_before_go_live_a_visit_opened_here_is_priced_as_when_the_counter_asked(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    """(route_legacy_shadow, the encounter class answered here.) The old system settles the
    batch, and the gateway keeps that settlement as holding the batch's lines; found from
    outside, that hold then refused the gateway's own pricing of the very settlement it came
    from (and of the 2206 before it, priced after the 2207), so every such comparison was a
    `refusal`. Priced as when the counter asked, the two agree."""
    async with running_gateway(new_database, _config(old_system)) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(
            srv.dsn, "region:441800", "settlement", "route_legacy_shadow", "切换前并行比对"
        )
        pos = srv.client(PHARMACY)
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        async with connect(old_system.dsn) as old:  # the two systems number visits apart
            await old.execute("SELECT setval('mdtrt_seq', nextval('mdtrt_seq') + 1000)")
        mdtrt_id = await _open_visit(his, _no("MZ-HR"), {"B1": OUTPATIENT_LINES})
        # The visit is at the old system too, under its own number (found from outside: never
        # mirrored there, the old system was asked to settle a number it never had).
        assert await _shadow_id(srv, mdtrt_id) != mdtrt_id
        seen = len(await _comparisons(srv))
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "45.00", "310", "1", chrg_bchno="B1")
        assert (await his.ok("2206", data))["setlinfo"]["medfee_sumamt"] == 45
        settled = await his.ok("2207", data)
        rows = [await _next_comparison(srv, seen), await _next_comparison(srv, seen + 1)]
        assert sorted((r["answered_by"], r["infno"]) for r in rows) == [
            ("legacy", "2206"),
            ("legacy", "2207"),
        ]
        assert [(r["differs"], r["cause"]) for r in rows] == [(False, None), (False, None)], [
            (r["answer"], r["shadow_answer"]) for r in rows
        ]
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
        # The pricing set the hold aside in its own transaction only: it stands.
        assert await srv.fetchval(
            "SELECT count(*) FROM legacy_settlements WHERE setl_id = $1 AND cancelled_at IS NULL",
            settled["setlinfo"]["setl_id"],
        )
        # A line mapped differently: its difference told as the old system (which settled it)
        # against this gateway, though this gateway answered its upload (found from outside:
        # the two sides were swapped).
        mdtrt_id = await _open_visit(his, _no("MZ-HR"), {"B1": OUTPATIENT_LINES + DIFFERING_LINE})
        await _shadow_id(srv, mdtrt_id)
        seen = len(await _comparisons(srv))
        data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "75.00", "310", "1", chrg_bchno="B1")
        await his.ok("2207", data)
        row = await _next_comparison(srv, seen)
        assert row["differs"] and (row["cause"], row["item"]) == ("catalog_class", "YP0003")
        lv = await srv.fetchrow(
            "SELECT answered, shadowed FROM shadow_differences WHERE comparison_id = $1"
            " AND field = 'chrgitm_lv'",
            row["comparison_id"],
        )
        assert lv is not None and (lv["answered"], lv["shadowed"]) == ("01", "02")


async def test_the_old_system_down_leaves_the_counter_alone_and_its_visits_uncompared(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    async with running_gateway(new_database, _config(old_system)) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        pos = srv.client(PHARMACY)
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        seen = len(await _comparisons(srv))
        upstream = old_system.proxy.upstream
        old_system.proxy.upstream = ("127.0.0.1", _free_port())
        try:
            mdtrt_id = await _open_visit(his, _no("MZ-DN"), {"B1": OUTPATIENT_LINES})
            data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "45.00", "310", "1", chrg_bchno="B1")
            assert (await his.ok("2207", data))["setlinfo"]["setl_id"]  # the counter unaffected
            # A second visit opened meanwhile, not settled yet (below).
            spare = await _open_visit(his, _no("MZ-DN"), {"B1": OUTPATIENT_LINES})

            async def counted() -> bool:
                failed = await _metric(
                    srv, "sgw_shadow_mirrored_total", shadow="legacy", outcome="failed"
                )
                priced = await _metric(
                    srv, "sgw_shadow_failures_total", shadow="legacy", kind="not_mirrored"
                )
                lost = await srv.fetchval(
                    "SELECT state FROM shadow_mirror_visits WHERE mdtrt_id = $1", spare
                )
                return failed >= 3 and priced >= 1 and lost == "not_mirrored"

            await until(counted, within=30.0)
        finally:
            old_system.proxy.upstream = upstream
        state = await srv.fetchval(
            "SELECT state FROM shadow_mirror_visits WHERE mdtrt_id = $1", mdtrt_id
        )
        assert state == "not_mirrored"
        assert len(await _comparisons(srv)) == seen  # a shadow failure, not a difference
        assert await srv.check_ledger() == []

        # The old system back, and the hospital's settlements routed to it (the protective
        # action's rule, here set by a person): a visit whose calls never reached it is refused
        # in words, retryable, rather than settled there without its lines or settled here.
        await set_rule(
            srv.dsn, f"institution:{HOSPITAL}", "settlement", "route_legacy", "回退原系统"
        )
        pending = his.settle_data(EMPLOYEE, spare, "11", "45.00", "310", "1", chrg_bchno="B1")
        async with connect(old_system.dsn) as theirs:
            settled_there = await theirs.fetchval("SELECT count(*) FROM settlements")

        async def routed_and_refused() -> bool:
            status, raw = await his.post_raw(msgspec.json.encode(his.envelope("2206", pending)))
            assert status == 200, raw
            answer = decode(raw)
            return answer["infcode"] == -1 and "未能同步至原系统" in str(answer["err_msg"])

        await until(routed_and_refused, within=15.0)
        body = msgspec.json.encode(his.envelope("2207", pending))
        for _ in range(2):  # the same msgid again: the same refusal, nothing journaled
            status, raw = await his.post_raw(body)
            answer = decode(raw)
            assert status == 200 and answer["infcode"] == -1, answer
            assert "未能同步至原系统" in answer["err_msg"] and "相同报文ID重试" in answer["err_msg"]
        # Settled neither here nor there.
        assert (
            await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", spare) == 0
        )
        async with connect(old_system.dsn) as theirs:
            assert await theirs.fetchval("SELECT count(*) FROM settlements") == settled_there


async def _stay(his: HisClient, discharged: bool = True) -> str:
    """2401 + 2301 (a line mapped differently at the old system) + 2402: a stay to settle."""
    admission = {
        "mdtrtinfo": {
            "psn_no": EMPLOYEE, "insutype": "310", "begntime": f"{DAY} 09:00:00",
            "mdtrt_cert_type": "01", "mdtrt_cert_no": EMPLOYEE, "med_type": "21",
            "ipt_no": _no("ZY-CT"),
        },
        "diseinfo": [],
    }  # fmt: skip
    mdtrt_id = str((await his.ok("2401", admission))["result"]["mdtrt_id"])
    lines = [{"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "2", "det_item_fee_sumamt": "120.00"}, *DIFFERING_LINE]  # fmt: skip
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, lines, f"{DAY} 10:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    if discharged:
        await _discharge(his, mdtrt_id)
    return mdtrt_id


async def _discharge(his: HisClient, mdtrt_id: str) -> None:
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE, "insutype": "310",
                      "endtime": "2026-05-10 10:00:00", "dscg_dept_codg": "K1",
                      "dscg_dept_name": "内科", "dscg_way": "1"}, "diseinfo": []},
    )  # fmt: skip


async def _settled_there(his: HisClient, body: bytes) -> dict[str, Any]:
    """A 2304 routed to the old system, sent again as it was (its msgid) while the gateway says
    the stay's calls have not reached the old system yet (a busy machine)."""
    for _ in range(10):
        status, raw = await his.post_raw(body)
        assert status == 200, raw
        answer = decode(raw)
        if answer["infcode"] == 0 or "未能同步至原系统" not in str(answer["err_msg"]):
            return answer
        await asyncio.sleep(0.5)
    raise AssertionError(f"the stay never reached the old system: {answer['err_msg']}")


async def test_past_the_bound_per_category_only_that_category_goes_back_to_the_old_system(
    new_database: Callable[..., Any], old_system: OldSystem
) -> None:
    """清远 1.2.2 names 普通门诊, 门特门慢 and 普通住院 apart. With `protect_by_category` the
    hospital's inpatient settlements, differing (YP0003 mapped class A there), are counted apart
    from its outpatient ones, alike: the rule `institution:H:inpatient` sends only its stays'
    settlements back to the old system while its outpatient counter is still answered here."""
    shadow = Shadow(
        timeout_seconds=3.0,
        protect_action="route_legacy",
        protect_by_category=True,
        protect_rate_bp=2000,
        protect_min_compared=2,
    )
    config = msgspec.structs.replace(_config(old_system), shadow=shadow)
    async with running_gateway(new_database, config) as srv:
        his = srv.client(HOSPITAL)
        await set_rule(srv.dsn, "region:441800", "settlement", "shadow", "切换后并行比对")
        pos = srv.client(PHARMACY)
        await _in_force(srv, pos, pos.drug_input(EMPLOYEE, WHEN, "20.00", UNCHANGED))
        scope = f"institution:{HOSPITAL}:inpatient"

        async def rules() -> dict[str, Any]:
            found = await srv.fetch(
                "SELECT scope, action, operator, reason FROM plan_rules WHERE class = 'settlement'"
            )
            return {r["scope"]: r for r in found}

        # A stay opened during the run and still in hospital when its category is switched. One
        # admitted at the old system itself first: the two systems then number it differently.
        at_old = HisClient(srv.session, old_system.url.removesuffix(CALL_SERVICE), HOSPITAL)
        await _stay(at_old, discharged=False)
        early = await _stay(his, discharged=False)

        # An outpatient visit priced alike: counted under outpatient, no rule for it.
        visit = await _open_visit(his, _no("MZ-CT"), {"B1": OUTPATIENT_LINES})
        outpatient = his.settle_data(EMPLOYEE, visit, "11", "45.00", "310", "1", chrg_bchno="B1")
        seen = len(await _comparisons(srv))
        await his.ok("2207", outpatient)
        row = await _next_comparison(srv, seen)
        assert (row["category"], row["differs"]) == ("outpatient", False), str(dict(row))

        for _ in range(5):
            stay = await _stay(his)
            seen = len(await _comparisons(srv))
            settle = his.settle_data(EMPLOYEE, stay, "21", "150.00", "310", "0", mid_setl_flag="0")
            assert (await his.ok("2304", settle))["setlinfo"]["setl_id"]
            row = await _next_comparison(srv, seen)
            assert (row["category"], row["differs"], row["cause"]) == (
                "inpatient", True, "catalog_class",
            )  # fmt: skip
            if scope in await rules():
                break
        in_force = await rules()
        assert scope in in_force, "no protective rule after 5 differing stays"
        found = in_force[scope]
        assert (found["action"], found["operator"]) == ("route_legacy", "trigger:shadow")
        assert "catalog_class" in found["reason"]
        # Only that category: no rule at the institution's plain scope, the region's run as set.
        assert set(in_force) == {scope, "region:441800"}
        audited = await srv.fetch(
            "SELECT operator, action FROM audit_log WHERE target = $1", f"{scope}/settlement"
        )
        assert [tuple(r) for r in audited] == [("trigger:shadow", "plan.set")]

        # The stay opened during the run: one more line uploaded here after the switch (still
        # mirrored: the old system settles it now), discharged, and settled by the old system
        # under its own number of the stay, the answer under ours; nothing settled here.
        more = [{"feedetl_sn": "4", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1", "det_item_fee_sumamt": "25.00"}]  # fmt: skip
        rows = his.fee_rows(early, EMPLOYEE, more, f"{DAY} 11:00:00", "")
        await his.ok("2301", {"feedetail": rows})
        await _discharge(his, early)
        settle = his.settle_data(EMPLOYEE, early, "21", "175.00", "310", "0", mid_setl_flag="0")
        msgid = his.msgid()
        body = msgspec.json.encode(his.envelope("2304", settle, msgid=msgid))
        answer = await _settled_there(his, body)
        assert answer["infcode"] == 0, answer["err_msg"]
        assert answer["output"]["setlinfo"]["mdtrt_id"] == early
        early_there = answer["output"]["setlinfo"]["setl_id"]
        theirs = await _shadow_id(srv, early)
        assert theirs != early
        async with connect(old_system.dsn) as old:
            settled = await old.fetch(
                "SELECT mdtrt_id, medfee_sumamt, status FROM settlements WHERE medins_setl_id = $1",
                msgid,
            )
            assert [tuple(r) for r in settled] == [(theirs, 17500, "settled")]
            there = await old.fetchval(
                "SELECT infno FROM idempotency WHERE fixmedins_code = $1 AND msgid = $2",
                HOSPITAL,
                msgid,
            )
        assert there == "2304"
        # Its answer is kept here as the old system's (a retry after the run gets it, and is
        # never settled here: found from outside), with nothing settled here.
        kept = await srv.fetch("SELECT answered_elsewhere FROM idempotency WHERE msgid = $1", msgid)
        assert [r["answered_elsewhere"] for r in kept] == [True]
        assert (
            await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", early) == 0
        )
        # The retry of that msgid is answered by the old system's journal, as it was.
        again = await _settled_there(his, body)
        assert again["output"]["setlinfo"]["setl_id"] == answer["output"]["setlinfo"]["setl_id"]

        # A stay opened after the switch is mirrored from its admission and settled there too.
        stay = await _stay(his)
        settle = his.settle_data(EMPLOYEE, stay, "21", "150.00", "310", "0", mid_setl_flag="0")
        msgid = his.msgid()
        body = msgspec.json.encode(his.envelope("2304", settle, msgid=msgid))
        answer = await _settled_there(his, body)
        assert answer["infcode"] == 0, answer["err_msg"]
        assert answer["output"]["setlinfo"]["mdtrt_id"] == stay
        assert await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", stay) == 0

        # The hospital's outpatient counter is still answered here, and still compared.
        visit = await _open_visit(his, _no("MZ-CT"), {"B1": OUTPATIENT_LINES})
        outpatient = his.settle_data(EMPLOYEE, visit, "11", "45.00", "310", "1", chrg_bchno="B1")
        seen = len(await _comparisons(srv))
        assert (await his.ok("2207", outpatient))["setlinfo"]["setl_id"]
        row = await _next_comparison(srv, seen)
        assert (row["answered_by"], row["category"]) == ("gateway", "outpatient")
        assert (
            await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", visit) == 1
        )

        # Cleared by a person, audited: stays settle here again, counted afresh from the
        # clearing (one difference since: under the minimum, no new rule).
        await clear_rule(srv.dsn, scope, "settlement", "住院目录对照已更正")
        audited = await srv.fetch(
            "SELECT operator, action FROM audit_log WHERE target = $1 ORDER BY audit_id",
            f"{scope}/settlement",
        )
        assert [tuple(r) for r in audited] == [("trigger:shadow", "plan.set"), ("test", "plan.clear")]  # fmt: skip
        await asyncio.sleep(2.5)  # in force everywhere within 2 s (the plan's poll)
        stay = await _stay(his)
        seen = len(await _comparisons(srv))
        settle = his.settle_data(EMPLOYEE, stay, "21", "150.00", "310", "0", mid_setl_flag="0")
        assert (await his.ok("2304", settle))["setlinfo"]["setl_id"]
        row = await _next_comparison(srv, seen)
        assert (row["answered_by"], row["category"], row["differs"]) == ("gateway", "inpatient", True)  # fmt: skip
        assert scope not in await rules()

        # The stay the old system settled is not settled here again under a new msgid (found
        # from outside: a HIS sends a settlement again as a new message, and the fund paid the
        # stay twice, once in each system), nor priced: both name the old system's settlement.
        closing = his.settle_data(EMPLOYEE, early, "21", "175.00", "310", "0", mid_setl_flag="0")
        for infno in ("2303", "2304"):
            refused = await his.call(infno, closing)
            assert refused["infcode"] == -1, (infno, refused)
            assert "由原系统结算" in refused["err_msg"] and early_there in refused["err_msg"]
        assert (
            await srv.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", early) == 0
        )
        # Cancelled at the old system through the gateway (the stays routed there again), the
        # stay is the gateway's to settle once the rule is cleared.
        back = {"data": {"setl_id": early_there, "mdtrt_id": early, "psn_no": EMPLOYEE}}
        # Without the route, its cancellation is told where the settlement is (found from
        # outside: "不存在或不属于本机构"), nothing written.
        before = await srv.ledger_fingerprint()
        refused = await his.call("2305", back)
        assert refused["infcode"] == -1 and "由原系统办理的结算" in refused["err_msg"], refused
        assert await srv.ledger_fingerprint() == before
        await set_rule(srv.dsn, scope, "settlement", "route_legacy", "撤销原系统结算")
        await asyncio.sleep(2.5)
        cancelled = await his.call("2305", back)
        assert cancelled["infcode"] == 0, cancelled["err_msg"]
        async with connect(old_system.dsn) as old:
            status = await old.fetchval(
                "SELECT status FROM settlements WHERE setl_id = $1", early_there
            )
        assert status == "cancelled"
        await clear_rule(srv.dsn, scope, "settlement", "原系统结算已撤销")
        await asyncio.sleep(2.5)
        settled_here = (await his.ok("2304", closing))["setlinfo"]["setl_id"]
        here = "SELECT setl_id FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'"
        assert [r["setl_id"] for r in await srv.fetch(here, early)] == [settled_here]
        assert await srv.check_ledger() == []


def _stored(n: int, *, differs: bool, admdvs: str) -> comparisons.Comparison:
    cause = ("catalog_class", "pool_ratio")[n % 2] if differs else None
    return comparisons.Comparison(
        answered_by="gateway", fixmedins_code=PHARMACY, admdvs=admdvs, infno="2102",
        shadow_infno="2101", msgid=f"M{n:02d}", med_type="41", category="pharmacy",
        differs=differs, cause=cause, item="YP0003" if differs else None,
        request="{}" if differs else None, answer="{}" if differs else None,
        shadow_answer="{}" if differs else None,
        diagnosis={"summary": "不一致"} if differs else None,
        differences=((cause, "line:1", "YP0003", "chrgitm_lv", "02", "01"),) if cause else (),
    )  # fmt: skip


@pytest.fixture(scope="module")
async def run_of_52(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    """A gateway whose run found 52 differing settlements in region 441800 (M01 the oldest,
    M52 the newest; catalog_class and pool_ratio 26 each) and 8 agreeing ones in 441802."""
    async with running_gateway(new_database) as srv:
        pool = await db.create_pool(srv.dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                for n in range(1, 53):
                    await comparisons.insert(conn, _stored(n, differs=True, admdvs="441800"))
                for n in range(53, 61):
                    await comparisons.insert(conn, _stored(n, differs=False, admdvs="441802"))
        finally:
            await pool.close()
        yield srv


async def _parallel_run(srv: Server, **query: str) -> tuple[int, Any]:
    token = await _login(srv, OPERATOR)
    async with srv.session.get(
        srv.url + "/api/parallel-run", headers={"Authorization": f"Bearer {token}"}, params=query
    ) as r:
        return r.status, await r.json()


WIDEST = ("--from", "1900-01-01", "--to", "9999-12-31")


def _report(srv: Server, *args: str) -> dict[str, Any]:
    done = cli("shadow", "report", *WIDEST, "--json", *args, "--database-url", srv.dsn, tz="CST-8")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def test_the_console_shows_the_latest_50_differences_newest_first(
    run_of_52: Server,
) -> None:
    """Found from outside: the oldest 50 were shown, the two newest of 52 missing."""
    status, view = await _parallel_run(run_of_52)
    assert status == 200, view
    msgids = [d["msgid"] for d in view["differences"]]
    assert msgids == [f"M{n:02d}" for n in range(52, 2, -1)]
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(run_of_52.url + "/console/login", data=OPERATOR) as r:
            assert r.status == 200
        async with browser.get(run_of_52.url + "/console/parallel-run") as r:
            html = await r.text()
    assert html.index("报文M52 ") < html.index("报文M51 ") and "报文M02 " not in html
    # The report for the meeting keeps its differences oldest first.
    assert [d["msgid"] for d in _report(run_of_52)["differences"]][:2] == ["M01", "M02"]


async def test_differences_are_timed_in_local_time_as_the_period(
    run_of_52: Server, beijing: None, tmp_path: Path
) -> None:
    """Found from outside: the differences' times were UTC beside a local period and hours."""
    status, view = await _parallel_run(run_of_52)
    assert status == 200 and view["from"].endswith("+08:00")
    assert all(d["compared_at"].endswith("+08:00") for d in view["differences"])
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(run_of_52.url + "/console/login", data=OPERATOR) as r:
            assert r.status == 200
        async with browser.get(run_of_52.url + "/console/parallel-run") as r:
            assert "+08:00 P44180000001 报文M52" in await r.text()
    sheet = tmp_path / "differences.csv"
    report = _report(run_of_52, "--csv", str(sheet))
    assert report["from"].endswith("+08:00")
    assert all(d["compared_at"].endswith("+08:00") for d in report["differences"])
    with sheet.open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 52 and all(row["compared_at"].endswith("+08:00") for row in rows)


async def test_a_causes_row_is_its_count_as_in_the_report(run_of_52: Server) -> None:
    """Found from outside: each cause read `compared` its own count and a rate of 100%."""
    status, view = await _parallel_run(run_of_52)
    assert status == 200
    assert [(r["key"], r["differing"]) for r in view["by_cause"]] == [
        ("catalog_class", 26),
        ("pool_ratio", 26),
    ]
    assert all(set(r) == {"key", "differing", "name"} for r in view["by_cause"])
    report = _report(run_of_52)
    assert report["compared"] == 60
    assert {r["cause"]: r["settlements"] for r in report["by_cause"]} == {
        r["key"]: r["differing"] for r in view["by_cause"]
    }


async def test_the_text_report_has_the_regions(run_of_52: Server) -> None:
    """Found from outside: `--json` had `by_region`, the text had no region."""
    text = cli("shadow", "report", *WIDEST, "--database-url", run_of_52.dsn, tz="CST-8").stdout
    assert "按统筹区" in text, text
    region = text[text.index("按统筹区") :]
    assert re.search(r"441800 +比对 +52 +不一致 +52 +差异率 1\.0000", region), text
    assert re.search(r"441802 +比对 +8 +不一致 +0 +差异率 0\.0000", region), text


@pytest.mark.parametrize("limit", ["-1", "0"])
async def test_a_report_limit_below_one_is_refused_in_one_line(
    run_of_52: Server, limit: str
) -> None:
    """Found from outside: `--limit -1` died in a traceback from PostgreSQL (exit 1)."""
    done = cli(
        "shadow", "report", *WIDEST, "--limit", limit, "--database-url", run_of_52.dsn,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "应为正整数" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


async def test_a_period_past_the_years_it_can_read_names_them(
    run_of_52: Server, beijing: None
) -> None:
    """Found from outside: 0001-01-01 was refused "应为YYYY-MM-DD…", the form it was in."""
    status, body = await _parallel_run(run_of_52, **{"from": "0001-01-01", "to": "9999-12-31"})
    assert status == 400 and "1900-01-01至9999-12-31" in body["error"], body
    done = cli(
        "shadow", "report", "--from", "0001-01-01", "--to", "9999-12-31",
        "--database-url", run_of_52.dsn, check=False, tz="CST-8",
    )  # fmt: skip
    assert done.returncode == 2 and "1900-01-01至9999-12-31" in done.stderr, done.stderr
    assert "无效" not in done.stderr
    # The widest period it can read is read.
    status, view = await _parallel_run(run_of_52, **{"from": "1900-01-01", "to": "9999-12-31"})
    assert status == 200 and sum(r["compared"] for r in view["by_category"]) == 60
    assert _report(run_of_52)["compared"] == 60


async def test_shadow_is_refused_without_the_old_systems_address(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: `plan set --action shadow` was taken with `[legacy] url` empty (the
    old system prices in the shadow: nothing could be compared), where route_legacy and
    route_legacy_shadow are refused. The CLI (the shipped configuration names no old system)
    and the console's API (the serving gateway's own) refuse it, writing nothing."""
    async with running_gateway(new_database) as srv:
        before = await srv.fetchval("SELECT count(*) FROM audit_log")
        done = cli(
            "plan", "set", "--scope", f"institution:{PHARMACY}", "--class", "settlement",
            "--action", "shadow", "--reason", "无配置测试", "--database-url", srv.dsn, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert "需要原系统地址，配置文件的[legacy] url未填写" in done.stderr
        token = await _login(srv, OPERATOR)
        rule = {
            "scope": f"institution:{PHARMACY}",
            "class": "settlement",
            "action": "shadow",
            "reason": "无配置测试",
        }
        async with srv.session.post(
            srv.url + "/api/plan/rules", json=rule, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            body = await r.json()
            assert r.status == 400 and "[legacy] url" in body["error"], body
        assert await srv.fetchval("SELECT count(*) FROM plan_rules") == 0
        assert await srv.fetchval("SELECT count(*) FROM audit_log") == before
