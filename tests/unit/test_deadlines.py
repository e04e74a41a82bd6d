"""Waiting with a deadline (gateway.pipeline.deadlines) behaves as asyncio.timeout and
wait_for(shield(...)) did: the answer in time, TimeoutError past the deadline, and nothing the
waiter waited for cancelled by the deadline or, for the work, by the waiter's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.deadlines import awaited_by, finished_within
from gateway.pipeline.ledger_waits import LedgerWaits


async def _soon(fut: asyncio.Future[str], value: str, after: float) -> None:
    await asyncio.sleep(after)
    if not fut.done():
        fut.set_result(value)


async def test_an_answer_in_time_is_returned() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    setter = asyncio.create_task(_soon(fut, "answered", 0.01))
    assert await awaited_by(fut, loop.time() + 5) == "answered"
    await setter


async def test_no_deadline_waits_for_the_answer() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    setter = asyncio.create_task(_soon(fut, "late but awaited", 0.05))
    assert await awaited_by(fut, None) == "late but awaited"
    await setter


async def test_past_the_deadline_the_waiter_gets_timeout_and_the_item_is_done() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await awaited_by(fut, started + 0.05)
    assert loop.time() - started >= 0.05
    # The batch that would have answered it sees it done, and drops it.
    assert fut.done() and isinstance(fut.exception(), TimeoutError)


async def test_a_deadline_already_past_times_out_at_once() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    with pytest.raises(TimeoutError):
        await awaited_by(fut, loop.time() - 1)


async def test_a_cancelled_waiter_leaves_its_item_cancelled_not_answered() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    waiter = asyncio.create_task(awaited_by(fut, loop.time() + 5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert fut.cancelled()


async def test_the_timer_is_gone_once_answered() -> None:
    """An answered wait leaves no timer behind to fire on the item later."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    fut.set_result("at once")
    assert await awaited_by(fut, loop.time() + 0.02) == "at once"
    await asyncio.sleep(0.05)
    assert fut.result() == "at once"


async def _work(seconds: float, log: list[str]) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    log.append("committed")
    return "outcome"


async def test_work_finished_in_time() -> None:
    log: list[str] = []
    work = asyncio.ensure_future(_work(0.01, log))
    assert await finished_within(work, 5) is True
    assert work.result() == "outcome" and log == ["committed"]


async def test_work_already_done_needs_no_wait() -> None:
    log: list[str] = []
    work = asyncio.ensure_future(_work(0, log))
    await work
    assert await finished_within(work, 0) is True


async def test_overdue_work_goes_on_to_its_end() -> None:
    log: list[str] = []
    work = asyncio.ensure_future(_work(0.1, log))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await finished_within(work, 0.02) is False
    assert 0.02 <= loop.time() - started < 0.1
    assert not work.done()
    assert await work == "outcome" and log == ["committed"]


async def test_a_waiter_that_hangs_up_does_not_cut_the_work() -> None:
    log: list[str] = []
    work = asyncio.ensure_future(_work(0.05, log))
    waiter = asyncio.create_task(finished_within(work, 5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await work == "outcome" and log == ["committed"]


async def test_a_failing_work_is_done_and_its_error_kept_for_the_caller() -> None:
    async def broken() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("bug")

    work = asyncio.ensure_future(broken())
    assert await finished_within(work, 5) is True
    with pytest.raises(RuntimeError):
        work.result()


async def test_a_ledgers_opening_breaker_wakes_only_the_requests_waiting_on_it() -> None:
    """gateway.pipeline.ledger_waits: when one ledger's breaker opens, the edge stops waiting
    for the requests on that ledger (their work goes on), and not for those on another ledger
    of a split one, nor for a request whose ledger is not known yet."""
    loop = asyncio.get_running_loop()
    waits = LedgerWaits()
    works = {name: loop.create_future() for name in ("bijie", "qingyuan", "unknown")}
    places = {name: waits.begin() for name in works}
    places["bijie"].ledger, places["qingyuan"].ledger = "bijie", "qingyuan"
    waiting = {
        name: asyncio.create_task(finished_within(work, 5.0, places[name]))
        for name, work in works.items()
    }
    await asyncio.sleep(0)
    assert waits.release("bijie") == 1
    assert await asyncio.wait_for(waiting["bijie"], 1.0) is False
    assert places["bijie"].released and not works["bijie"].done()
    assert not waiting["qingyuan"].done() and not waiting["unknown"].done()
    assert waits.release("bijie") == 0  # answered already
    works["qingyuan"].set_result(None)
    assert await waiting["qingyuan"] is True and not places["qingyuan"].released
    for name in works:
        waits.end(places[name])
    assert len(waits) == 0
    works["unknown"].set_result(None)
    assert await waiting["unknown"] is True
    works["bijie"].set_result(None)
