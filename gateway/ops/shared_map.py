"""A small file the workers of one host map into memory, for what they must tell each other at
once without Redis: the catalog versions their requests need (gateway.app.catalog_versions,
beside the journal, which they share) and the signed requests' nonces (gateway.pipeline.
shared_nonces, in shared memory: written on every signed request, a table on disk had its
pages written back and faulted again, tens of µs a request in the harness: benchmarks/
RESULTS.md). Mapped on first use, so that a command which serves nothing never creates it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("gateway.ops.shared_map")


class SharedMap:
    """`size` bytes of `<directory>/<stem>-<the key's hash>`, zeros at first. The key names the
    deployment (its database, its journal directory): two on one host never mix.

    `transient`: the file lives as long as a process uses it, and, where `until_at` is the
    offset of a little-endian 64-bit Unix time in it, until that time. Each process holds a
    shared lock on a `.users` file beside it for its life; the last to close removes both unless
    the time is still ahead (a table in shared memory is not left behind by every test's
    gateway, and a restart within it finds what it holds)."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        key: str,
        size: int,
        *,
        transient: bool = False,
        until_at: int | None = None,
    ) -> None:
        self._until_at = until_at
        self._map: mmap.mmap | None = None
        self.fd = -1  # the file, once mapped: its lock (flock) is the table's
        self._users = -1
        self._opened = False
        self._directory = directory
        self._size = size
        self._transient = transient
        name = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = directory / f"{stem}-{name}"
        self._users_path = directory / f"{stem}-{name}.users"

    def mapped(self) -> mmap.mmap | None:
        """The shared bytes; None where the file cannot be made (a read-only directory: this
        process then keeps to itself, and says so once)."""
        return self._map if self._opened else self._open()

    def _open(self) -> mmap.mmap | None:
        self._opened = True
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            if self._transient:
                self._users = self._join()
                self._sweep()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                with _locked(fd):
                    if os.fstat(fd).st_size < self._size:
                        os.ftruncate(fd, self._size)
                self._map = mmap.mmap(fd, self._size)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        except OSError:
            log.warning("not shared with other workers (%s)", self.path)
        return self._map

    def _join(self) -> int:
        """A shared lock on the users file now at its path (one the last user removed while
        this process waited for it is left for the next)."""
        while True:
            users = os.open(self._users_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(users, fcntl.LOCK_SH)
            try:
                current = os.stat(self._users_path).st_ino == os.fstat(users).st_ino
            except FileNotFoundError:
                current = False
            if current:
                return users
            os.close(users)

    def _sweep(self) -> None:
        """Remove the tables of this kind that no process uses: their last user was killed
        before it could (a gateway stopped with kill -9; found in CI, the killed gateways of
        the adversity tests left theirs in /dev/shm). A process starting to use one meanwhile
        finds its users file gone and begins again (`_join`)."""
        stem = self.path.name.rsplit("-", 1)[0]
        for users_path in self._directory.glob(f"{stem}-*.users"):
            if users_path == self._users_path:
                continue
            try:
                users = os.open(users_path, os.O_RDWR)
            except OSError:
                continue  # removed meanwhile
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(users)  # in use
                continue
            try:
                table = os.open(users_path.with_suffix(""), os.O_RDONLY)
            except FileNotFoundError:
                needed = False
            else:
                needed = self._still_needed(table)
                os.close(table)
            if not needed:
                with contextlib.suppress(FileNotFoundError):
                    users_path.with_suffix("").unlink()
                with contextlib.suppress(FileNotFoundError):
                    users_path.unlink()
            os.close(users)

    def _still_needed(self, fd: int) -> bool:
        """Whether the table's own time (`until_at`) is still ahead."""
        if self._until_at is None:
            return False
        raw = os.pread(fd, 8, self._until_at)
        return len(raw) == 8 and int.from_bytes(raw, "little") > time.time()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One process at a time (call `mapped` first)."""
        with _locked(self.fd):
            yield

    def close(self) -> None:
        self._opened = True  # closed: never mapped again
        if self._users >= 0:
            try:
                fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # another process uses it still
            else:
                if self.fd < 0 or not self._still_needed(self.fd):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    with contextlib.suppress(FileNotFoundError):
                        self._users_path.unlink()
            os.close(self._users)
            self._users = -1
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
