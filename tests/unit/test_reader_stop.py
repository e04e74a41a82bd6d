"""The upload readers end with the gateway: a reader still parsing is ended, not waited for.
Waited for, it kept the worker from exiting for as long as its parse ran (and a pool left to
shut itself down at interpreter exit once hung a worker's exit for good)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from gateway.jobs import reconcile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is ended too: reaped by its pool's manager, or by the test process's exit. It
    # may be reaped between the signal and the read (CI, 2026-12-06 19:30: the read raised).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


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


def _gateway_with_readers(pids: Any) -> None:
    """A stand-in for a gateway worker: it starts its readers, says who they are, and waits to
    be killed."""
    limits = reconcile.FileLimits(parsers=2)
    reconcile.start_readers(limits)
    executor, _ = reconcile._reader_pool(limits.parsers)
    found: set[int] = set()
    while len(found) < 2:  # both readers, each busy a moment so that neither answers twice
        found |= {f.result(timeout=60) for f in [executor.submit(_pid_after, 0.2) for _ in "ab"]}
    pids.put(sorted(found))
    time.sleep(600)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_readers_end_when_their_gateway_is_killed_outright() -> None:
    """A worker killed with SIGKILL runs no exit code: its readers notice their parent is gone
    and end within a few seconds, instead of idling as orphans until the host restarts."""
    context = multiprocessing.get_context("spawn")
    pids: Any = context.Queue()
    gateway = context.Process(target=_gateway_with_readers, args=(pids,))
    gateway.start()
    try:
        readers = pids.get(timeout=120)
        assert len(readers) == 2 and all(_alive(pid) for pid in readers)
        os.kill(gateway.pid or 0, signal.SIGKILL)
        gateway.join(10)
        started = time.monotonic()
        while any(_alive(pid) for pid in readers) and time.monotonic() - started < 10:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in readers), "a reader outlived its killed gateway"
    finally:
        if gateway.is_alive():
            gateway.kill()


def _orphaned_before_it_looked() -> None:
    """A process told its parent's pid after that parent was gone (it died while this one was
    still importing): the watch must end it, not take init for its parent."""
    from gateway.ops import orphans

    orphans.end_with_parent(os.getppid() + 1_000_000)  # not the parent it has now
    time.sleep(60)


def test_a_process_whose_parent_died_before_the_watch_began_ends() -> None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_orphaned_before_it_looked)
    child.start()
    child.join(15)
    try:
        assert child.exitcode == 0, "the watch took the process's new parent for its own"
    finally:
        if child.is_alive():
            child.kill()
