"""Durable 2102 with the parallel run's shadow pricing at 100% sampling, against shadowing off,
in the same run.

    python benchmarks/shadow_load.py [--duration 8] [--rounds 2] [--connections 64]
        [--persons 20000] [--results benchmarks/RESULTS.md]

Two gateways over two fresh databases with the same demo set and synthetic persons: ours
(signing on, `config/bench.toml` plus `[legacy] url` pointing at the other and `[shadow]
sample_bp = 10000`) and the old system (the same gateway, signing off, as the tests' second
system). wrk (benchmarks/wrk/pharmacy.lua, as in the wrk harness) sells durable 2102s to ours;
the phases alternate plan cleared / `shadow` for every settlement (scope global), so every
settlement answered is also priced as a 2101 at the old system off the request path. Each row:
ok/s, p50/p99, CPU µs per answer of our gateway and of the old system, and the pricings counted
by our /metrics (`sgw_shadow_compared_total`, failures and drops). The old system runs on the
same two cores: its CPU is the shadow's price on a one-box rig, not on a real cut-over.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from http_harness import (
    add_server_arg,
    cpu_seconds,
    create_db,
    drop_db,
    free_port,
    gateway_cli,
    tree,
    with_db,
)
from wrk_harness import ROOT, Harness, Load, set_plan, start_gateway, stop

BEGIN, END = "<!-- shadow_load:begin -->", "<!-- shadow_load:end -->"


def scrape(url: str) -> dict[str, float]:
    """The shadow counters of our /metrics, summed over their labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("sgw_shadow_compared_total", "sgw_shadow_differing_total"):
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        if line.startswith("sgw_shadow_failures_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[f"failures {kind}"] = out.get(f"failures {kind}", 0.0) + float(
                line.rsplit(" ", 1)[1]
            )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [f"gwshadow_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        asyncio.run(create_db(args.database_url, name))
    ours_dsn, old_dsn = (with_db(args.database_url, n) for n in names)
    work = Path(tempfile.mkdtemp(prefix="shadow-load-"))
    procs = []
    try:
        for dsn in (ours_dsn, old_dsn):
            gateway_cli(dsn, "demo", "load")
            gateway_cli(dsn, "demo", "synth", "--persons", str(args.persons))
        old_port, ours_port = free_port(), free_port()
        old_args = argparse.Namespace(**{**vars(args), "auth": "off"})
        old = start_gateway(old_dsn, old_port, old_args, "bench.toml")
        procs.append(old)
        config = work / "ours.toml"
        config.write_text(
            (ROOT / "config" / "bench.toml").read_text()
            + f'\n[legacy]\nurl = "http://127.0.0.1:{old_port}/fsi/api/rsfComIfsService/callService"\n'
            + "timeout_seconds = 5.0\n\n[shadow]\nsample_bp = 10000\n"
        )
        ours = start_gateway(ours_dsn, ours_port, args, str(config))
        procs.append(ours)
        url = f"http://127.0.0.1:{ours_port}"
        h = Harness(args, names[0], work)
        ours_pids, old_pids = tree(ours.pid), tree(old.pid)
        rows: list[dict[str, Any]] = []
        ruled = False
        for r in range(args.rounds):
            for shadowed in (False, True):
                if shadowed or ruled:  # `plan clear` refuses to clear what is not set
                    set_plan(ours_dsn, "shadow" if shadowed else None)
                ruled = shadowed
                load: Load = h.load("2102", args.connections)
                counted = scrape(url)
                old_cpu = cpu_seconds(old_pids)
                result = h.measure(url, load, args.duration, ours_pids)
                time.sleep(args.settle)  # the queue drains before the old system's CPU is read
                result["old_cpu_us"] = (
                    (cpu_seconds(old_pids) - old_cpu) / max(result["answers"], 1) * 1e6
                )
                after = scrape(url)
                result["shadow"] = {k: after.get(k, 0.0) - counted.get(k, 0.0) for k in after}
                result["round"], result["shadowed"] = r + 1, shadowed
                rows.append(result)
                print(
                    f"round {r + 1} {'shadow' if shadowed else 'off'}: ok/s {result['ok_rate']:.0f}"
                    f" p99 {result['p99_ms']:.1f} ms shadow {result['shadow']}",
                    flush=True,
                )
        if ruled:
            set_plan(ours_dsn, None)
        return {"rows": rows, "args": vars(args)}
    finally:
        for proc in procs:
            stop(proc)
        for name in names:
            asyncio.run(drop_db(args.database_url, name))
        shutil.rmtree(work, ignore_errors=True)


def report(run_: dict[str, Any], started: str) -> str:
    a = run_["args"]
    lines = [
        f"Command: `python benchmarks/shadow_load.py --duration {a['duration']:g} --rounds"
        f" {a['rounds']} --connections {a['connections']}`, {started}.  ",
        "",
        "| round | shadow pricing | ok/s | p50 ms | p99 ms | our gateway µs/answer | PostgreSQL µs"
        " | the old system's µs per our answer | priced at the old system | failures / dropped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in run_["rows"]:
        s = row["shadow"]
        failed = sum(v for k, v in s.items() if k.startswith("failures") and "dropped" not in k)
        lines.append(
            f"| {row['round']} | {'100%' if row['shadowed'] else 'off'} | {row['ok_rate']:,.0f} |"
            f" {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['gateway_cpu_us']:,.0f} |"
            f" {row['postgres_cpu_us']:,.0f} | {row['old_cpu_us']:,.0f} |"
            f" {s.get('sgw_shadow_compared_total', 0):,.0f} |"
            f" {failed:,.0f} / {s.get('failures dropped', 0):,.0f} |"
        )
    on = [r["ok_rate"] for r in run_["rows"] if r["shadowed"]]
    off = [r["ok_rate"] for r in run_["rows"] if not r["shadowed"]]
    lines += [
        "",
        f"ok/s with shadowing ÷ without, per round: {', '.join(f'{x / y:.2f}' for x, y in zip(on, off, strict=True))}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--auth", choices=("on", "off"), default="on")
    p.add_argument("--settle", type=float, default=2.0, help="seconds for the queue to drain")
    p.add_argument("--results", type=Path)
    add_server_arg(p)
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    text = report(run(args), started)
    print(text)
    if args.results:
        doc = args.results.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc += f"\n## Parallel run: 2102 with shadow pricing (`benchmarks/shadow_load.py`)\n\n{block}\n"
        args.results.write_text(doc)


if __name__ == "__main__":
    main()
