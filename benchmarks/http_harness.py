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
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def load(url: str, infno: str, args: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run(
        [
            PY,
            str(ROOT / "benchmarks" / "loadgen.py"),
            "--url",
            url,
            "--infno",
            infno,
            "--duration",
            str(args.duration),
            "--concurrency",
            str(args.concurrency),
            "--persons",
            str(args.persons),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "GATEWAY_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--scenarios", default="2101,2102")
    args = p.parse_args()

    name = f"gwbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        bare_port = free_port()
        procs.append(
            subprocess.Popen(
                [PY, str(ROOT / "benchmarks" / "bare_server.py"), "--port", str(bare_port)]
            )
        )
        gw_port = free_port()
        subprocess.run(
            [PY, "-m", "gateway", "demo", "load", "--database-url", dsn],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        subprocess.run(
            [
                PY,
                "-m",
                "gateway",
                "demo",
                "synth",
                "--persons",
                str(args.persons),
                "--database-url",
                dsn,
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        procs.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "gateway",
                    "serve",
                    "--port",
                    str(gw_port),
                    "--database-url",
                    dsn,
                    "--workers",
                    str(args.workers),
                    "--config",
                    str(ROOT / "config" / "bench.toml"),
                    "--pool-max",
                    "32",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(1)
        wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
        rows.append(
            (
                "bare aiohttp + uvloop (fixed envelope)",
                load(f"http://127.0.0.1:{bare_port}", "2101", args),
            )
        )
        for infno in args.scenarios.split(","):
            rows.append((infno, load(f"http://127.0.0.1:{gw_port}", infno, args)))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        asyncio.run(drop_db(args.database_url, name))

    ceiling = rows[0][1]["rate"] or 1.0
    print(
        f"Command: `python benchmarks/http_harness.py --duration {args.duration:g} --concurrency {args.concurrency}"
        f" --workers {args.workers} --scenarios {args.scenarios}`  "
    )
    print(
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()};"
        " servers, load generator and PostgreSQL on the same cores.\n"
    )
    print("| scenario | requests/s | p50 ms | p99 ms | errors | busy | ratio to ceiling |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(
            f"| {label} | {r['rate']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {int(r['errors'])} |"
            f" {int(r['busy'])} | {r['rate'] / ceiling:.2f} |"
        )


if __name__ == "__main__":
    main()
