"""The event loop's stall record: what the breakers subtract, and what ops is told."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.emergency.breaker import LoopStalls


def test_each_stall_is_reported_once_and_overlaps_are_not_counted_twice() -> None:
    stalls = LoopStalls()
    told: list[float] = []
    stalls.on_stall = told.append
    stalls._note(10.0, 10.5)
    stalls._note(10.25, 11.0)  # overlaps the first: only its last half second is new
    stalls._note(20.0, 20.1)
    assert told == pytest.approx([0.5, 0.5, 0.1])
    assert stalls.stalled(0.0, 30.0) == pytest.approx(1.1)
    assert stalls.stalled(10.75, 20.05) == pytest.approx(0.3)


async def test_a_blocked_loop_is_measured_by_the_ticker() -> None:
    stalls = LoopStalls(tick=0.01)
    told: list[float] = []
    stalls.on_stall = told.append
    ticker = asyncio.create_task(stalls.run())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop itself stands still)
    await asyncio.sleep(0.05)
    ticker.cancel()
    assert sum(told) >= 0.25
    assert stalls.stalled(started, time.perf_counter()) >= 0.25
