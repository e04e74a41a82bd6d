"""A command's output is written whole, whatever mode its pipe is in.

Found in CI: `corrections plan --json` handed its reader the first 128 KiB of a 385 KiB plan
and exited 0 (the thread reading it was slow on a loaded box). A pipe whose open file is in
non-blocking mode (something sharing it set O_NONBLOCK) answers a write past its capacity with
EAGAIN, and the interpreter's stdout then drops the rest of the text without an error: the
operator's `| jq`, a report saved with `>`, a script reading it, all get a truncated document
and a success. Here stdout waits for the pipe to drain instead.
"""

from __future__ import annotations

import io
import os
import select
import sys


class _Patient(io.RawIOBase):
    """A file descriptor written whole: EAGAIN waits until the reader makes room."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            try:
                written += os.write(self._fd, view[written:])
            except BlockingIOError:
                select.select([], [self._fd], [])
        return written


def patient_stdout() -> None:
    """Replace sys.stdout by one that writes everything it is given (same encoding, errors
    and line buffering); a stdout that is not a file descriptor (a test's capture) is kept."""
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    if not isinstance(out, io.TextIOWrapper):
        return
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_Patient(fd)),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=False,
    )
