"""The honest HTTP harness: load from wrk (C, Lua scripts in benchmarks/wrk/), not from Python.

    python benchmarks/wrk_harness.py [--duration 8] [--connections 64] [--threads 1]
        [--auth on|off] [--sweep 1,2,4,8,16,32] [--scenarios …] [--results benchmarks/RESULTS.md]

The Python generator (benchmarks/loadgen.py) spends 95–500 µs of CPU per answer on the same two
cores as the servers it measures, so its "ceiling" was its own. wrk's scripts build and sign a
request in ~4.4 µs of LuaJIT, wrk's whole cost is a few tens of µs per answer, and it is measured
and shown beside the servers'.

One run: the bare aiohttp + uvloop handler (benchmarks/bare_server.py), then every scenario on
one gateway over a fresh database (demo set + synthetic persons), each row with answers/s,
infcode-0 answers/s, p50/p99, CPU µs per answer of gateway, PostgreSQL and wrk (/proc and the
child's rusage), and ratios to the bare ceiling of the same run. Then a latency-vs-load sweep by
connection count: wrk is closed loop (Debian has no wrk2), so the sweep reports rate and p99 per
connection count, and the highest rate seen with p99 ≤ 25 ms.

Every scenario is scripted for wrk: the outpatient visit chain runs one connection per wrk
thread, since wrk's response() does not say which connection answered; overload is paced to
an open-loop rate with wrk's delay() (benchmarks/wrk/common.lua).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from http_harness import (
    Exited,
    Profiler,
    add_server_arg,
    cpu_seconds,
    create_db,
    drop_db,
    free_port,
    gateway_cli,
    tree,
    wait_ready,
    with_db,
)
from pg_statements import StatementProfile

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "benchmarks" / "wrk"
PY = sys.executable
P99_BUDGET_MS = 25.0
OVERLOAD_CONNECTIONS = 512  # open loop: far more than rate x latency, so pacing holds

LABELS = {
    "bare": "bare aiohttp + uvloop (fixed envelope; 2101 requests)",
    "2101": "2101 pharmacy pre-settlement (no write)",
    "2102": "2102 pharmacy settlement, durable",
    "2206": "2206 outpatient pre-settlement (ledger unchanged; the pre-settlement is noted)",
    "visit": "outpatient visit 2201→2203→2204→2206→2207 (calls/s)",
    "reject": "degraded `reject` (2102 refused by the plan)",
    "defer": "degraded `defer` (2102 as a durable deferred claim)",
    "overload": "2102 at 2× the saturated rate, open loop (paced wrk)",
}


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `make system-deps` (Debian package wrk)")
    return found


@dataclass
class Load:
    """One wrk invocation: which script, how many connections, the script's options."""

    script: str
    connections: int
    threads: int
    options: dict[str, str] = field(default_factory=dict)

    def command(self, url: str, seconds: float) -> list[str]:
        opts = [f"{k}={v}" for k, v in self.options.items()]
        return [
            wrk_binary(), f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds:g}s",
            "--timeout", "10s", "-s", str(SCRIPTS / self.script), url, "--", *opts,
        ]  # fmt: skip


def run_wrk(load: Load, url: str, seconds: float) -> dict[str, Any]:
    """Runs wrk to the end; its JSON line, plus wrk's own CPU µs per answer.

    wrk's CPU is this process's children's rusage across the run: nothing else is reaped
    meanwhile (the servers are reaped at the very end).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The first refusal's sample is cut at a byte count, perhaps inside a character.
    done = subprocess.run(
        load.command(url, seconds), capture_output=True, text=True, errors="replace"
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["wrk_cpu_us"] = cpu / max(result["answers"], 1) * 1e6
    result["command"] = " ".join(load.command("URL", seconds)[1:]).replace(str(ROOT) + "/", "")
    return result


def scrape(url: str) -> str:
    """The gateway's /metrics page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def answered_outcomes(url: str) -> dict[str, float]:
    """The gateway's answers so far by outcome (`sgw_requests_total`, every infno)."""
    text = scrape(url)
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sgw_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = found.get(outcome, 0.0) + float(value)
    return found


