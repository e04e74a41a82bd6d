"""P7 and P8: a catalog reload of 500,000 mappings against the event loop, and the memory it takes.

    python benchmarks/catalog_reload.py [--mappings 500000] [--reloads 5] [--database-url DSN]

Over a fresh database (demo data plus N synthetic mappings spread over 2,000 institutions) it
starts the gateway's own process state (pool, snapshot, reference), then forces full reloads
while a probe task wakes every millisecond and records how late it woke: the longest lateness is
the longest time the loop was blocked. Prints one JSON line: reload seconds, probe lateness
(max, p99), and the process's resident memory before and after the snapshot exists.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_harness import add_server_arg, create_db, drop_db, gateway_cli, with_db

from gateway.app import heap
from gateway.app.config import GatewayConfig, Settings
from gateway.app.runtime import Gateway
from gateway.core.model import Mapping
from gateway.ledger import reference_store

REFERENCE = Path(__file__).resolve().parents[1] / "config" / "demo"


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def add_mappings(dsn: str, n: int) -> None:
    """N synthetic mappings over 2,000 institutions, loaded the way `demo load` loads them."""
    conn = await asyncpg.connect(dsn)
    try:
        codes = [r[0] for r in await conn.fetch("SELECT med_list_codg FROM catalog_entries")]
        begin, end = dt.date(2020, 1, 1), dt.date(2099, 12, 31)
        await reference_store.copy_mappings(
            conn,
            (
                Mapping(
                    fixmedins_code=f"H{i % 2000:011d}",
                    medins_list_codg=f"C{i:08d}",
                    fixmedins_hilist_name="",
                    list_type="101",
                    med_list_codg=codes[i % len(codes)],
                    begndate=begin,
                    enddate=end,
                )
                for i in range(n)
            ),
        )
        await reference_store.bump_version(conn)
    finally:
        await conn.close()


async def measure(dsn: str, reloads: int) -> dict[str, Any]:
    rss_start = rss_mb()
    gw = await Gateway.start(
        Settings(dsn, reference_dir=REFERENCE, pool_max=4, config=GatewayConfig())
    )
    mappings = len(gw.snapshot.mappings)
    # As `serve` does once started: the long-lived heap frozen (gateway.app.heap), so that the
    # reloads below are measured as a serving process makes them.
    heap.enable()
    heap.settle_after_start()
    rss_loaded = rss_mb()
    lateness: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - before - 0.001)

    task = asyncio.create_task(probe())
    durations = []
    for _ in range(reloads):
        started = time.perf_counter()
        await gw.refresh_catalog(force=True)
        durations.append(time.perf_counter() - started)
    await asyncio.sleep(2)  # the last retired snapshot is freed in the background
    stop.set()
    await task
    rss_after = rss_mb()
    await gw.close()
    lateness.sort()
    return {
        "mappings_in_snapshot": mappings,
        "reloads": reloads,
        "reload_s_median": sorted(durations)[len(durations) // 2],
        "loop_block_max_ms": lateness[-1] * 1000,
        "loop_block_p99_ms": lateness[int(len(lateness) * 0.99)] * 1000,
        "probe_wakeups": len(lateness),
        "rss_mb_before": round(rss_start, 1),
        "rss_mb_with_snapshot": round(rss_loaded, 1),
        "rss_mb_after_reloads": round(rss_after, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mappings", type=int, default=500_000)
    p.add_argument("--reloads", type=int, default=5)
    add_server_arg(p)
    args = p.parse_args()
    name = f"gwreload_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    try:
        gateway_cli(dsn, "demo", "load")
        asyncio.run(add_mappings(dsn, args.mappings))
        uvloop.install()
        result = asyncio.run(measure(dsn, args.reloads))
    finally:
        asyncio.run(drop_db(args.database_url, name))
    print(json.dumps({"mappings_added": args.mappings, **result}))


if __name__ == "__main__":
    main()
