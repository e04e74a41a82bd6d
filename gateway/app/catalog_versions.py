"""Which catalog version each institution's requests need, shared by the workers of one host.

A 3301 is answered once its process has swapped in the new snapshot; the host's other workers
hear of it by Redis's announcement or their poll, and rebuild theirs, which takes a while. Found
from outside: with two workers, sales sent right after a 3301 was answered, and handed by the
kernel to the other worker, were settled on the replaced mapping (a class-03 item priced as
class 01), and the ledger kept them so.

So the process that answers a catalog change writes the snapshot version that holds it in the
institution's slot of a small file every worker maps (beside the journal, which the workers of
a host share), before it answers. Each request reads its institution's slot (one look into
shared memory), and a worker whose snapshot is older catches up before it prices anything of
that institution; the other institutions' requests go on with the snapshot they have.

Institutions share a slot by hash: a change of one makes its neighbours' next requests wait for
the same catch-up, never miss it. Another host's workers still hear of a change by Redis or the
poll, as before.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from gateway.ops.shared_map import SharedMap

SLOTS = 4096
_SLOT = struct.Struct("<q")
SIZE = SLOTS * _SLOT.size


class CatalogVersions:
    """The shared slots of one ledger (the file is named by its database, so that a journal
    directory kept across databases never holds another one's versions)."""

    def __init__(self, journal_dir: Path, database_url: str) -> None:
        self._shared = SharedMap(journal_dir, "catalog-versions", database_url, SIZE)
        self._slots: dict[str, int] = {}
        self.path = self._shared.path

    def _slot(self, fixmedins_code: str) -> int:
        slot = self._slots.get(fixmedins_code)
        if slot is None:
            slot = (zlib.crc32(fixmedins_code.encode()) % SLOTS) * _SLOT.size
            if len(self._slots) < 100_000:  # codes are checked against the snapshot first
                self._slots[fixmedins_code] = slot
        return slot

    def wanted(self, fixmedins_code: str) -> int:
        """The least snapshot version this institution's requests may be priced with."""
        shared = self._shared.mapped()
        if shared is None:
            return 0
        value: int = _SLOT.unpack_from(shared, self._slot(fixmedins_code))[0]
        return value

    def raise_to(self, fixmedins_code: str, version: int) -> None:
        """Requests of this institution need at least `version` from now on, in every worker."""
        self._store(fixmedins_code, version, lambda old: version > old)

    def lower_to(self, fixmedins_code: str, version: int) -> None:
        """The slot asks for more than the ledger has (a database made afresh under the same
        name): what the ledger has is what may be asked."""
        self._store(fixmedins_code, version, lambda old: version < old)

    def _store(self, fixmedins_code: str, version: int, replaces: Callable[[int], bool]) -> None:
        shared = self._shared.mapped()
        if shared is None:
            return
        slot = self._slot(fixmedins_code)
        with self._shared.locked():  # one writer at a time: a lower value never wins
            old: int = _SLOT.unpack_from(shared, slot)[0]
            if replaces(old):
                _SLOT.pack_into(shared, slot, version)

    def close(self) -> None:
        self._shared.close()