def latency_buckets(url: str, infno: str) -> dict[float, float]:
    """The gateway's own histogram of answer times for one transaction, cumulative by bucket
    (`sgw_request_duration_seconds`): shed requests are answered before their infno is read
    and are not in it, so under overload it holds the accepted requests."""
    text = scrape(url)
    found: dict[float, float] = {}
    prefix = "sgw_request_duration_seconds_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix) and f'infno="{infno}"' in line:
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            found[math.inf if le == "+Inf" else float(le)] = float(value)
    return found


def quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of the answers between two scrapes, interpolated within its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    want, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= want:
            if math.isinf(bound):
                return lower * 1000
            share = (want - below) / max(count - below, 1e-9)
            return (lower + share * (bound - lower)) * 1000
        lower, below = bound, count
    return lower * 1000


def within_share(before: dict[float, float], after: dict[float, float], bound: float) -> float:
    """The share of the answers between two scrapes that took at most `bound` seconds."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    return (after.get(bound, 0.0) - before.get(bound, 0.0)) / total if total > 0 else 0.0


def wait_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on the port (the bare server has no GET page)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Server:
    """A server the harness started: its process (the parent of any workers) and its URL."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_gateway(
    dsn: str, port: int, args: argparse.Namespace, config: str, workers: int | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [PY, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
         "--workers", str(workers or args.workers), "--config", str(ROOT / "config" / config),
         "--pool-max", "32", "--auth", args.auth],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc=proc)
    except RuntimeError:  # Exited too: stopping an ended process costs nothing
        stop(proc)
        raise
    return proc


