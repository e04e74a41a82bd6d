"""A command's output is written whole, whatever mode its pipe is in.

Found in CI: `corrections plan --json` handed its reader the first 128 KiB of a 385 KiB plan
and exited 0 (the thread reading it was slow on a loaded box). A pipe whose open file is in
non-blocking mode (something sharing it set O_NONBLOCK) answers a write past its capacity with
EAGAIN (and a blocking one, written to while a signal arrives, may take part of it); the
interpreter's stdout then drops the rest of the text without an error: the operator's `| jq`, a
report saved with `>`, a script reading it, all get a truncated document and a success. Here
stdout writes the rest, waiting for the pipe to drain.
"""

from __future__ import annotations

import io
import os
import select
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer


class _Patient(io.RawIOBase):
    """A file descriptor written whole: EAGAIN waits until the reader makes room."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Buffer, /) -> int:
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
    patient = _Patient(fd)
    # Buffered as it was: unbuffered (PYTHONUNBUFFERED, write_through), each print reaches the
    # pipe before the command goes on, and a reader gone is found there (gateway.app.cli,
    # `output_closed`), not in the interpreter's last flush.
    raw: Any = patient if out.write_through else io.BufferedWriter(patient)
    sys.stdout = io.TextIOWrapper(
        raw,
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=out.write_through,
    )
