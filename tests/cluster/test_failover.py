"""The loopback cluster (`make cluster`) under load: the Patroni primary and then a gateway node
killed with -9, and nothing acknowledged lost or doubled; then another region's ledger server
killed, and only that region deferred.

The ledger is split by region: 441800's in the Patroni cluster, 520500's and 330300's each in a
plain PostgreSQL server, reference data and the person directory in a main database of its own.
Each region's persons are in its cluster alone, and a 520500 worker treated at a 441800 hospital
is settled in 520500's cluster. Pharmacies of 520500 and 330300 sell throughout the Patroni
failover: none of their sales is deferred, and their p99 is reported.

Pharmacy tills send durable 2102s through HAProxy to both gateway nodes, each msgid retried
(same msgid, as a till does) until it is answered with infcode 0. The Redis master dies first:
Sentinel promotes the replica, both nodes' Redis (rate limits, nonces) follow it, and a plan
change is announced on the new master through Sentinel. Then the
Patroni primary dies (kill -9 of Patroni, PostgreSQL and its backends: a machine lost); Patroni promotes the
synchronous standby, HAProxy's read-write listener follows /primary, and the gateways, which
were answering "retry the same msgid" or deferring claims per the plan meanwhile, settle again
without a restart. Then the same msgid goes to both nodes at once, and one gateway node is
killed under load. On the new primary: every acknowledged settlement exists exactly once (a
deferred claim once as a claim and, after the drain and replay, once as a settlement), and every
account equals its opening balance minus the account payments the tills were told of.

The figures (acknowledged, deferred, retried, failover times) are printed and written to
test-artifacts/cluster-failover.json; docs/deployment.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis

from gateway.ledger import checker, db
from gateway.ops.keys import PLAN_CHANNEL
from scripts.cluster import loopback
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    cli,
    until,
)
from tests.integration.his_client import HisClient, decode
from tests.ops.test_dashboard import PATRONI_METRICS

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ROOT / "scripts" / "cluster" / "loopback.py"
ARTIFACTS = ROOT / "test-artifacts"


LACKING = loopback.missing_tools()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(
        bool(LACKING),
        reason=f"the loopback cluster needs {' '.join(LACKING)} (Debian packages;"
        " `make system-deps` installs them)",
    ),
    # Start (about a minute on the 2-core box), load, two kills, checks, stop.
    pytest.mark.timeout(360),
]

PHARMACY = "P44180000001"
# The breaker of the Patroni cluster's ledger (region 441800) on each node.
LEDGER_BREAKER = 'sgw_breaker_state{dependency="postgres:qingyuan"}'
PERSONS = 100  # synthetic employees, 1000.00 yuan each in the personal account
SALE = [{"feedetl_sn": "1", "medins_list_codg": "YP0007", "pric": "9.9", "cnt": "2",
         "det_item_fee_sumamt": "19.80"}]  # fmt: skip
SALE_TOTAL = "19.80"
TILLS = 8
LANES = 16  # sales kept in flight straight to the gateway node that is then killed
ANSWERED_BEFORE_KILL = 24  # of them answered before it is killed
# Tills fire far above a counter's pace; every other setting is the nodes' default.
NODE_SETTINGS = """
[rate_limit]
terminal_rate = 1000000.0
terminal_burst = 1000000
institution_rate = 1000000.0
institution_burst = 1000000
"""


def _fen(text: str) -> int:
    return int(Decimal(text) * 100)


@dataclass
class Sale:
    """One msgid until it is acknowledged: every try, and the answer that ended it."""

    msgid: str
    psn_no: str
    body: bytes
    tries: int = 0
    answer: dict[str, Any] | None = None
    raw: bytes = b""
    acked_at: float = 0.0


@dataclass
class Load:
    """Tills selling through HAProxy; a sale not answered infcode 0 is sent again, same msgid."""

    url: str
    session: aiohttp.ClientSession
    sales: list[Sale] = field(default_factory=list)
    interim: Counter[str] = field(default_factory=Counter)  # what answered a try that was retried
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def new_sale(self, pos: HisClient, n: int) -> Sale:
        psn_no = f"S441800{n % PERSONS + 1:012d}"
        drug = pos.drug_input(psn_no, time.strftime("%Y-%m-%d %H:%M:%S"), SALE_TOTAL, SALE)
        envelope = pos.envelope("2102", drug)
        sale = Sale(envelope["msgid"], psn_no, msgspec.json.encode(envelope))
        self.sales.append(sale)
        return sale

    async def till(self, n: int) -> None:
        pos = HisClient(self.session, self.url, PHARMACY)
        i = 0
        while not self.stop.is_set():
            i += 1
            await self.until_acknowledged(pos, self.new_sale(pos, n * 7919 + i))
            await asyncio.sleep(0.01)

    async def until_acknowledged(self, pos: HisClient, sale: Sale) -> None:
        # A sale once sent is seen through even after `stop`: a till does not walk away from a
        # msgid it may have been charged for.
        while True:
            sale.tries += 1
            try:
                status, raw = await pos.post_raw(sale.body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.interim[f"connection: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            if status != 200:
                self.interim[f"HTTP {status}"] += 1  # HAProxy: no node, or the node died
                await asyncio.sleep(0.2)
                continue
            answer = decode(raw)
            if answer["infcode"] == 0:
                sale.answer, sale.raw, sale.acked_at = answer, raw, time.monotonic()
                return
            self.interim[answer["err_msg"]] += 1
            await asyncio.sleep(0.2)

    def acknowledged(self) -> list[Sale]:
        return [s for s in self.sales if s.answer is not None]

    def settled_since(self, t: float) -> bool:
        return any(
            s.acked_at > t and not s.answer["output"]["setlinfo"]["setl_id"].startswith("DF")
            for s in self.acknowledged()
            if s.answer is not None
        )


@dataclass
class Breakers:
    """Each node's ledger breaker, sampled from its /metrics: when it was last seen not closed."""

    session: aiohttp.ClientSession
    nodes: dict[str, str]
    last_open: dict[str, float] = field(default_factory=dict)
    closed: dict[str, bool] = field(default_factory=dict)

    async def sample(self) -> None:
        while True:
            for node, url in self.nodes.items():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.session.get(url + "/metrics") as r:
                        text = await r.text()
                    state = _gauge(text, LEDGER_BREAKER)
                    self.closed[node] = state == 0.0
                    if state != 0.0:
                        self.last_open[node] = time.monotonic()
            await asyncio.sleep(0.25)

    async def all_closed(self) -> bool:
        return len(self.closed) == len(self.nodes) and all(self.closed.values())


