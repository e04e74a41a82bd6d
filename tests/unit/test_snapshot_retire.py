"""A swapped-out catalog snapshot is freed in pieces, but never while a request still holds it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gateway.app.reference import load_reference, snapshot_of
from gateway.app.runtime import _retire

REF = load_reference(Path(__file__).resolve().parents[2] / "config" / "demo")
DAY = dt.date(2026, 3, 1)


def test_a_snapshot_held_by_a_request_is_left_whole() -> None:
    held = snapshot_of(REF)  # a request in flight still settles against it
    before = held.mapping("H44180000001", "YP0003", DAY)
    assert before is not None
    _retire([held], wait_seconds=0.1)
    assert held.mapping("H44180000001", "YP0003", DAY) == before
    assert len(held.mappings) == len(REF.mappings)


def test_dismantling_empties_only_a_snapshot_no_one_holds() -> None:
    snapshot = snapshot_of(REF)
    pieces = snapshot.dismantle()
    assert len(pieces) == len(REF.mappings)
    assert snapshot.mapping("H44180000001", "YP0003", DAY) is None  # indexes emptied
    # A fresh snapshot of the same data is unaffected: nothing is shared between them.
    assert snapshot_of(REF).mapping("H44180000001", "YP0003", DAY) is not None
