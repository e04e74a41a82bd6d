"""A helper process ends when the process that started it is gone.

A gateway worker killed with SIGKILL (an OOM kill, a supervisor's last resort, the cluster
drills) runs no exit code, so the upload readers it started were left idle on their pool's
queue, reparented to init, an interpreter's memory each until the host restarted; CI found
twelve of them. The same held one level up: the workers of `serve --workers N` outlived a
killed supervisor and kept answering on the shared port (SO_REUSEPORT) with its old settings.

Each such process watches for its parent's death with a thread that checks its parent's pid
once a second. Not PR_SET_PDEATHSIG: the kernel fires that when the *thread* that forked the
child exits, and a pool may start a reader from any thread.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

# How often the parent is checked: an orphan lives at most this long (plus its own stop).
EVERY_SECONDS = 1.0


def _exit_now() -> None:
    os._exit(0)


def stop_gracefully() -> None:
    """End this process as SIGTERM ends it: a serving worker drains its requests first."""
    os.kill(os.getpid(), signal.SIGTERM)


def end_with_parent(parent: int, on_orphaned: Callable[[], None] = _exit_now) -> None:
    """From now on, call `on_orphaned` (default: exit at once) once this process's parent is
    gone. `parent` is the pid of the process that started this one, as it told it: read here,
    a parent killed while this process was still importing (a spawned process takes about a
    second) was already init, and the orphan watched init for good."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(EVERY_SECONDS)
        on_orphaned()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
