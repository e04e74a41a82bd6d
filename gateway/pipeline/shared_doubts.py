"""Messages whose outcome one process cannot vouch for, told to every process sharing its journal.

`gateway.pipeline.attempts` keeps, per process, the messages an attempt of which may yet commit:
one still at work past the answer its till was given, one whose COMMIT went out without a
reply. That stops a retry of such a message from becoming an all-cash claim in the same
process. But the workers of one host share its port, and a till's retry comes on a new
connection, which the kernel may hand to another worker: there it was taken as a claim (the
patient paid cash) while the first worker's COMMIT landed (the fund and the account paid too).

So such a message is also written here, in the journal's directory, which every worker of the
host shares (`[journal] dir`): a folder per message, a small file in it per process that holds
the message. A process about to take a message off the ledger's path looks there first. Only the rare paths touch the files: a till
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

import contextlib
import hashlib
import logging
import os
import secrets
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
    """The files of one directory: a folder per message, a file in it per process that holds
    the message. Each process writes and clears only its own file: found from outside, a sibling
    that held the same message for a moment (its own retry, at work) wrote over the first
    process's doubt and then cleared it with its own, and the next retry was taken as a claim."""

    __slots__ = ("directory", "name")

    def __init__(self, journal_dir: Path) -> None:
        self.directory = journal_dir / SUBDIR
        # This process's file name in every message's folder: unique on the host even after a
        # restart reuses the pid.
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"

    def _folder(self, key: Key) -> Path:
        # A msgid is the client's text: hashed, it is a file name whatever it holds.
        return self.directory / hashlib.sha256(f"{key[0]}\x00{key[1]}".encode()).hexdigest()[:40]

    def mark(self, key: Key, state: str) -> None:
        """Siblings must not take this message off the ledger's path until it is cleared."""
        folder = self._folder(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{state}\t{key[0]}\t{key[1]}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            # The process's own doubt still holds here; only its siblings are not told.
            log.exception("could not record a message in doubt for the other workers")

    def clear(self, key: Key) -> None:
        """This process holds the message no more (its siblings' files stay)."""
        folder = self._folder(key)
        try:
            (folder / self.name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another process's file is still there
                folder.rmdir()
        except OSError:
            log.exception("could not clear a message in doubt")

    def clear_all(self, key: Key) -> None:
        """The ledger answered for the message: no process holds it in doubt any more."""
        folder = self._folder(key)
        try:
            for entry in os.scandir(folder):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            with contextlib.suppress(OSError):
                folder.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            log.exception("could not clear a message in doubt")

    def held(self, key: Key) -> str | None:
        """How another process holds the message: IN_DOUBT where any holds it so, else AT_WORK;
        None when none does."""
        try:
            entries = [e for e in os.scandir(self._folder(key)) if e.name != self.name]
        except FileNotFoundError:
            return None
        except OSError:
            # Unreadable: the message may be held; taking it as a claim could pay it twice.
            return AT_WORK
        if not entries:
            return None
        for entry in entries:
            try:
                with open(entry.path, "rb") as f:
                    if f.read(16).startswith(IN_DOUBT.encode()):
                        return IN_DOUBT
            except FileNotFoundError:
                continue
            except OSError:
                return IN_DOUBT
        return AT_WORK

    def sweep(self, now: float | None = None) -> int:
        """Remove the files older than KEPT_SECONDS, and the folders left empty; how many files
        were removed."""
        limit = (time.time() if now is None else now) - KEPT_SECONDS
        removed = 0
        try:
            folders = list(os.scandir(self.directory))
        except OSError:
            return 0
        for folder in folders:
            try:
                for entry in os.scandir(folder.path):
                    if entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed += 1
                os.rmdir(folder.path)  # only when empty
            except OSError:
                continue
        return removed