def start_gateway_on_a_free_port(
    dsn: str, args: argparse.Namespace, config: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A gateway on a port free when chosen; chosen again if another process took it before the
    gateway bound it (found in CI, on a box shared with other gateways)."""
    for attempt in range(3):
        port = free_port()
        try:
            return start_gateway(dsn, port, args, config), port
        except Exited:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[bytes], grace: float = 40) -> float:
    """SIGTERM, then SIGKILL after the grace; the seconds it took (inf: killed)."""
    started = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        for pid in reversed(tree(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        return math.inf
    return time.monotonic() - started


def set_plan(dsn: str, action: str | None) -> None:
    """The emergency plan for every settlement (None: cleared); every worker polls it each second."""
    if action is None:
        gateway_cli(dsn, "plan", "clear", "--scope", "global", "--class", "settlement",
                    "--reason", "benchmark over")  # fmt: skip
    else:
        gateway_cli(dsn, "plan", "set", "--scope", "global", "--class", "settlement",
                    "--action", action, "--reason", "benchmark")  # fmt: skip
    time.sleep(2.5)


class Harness:
    def __init__(self, args: argparse.Namespace, database: str, work: Path) -> None:
        self.args = args
        self.database = database
        self.work = work
        self.common = {"persons": str(args.persons), "auth": args.auth, "run": run_token()}
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.sweeps: dict[str, list[dict[str, Any]]] = {}
        self.opened = 0  # visits opened for 2206

    def load(self, scenario: str, connections: int) -> Load:
        a = self.args
        if scenario in ("bare", "2101"):
            return Load("pharmacy.lua", connections, a.threads, {**self.common, "infno": "2101"})
        if scenario in ("2102", "reject", "defer"):
            return Load("pharmacy.lua", connections, a.threads, {**self.common, "infno": "2102"})
        if scenario == "2206":
            visits = str(self.work / "visits.txt")
            return Load("presettle.lua", connections, a.threads, {**self.common, "visits": visits})
        if scenario == "visit":  # one connection per thread: the chain follows its answers
            return Load("visit.lua", connections, connections, dict(self.common))
        raise SystemExit(f"unknown scenario {scenario}")

    def measure(
        self, url: str, load: Load, seconds: float, server_pids: list[int], postgres: bool = True
    ) -> dict[str, Any]:
        """One run with CPU µs per answer of the servers given and of PostgreSQL."""
        pg = asyncio.run(postgres_backends(self.args.database_url, self.database))
        outcomes = answered_outcomes(url) if postgres else {}
        before = (cpu_seconds(server_pids), per_process(pg))
        result = run_wrk(load, url, seconds)
        answers = max(result["answers"], 1)
        if postgres:
            # What the gateway says it did: a settlement deferred by the plan (a breaker that
            # opened mid-run) answers infcode 0 too, and is not a settlement.
            after = answered_outcomes(url)
            grown_by = {k: after.get(k, 0) - outcomes.get(k, 0) for k in after}
            result["deferred"] = int(grown_by.get("deferred", 0))
        result["gateway_cpu_us"] = (cpu_seconds(server_pids) - before[0]) / answers * 1e6
        result["postgres_cpu_us"] = None
        result["load1"] = os.getloadavg()[0]
        if postgres:
            pg = asyncio.run(postgres_backends(self.args.database_url, self.database))
            result["postgres_cpu_us"] = grown(before[1], per_process(pg)) / answers * 1e6
        return result

    def sweep(self, key: str, url: str, main: dict[str, Any], scenario: str | None = None) -> None:
        points = [{"connections": self.args.connections, **main}]
        for c in self.args.sweep:
            if c != self.args.connections:
                r = run_wrk(self.load(scenario or key, c), url, self.args.sweep_duration)
                points.append({"connections": c, **r})
        self.sweeps[key] = sorted(points, key=lambda p: int(p["connections"]))

    def open_visits(self, url: str) -> None:
        """2206's visits: 2201 → 2203 → 2204 per visit, by wrk too; not measured."""
        threads = 16
        per_thread = -(-4 * max([self.args.connections, *self.args.sweep]) // threads)
        out = self.work / "visits.txt"
        opts = {**self.common, "stop_after": "2204", "visits": str(per_thread), "out": str(out)}
        r = run_wrk(Load("visit.lua", threads, threads, opts), url, self.args.open_seconds)
        opened = len(out.read_text().splitlines()) if out.exists() else 0
        self.opened = opened
        if opened < self.args.connections:
            raise SystemExit(f"only {opened} visits opened for 2206: {r['first_refusal']}")

    def scenario(
        self,
        scenario: str,
        dsn: str,
        gateway: Server,
        bare: Server,
        statements: StatementProfile,
        workers: int | None = None,
    ) -> dict[str, Any]:
        """One scenario's row (and sweep) on this gateway, the bare handler measured just
        before it when --bare-each asks; rows of --also-workers are named scenario@N."""
        a = self.args
        key = scenario if workers is None else f"{scenario}@{workers}"
        gw_url, bare_url = gateway.url, bare.url
        if scenario == "2206":
            self.open_visits(gw_url)
        if scenario in ("reject", "defer"):
            set_plan(dsn, scenario)
        try:
            adjacent = None
            if a.bare_each:
                bare_load = self.load("bare", a.connections)
                adjacent = self.measure(
                    bare_url, bare_load, a.bare_each, tree(bare.proc.pid), postgres=False
                )
                adjacent["processes"] = workers or 1
            load = self.load(scenario, a.connections)
            profiler = Profiler(a.profile, gateway.proc.pid)
            profiler.start(key.replace("@", "-w"), a.duration)
            statements.start(key.replace("@", "-w"))
            result = self.measure(gw_url, load, a.duration, tree(gateway.proc.pid))
            statements.stop(int(result["answers"]))
            profiler.stop()
            if adjacent is not None:
                result["bare"] = adjacent
            self.rows.append((key, result))
            if a.sweep:
                self.sweep(key, gw_url, result, scenario)
        finally:
            if scenario in ("reject", "defer"):
                set_plan(dsn, None)
        return result


async def postgres_backends(server: str, database: str) -> list[int]:
    """PostgreSQL's processes that work for this run: the backends connected to its database and
    the shared writers (WAL writer, checkpointer, background writer). Other people's backends on
    the same server are left out; the shared writers also write for them."""
    conn = await asyncpg.connect(server)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type IN"
            " ('walwriter', 'checkpointer', 'background writer')",
            database,
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def per_process(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def grown(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two samples: a process born in between counts whole, one that ended
    in between is lost (the gateway's pool keeps its connections, so few are)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def run_token() -> str:
    return "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))


def start_bare(port: int, workers: int) -> subprocess.Popen[bytes]:
    """The bare handler in `workers` processes on one port, listening."""
    proc = subprocess.Popen(
        [PY, str(ROOT / "benchmarks" / "bare_server.py"), "--port", str(port),
         "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    deadline = time.monotonic() + 30
    while len(tree(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def run(args: argparse.Namespace) -> Harness:
    name = f"gwwrk_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="wrk-harness-"))
    h = Harness(args, name, work)
    try:
        gateway_cli(dsn, "demo", "load")
        gateway_cli(dsn, "demo", "synth", "--persons", str(args.persons))
        bare_port, gw_port = free_port(), free_port()
        bare = Server(start_bare(bare_port, 1), bare_port)
        gateway = Server(start_gateway(dsn, gw_port, args, "bench.toml"), gw_port)
        procs += [bare.proc, gateway.proc]
        bare_url = bare.url
        statements = StatementProfile(args.profile, args.database_url, name)

        bare_load = h.load("bare", args.connections)
        ceiling = h.measure(bare_url, bare_load, args.duration, tree(bare.proc.pid), postgres=False)
        h.rows.append(("bare", ceiling))
        if args.sweep:
            h.sweep("bare", bare_url, ceiling)
        saturated = 0.0
        for scenario in args.scenarios:
            if scenario == "overload":
                h.rows.append(("overload", overload(h, dsn, saturated)))
                continue
            result = h.scenario(scenario, dsn, gateway, bare, statements)
            if scenario == "2102":
                saturated = done_rate(scenario, result)
        for workers in args.also_workers:
            # The same scenarios on a gateway of `workers` processes, each row set against the
            # bare handler in as many processes: like for like on the same cores.
            for server in (gateway, bare):
                stop(server.proc)
                procs.remove(server.proc)
            bare = Server(start_bare(bare_port, workers), bare_port)
            gateway = Server(start_gateway(dsn, gw_port, args, "bench.toml", workers), gw_port)
            procs += [bare.proc, gateway.proc]
            for scenario in args.also_scenarios:
                h.scenario(scenario, dsn, gateway, bare, statements, workers)
    finally:
        for proc in procs:
            stop(proc)
        asyncio.run(drop_db(args.database_url, name))
        shutil.rmtree(work, ignore_errors=True)
    return h


def overload(h: Harness, dsn: str, saturated: float) -> dict[str, Any]:
    """A second gateway over the same ledger with the in-flight bound of
    config/bench-overload.toml, offered twice the rate the first one settled at."""
    args = h.args
    shedding, port = start_gateway_on_a_free_port(dsn, args, "bench-overload.toml")
    try:
        rate = 2 * (args.overload_rate or saturated or 1000.0)
        threads = max(args.threads, 1)
        load = Load(
            "pharmacy.lua", OVERLOAD_CONNECTIONS, threads,
            {**h.common, "infno": "2102", "rate": f"{rate:.0f}", "threads": str(threads)},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        before = latency_buckets(url, "2102")
        result = h.measure(url, load, args.duration, tree(shedding.pid))
        after = latency_buckets(url, "2102")
        result["offered_rate"] = rate
        # wrk's latencies are of every answer, the fast busy ones too; P6 is about the
        # accepted requests, which only the gateway's own histogram tells apart.
        result["accepted"] = {
            "p50_ms": quantile_ms(before, after, 0.5),
            "p99_ms": quantile_ms(before, after, 0.99),
            "within_50ms": within_share(before, after, 0.05),
            "within_25ms": within_share(before, after, 0.025),
        }
    finally:
        stopped = stop(shedding)
    result["stop_seconds"] = stopped
    return result


# Report --------------------------------------------------------------------------------------


def done_rate(scenario: str, r: dict[str, Any]) -> float:
    """infcode-0 answers a second that did what the scenario asks: a deferred claim answers
    infcode 0 too, and counts only in the `defer` row (elsewhere a breaker opened mid-run)."""
    if scenario == "defer" or not r.get("deferred"):
        return float(r["ok_rate"])
    return float(r["ok_rate"]) * max(r["ok"] - r["deferred"], 0) / max(r["ok"], 1)


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def render(h: Harness, started: str, load_before: tuple[float, ...]) -> str:
    a = h.args
    rows = dict(h.rows)
    ceiling = rows["bare"]
    bare_rate = ceiling["rate"] or 1.0
    bare_cpu = ceiling["gateway_cpu_us"] or 1.0
    load_after = os.getloadavg()
    sweep = ",".join(map(str, a.sweep)) or "''"
    during = [r.get("load1", 0.0) for _, r in h.rows]
    also = (
        f" --also-workers {','.join(map(str, a.also_workers))}"
        f" --also-scenarios {','.join(a.also_scenarios)}"
        if a.also_workers
        else ""
    )
    signing = ceiling.get("sha256", "?") if a.auth == "on" else "none (--auth off)"
    lines = [
        f"Command: `python benchmarks/wrk_harness.py --duration {a.duration:g}"
        f" --connections {a.connections} --threads {a.threads} --workers {a.workers}"
        f" --auth {a.auth} --persons {a.persons} --sweep {sweep}"
        f" --sweep-duration {a.sweep_duration:g} --bare-each {a.bare_each:g}"
        f" --scenarios {','.join(a.scenarios)}{also}`, {started}.  ",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}, {wrk_version()}, signing in wrk: {signing};"
        " servers, wrk and PostgreSQL on the same cores, shared with"
        f" other work: load average {load_before[0]:.2f} before the run,"
        f" {min(during):.2f}–{max(during):.2f} at the ends of the rows, {load_after[0]:.2f} after.",
        "",
        "| scenario | answers/s | ok/s (infcode 0, not deferred) | p50 ms | p99 ms | busy"
        " | refused | deferred | answers ÷ ceiling | ok ÷ ceiling"
        " | CPU µs/answer: gateway, PostgreSQL, wrk | (gateway + PostgreSQL) ÷ bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in h.rows:
        scenario, _, workers = key.partition("@")
        label = LABELS.get(scenario, scenario)
        if workers:
            label = f"{workers} workers: {label}"
        # The row's own ceiling when the bare handler was measured just before it (--bare-each).
        bare_rate = (r.get("bare") or ceiling)["rate"] or 1.0
        bare_cpu = (r.get("bare") or ceiling)["gateway_cpu_us"] or 1.0
        if r.get("bare"):
            processes = r["bare"].get("processes", 1)
            within = f" in {processes} processes" if processes > 1 else ""
            label += f" (bare{within} just before: {bare_rate:,.0f}/s, {bare_cpu:,.0f} µs)"
        if scenario == "overload":
            label += f", offered {r['offered_rate']:,.0f}/s"
        if scenario == "2206":
            label += f", over {h.opened} visits"
        cpu = (r["gateway_cpu_us"] or 0) + (r["postgres_cpu_us"] or 0)
        done = done_rate(scenario, r)
        deferred = f"{r['deferred']:,}" if "deferred" in r else "–"
        lines.append(
            f"| {label} | {r['rate']:,.0f} | {done:,.0f} | {r['p50_ms']:.2f} |"
            f" {r['p99_ms']:.2f} | {r['busy']:,} | {r['refused']:,} | {deferred} |"
            f" {r['rate'] / bare_rate:.2f} | {done / bare_rate:.3f} | {fmt(r['gateway_cpu_us'])},"
            f" {fmt(r['postgres_cpu_us'])}, {fmt(r.get('wrk_cpu_us'))} | {cpu / bare_cpu:.1f} |"
        )
        if r.get("visits"):
            lines.append(f"|   ↳ {r['visits_per_s']:,.0f} visits/s | | | | | | | | | | | |")
        if r.get("accepted"):
            a_ = r["accepted"]
            lines.append(
                f"|   ↳ accepted 2102s by the gateway's own histogram (handler to answer):"
                f" p50 {fmt(a_['p50_ms'], '.1f')} ms, p99 {fmt(a_['p99_ms'], '.1f')} ms,"
                f" {a_['within_25ms']:.1%} within 25 ms, {a_['within_50ms']:.1%} within 50 ms"
                " | | | | | | | | | | | |"
            )
    problems = [
        f"{s}: {r['first_refusal'][:160]}"
        for s, r in h.rows
        if r["first_refusal"] and s not in ("reject", "overload")
    ]
    errors = [f"{s}: {r['errors']}" for s, r in h.rows if any(r["errors"].values())]
    slow = [(s, r["stop_seconds"]) for s, r in h.rows if r.get("stop_seconds", 0) > 12]
    for s, seconds in slow:
        took = (
            "did not stop within 40 s; killed" if math.isinf(seconds) else f"took {seconds:.0f} s"
        )
        lines += ["", f"The {s} row's gateway {took} after SIGTERM (its graceful stop is 10 s)."]
    if problems or errors:
        lines += ["", "Unexpected answers or socket errors: " + "; ".join(problems + errors)]
    if h.sweeps:
        counts = sorted({int(p["connections"]) for ps in h.sweeps.values() for p in ps})
        lines += [
            "",
            f"Latency against load (closed loop by connection count, {a.sweep_duration:g} s a"
            f" point; {a.connections} connections is the row above): answers/s and p99 ms.",
            "",
            "| scenario | " + " | ".join(f"{c} conn." for c in counts)
            + f" | highest rate with p99 ≤ {P99_BUDGET_MS:g} ms |",
            "|---|" + "---|" * (len(counts) + 1),
        ]  # fmt: skip
        for scenario, points in h.sweeps.items():
            by_c = {int(p["connections"]): p for p in points}
            cells = [
                f"{by_c[c]['rate']:,.0f} / {by_c[c]['p99_ms']:.1f}" if c in by_c else "–"
                for c in counts
            ]
            within = [p for p in points if p["p99_ms"] <= P99_BUDGET_MS]
            best = max(within, key=lambda p: p["rate"], default=None)
            best_text = (
                f"{best['rate']:,.0f}/s at {best['connections']} conn. (p99 {best['p99_ms']:.1f})"
                if best
                else "none"
            )
            lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {best_text} |")
    return "\n".join(lines)


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "wrk"
    return first.split(" [")[0].split(" Copyright")[0]


BEGIN, END = "<!-- wrk_harness:begin -->", "<!-- wrk_harness:end -->"


def write_results(path: Path, report: str) -> None:
    """Replace the harness's block in RESULTS.md (between its markers) with this run."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} … {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{report}\n{END}{tail}", encoding="utf-8")


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (not for the visit chain)")
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--also-workers",
        type=counts,
        default=[],
        help="after the scenarios, --also-scenarios again on a gateway of each of these worker"
        " counts, against the bare handler in as many processes",
    )
    p.add_argument(
        "--also-scenarios", type=lambda s: s.split(","), default=["2101", "2102", "2206", "visit"]
    )
    p.add_argument("--auth", choices=("on", "off"), default="on", help="signed requests")
    p.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=["2101", "2102", "2206", "visit", "reject", "defer", "overload"],
    )
    p.add_argument("--sweep", type=counts, default=[1, 2, 4, 8, 16, 32], help="'' for none")
    p.add_argument("--sweep-duration", type=float, default=3)
    p.add_argument(
        "--bare-each",
        type=float,
        default=0,
        help="seconds of the bare handler measured just before each scenario, its row's ceiling"
        " (a shared box's speed drifts within a run)",
    )
    p.add_argument("--open-seconds", type=float, default=4, help="time to open 2206's visits")
    p.add_argument("--overload-rate", type=float, help="instead of the 2102 row's ok/s")
    add_server_arg(p)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the gateway per scenario into this folder (and PostgreSQL's statements,"
        " where the server loads pg_stat_statements: benchmarks/pg_statements.py)",
    )
    p.add_argument("--results", type=Path, help="rewrite the wrk_harness block of this RESULTS.md")
    args = p.parse_args()
    wrk_binary()
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    h = run(args)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": h.rows, "sweeps": h.sweeps}, ensure_ascii=False, indent=2)
        )
    report = render(h, started, load_before)
    print(report)
    if args.results:
        write_results(args.results, report)


if __name__ == "__main__":
    main()
