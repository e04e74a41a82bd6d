"""HTTP harness: the bare aiohttp + uvloop ceiling and the gateway, measured in one run.

    python benchmarks/http_harness.py [--duration 10] [--concurrency 64] [--database-url DSN]

Starts each server as its own process on this machine, drives it with benchmarks/loadgen.py
(another process), and prints a Markdown table with rates, p50/p99 and ratios to the ceiling.
The gateway runs over a fresh database on the given server (default: the local PostgreSQL),
with synthetic persons so settlements spread over many people.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Exited(RuntimeError):
    """The process waited for ended before it was ready (a port taken meanwhile, a bad config)."""


def wait_ready(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers 200; Exited as soon as `proc` (the server) has ended (found in CI: a
    gateway that could not start was waited for a whole minute and reported only as not ready)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Exited(f"{url}: the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def load(url: str, scenario: str, args: argparse.Namespace, rate: float = 0.0) -> dict[str, Any]:
    cmd = [
        PY,
        str(ROOT / "benchmarks" / "loadgen.py"),
        "--url",
        url,
        "--scenario",
        scenario,
        "--duration",
        str(args.duration),
        "--concurrency",
        str(args.concurrency if not rate else max(args.concurrency, 4 * args.concurrency)),
        "--persons",
        str(args.persons),
    ]
    if rate:
        cmd += ["--rate", f"{rate:.0f}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def gateway_cli(dsn: str, *argv: str) -> None:
    subprocess.run(
        [PY, "-m", "gateway", *argv, "--database-url", dsn],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def tree(pid: int) -> list[int]:
    """The process and its descendants (the gateway's workers)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def start_gateway(dsn: str, port: int, workers: int, config: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [PY, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
         "--workers", str(workers), "--config", str(ROOT / "config" / config), "--pool-max", "32"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc


class Profiler:
    """py-spy on the gateway while one scenario runs: collapsed stacks and a summary."""

    def __init__(self, out_dir: Path | None, pid: int) -> None:
        self.out_dir = out_dir
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, label: str, seconds: float) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.proc = subprocess.Popen(
            [
                str(Path(PY).parent / "py-spy"),
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(max(1, int(seconds) - 1)),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.out_dir / f"{label}.collapsed"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is None or self.out_dir is None:
            return
        self.proc.wait(timeout=60)
        self.proc = None
        collapsed = self.out_dir / f"{self.label}.collapsed"
        if collapsed.exists():
            (self.out_dir / f"{self.label}.txt").write_text(summarize(collapsed))


def summarize(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive shares of the sampled frames, the event loop's idle wait included."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        n = int(n_text)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"samples: {total}", "", "self:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n / total:6.1%}  {frame}")
    lines += ["", "inclusive:"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"{n / total:6.1%}  {frame}")
    return "\n".join(lines) + "\n"


def add_server_arg(p: argparse.ArgumentParser) -> None:
    """--database-url: the PostgreSQL server the scripts make their scratch database on."""
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "GATEWAY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )


def with_db(dsn: str, name: str) -> str:
    p = urlsplit(dsn)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def create_db(server: str, name: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_db(server: str, name: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def cpu_of(r: dict[str, Any]) -> str:
    parts = [r.get("gateway_cpu_us"), r.get("postgres_cpu_us"), r.get("loadgen_cpu_us")]
    return ", ".join("–" if v is None else f"{v:,.0f}" for v in parts)


LABELS = {
    "2101": "2101 pharmacy pre-settlement (no write)",
    "2102": "2102 pharmacy settlement, durable",
    "2206": "2206 outpatient pre-settlement (ledger unchanged; the pre-settlement is noted)",
    "visit": "outpatient visit 2201→2203→2204→2206→2207 (calls/s)",
    "reject": "degraded `reject` (2102 refused by the plan)",
    "defer": "degraded `defer` (2102 as a durable deferred claim)",
    "overload": "2102 at 2× the saturated rate, open loop",
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1)
    add_server_arg(p)
    p.add_argument("--scenarios", default="2101,2102,2206,visit,reject,defer,overload")
    p.add_argument("--profile", type=Path, help="py-spy the gateway per scenario into this folder")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--results", type=Path, help="rewrite the harness block of this RESULTS.md")
    args = p.parse_args()

    name = f"gwbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        bare_port = free_port()
        procs.append(
            subprocess.Popen(
                [PY, str(ROOT / "benchmarks" / "bare_server.py"), "--port", str(bare_port)]
            )
        )
        gw_port = free_port()
        gateway_cli(dsn, "demo", "load")
        gateway_cli(dsn, "demo", "synth", "--persons", str(args.persons))
        gateway = start_gateway(dsn, gw_port, args.workers, "bench.toml")
        procs.append(gateway)
        profiler = Profiler(args.profile, gateway.pid)
        gw_url = f"http://127.0.0.1:{gw_port}"
        bare_cpu = cpu_seconds([procs[0].pid])
        bare = load(f"http://127.0.0.1:{bare_port}", "2101", args)
        bare["gateway_cpu_us"] = (cpu_seconds([procs[0].pid]) - bare_cpu) / bare["requests"] * 1e6
        rows.append(("bare aiohttp + uvloop (fixed envelope)", bare))
        saturated = 0.0
        for scenario in args.scenarios.split(","):
            profiler.start(scenario, args.duration)
            gw_pids = tree(gateway.pid)
            cpu_before = (cpu_seconds(gw_pids), cpu_seconds(postgres_pids()))
            if scenario in ("reject", "defer"):
                gateway_cli(
                    dsn, "plan", "set", "--scope", "global", "--class", "settlement",
                    "--action", scenario, "--reason", "benchmark",
                )  # fmt: skip
                time.sleep(2.5)  # every process polls the plan within a second
                result = load(gw_url, "2102", args)
                gateway_cli(
                    dsn, "plan", "clear", "--scope", "global", "--class", "settlement",
                    "--reason", "benchmark over",
                )  # fmt: skip
                time.sleep(2.5)
            elif scenario == "overload":
                # A second gateway over the same ledger, with the in-flight bound of
                # config/bench-overload.toml, offered twice the rate the first one saturated at.
                port = free_port()
                shedding = start_gateway(dsn, port, args.workers, "bench-overload.toml")
                try:
                    result = load(
                        f"http://127.0.0.1:{port}", "2102", args, rate=2 * (saturated or 1000.0)
                    )
                finally:
                    shedding.terminate()
                    shedding.wait(timeout=30)
            else:
                result = load(gw_url, scenario, args)
                if scenario == "2102":
                    saturated = result["ok_rate"]
            profiler.stop()
            answers = max(result["requests"], 1)
            if scenario != "overload":  # that one ran on a gateway of its own
                result["gateway_cpu_us"] = (cpu_seconds(gw_pids) - cpu_before[0]) / answers * 1e6
            result["postgres_cpu_us"] = (
                (cpu_seconds(postgres_pids()) - cpu_before[1]) / answers * 1e6
            )
            rows.append((LABELS.get(scenario, scenario), result))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        asyncio.run(drop_db(args.database_url, name))

    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    report = render(rows, args)
    print(report)
    if args.results:
        write_results(args.results, report)


BEGIN, END = "<!-- http_harness:begin -->", "<!-- http_harness:end -->"


def render(rows: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    """The run as Markdown: command, machine, date, and the table with ratios to the ceiling."""
    ceiling = rows[0][1]["rate"] or 1.0
    lines = [
        f"Command: `python benchmarks/http_harness.py --duration {args.duration:g}"
        f" --concurrency {args.concurrency} --workers {args.workers} --scenarios {args.scenarios}`,"
        f" {time.strftime('%Y-%m-%d %H:%M')}.  ",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}; servers, load generator and PostgreSQL on the"
        " same cores.",
        "",
        "| scenario | answers/s | ok/s | p50 ms | p99 ms | ok p99 ms | busy | refused"
        " | ratio to ceiling | CPU µs/answer: gateway, PostgreSQL, load generator |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['rate']:,.0f} | {r['ok_rate']:,.0f} | {r['p50_ms']:.2f} |"
            f" {r['p99_ms']:.2f} | {r['ok_p99_ms']:.2f} | {r['busy']:,} | {r['refused']:,} |"
            f" {r['rate'] / ceiling:.2f} | {cpu_of(r)} |"
        )
        if r.get("visits_per_s"):
            per = ", ".join(
                f"{k} p50 {v['p50_ms']:.1f} / p99 {v['p99_ms']:.1f} ms"
                for k, v in r["per_infno"].items()
            )
            lines.append(f"|   ↳ {r['visits_per_s']:,.0f} visits/s; {per} | | | | | | | | | |")
    return "\n".join(lines)


def write_results(path: Path, report: str) -> None:
    """Replace the harness's block in RESULTS.md (between its markers) with this run."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} … {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{report}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
