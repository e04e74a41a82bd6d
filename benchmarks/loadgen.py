"""Load generator for the HTTP harness: prints one JSON line of results.

    python benchmarks/loadgen.py --url URL --scenario S [--duration D] [--concurrency C]
                                 [--rate R] [--persons N]

Closed loop (default): C connections send back to back for D seconds. Open loop (`--rate R`):
requests start at R a second whatever the answers, as counters in a busy hour do; that is how
overload is measured (a closed loop slows itself down and never overloads anything).

Scenarios: 2101, 2102 (a 5-line basket for a random synthetic person), 2206 (pre-settlement of
visits set up first), visit (2201 → 2203 → 2204 → 2206 → 2207, one visit per loop).
Each request gets a fresh msgid; answers count as ok (infcode 0), busy (shed, "繁忙/稍候") or
refused (any other infcode -1). Latency percentiles are of all answers and of the ok ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import defaultdict
from typing import Any

import aiohttp
import uvloop

from loadtest import envelopes as env

BUSY_WORDS = ("繁忙".encode(), "稍候".encode())


class Results:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)  # infno -> all answers
        self.ok_latency: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)  # ok | busy | refused | failed
        self.first_refusal = ""
        self.visits = 0

    def record(self, infno: str, raw: bytes, seconds: float) -> dict[str, Any] | None:
        self.latency[infno].append(seconds)
        if b'"infcode":0' in raw:
            self.counts["ok"] += 1
            self.ok_latency[infno].append(seconds)
            answer: dict[str, Any] = json.loads(raw)
            return answer
        if any(w in raw for w in BUSY_WORDS):
            self.counts["busy"] += 1
        else:
            self.counts["refused"] += 1
            if not self.first_refusal:
                self.first_refusal = raw.decode(errors="replace")[:300]
        return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class Driver:
    def __init__(self, session: aiohttp.ClientSession, url: str, persons: int) -> None:
        self.session = session
        self.url = url + env.PATH
        self.persons = persons
        self.results = Results()
        self.pos = env.Terminal(env.PHARMACY, "POS0001")
        self.his = env.Terminal(env.HOSPITAL, "HIS0001")

    def person(self) -> str:
        return env.synthetic_person(random.randint(1, self.persons))

    async def send(
        self, terminal: env.Terminal, infno: str, input_: dict[str, Any]
    ) -> dict[str, Any] | None:
        body = terminal.envelope(infno, input_)
        started = time.perf_counter()
        try:
            async with self.session.post(self.url, data=body, headers=terminal.headers()) as r:
                raw = await r.read()
        except aiohttp.ClientError:
            self.results.counts["failed"] += 1
            return None
        return self.results.record(infno, raw, time.perf_counter() - started)

    async def open_visit(self) -> tuple[str, str] | None:
        psn = self.person()
        reg = await self.send(self.his, "2201", env.register_input(psn))
        if reg is None:
            return None
        mdtrt_id = reg["output"]["data"]["mdtrt_id"]
        if await self.send(self.his, "2203", env.visit_info_input(mdtrt_id, psn)) is None:
            return None
        if await self.send(self.his, "2204", env.outpatient_fees_input(mdtrt_id, psn)) is None:
            return None
        return mdtrt_id, psn

    async def one(self, scenario: str, slot: dict[str, Any]) -> None:
        if scenario in ("2101", "2102"):
            await self.send(self.pos, scenario, env.drug_input(self.person()))
        elif scenario == "2206":
            mdtrt_id, psn = slot["visit"]
            await self.send(self.his, "2206", env.settle_input(mdtrt_id, psn))
        elif scenario == "visit":
            opened = await self.open_visit()
            if opened is None:
                return
            data = env.settle_input(*opened)
            if await self.send(self.his, "2206", data) is None:
                return
            if await self.send(self.his, "2207", data) is not None:
                self.results.visits += 1
        else:
            raise SystemExit(f"unknown scenario {scenario}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=max(args.concurrency, 1))
    async with aiohttp.ClientSession(connector=connector) as session:
        driver = Driver(session, args.url, args.persons)
        slots: list[dict[str, Any]] = [{} for _ in range(args.concurrency)]
        if args.scenario == "2206":  # set up one visit per connection, not measured
            for slot in slots:
                slot["visit"] = await driver.open_visit()
                if slot["visit"] is None:
                    raise SystemExit(f"setup failed: {driver.results.first_refusal}")
            driver.results = Results()
        started = time.perf_counter()
        deadline = started + args.duration
        if args.rate:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / args.rate
            n = 0
            while (now := time.perf_counter()) < deadline:
                due = int((now - started) / interval) + 1
                while n < due:
                    task = asyncio.ensure_future(driver.one(args.scenario, slots[n % len(slots)]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                await asyncio.sleep(0.001)
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        else:

            async def loop(slot: dict[str, Any]) -> None:
                while time.perf_counter() < deadline:
                    await driver.one(args.scenario, slot)

            await asyncio.gather(*(loop(s) for s in slots))
        elapsed = time.perf_counter() - started
    r = driver.results
    every = [x for v in r.latency.values() for x in v]
    accepted = [x for v in r.ok_latency.values() for x in v]
    return {
        "scenario": args.scenario,
        "requests": len(every),
        "rate": len(every) / elapsed,
        "ok_rate": r.counts["ok"] / elapsed,
        "ok": r.counts["ok"],
        "busy": r.counts["busy"],
        "refused": r.counts["refused"],
        "failed": r.counts["failed"],
        "p50_ms": pct(every, 0.5),
        "p99_ms": pct(every, 0.99),
        "ok_p50_ms": pct(accepted, 0.5),
        "ok_p99_ms": pct(accepted, 0.99),
        "visits_per_s": r.visits / elapsed,
        "per_infno": {
            k: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)}
            for k, v in sorted(r.latency.items())
        },
        "first_refusal": r.first_refusal,
        "loadgen_cpu_us": time.process_time() / max(len(every), 1) * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--scenario", default="2102")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests started per second")
    p.add_argument("--persons", type=int, default=20000)
    args = p.parse_args()
    uvloop.install()
    print(json.dumps(asyncio.run(run(args)), ensure_ascii=False))


if __name__ == "__main__":
    main()
