"""Background work yields the CPU to the counters.

A hostile upload read in a reader process, or a flood of log-in guesses hashed on the scrypt
threads, is work nobody at a counter waits for; on a box of two cores it took its fair share of
the CPU from the event loop and PostgreSQL, and the other institutions' p99 rose with every
attack's onset. The readers and the hash threads run at the lowest priority the kernel gives
(nice 19: about 1/70 of a normal task's share when both want the CPU, all of it when the box is
idle), so they still finish on a quiet machine and never starve outright on a busy one.
"""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 19


def lower_this_thread() -> None:
    """Lower the calling thread (on Linux a thread is scheduled as a task of its own; elsewhere
    the whole process)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def lower_this_process() -> None:
    """Lower a worker process as it starts (its initializer): every thread it starts later
    inherits the priority."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
