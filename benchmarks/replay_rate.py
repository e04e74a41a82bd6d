"""How fast `deferred replay` settles a long outage's claims, and whether the rate holds as the
backlog grows.

    python benchmarks/replay_rate.py [--database-url DSN] [--fill 3,12] [--connections 32]

One database (demo set + synthetic persons), one gateway under the plan's `defer` for every
settlement. For each fill (seconds of wrk load: pharmacy 2102 sales, and outpatient visits whose
2207 becomes a claim with its lines) the claims are taken, the gateway stopped, the plan
cleared and `python -m gateway deferred replay` timed over them: claims, seconds, claims/s,
and the CPU of the replay process and of PostgreSQL per claim. The fills run one after the other
on the same ledger, so a later row replays a larger backlog over a ledger that holds the earlier
ones: a rate that falls with the backlog's size is a cost per claim that grows with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from http_harness import (
    TICKS,
    add_server_arg,
    cpu_seconds,
    create_db,
    drop_db,
    free_port,
    gateway_cli,
    postgres_pids,
    summarize,
    with_db,
)
from wrk_harness import PY, ROOT, Load, Server, run_token, run_wrk, set_plan, start_gateway, stop


async def pending(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM deferred WHERE kind = 'claim' GROUP BY status"
        )
        return {r["status"]: int(r["n"]) for r in rows}
    finally:
        await conn.close()


def postgres_cpu() -> float:
    """PostgreSQL's CPU so far: its live processes' and what the postmaster reaped of those
    that exited (the replay's own backends end with it)."""
    pids = postgres_pids()
    reaped = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if int(fields[1]) not in pids:  # the postmaster: its parent is no server process
            reaped += (int(fields[13]) + int(fields[14])) / TICKS  # cutime, cstime
    return cpu_seconds(pids) + reaped


async def lookup_us(dsn: str, rounds: int = 300) -> float:
    """What a visit's settlement pays, online, to learn whether a claim holds its lines while
    the backlog waits (gateway.ledger.deferred.pending_on_visits): wall µs a look-up, over
    visits of the ledger one at a time."""
    sys.path.insert(0, str(ROOT))  # this checkout's code, whatever the environment installed
    from gateway.ledger import deferred

    conn = await asyncpg.connect(dsn)
    try:
        visits = [
            r["mdtrt_id"]
            for r in await conn.fetch(
                "SELECT mdtrt_id FROM encounters WHERE kind = 'outpatient' LIMIT $1", rounds
            )
        ]
        await deferred.pending_on_visits(conn, visits[:1])  # prepared
        started = time.perf_counter()
        for visit in visits:
            await deferred.pending_on_visits(conn, [visit])
        return (time.perf_counter() - started) / max(len(visits), 1) * 1e6
    finally:
        await conn.close()


def replay(dsn: str, profile: Path | None = None) -> dict[str, Any]:
    """`deferred replay` to the end: its wall time and CPU (the child's rusage) and
    PostgreSQL's (every server process, /proc: the server is the benchmark's own)."""
    before_pg = postgres_cpu()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = [PY, "-m", "gateway", "deferred", "replay", "--database-url", dsn]
    if profile is not None:  # py-spy, its samples collapsed (and summarized beside them)
        spy = [str(Path(PY).parent / "py-spy"), "record", "-r", "200", "-f", "raw", "-o"]
        command = [*spy, str(profile), "--", *command]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"replay failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "seconds": seconds,
        "replay_cpu_s": cpu,
        "postgres_cpu_s": postgres_cpu() - before_pg,
        "last_line": done.stdout.strip().splitlines()[-1:] or [""],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_server_arg(p)
    p.add_argument("--fill", default="3,12", help="seconds of load before each replay")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--json", type=Path)
    p.add_argument("--profile", type=Path, help="py-spy the replays: DIR/replay-N.collapsed")
    args = p.parse_args()
    args.workers, args.auth = 1, "on"
    name = f"gwreplay_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    work = Path(tempfile.mkdtemp(prefix="replay-rate-"))
    common = {"persons": str(args.persons), "auth": "on", "run": run_token()}
    rows: list[dict[str, Any]] = []
    try:
        gateway_cli(dsn, "demo", "load")
        gateway_cli(dsn, "demo", "synth", "--persons", str(args.persons))
        for seconds in (float(s) for s in args.fill.split(",")):
            port = free_port()
            gateway = Server(start_gateway(dsn, port, args, "bench.toml"), port)
            try:
                set_plan(dsn, "defer")
                sales = Load("pharmacy.lua", args.connections, 1, {**common, "infno": "2102"})
                visits = Load("visit.lua", 8, 8, dict(common))
                filled = [run_wrk(sales, gateway.url, seconds / 2)]
                filled.append(run_wrk(visits, gateway.url, seconds / 2))
            finally:
                stop(gateway.proc)
            set_plan(dsn, None)
            waiting = asyncio.run(pending(dsn))
            looked_up = asyncio.run(lookup_us(dsn))
            profile = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile / f"replay-{len(rows) + 1}.collapsed"
            measured = replay(dsn, profile)
            if profile is not None:
                profile.with_suffix(".txt").write_text(summarize(profile, 40))
            after = asyncio.run(pending(dsn))
            settled = after.get("settled", 0) - waiting.get("settled", 0)
            row = {
                "fill_seconds": seconds,
                "pending_before": waiting.get("pending", 0),
                "settled": settled,
                "failed": after.get("failed", 0) - waiting.get("failed", 0),
                "left_pending": after.get("pending", 0),
                "claims_per_s": settled / measured["seconds"],
                "replay_cpu_us": measured["replay_cpu_s"] / max(settled, 1) * 1e6,
                "postgres_cpu_us": measured["postgres_cpu_s"] / max(settled, 1) * 1e6,
                **measured,
                "fill_answers": [f["answers"] for f in filled],
                "visit_lookup_us": looked_up,
            }
            rows.append(row)
            print(
                f"fill {seconds:g}s: {row['pending_before']:,} pending → {settled:,} settled"
                f" ({row['failed']} failed, {row['left_pending']} left) in"
                f" {measured['seconds']:.1f} s: {row['claims_per_s']:,.0f} claims/s;"
                f" CPU µs a claim: replay {row['replay_cpu_us']:,.0f},"
                f" PostgreSQL {row['postgres_cpu_us']:,.0f}; a visit's claims looked up online"
                f" in {looked_up:,.0f} µs with the backlog waiting",
                flush=True,
            )
    finally:
        asyncio.run(drop_db(args.database_url, name))
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
