"""Background work runs at the lowest CPU priority: the upload readers (processes) and the
log-in hash threads, never the event loop's own thread."""

from __future__ import annotations

import os
import threading

import pytest

from gateway.emergency.operators import Hasher
from gateway.jobs import reconcile
from gateway.ops.priority import BACKGROUND_NICE

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_upload_readers_run_at_the_lowest_priority() -> None:
    limits = reconcile.FileLimits(parsers=2)
    reconcile.stop_readers()
    try:
        reconcile.start_readers(limits)
        executor, _ = reconcile._reader_pool(limits.parsers)
        pids = {executor.submit(os.getpid).result(timeout=60) for _ in range(4)}
        assert os.getpid() not in pids
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {BACKGROUND_NICE}
    finally:
        reconcile.stop_readers()
    assert _thread_nice() < BACKGROUND_NICE  # the caller's own priority untouched


def test_login_hash_threads_run_at_the_lowest_priority() -> None:
    hasher = Hasher()
    try:
        nice = hasher._threads().submit(_thread_nice).result(timeout=30)
    finally:
        hasher.close()
    assert nice == BACKGROUND_NICE
    assert _thread_nice() < BACKGROUND_NICE
