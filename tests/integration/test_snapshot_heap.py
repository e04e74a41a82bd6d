"""A serving process builds a reloaded catalog snapshot frozen (gateway.app.heap): the collector
resumes after the build with the new snapshot outside its walks, where its first collection
used to walk all of it on the event loop (P7). A process that does not only serve (these tests)
builds it as any other object."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.app import heap
from gateway.app.config import DEFAULT_REFERENCE
from gateway.app.reference import load_reference
from gateway.core.catalog import Snapshot
from gateway.ledger import db, reference_store


def _walked(snapshot: Snapshot) -> bool:
    """Whether the collector walks the snapshot's mapping index (frozen objects it does not)."""
    index = id(snapshot._mappings)
    return any(id(o) == index for o in gc.get_objects())


async def test_a_serving_process_builds_its_snapshot_frozen(
    new_database: Callable[..., Any],
) -> None:
    conn = await asyncpg.connect(await new_database("heap"))
    try:
        await db.migrate(conn)
        ref = load_reference(DEFAULT_REFERENCE)
        await reference_store.load(conn, ref)
        plain = await reference_store.read_snapshot(conn, ref)
        assert _walked(plain)
        assert gc.isenabled()
        heap.enable()
        try:
            served = await reference_store.read_snapshot(conn, ref)
            assert not _walked(served)
            assert gc.isenabled()  # the pause for the build is over
            assert served.mappings == plain.mappings
        finally:
            heap._enabled = False
            gc.unfreeze()
    finally:
        await conn.close()
