"""Durable 2102 through HAProxy with two gateway nodes and with one, in the same run.

    python benchmarks/cluster_nodes.py [--duration 10] [--connections 64] [--persons 20000]
                                       [--results benchmarks/RESULTS.md]

The loopback cluster (`make cluster`, scripts/cluster/loopback.py: Patroni with strict
synchronous replication for region 441800, plain servers for two more regions, a main database,
HAProxy, Redis with Sentinel) with its two gateway nodes. wrk (benchmarks/wrk/pharmacy.lua,
signed requests, synthetic persons of 441800) sends durable 2102s to HAProxy's gateway listener.
Phases in ABBA order: two nodes, one node (gw2 killed, HAProxy has marked it down), one node,
two nodes (gw2 started again, HAProxy has marked it up); each measured after a 2 s warm-up.
CPU µs per answer of the gateway nodes and of the PostgreSQL servers (every process of the
cluster's servers: the Patroni primary, its synchronous standby and the rest) from /proc.

Everything (gateways, three Patroni members, four plain servers, etcd, HAProxy, Redis, wrk)
shares the machine's cores: on the 2-core box two nodes are not expected to double anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from http_harness import cpu_seconds, tree  # noqa: E402
from wrk_harness import Load, run_wrk  # noqa: E402

from scripts.cluster import loopback  # noqa: E402

PY = sys.executable
LOOPBACK = ROOT / "scripts" / "cluster" / "loopback.py"
NODE_SETTINGS = """
[rate_limit]
terminal_rate = 1000000.0
terminal_burst = 1000000
institution_rate = 1000000.0
institution_burst = 1000000
"""
BEGIN, END = "<!-- cluster_nodes:begin -->", "<!-- cluster_nodes:end -->"


def _servers(cluster: Any) -> list[int]:
    """Every PostgreSQL process of the cluster (postmasters and their backends)."""
    pids: list[int] = []
    for member in loopback.MEMBERS:
        master = cluster.postmaster(member)
        if master is not None:
            pids += tree(master)
    for server in loopback.PLAIN:
        pid = cluster.pid(server)
        if pid is not None:
            pids += tree(pid)
    return pids


def _nodes(cluster: Any) -> list[int]:
    return [p for n in loopback.GATEWAYS if (p := cluster.pid(n)) is not None]


def _wait_haproxy(cluster: Any, node: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.haproxy_states("gateway_ready").get(node) == status:
            return
        time.sleep(0.2)
    raise RuntimeError(f"HAProxy never marked {node} {status}")


def measure(cluster: Any, url: str, load: Load, seconds: float) -> dict[str, Any]:
    run_wrk(load, url, 2.0)  # warm-up: connections open, pools full
    nodes, servers = _nodes(cluster), _servers(cluster)
    gw0, pg0 = cpu_seconds(nodes), cpu_seconds(servers)
    result = run_wrk(load, url, seconds)
    gw1, pg1 = cpu_seconds(nodes), cpu_seconds(_servers(cluster))
    answers = max(result["answers"], 1)
    result["gateway_cpu_us"] = (gw1 - gw0) / answers * 1e6
    result["postgres_cpu_us"] = max(0.0, pg1 - pg0) / answers * 1e6
    result["nodes"] = len(nodes)
    return result


def run(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    work = Path(tempfile.mkdtemp(prefix="sgw-bench-cluster-"))
    state = work / "state.json"
    settings = work / "node-settings.toml"
    settings.write_text(NODE_SETTINGS, encoding="utf-8")
    script = [PY, str(LOOPBACK), "--state", str(state)]
    subprocess.run([*script, "up", "--node-settings", str(settings)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        cluster = loopback.Cluster.load(state)
        config = str(cluster.base / "gateway-node.toml")
        subprocess.run(
            [PY, "-m", "gateway", "demo", "synth", "--persons", str(args.persons),
             "--database-url", cluster.data["main_dsn"], "--config", config],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{cluster.ports['haproxy_gateway']}"
        load = Load(
            "pharmacy.lua", args.connections, 1, {"infno": "2102", "persons": str(args.persons)}
        )
        phases: list[tuple[str, dict[str, Any]]] = []
        for label in ("two nodes", "one node", "one node", "two nodes"):
            want_two = label == "two nodes"
            running = cluster.pid("gw2") is not None
            if want_two and not running:
                cluster.start_gateway("gw2")
                _wait_haproxy(cluster, "gw2", "UP")
            elif not want_two and running:
                cluster.kill("gw2")
                _wait_haproxy(cluster, "gw2", "DOWN")
            phases.append((label, measure(cluster, url, load, args.duration)))
            print(label, json.dumps(phases[-1][1]), flush=True)
        return phases
    finally:
        subprocess.run([*script, "down"], cwd=ROOT, check=False)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def render(phases: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    rows = [
        "| phase | nodes | answers/s | ok/s | p50 ms | p99 ms | CPU µs/answer: gateways, PostgreSQL |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in phases:
        rows.append(
            f"| {label} | {r['nodes']} | {r['rate']:,.0f} | {r['ok_rate']:,.0f} | {r['p50_ms']:.1f}"
            f" | {r['p99_ms']:.1f} | {r['gateway_cpu_us']:,.0f}, {r['postgres_cpu_us']:,.0f} |"
        )
    two = _median([r["ok_rate"] for label, r in phases if label == "two nodes"])
    one = _median([r["ok_rate"] for label, r in phases if label == "one node"])
    load = os.getloadavg()
    return "\n".join(
        [
            BEGIN,
            f"Command: `python benchmarks/cluster_nodes.py --duration {args.duration:g}"
            f" --connections {args.connections} --persons {args.persons}`,"
            f" {dt.datetime.now():%Y-%m-%d %H:%M}.  ",
            f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python"
            f" {platform.python_version()}; every server of the loopback, both nodes and wrk on"
            f" those cores (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after the run).",
            "",
            *rows,
            "",
            f"Two nodes over one (medians of the ok/s): **{two / max(one, 1):.2f}×**"
            f" ({two:,.0f} vs {one:,.0f} durable 2102/s).",
            END,
        ]
    )


def write_results(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (
            text.rstrip("\n")
            + "\n\n## Two gateway nodes and one, through HAProxy\n\n"
            + block
            + "\n"
        )
    path.write_text(text, encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--results", type=Path, help="rewrite the cluster_nodes block of this file")
    args = p.parse_args()
    missing = loopback.missing_tools()
    if missing:
        print(f"needs {' '.join(missing)} (make system-deps)", file=sys.stderr)
        return 2
    block = render(run(args), args)
    print(block)
    if args.results:
        write_results(args.results, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
