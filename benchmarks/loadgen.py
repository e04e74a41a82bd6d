"""Closed-loop load generator: C connections send requests back to back for D seconds.

Prints one JSON line: requests, errors (infcode != 0), busy answers, rate, p50, p99 (ms).
Each request gets a fresh msgid and a random synthetic person, so settlements spread over
people as in life (one person's settlements are serialized by design).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import random
import time
import uuid
from pathlib import Path

import aiohttp
import uvloop

from gateway.auth import load_credentials, sign_headers

PATH = "/fsi/api/rsfComIfsService/callService"
LINES = [
    ("YP0001", "18.50"),
    ("YP0002", "12.50"),
    ("YP0004", "9.90"),
    ("YP0007", "9.90"),
    ("YP0009", "28.80"),
]
TOTAL = "79.60"
INSTITUTION = "P44180000001"
# Real counters sign every request; the benchmark pays the same verification cost.
SECRET = load_credentials(
    Path(__file__).resolve().parents[1] / "config" / "demo" / "credentials.toml"
)[INSTITUTION]


def envelope(infno: str, serial: int, persons: int, region: str) -> bytes:
    psn_no = f"S{region}{random.randint(1, persons):012d}"
    now = dt.datetime.now()
    day = now.strftime("%Y-%m-%d %H:%M:%S")
    body = {
        "infno": infno,
        "msgid": f"P44180000001{now:%Y%m%d%H%M%S}{serial:010d}",
        "mdtrtarea_admvs": region,
        "insuplc_admdvs": region,
        "dev_no": f"POS{serial % 997:04d}",
        "infver": "V1.0",
        "opter": "OP",
        "opter_name": "收费员",
        "opter_type": "1",
        "inf_time": day,
        "fixmedins_code": "P44180000001",
        "fixmedins_name": "bench",
        "input": {
            "druginfo": {
                "psn_no": psn_no,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": psn_no,
                "begntime": day,
                "medfee_sumamt": TOTAL,
                "insutype": "310",
                "acct_used_flag": "1",
                "med_type": "41",
            },
            "drugdetail": [
                {
                    "feedetl_sn": str(i + 1),
                    "medins_list_codg": c,
                    "det_item_fee_sumamt": p,
                    "cnt": "1",
                    "pric": p,
                }
                for i, (c, p) in enumerate(LINES)
            ],
        },
    }
    return json.dumps(body, ensure_ascii=False).encode()


async def run(
    url: str, infno: str, duration: float, concurrency: int, persons: int, region: str
) -> dict[str, float]:
    latencies: list[float] = []
    errors = busy = 0
    serial = itertools.count(random.randint(1, 10**8))
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors, busy
            while time.perf_counter() < deadline:
                body = envelope(infno, next(serial), persons, region)
                started = time.perf_counter()
                headers = {
                    "Content-Type": "application/json",
                    **sign_headers(INSTITUTION, SECRET, uuid.uuid4().hex),
                }
                async with session.post(url + PATH, data=body, headers=headers) as r:
                    raw = await r.read()
                latencies.append(time.perf_counter() - started)
                if b'"infcode":0' not in raw:
                    errors += 1
                    if "稍候".encode() in raw:
                        busy += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "busy": busy,
        "rate": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--infno", default="2102")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--region", default="441800")
    args = p.parse_args()
    uvloop.install()
    result = asyncio.run(
        run(args.url, args.infno, args.duration, args.concurrency, args.persons, args.region)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
