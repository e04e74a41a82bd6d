"""What a request's own task and deadline timer cost, against running its work inline, under
uvloop; and what `asyncio.get_running_loop()` costs (CPython 3.11 calls getpid() in it, which a
blocking native profile showed as 7% of a 2102's samples).

    python benchmarks/request_task_cost.py [--n 200000] [--rounds 3]

The gateway runs each settlement in a task of its own with a timer for its deadline
(`gateway.app.server._admitted`, `gateway.pipeline.deadlines.finished_within`): a client that
hangs up cannot cut a commit in half, and a request stuck on a dead dependency is still answered.
Each round prints the microseconds per request of the three shapes and the nanoseconds of the
loop look-up.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from gateway.pipeline.deadlines import finished_within


async def _work(ready: asyncio.Future[None]) -> int:
    await ready
    return 1


async def _task_and_timer(n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(n):
        ready = loop.create_future()
        work = asyncio.ensure_future(_work(ready))
        loop.call_soon(ready.set_result, None)
        if await finished_within(work, 30):
            work.result()
    return (time.perf_counter() - started) / n * 1e6


async def _task_only(n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(n):
        ready = loop.create_future()
        work = asyncio.ensure_future(_work(ready))
        loop.call_soon(ready.set_result, None)
        await work
    return (time.perf_counter() - started) / n * 1e6


async def _inline(n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(n):
        ready = loop.create_future()
        loop.call_soon(ready.set_result, None)
        await _work(ready)
    return (time.perf_counter() - started) / n * 1e6


async def _loop_lookup(n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        asyncio.get_running_loop()
    return (time.perf_counter() - started) / n * 1e9


async def _main(n: int, rounds: int) -> None:
    for _ in range(rounds):
        print(
            f"task+timer {await _task_and_timer(n):.2f} µs  task only {await _task_only(n):.2f} µs"
            f"  inline {await _inline(n):.2f} µs  get_running_loop {await _loop_lookup(n):.0f} ns"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    uvloop.run(_main(args.n, args.rounds))


if __name__ == "__main__":
    main()
