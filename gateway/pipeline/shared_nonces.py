"""Signed requests' nonces, shared by the workers of one host when Redis is not there to share
them.

A nonce is accepted once per timestamp (gateway.pipeline.auth). With Redis every process asks
Redis; without it (none configured, or its breaker open) each process remembered only its own.
Found from outside: with `serve --workers 2` and no Redis, one captured set of signed headers
was taken once by each worker, the second time with a body of the sender's choosing (the
signature does not cover the body).

So the workers of a host keep the nonces they take in a table every one of them maps (in the
host's shared memory, named by the journal directory they share and their ledger): a fixed-size file of
slots, each a nonce's 64-bit fingerprint and the second it may be forgotten. A nonce is looked
for in a window of slots from its hash and written into the first free or expired one, under
one lock: two workers taking the same nonce at once are one after the other here. A window
full of live nonces gives up its oldest, as the process's own memory gives up its oldest past
its bound: about two million nonces in the window at once, far past any host's rate.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from pathlib import Path

from gateway.ops.shared_map import SharedMap

SLOTS = 1 << 21
WINDOW = 32  # slots looked at for one nonce
_WINDOW = struct.Struct(f"<{2 * WINDOW}Q")  # (fingerprint, forget after) per slot
_ENTRY = struct.Struct("<QQ")
# After the slots, the latest second any nonce in them may be forgotten: the table outlives its
# last worker until then (found from outside: a graceful restart removed it, and headers taken
# in the five minutes before were taken again).
_UNTIL_AT = (SLOTS + WINDOW) * _ENTRY.size
_UNTIL = struct.Struct("<Q")
SIZE = _UNTIL_AT + _ENTRY.size  # 32 MiB, sparse: only the slots used take memory
_blake2b = hashlib.blake2b


def memory_dir(fallback: Path) -> Path:
    """Where the table lives: `$GATEWAY_SHARED_MEMORY` where set (a test suite's gateways keep
    theirs in its own folder, removed with it: a full run left a hundred tables in the host's
    shared memory for their windows), else the host's shared memory (/dev/shm), else
    `fallback`."""
    chosen = os.environ.get("GATEWAY_SHARED_MEMORY")
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback


class SharedNonces:
    """The table of one deployment's nonces, shared by the workers of a host: those of one
    journal directory and one ledger (`key`). In `directory`, normally shared memory: written on
    every signed request, a table in a file on disk had its pages written back and faulted
    again, tens of µs a request in the harness (benchmarks/RESULTS.md). It lives while a
    worker uses it, and after the last until the window of the last nonce it holds has
    passed."""

    def __init__(self, directory: Path, key: str) -> None:
        self._shared = SharedMap(
            directory, "sgw-nonces", key, SIZE, transient=True, until_at=_UNTIL_AT
        )
        self.path = self._shared.path
        self._until = 0  # the latest time this process wrote at _UNTIL_AT

    def first_use(self, key: str, now: float, keep_seconds: int) -> bool | None:
        """Whether no worker of this host took `key` before (and now it is taken); None when
        the table cannot be used, for the caller's own memory to decide. Every signed request
        comes here: written for few Python steps (about 4 µs, benchmarks/
        test_shared_nonces_bench.py)."""
        table = self._shared.mapped()
        if table is None:
            return None
        digest = _blake2b(key.encode(), digest_size=8).digest()
        fingerprint = int.from_bytes(digest, "little") or 1  # 0 marks a free slot
        offset = (fingerprint % SLOTS) * _ENTRY.size
        second = int(now)
        fd = self._shared.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            window = _WINDOW.unpack_from(table, offset)
            held, until = window[0::2], window[1::2]
            if fingerprint in held and any(
                h == fingerprint and u > second for h, u in zip(held, until, strict=True)
            ):
                return False
            # The first slot free or past its time (nearly always the first one looked at);
            # in a window full of live nonces, the oldest's.
            for slot, forget_after in enumerate(until):  # noqa: B007 (slot is read after the loop)
                if forget_after <= second:
                    break
            else:
                slot = until.index(min(until))
            forget_at = second + keep_seconds
            _ENTRY.pack_into(table, offset + slot * _ENTRY.size, fingerprint, forget_at)
            if forget_at > self._until:  # once a second at most
                if forget_at > _UNTIL.unpack_from(table, _UNTIL_AT)[0]:
                    _UNTIL.pack_into(table, _UNTIL_AT, forget_at)
                self._until = forget_at
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._shared.close()
