"""The upload readers end with the gateway: a reader still parsing is ended, not waited for.
Waited for, it kept the worker from exiting for as long as its parse ran (and a pool left to
shut itself down at interpreter exit once hung a worker's exit for good)."""

from __future__ import annotations

import os
import time

from gateway.jobs import reconcile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is ended too: reaped by its pool's manager, or by the test process's exit.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_reader_still_parsing_is_ended_with_the_gateway() -> None:
    limits = reconcile.FileLimits(parsers=1)
    reconcile.stop_readers()
    reconcile.start_readers(limits)
    executor, _ = reconcile._reader_pool(limits.parsers)
    pid = executor.submit(os.getpid).result(timeout=60)
    executor.submit(time.sleep, 60)  # a parse that would run on past the stop
    time.sleep(0.5)
    assert _alive(pid)
    started = time.monotonic()
    reconcile.stop_readers()
    while _alive(pid) and time.monotonic() - started < 10:
        time.sleep(0.05)
    assert not _alive(pid), "the reader outlived the stop"
