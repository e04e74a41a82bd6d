"""Waiting with a deadline, at the cost of one timer.

Every settlement request waits twice: for its batch's answer (the group commit, the group
read) and, at the edge, for the whole of its work. `asyncio.timeout` and `asyncio.wait_for`
with `shield` do each of these in several Python frames, objects and callbacks; on a pre-
settlement they were about a twentieth of the gateway's CPU. Here each wait is one future,
one timer and, where the work must not be cancelled, one callback. The behaviour is theirs:
past the deadline the waiter gets TimeoutError (or is told the work is still running); a
cancelled waiter leaves a batch item cancelled, as `asyncio.timeout` did, and the work it waited
for at the edge running, as `shield` did.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gateway.pipeline.ledger_waits import Wait

T = TypeVar("T")


async def awaited_by(fut: asyncio.Future[T], expires: float | None) -> T:
    """The future's result; TimeoutError set on it once the event loop's clock passes `expires`
    (None: no deadline). The future is the waiter's own (a batch item's answer): the batch sees
    it done and drops it, as it dropped one whose waiter a timeout cancelled."""
    if expires is None:
        return await fut
    timer = asyncio.get_running_loop().call_at(expires, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def finished_within(
    work: asyncio.Future[Any], seconds: float, wait: Wait | None = None
) -> bool:
    """Whether `work` finished within `seconds`. It is never cancelled, neither by the deadline
    nor by a cancelled waiter: a client that hangs up must not cut a commit in half. `wait`:
    the request's place among those waiting on a ledger, which wakes this one early when that
    ledger's breaker opens (gateway.pipeline.ledger_waits)."""
    if work.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    if wait is not None:
        wait.waiter = waiter
    wake = functools.partial(_wake, waiter)
    work.add_done_callback(wake)
    timer = loop.call_later(seconds, _wake, waiter, None)
    try:
        await waiter
    finally:
        timer.cancel()
        work.remove_done_callback(wake)
    return work.done()


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)
