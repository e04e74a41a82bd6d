"""A payout batch of 100,000 lines: made, approved four times, exported, its return imported.

    python benchmarks/payout_batch.py [--lines 100000] [--failures 100] [--database-url DSN]

Over a fresh database (migrated, demo data, a payout account for each demo person) N owed
lines are written by COPY (`gateway.ledger.payouts.copy_owed`), then each step of
gateway.services.payouts runs as the console and the CLI run it: `create_batch` (制单),
`approve` at levels 1–4 by four operators, `export` (the bank file), and `import_return` of the
bank's answer (every line paid but `--failures` of them). For each step: its wall time; the
process's peak resident memory during the step (a thread samples /proc/self/status every 2 ms)
and its growth; and how long the event loop was blocked (a ticker on the loop sleeps 1 ms at a
time: the longest and the 99th-percentile lateness, and the most CPU the loop's own thread
spent within one gap — lateness with little CPU is the box's other work or the interpreter
lock held by a helper thread, not the step's code on the loop; and the longest pause of the
garbage collector, which stops every thread). The gateway's own thread switch
interval and uvloop, as in the server. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import hashlib
import resource
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_harness import add_server_arg, create_db, drop_db, with_db

from gateway.app.runtime import HELPER_THREAD_SLICE_SECONDS
from gateway.app.server import Settings, prepare_database
from gateway.ledger import db
from gateway.ledger import payouts as store
from gateway.services import payouts

APPROVERS = ("approver1", "approver2", "approver3", "approver4")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The peak resident memory while a step runs, sampled from a thread of its own."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop.wait(0.002)

    def __enter__(self) -> Sampler:
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


async def measured(name: str, work: Callable[[], Awaitable[Any]]) -> tuple[dict[str, Any], Any]:
    gaps: list[float] = []
    busy: list[float] = []  # the loop thread's own CPU time in each gap
    done = asyncio.Event()

    async def tick() -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            gaps.append(now - last - 0.001)
            busy.append(cpu - last_cpu)
            last, last_cpu = now, cpu

    pauses: list[float] = []
    began: list[float] = []

    def collected(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            pauses.append(time.perf_counter() - began.pop())

    gc.callbacks.append(collected)
    before = rss_mb()
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    with Sampler() as mem:
        started = time.perf_counter()
        out = await work()
        wall = time.perf_counter() - started
    done.set()
    await ticker
    gc.callbacks.remove(collected)
    gaps.sort()
    n = len(gaps) or 1
    return (
        {
            "step": name,
            "wall_s": wall,
            "stall_max_ms": (gaps[-1] if gaps else 0.0) * 1e3,
            "stall_p99_ms": (gaps[int(n * 0.99)] if gaps else 0.0) * 1e3,
            "busy_max_ms": max(busy, default=0.0) * 1e3,
            "gc_max_ms": max(pauses, default=0.0) * 1e3,
            "rss_peak_mb": mem.peak,
            "rss_growth_mb": mem.peak - before,
        },
        out,
    )


def bank_answer(payment: bytes, failures: int) -> bytes:
    """The bank's return file: every line paid but every (count // failures)-th one."""
    rows = payment.decode().split("\n")[:-1]
    head = rows[0].split("|")
    every = max(1, (len(rows) - 2) // failures) if failures else 0
    out = ["|".join(("H", "RET", head[2], head[3], head[4], head[5]))]
    for row in rows[1:-1]:
        f = row.split("|")
        failed = every and int(f[1]) % every == 0
        out.append(
            "|".join(("D", f[1], f[5], f[6], "F" if failed else "S", "户名不符" if failed else ""))
        )
    body = ("\n".join(out) + "\n").encode()
    t = rows[-1].split("|")
    return body + "|".join(("T", t[1], t[2], hashlib.sha256(body).hexdigest())).encode() + b"\n"


async def run(dsn: str, lines: int, failures: int) -> list[dict[str, Any]]:
    await prepare_database(Settings(dsn))
    pool = await db.create_pool(dsn, min_size=2, max_size=2)
    results = []
    try:
        async with pool.acquire() as conn:
            persons = [
                r["psn_no"] for r in await conn.fetch("SELECT psn_no FROM persons ORDER BY 1")
            ]
            for n, psn_no in enumerate(persons):
                await payouts.set_account(
                    conn,
                    psn_no,
                    bank_code="102100000001",
                    bank_name="工商银行",
                    account_no=f"62220202{n:011d}",
                    holder=f"户名{n}",
                    operator="clerk1",
                    reason="基准测试",
                )
            owed = [
                ("manual", f"LXBENCH{i:08d}", persons[i % len(persons)], 1000 + i % 50_000)
                for i in range(lines)
            ]
            total = sum(r[3] for r in owed)

            async def insert() -> None:
                async with conn.transaction():
                    await store.copy_owed(conn, owed)

            r, _ = await measured("idle (the box's noise floor)", lambda: asyncio.sleep(1.0))
            results.append(r)
            r, _ = await measured(f"write {lines:,} owed lines (COPY, setup)", insert)
            results.append(r)
            owed.clear()
            r, batch = await measured(
                "制单 create_batch", lambda: payouts.create_batch(conn, "clerk1", dt.datetime.now())
            )
            results.append(r)
            assert (batch.line_count, batch.total_fen) == (lines, total), batch

            async def approve_all() -> None:
                for level, who in enumerate(APPROVERS, 1):
                    await payouts.approve(conn, batch.batch_no, level, who)

            r, _ = await measured("初审 + 三级复核 approve ×4", approve_all)
            results.append(r)
            r, (_, payment) = await measured(
                "报盘 export", lambda: payouts.export(conn, batch.batch_no, "clerk1")
            )
            results.append(r)
            r, (_, again) = await measured(
                "报盘 export again (the stored file)",
                lambda: payouts.export(conn, batch.batch_no, "clerk1"),
            )
            results.append(r)
            assert again == payment
            answer = bank_answer(payment, failures)
            del payment, again
            r, summary = await measured(
                "回盘 import_return", lambda: payouts.import_return(conn, answer, "cashier")
            )
            results.append(r)
            assert summary.paid_count + summary.failed_count == lines, summary
            assert (
                summary.failed_count == failures and summary.paid_fen + summary.failed_fen == total
            )
            r, again_summary = await measured(
                "回盘 import_return again (changes nothing)",
                lambda: payouts.import_return(conn, answer, "cashier"),
            )
            results.append(r)
            assert again_summary.again
    finally:
        await pool.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--failures", type=int, default=100)
    add_server_arg(p)
    args = p.parse_args()
    sys.setswitchinterval(HELPER_THREAD_SLICE_SECONDS)
    name = f"gwpayout_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    try:
        uvloop.install()
        results = asyncio.run(run(with_db(args.database_url, name), args.lines, args.failures))
    finally:
        asyncio.run(drop_db(args.database_url, name))
    print(
        "| step | wall s | loop late max ms | p99 ms | loop thread on CPU max ms"
        " | longest GC pause ms | RSS peak MiB | RSS growth MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['step']} | {r['wall_s']:.2f} | {r['stall_max_ms']:.1f} | {r['stall_p99_ms']:.2f} |"
            f" {r['busy_max_ms']:.1f} | {r['gc_max_ms']:.1f} | {r['rss_peak_mb']:.0f}"
            f" | {r['rss_growth_mb']:+.0f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (ru_maxrss): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
