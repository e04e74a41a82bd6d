"""A small file the workers of one host map into memory (beside the journal, which they share),
for what they must tell each other at once without Redis: the catalog versions their requests
need (gateway.app.catalog_versions) and the signed requests' nonces (gateway.pipeline.
shared_nonces). Mapped on first use, so that a command which serves nothing never creates it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("gateway.ops.shared_map")


class SharedMap:
    """`size` bytes of `<journal_dir>/<stem>-<the database's hash>`, zeros at first. Named by
    the database: a journal directory kept across databases never mixes two deployments'."""

    def __init__(self, journal_dir: Path, stem: str, database_url: str, size: int) -> None:
        self._map: mmap.mmap | None = None
        self.fd = -1  # the file, once mapped: its lock (flock) is the table's
        self._opened = False
        self._journal_dir = journal_dir
        self._size = size
        name = hashlib.sha256(database_url.encode()).hexdigest()[:16]
        self.path = journal_dir / f"{stem}-{name}"

    def mapped(self) -> mmap.mmap | None:
        """The shared bytes; None where the file cannot be made (a read-only directory: this
        process then keeps to itself, and says so once)."""
        return self._map if self._opened else self._open()

    def _open(self) -> mmap.mmap | None:
        self._opened = True
        try:
            self._journal_dir.mkdir(parents=True, exist_ok=True)
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

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One process at a time (call `mapped` first)."""
        with _locked(self.fd):
            yield

    def close(self) -> None:
        self._opened = True  # closed: never mapped again
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
