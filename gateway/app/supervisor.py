"""The workers of `serve --workers N`: started together, a dead one replaced, stopped together.

A worker killed outright (the OOM killer, a crash in a C extension, an operator's kill -9) used
to leave the gateway one process short, silently, until the whole service was restarted: the
other workers took its connections, at their capacity. The supervisor now starts another in its
place and says so in its log. One that dies within `QUICK_DEATH_SECONDS` of starting (a
configuration or database that stops every worker) is restarted after a pause that doubles up
to `MAX_PAUSE_SECONDS`, not in a tight loop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext, SpawnProcess

from prometheus_client import multiprocess

log = logging.getLogger("gateway.app.supervisor")

QUICK_DEATH_SECONDS = 10.0
FIRST_PAUSE_SECONDS = 1.0
MAX_PAUSE_SECONDS = 30.0


class _Slot:
    """One worker's place: its process, when it started, when a replacement is due."""

    __slots__ = ("due", "pause", "process", "started")

    def __init__(self) -> None:
        self.process: SpawnProcess | None = None
        self.started = 0.0
        self.due: float | None = 0.0  # start now
        self.pause = FIRST_PAUSE_SECONDS


def run(
    ctx: SpawnContext, target: Callable[..., None], args: tuple[object, ...], workers: int
) -> None:
    """Run `workers` processes of `target(*args, index)` until SIGTERM or SIGINT, then stop them
    all (each drains its requests on its own SIGTERM) and return when every one has exited.
    `index` is the worker's place, 0 to `workers` - 1, the same for its replacement."""
    slots = [_Slot() for _ in range(workers)]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for slot in slots:
            process = slot.process
            if process is not None and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        now = time.monotonic()
        for index, slot in enumerate(slots):
            if not stopping and slot.due is not None and slot.due <= now:
                slot.process = ctx.Process(target=target, args=(*args, index), daemon=False)
                slot.process.start()
                slot.started, slot.due = now, None
                if stopping and slot.process.pid is not None:
                    # SIGTERM came while it was starting: `stop` found it not yet alive.
                    os.kill(slot.process.pid, signal.SIGTERM)
        running = {s.process.sentinel: s for s in slots if s.process is not None}
        if stopping and not running:
            return
        pending = [s.due for s in slots if s.due is not None]
        timeout = max(0.0, min(pending) - now) if pending and not stopping else 1.0
        for sentinel in wait(list(running), timeout=timeout):
            slot = running[sentinel]  # type: ignore[index]
            _ended(slot, stopping)


def _ended(slot: _Slot, stopping: bool) -> None:
    """A worker has exited: forget it, and when the gateway is not stopping, plan another."""
    process = slot.process
    assert process is not None
    process.join()
    slot.process = None
    if process.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
    if stopping:
        return
    lived = time.monotonic() - slot.started
    if lived < QUICK_DEATH_SECONDS:
        pause = slot.pause
        slot.pause = min(slot.pause * 2, MAX_PAUSE_SECONDS)
    else:
        pause, slot.pause = 0.0, FIRST_PAUSE_SECONDS
    slot.due = time.monotonic() + pause
    log.error(
        "worker %s exited (code %s) after %.0f s; another starts in %.0f s",
        process.pid,
        process.exitcode,
        lived,
        pause,
    )