# Pharmacies of the two regions whose ledgers are plain servers, each selling to a demo person of
# its region without the personal account (cash and fund only: the drill's account checks hold).
OTHER_REGIONS = {
    "520500": ("P52050000001", "520500000000000001"),
    "330300": ("P33030000001", "330300000000000001"),
}


def _other_sale(pos: HisClient, psn_no: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    return pos.drug_input(psn_no, now, DRUG_TOTAL, DRUG_LINES, acct_used_flag="0")


def _kind(answer: dict[str, Any]) -> str:
    if answer["infcode"] != 0:
        return str(answer["err_msg"])[:40]
    return "deferred" if answer["output"]["setlinfo"]["setl_id"].startswith("DF") else "ok"


@dataclass
class Elsewhere:
    """Tills of the other regions, timed by phase (before, failover, after the Patroni kill)."""

    url: str
    session: aiohttp.ClientSession
    phase: str = "before"
    seen: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def mark(self, phase: str) -> None:
        self.phase = phase

    async def till(self, region: str) -> None:
        pharmacy, person = OTHER_REGIONS[region]
        pos = HisClient(self.session, self.url, pharmacy, region)
        while not self.stop.is_set():
            phase, began = self.phase, time.perf_counter()
            try:
                kind = _kind(await pos.call("2102", _other_sale(pos, person)))
            except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
                kind = f"connection: {type(exc).__name__}"
            self.seen.setdefault(phase, []).append(((time.perf_counter() - began) * 1000, kind))
            await asyncio.sleep(0.05)

    def figures(self, phase: str) -> dict[str, Any]:
        seen = self.seen.get(phase, [])
        times = sorted(t for t, _ in seen)
        if not times:
            return {phase: {"answers": 0}}
        return {
            phase: {
                "answers": len(times),
                "p50_ms": round(times[len(times) // 2], 1),
                "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
                "outcomes": dict(Counter(k for _, k in seen)),
            }
        }


async def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _persons_in_their_clusters(cluster: Any) -> None:
    """Each region's persons in its cluster alone; the main database keeps the directory."""
    for name, entry in cluster.data["clusters"].items():
        held = await _rows(entry["dsn"], "SELECT DISTINCT insuplc_admdvs FROM persons")
        assert {r[0] for r in held} == set(entry["regions"]), name
    main = cluster.data["main_dsn"]
    assert await _rows(main, "SELECT psn_no FROM persons") == []
    directory = await _rows(main, "SELECT count(*) FROM person_directory")
    assert directory[0][0] == 11 + PERSONS  # the demo set's and the synthetic ones


async def _visit_away_from_home(
    cluster: Any, session: aiohttp.ClientSession, gateway: str
) -> dict[str, Any]:
    """A 毕节 (520500) worker treated at a 清远 (441800) hospital: committed in 毕节's cluster
    under its policy, nowhere else."""
    his = HisClient(session, gateway, "H44180000001")
    person, remote = "520500000000000001", {"insuplc_admdvs": "520500"}
    begntime = time.strftime("%Y-%m-%d %H:%M:%S")
    reg = await his.ok(
        "2201",
        {"data": {"psn_no": person, "insutype": "310", "begntime": begntime,
                  "mdtrt_cert_type": "01", "mdtrt_cert_no": person, "ipt_otp_no": "MZ-AWAY-1",
                  "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01", "dept_name": "内科",
                  "caty": "A03"}},
        **remote,
    )  # fmt: skip
    mdtrt_id = reg["data"]["mdtrt_id"]
    rows = his.fee_rows(mdtrt_id, person, OUTPATIENT_LINES, begntime, "B1")
    await his.ok("2204", {"feedetail": rows}, **remote)
    data = his.settle_data(person, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")
    setl = (await his.ok("2207", data, **remote))["setlinfo"]
    where = []
    for name, dsn in [("main", cluster.data["main_dsn"])] + [
        (n, e["dsn"]) for n, e in cluster.data["clusters"].items()
    ]:
        found = await _rows(
            dsn, "SELECT count(*) FROM settlements WHERE setl_id = $1", setl["setl_id"]
        )
        if found[0][0]:
            where.append(name)
    assert where == ["bijie"], where
    return {
        "setl_id": setl["setl_id"],
        "fund_pay_sumamt": str(setl["fund_pay_sumamt"]),
        "in": where,
    }


async def _one_cluster_down(
    cluster: Any, session: aiohttp.ClientSession, gateway: str, state: Path, main: str, config: str
) -> dict[str, Any]:
    """温州's ledger server killed: its sales are deferred, 清远's and 毕节's settle in real time;
    restarted, the claims drain into 温州's cluster and replay settles them there."""
    wenzhou_dsn = cluster.data["clusters"]["wenzhou"]["dsn"]
    pharmacy, person = OTHER_REGIONS["330300"]
    pos = HisClient(session, gateway, pharmacy, "330300")
    _run(["kill", "pg-wenzhou"], state)
    down_at = time.monotonic()
    claims: list[str] = []
    kinds: Counter[str] = Counter()

    async def deferring() -> bool:
        answer = await pos.call("2102", _other_sale(pos, person))
        kinds[_kind(answer)] += 1
        if _kind(answer) == "deferred":
            claims.append(answer["output"]["setlinfo"]["setl_id"])
        return len(claims) >= 3

    took = await until(deferring, within=60.0, seen=lambda: dict(kinds))
    for region, (shop, who) in (("441800", (PHARMACY, "441800000000000001")),
                                ("520500", OTHER_REGIONS["520500"])):  # fmt: skip
        till = HisClient(session, gateway, shop, region)
        answer = await till.call("2102", _other_sale(till, who))
        if _kind(answer) != "ok":
            # Why, for whoever reads a failure: the answer's words, the plan's rules as the main
            # database holds them (a rule an earlier step's failures triggered would defer it;
            # `plan show` cannot read them while a cluster it names is down) and the breakers of
            # the node that answered.
            rules = await _rows(
                main, "SELECT scope, class, action, operator, reason FROM plan_rules"
            )
            async with session.get(gateway + "/readyz") as r:
                ready = await r.text()
            raise AssertionError(
                (
                    region,
                    answer.get("warn_msg"),
                    answer.get("err_msg"),
                    [tuple(r) for r in rules],
                    ready,
                )
            )
    _run(["start", "pg-wenzhou"], state)

    async def drained() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            found = await _rows(
                wenzhou_dsn,
                "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[])",
                claims,
            )
            return bool(found[0][0] == len(claims))
        return False

    back = await until(drained, within=60.0)
    replay = json.loads(
        cli("deferred", "replay", "--json", "--database-url", main, "--config", config).stdout
    )
    assert replay["failed"] == []
    settled = await _rows(
        wenzhou_dsn,
        "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[]) AND status = 'settled'",
        claims,
    )
    assert settled[0][0] == len(claims)
    elsewhere = await _rows(main, "SELECT count(*) FROM deferred")
    assert elsewhere[0][0] == 0  # no claim of 温州's in the main database
    return {
        "deferring_after_seconds": round(took, 1),
        "claims": len(claims),
        "answers_while_down": dict(kinds),
        "drained_after_restart_seconds": round(back, 1),
        "down_seconds": round(time.monotonic() - down_at, 1),
    }


async def _patroni_metrics(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    """A Patroni member's GET /metrics: sample name -> value (one series each), and its scope.

    Read line by line, as Prometheus reads it: a client library's parser drops the samples of
    Patroni's counters, which carry no _total suffix."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        found[name] = float(value)
        scope = re.search(r'scope="([^"]*)"', labels)
        found.setdefault("scope", scope.group(1) if scope else None)
    return found


def _gauge(exposition: str, series: str) -> float | None:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextlib.contextmanager
def _cluster(tmp: Path) -> Iterator[Any]:
    state = tmp / "state.json"
    settings = tmp / "node-settings.toml"
    settings.write_text(NODE_SETTINGS, encoding="utf-8")
    script = [sys.executable, str(LOOPBACK), "--state", str(state)]
    try:
        done = subprocess.run(
            [*script, "up", "--node-settings", str(settings)],
            capture_output=True, text=True, timeout=240, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        cluster = loopback.Cluster.load(state)
        try:
            yield cluster
        except BaseException:
            # The logs of a failed drill outlive the cluster (down removes its directory).
            kept = ARTIFACTS / "cluster-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(cluster.base / "log", kept)
            raise
    finally:
        subprocess.run([*script, "down"], timeout=90, cwd=ROOT, check=False)


def _run(script_args: list[str], state: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(LOOPBACK), "--state", str(state), *script_args],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=True,
    )  # fmt: skip
    return done.stdout.strip()


async def test_primary_and_gateway_killed_under_load(tmp_path: Path) -> None:
    with _cluster(tmp_path) as cluster:
        await _drill(cluster, tmp_path / "state.json")


# Past the leader key's ttl (config/cluster/patroni.yml): without failsafe mode the primary
# demotes itself then.
ETCD_PAUSE_SECONDS = 15.0


async def _etcd_paused(cluster: Any, load: Load, breakers: Breakers, primary: str) -> None:
    """etcd stopped (SIGSTOP: a hung store, or one cut off) longer than the leader key lives,
    every member up: found from outside, Patroni demoted the primary and 441800's settlements
    were deferred for 22 s. In failsafe mode the primary keeps its role while the members answer
    it, and no node's breaker opens."""
    etcd = cluster.pid("etcd")
    assert etcd is not None
    opened_before = dict(breakers.last_open)
    os.kill(etcd, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        seen: list[str | None] = []
        while time.monotonic() - paused_at < ETCD_PAUSE_SECONDS:
            seen.append(await asyncio.to_thread(cluster.primary))
            await asyncio.sleep(1.0)
    finally:
        os.kill(etcd, signal.SIGCONT)
    assert set(seen) == {primary}, seen
    assert breakers.last_open == opened_before, (breakers.last_open, opened_before)
    real_time = [
        s
        for s in load.acknowledged()
        if s.acked_at > paused_at
        and s.answer is not None
        and not s.answer["output"]["setlinfo"]["setl_id"].startswith("DF")
    ]
    assert len(real_time) >= ETCD_PAUSE_SECONDS, len(real_time)  # a till's sale a second, at least


async def _drill(cluster: Any, state: Path) -> None:
    ports = cluster.ports
    dsn = cluster.data["dsn"]  # the Patroni cluster: region 441800's ledger
    main = cluster.data["main_dsn"]  # reference data, plan, person directory
    config = str(cluster.base / "gateway-node.toml")
    gateway = f"http://127.0.0.1:{ports['haproxy_gateway']}"
    cli("demo", "synth", "--persons", str(PERSONS), "--database-url", main, "--config", config)
    await _persons_in_their_clusters(cluster)
    conn = await asyncpg.connect(dsn)
    try:
        opening = {
            r["psn_no"]: r["balance_fen"]
            for r in await conn.fetch("SELECT psn_no, balance_fen FROM accounts")
        }
    finally:
        await conn.close()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Both nodes ready, Redis reached through Sentinel.
        for node in loopback.GATEWAYS:
            async with session.get(f"http://127.0.0.1:{ports[node]}/readyz") as r:
                ready = await r.json()
            assert r.status == 200 and ready["redis"] == "ok", ready

        remote = await _visit_away_from_home(cluster, session, gateway)
        nodes = {n: f"http://127.0.0.1:{ports[n]}" for n in loopback.GATEWAYS}
        breakers = Breakers(session, nodes)
        sampler = asyncio.create_task(breakers.sample())
        load = Load(gateway, session)
        tills = [asyncio.create_task(load.till(n)) for n in range(TILLS)]
        # Pharmacies of the two other regions sell throughout; their clusters are not touched.
        elsewhere = Elsewhere(gateway, session)
        other_tills = [asyncio.create_task(elsewhere.till(r)) for r in OTHER_REGIONS]
        await asyncio.sleep(2.0)

        # --- the Redis master dies: Sentinel promotes its replica, both nodes follow ----------
        replica = ports["redis_replica"]

        async def replica_known() -> bool:
            flags = (await asyncio.to_thread(cluster.sentinel_replicas)).get(replica, "")
            return flags == "slave"

        # Sentinel learns of the replica from the master's INFO every 10 s; killed before that,
        # the master is not failed over for twice the failover timeout.
        await until(replica_known, within=30.0, seen=cluster.sentinel_replicas)
        _run(["kill", "redis-master"], state)
        redis_killed_at = time.monotonic()

        followed: dict[str, object] = {}

        async def redis_followed() -> bool:
            followed["sentinel names master"] = master = await asyncio.to_thread(
                cluster.redis_master_port
            )
            if master != replica:
                return False
            for node, url in nodes.items():
                async with session.get(url + "/readyz") as r:
                    followed[node] = ready = await r.json()
                    if ready["redis"] != "ok":
                        return False
            return True

        await until(redis_followed, within=30.0, seen=lambda: (replica, followed))
        redis_failover = time.monotonic() - redis_killed_at
        await _plan_change_announced_through_sentinel(cluster, main, replica)
        before_kill = len(load.acknowledged())
        assert before_kill > 0

        # --- the Patroni primary dies -------------------------------------------------------
        old = _run(["primary"], state)
        before = await _patroni_metrics(session, ports[f"{old}_api"])
        assert before["patroni_primary"] == 1
        _run(["kill", old], state)
        killed_at = time.monotonic()
        elsewhere.mark("failover")

        async def promoted() -> bool:
            primary = await asyncio.to_thread(cluster.primary)
            return primary is not None and primary != old

        promotion = await until(promoted, within=60.0, seen=lambda: cluster.primary())
        new = _run(["primary"], state)
        # What the ledger-cluster alert rules read, from the members themselves: every name they
        # use is there once a member's PostgreSQL runs (a standby re-following the new primary
        # restarts it, and Patroni leaves out the WAL positions meanwhile), and the promotion
        # shows as SgwLedgerClusterFailedOver would see it.
        after: dict[str, dict[str, Any]] = {}

        async def members_report() -> bool:
            for m in loopback.MEMBERS:
                if m != old:
                    after[m] = await _patroni_metrics(session, ports[f"{m}_api"])
            # The new primary's own metrics catch up with its promotion a moment after the
            # cluster names it leader.
            promoted_itself = after.get(new, {}).get("patroni_primary") == 1
            return promoted_itself and all(
                seen.keys() >= PATRONI_METRICS for seen in after.values()
            )

        await until(members_report, within=60.0, seen=lambda: {m: (s.get("patroni_primary"), sorted(PATRONI_METRICS - s.keys())) for m, s in after.items()})  # fmt: skip
        assert after[new]["patroni_primary"] == 1
        assert after[new]["patroni_postgres_timeline"] > before["patroni_postgres_timeline"]
        assert {m["scope"] for m in after.values()} == {before["scope"]}
        # The gateways settle again by themselves: no restart, no operator.
        await until(lambda: _holds(load.settled_since(killed_at + promotion)), within=60.0, seen=lambda: dict(load.interim))  # fmt: skip
        settling_again = time.monotonic() - killed_at
        elsewhere.mark("after")
        # Each node has its own breaker, closing on its own schedule: until the last one closes,
        # a msgid deferred by one node can be settled by another (docs/deployment.md).
        await until(breakers.all_closed, within=60.0, seen=lambda: breakers.closed)
        deferring = {n: round(t - killed_at, 1) for n, t in breakers.last_open.items()}
        await asyncio.sleep(1.0)

        # --- one msgid, both nodes at once, on the new primary -------------------------------
        same = await _same_msgid_to_both_nodes(session, ports)
        elsewhere.stop.set()
        await asyncio.wait_for(asyncio.gather(*other_tills), timeout=60.0)
        during = elsewhere.figures("failover")["failover"]
        # The other regions' ledgers were never touched: nothing of theirs deferred.
        assert "deferred" not in during.get("outcomes", {}), during
        assert during.get("outcomes", {}).get("ok", 0) > 0, during

        # --- etcd stops answering, no member lost: the primary stays, settling goes on -------
        await _etcd_paused(cluster, load, breakers, new)

        # --- a gateway node dies under load --------------------------------------------------
        at_gateway_kill = len(load.acknowledged())
        retried_before = load.interim.copy()
        ready = cluster.haproxy_servers("gateway_ready")
        spread = {n: (r["status"], int(r["stot"])) for n, r in ready.items()}
        # Besides the tills' traffic, sales sent straight to gw1 by lanes that each send the next
        # as soon as the last is answered, so that requests are surely in its hands when it dies:
        # a burst sent once can be answered whole by one group commit before the kill lands. Each
        # one cut off is retried through HAProxy, same msgid.
        direct = HisClient(session, nodes["gw1"], PHARMACY)
        burst: list[tuple[Sale, asyncio.Future[tuple[int, bytes]]]] = []
        answered, killed = asyncio.Event(), asyncio.Event()

        async def lane() -> None:
            while not killed.is_set():
                sale = load.new_sale(direct, len(burst))
                sending = asyncio.ensure_future(direct.post_raw(sale.body))
                burst.append((sale, sending))
                with contextlib.suppress(Exception):
                    await sending
                if sum(s.done() for _, s in burst) >= ANSWERED_BEFORE_KILL:
                    answered.set()

        lanes = [asyncio.create_task(lane()) for _ in range(LANES)]
        await answered.wait()
        # The lanes answered last send their next before the kill: every lane has one in flight,
        # some committed (in the same group commit) and not yet answered, some not yet written.
        for _ in range(20):
            await asyncio.sleep(0)
        # The script's own kill, in-process: starting the script takes longer than the burst.
        assert cluster.kill("gw1")  # the pid killed
        killed.set()
        gw_killed_at, gw_killed_wall = time.monotonic(), dt.datetime.now(dt.UTC)
        await asyncio.gather(*lanes)
        results = await asyncio.gather(*(s for _, s in burst), return_exceptions=True)
        via_haproxy = HisClient(session, gateway, PHARMACY)
        cut_off: list[Sale] = []
        for (sale, _), result in zip(burst, results, strict=True):
            if isinstance(result, tuple) and result[0] == 200 and decode(result[1])["infcode"] == 0:
                sale.tries, sale.raw, sale.acked_at = 1, result[1], time.monotonic()
                sale.answer = decode(result[1])
            else:
                cut_off.append(sale)
                await load.until_acknowledged(via_haproxy, sale)
        assert cut_off  # the kill did catch requests in flight
        await until(lambda: _holds(load.settled_since(gw_killed_at + 2.0)), within=30.0, seen=lambda: dict(load.interim))  # fmt: skip
        await asyncio.sleep(3.0)
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*tills), timeout=60.0)
        after_gateway_kill = len(load.acknowledged()) - at_gateway_kill
        retried_at_gateway_kill = load.interim - retried_before
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(nodes["gw1"] + "/livez")
        # --- one region's cluster stops: only its region defers -----------------------------
        stopped = await _one_cluster_down(cluster, session, gateway, state, main, config)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    acked = load.acknowledged()
    assert len(acked) == len(load.sales)  # every sale sent was seen through
    deferred = [s for s in acked if s.answer and s.answer["output"]["setlinfo"]["setl_id"].startswith("DF")]  # fmt: skip
    internal = [m for m in load.interim if "内部错误" in m]
    assert internal == [], internal  # a failover is "unavailable, retry", never a bug

    await _check_ledger(dsn, main, config, acked, deferred, opening, same)
    # Of the burst cut off by the kill, those gw1 had begun writing before it died: committed,
    # never answered, and their retries through the other node got the stored answer.
    conn = await asyncpg.connect(dsn)
    try:
        committed_unanswered = await conn.fetchval(
            "SELECT count(*) FROM idempotency WHERE msgid = ANY($1::text[]) AND created_at < $2",
            [sale.msgid for sale in cut_off],
            gw_killed_wall,
        )
    finally:
        await conn.close()
    await _multi_host_reaches_the_new_primary(cluster.data["multi_host_dsn"], ports[f"{new}_pg"])

    figures = {
        "sales_acknowledged": len(acked),
        "acknowledged_before_primary_kill": before_kill,
        "deferred_claims": len(deferred),
        "retried_tries": sum(load.interim.values()),
        "retry_answers": dict(load.interim.most_common(8)),
        "lost": 0,
        "duplicated": 0,
        "old_primary": old,
        "new_primary": new,
        "redis_failover_seconds": round(redis_failover, 1),
        "promotion_seconds": round(promotion, 1),
        "settling_again_seconds": round(settling_again, 1),
        "breaker_last_open_seconds": deferring,
        "acknowledged_after_gateway_kill": after_gateway_kill,
        "cut_off_by_gateway_kill_then_acknowledged": len(cut_off),
        "of_them_committed_by_the_killed_node": committed_unanswered,
        "retry_answers_after_gateway_kill": dict(retried_at_gateway_kill),
        "haproxy_ready_nodes_at_gateway_kill": spread,
        "other_regions_during_failover": elsewhere.figures("failover"),
        "other_regions_otherwise": elsewhere.figures("before") | elsewhere.figures("after"),
        "visit_away_from_home": remote,
        "one_cluster_stopped": stopped,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster-failover.json").write_text(
        json.dumps(figures, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print("\nloopback cluster failover:", json.dumps(figures, ensure_ascii=False))


async def _plan_change_announced_through_sentinel(cluster: Any, dsn: str, master: int) -> None:
    """`plan set` with the nodes' gateway.toml publishes on the master Sentinel names now."""
    redis = Redis(port=master)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(PLAN_CHANNEL)
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        config = str(cluster.base / "gateway-node.toml")
        scope = "institution:H44180000001"  # the hospital: the tills' pharmacy is untouched
        cli("plan", "set", "--scope", scope, "--class", "catalog", "--action", "reject",
            "--reason", "演练", "--config", config, "--database-url", dsn)  # fmt: skip
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            if message is not None:
                break
        assert message is not None and message["channel"] == PLAN_CHANNEL.encode()
        cli("plan", "clear", "--scope", scope, "--class", "catalog", "--reason", "演练结束",
            "--config", config, "--database-url", dsn)  # fmt: skip
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def _holds(value: bool) -> bool:
    return value


async def _same_msgid_to_both_nodes(
    session: aiohttp.ClientSession, ports: dict[str, int]
) -> tuple[str, bytes]:
    """One envelope sent to gw1 and gw2 at once, each retried until infcode 0: the same bytes."""
    nodes = [
        HisClient(session, f"http://127.0.0.1:{ports[n]}", PHARMACY) for n in loopback.GATEWAYS
    ]
    drug = nodes[0].drug_input(
        "S441800000000000001", time.strftime("%Y-%m-%d %H:%M:%S"), SALE_TOTAL, SALE
    )
    envelope = nodes[0].envelope("2102", drug)
    body = msgspec.json.encode(envelope)

    async def settle(node: HisClient) -> bytes:
        for _ in range(100):
            status, raw = await node.post_raw(body)
            if status == 200 and decode(raw)["infcode"] == 0:
                return raw
            await asyncio.sleep(0.2)
        raise AssertionError(f"{node.base_url}: never acknowledged")

    first, second = await asyncio.gather(*(settle(n) for n in nodes))
    if first != second:
        states = {}
        for n in loopback.GATEWAYS:
            async with session.get(f"http://127.0.0.1:{ports[n]}/metrics") as r:
                states[n] = _gauge(await r.text(), LEDGER_BREAKER)
        raise AssertionError((states, first.decode()[:600], second.decode()[:600]))
    return envelope["msgid"], first


async def _check_ledger(
    dsn: str,
    main: str,
    config: str,
    acked: list[Sale],
    deferred: list[Sale],
    opening: dict[str, int],
    same: tuple[str, bytes],
) -> None:
    claims = [s.answer["output"]["setlinfo"]["setl_id"] for s in deferred if s.answer]
    conn = await asyncpg.connect(dsn)  # HAProxy's read-write listener: the new primary
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")

        async def drained() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM deferred WHERE claim_id = ANY($1::text[])", claims
            )
            return bool(n == len(claims))

        await until(drained, within=30.0)  # the journal drained into the new primary
        if claims:
            replay = json.loads(
                cli(
                    "deferred", "replay", "--json", "--database-url", main, "--config", config
                ).stdout
            )
            assert replay["failed"] == []
        rows = await conn.fetch(
            "SELECT medins_setl_id, setl_id FROM settlements WHERE fixmedins_code = $1", PHARMACY
        )
        by_msgid = Counter(r["medins_setl_id"] for r in rows)
        setl_of = {r["medins_setl_id"]: r["setl_id"] for r in rows}
        assert [m for m, n in by_msgid.items() if n > 1] == []  # none doubled
        for sale in acked:
            assert sale.answer is not None
            setl_id = sale.answer["output"]["setlinfo"]["setl_id"]
            if setl_id.startswith("DF"):
                claim = await conn.fetchrow(
                    "SELECT status, setl_id FROM deferred WHERE claim_id = $1", setl_id
                )
                assert claim is not None and claim["status"] == "settled", setl_id
                assert by_msgid[sale.msgid] == 1 and setl_of[sale.msgid] == claim["setl_id"]
            else:
                assert by_msgid[sale.msgid] == 1, sale.msgid  # exactly once
                assert setl_of[sale.msgid] == setl_id
        msgid, answer = same
        assert by_msgid[msgid] == 1
        stored = await conn.fetchval("SELECT answer FROM idempotency WHERE msgid = $1", msgid)
        assert bytes(stored) == answer

        # Every account: its opening balance minus the account payments the tills were told of.
        told: Counter[str] = Counter()
        for sale in acked:
            assert sale.answer is not None
            told[sale.psn_no] += _fen(sale.answer["output"]["setlinfo"]["acct_pay"])
        told["S441800000000000001"] += _fen(decode(answer)["output"]["setlinfo"]["acct_pay"])
        balances = {
            r["psn_no"]: r["balance_fen"]
            for r in await conn.fetch("SELECT psn_no, balance_fen FROM accounts")
        }
        wrong = {p: (opening[p], told[p], b) for p, b in balances.items() if b != opening[p] - told[p]}  # fmt: skip
        assert wrong == {}
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        reference = await asyncpg.connect(main)  # a cluster holds no reference data
        try:
            rules = await checker.core_rules(reference)
        finally:
            await reference.close()
        assert await checker.check(conn, opening, rules=rules) == []
    finally:
        await conn.close()


async def _multi_host_reaches_the_new_primary(multi_host_dsn: str, primary_port: int) -> None:
    """The other way to follow the primary: every member in one DSN, target_session_attrs."""
    pool = await db.create_pool(multi_host_dsn, min_size=1, max_size=1, timeout=5.0)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
            assert await conn.fetchval("SELECT inet_server_port()") == primary_port
    finally:
        await pool.close()
