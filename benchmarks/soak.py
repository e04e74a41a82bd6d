"""P8: a worker's memory with 500,000 mappings, sampled through a soak of steady settlements.

    python benchmarks/soak.py [--minutes 10] [--rate 400] [--mappings 500000]

Starts one gateway worker over a fresh database (demo data, synthetic persons, N synthetic
mappings), drives durable 2102 settlements at a steady open-loop rate, and samples the worker's
resident memory every 15 s. Prints one JSON line: the samples, the memory after warm-up, at the
end and at most, and the ok/refused counts. Flat means the end is within a few MiB of the
post-warm-up figure (the msgid journal and the ledger grow in PostgreSQL, not in the worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_reload import add_mappings
from http_harness import (
    PY,
    ROOT,
    add_server_arg,
    create_db,
    drop_db,
    free_port,
    gateway_cli,
    wait_ready,
    with_db,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=400)
    p.add_argument("--mappings", type=int, default=500_000)
    p.add_argument("--persons", type=int, default=20_000)
    p.add_argument(
        "--redis-url",
        default=os.environ.get("GATEWAY_REDIS_URL"),
        help="nonces and limits in Redis, as with several workers (without: process memory)",
    )
    add_server_arg(p)
    args = p.parse_args()
    name = f"gwsoak_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    gateway: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float]] = []
    try:
        gateway_cli(dsn, "demo", "load")
        gateway_cli(dsn, "demo", "synth", "--persons", str(args.persons))
        asyncio.run(add_mappings(dsn, args.mappings))
        port = free_port()
        gateway = subprocess.Popen(
            [PY, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
             "--config", str(ROOT / "config" / "bench.toml"),
             *(["--redis-url", args.redis_url] if args.redis_url else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        seconds = args.minutes * 60
        started = time.monotonic()
        done = threading.Event()
        pid = gateway.pid

        def sample() -> None:
            while not done.is_set():
                samples.append((round(time.monotonic() - started), round(rss_mb(pid), 1)))
                done.wait(15)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out = subprocess.run(
            [PY, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
             "--scenario", "2102", "--duration", str(seconds), "--rate", str(args.rate),
             "--concurrency", "256", "--persons", str(args.persons)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        done.set()
        sampler.join()
        samples.append((round(time.monotonic() - started), round(rss_mb(pid), 1)))
        load: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        asyncio.run(drop_db(args.database_url, name))
    warm = [mb for t, mb in samples if t >= 60] or [samples[-1][1]]
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "rate": args.rate,
                "mappings": args.mappings,
                "redis": bool(args.redis_url),
                "ok": load["ok"],
                "refused": load["refused"],
                "busy": load["busy"],
                "ok_p99_ms": load["ok_p99_ms"],
                "rss_mb_after_warmup": warm[0],
                "rss_mb_end": samples[-1][1],
                "rss_mb_max": max(mb for _, mb in samples),
                "samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
