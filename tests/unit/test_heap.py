"""The serving process freezes its long-lived heap; a process that starts gateways and stops
them (these tests) does not unless told."""

from __future__ import annotations

import gc

from gateway.app import heap


def test_nothing_is_frozen_unless_the_process_only_serves() -> None:
    before, threshold = gc.get_freeze_count(), gc.get_threshold()
    heap.settle_after_start()
    heap.settle_built()
    assert gc.get_freeze_count() == before
    assert gc.get_threshold() == threshold


def test_a_serving_process_collects_its_young_objects_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        heap.enable()
        heap.settle_after_start()
        assert gc.get_threshold() == (heap.YOUNG, *threshold[1:])
        assert threshold[0] < heap.YOUNG
    finally:
        heap._enabled = False
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_serving_process_freezes_what_it_holds_after_start_and_after_a_build() -> None:
    kept = [[i] for i in range(1000)]  # long-lived: a snapshot's rows (lists: always tracked)
    try:
        heap.enable()
        heap.settle_after_start()
        after_start = gc.get_freeze_count()
        assert after_start >= len(kept)
        swapped = [[i] for i in range(500)]
        heap.settle_built()
        assert gc.get_freeze_count() >= after_start + len(swapped)
    finally:
        heap._enabled = False
        gc.unfreeze()
