"""Messages whose outcome one process cannot vouch for, told to every process sharing its journal.

`gateway.pipeline.attempts` keeps, per process, the messages an attempt of which may yet commit:
one still at work past the answer its till was given, one whose COMMIT went out without a
reply. That stops a retry of such a message from becoming an all-cash claim in the same
process. But the workers of one host share its port, and a till's retry comes on a new
connection, which the kernel may hand to another worker: there it was taken as a claim (the
patient paid cash) while the first worker's COMMIT landed (the fund and the account paid too).

So such a message is also written here, one small file per message in the journal's
directory, which every worker of the host shares (`[journal] dir`), and a process about to take
a message off the ledger's path looks here first. Only the rare paths touch the files: a till
told to retry while its message is at work or in doubt, the end of such an attempt, and the
plan's detour; the normal path does not. A file outlives its writer: a worker killed while its
COMMIT hung leaves the doubt to its siblings and its successor. A file is removed when the
ledger answers for its message in a process that knows of it; one nobody clears is harmless
(it makes only a retry of that same message wait for the ledger) and is swept after
`KEPT_SECONDS`.

Not fsynced: a host that crashes takes its workers with it, and a till's retry then goes to
another host, which no file here could tell.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("gateway.pipeline.shared_doubts")

Key = tuple[str, str]  # (fixmedins_code, msgid)

# What a file says of its message.
AT_WORK = "at-work"  # an attempt still at work, its till told to retry
IN_DOUBT = "in-doubt"  # its COMMIT went out and no reply came back

SUBDIR = "in-doubt"
# A doubt kept longer than this is over whatever became of it: the till has long since been told
# by the ledger, or given up the message.
KEPT_SECONDS = 2 * 24 * 3600


class SharedDoubts:
    """The files of one directory, by message."""

    __slots__ = ("directory",)

    def __init__(self, journal_dir: Path) -> None:
        self.directory = journal_dir / SUBDIR

    def _path(self, key: Key) -> Path:
        # A msgid is the client's text: hashed, it is a file name whatever it holds.
        name = hashlib.sha256(f"{key[0]}\x00{key[1]}".encode()).hexdigest()[:40]
        return self.directory / name

    def mark(self, key: Key, state: str) -> None:
        """Siblings must not take this message off the ledger's path until it is cleared."""
        path = self._path(key)
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except FileNotFoundError:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{state}\t{key[0]}\t{key[1]}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            # The process's own doubt still holds here; only its siblings are not told.
            log.exception("could not record a message in doubt for the other workers")

    def clear(self, key: Key) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError:
            log.exception("could not clear a message in doubt")

    def held(self, key: Key) -> str | None:
        """AT_WORK or IN_DOUBT, as the file says; None when there is none."""
        try:
            with self._path(key).open("rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            return None
        except OSError:
            # Unreadable: the message may be held; taking it as a claim could pay it twice.
            return AT_WORK
        return IN_DOUBT if head.startswith(IN_DOUBT.encode()) else AT_WORK

    def sweep(self, now: float | None = None) -> int:
        """Remove the files older than KEPT_SECONDS; how many were removed."""
        limit = (time.time() if now is None else now) - KEPT_SECONDS
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed
