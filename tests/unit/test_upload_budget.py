"""The heavy-upload budget per institution (gateway.pipeline.overload.UploadBudget), with a clock the
test sets: a count at once, and bytes refilled per second from a burst."""

from __future__ import annotations

from gateway.pipeline.overload import UploadBudget

MIB = 1 << 20


def test_uploads_at_once_are_bounded_per_institution() -> None:
    budget = UploadBudget(per_institution=2)
    assert budget.take("H1", 10, now=0.0) is None
    assert budget.take("H1", 10, now=0.0) is None
    refused = budget.take("H1", 10, now=0.0)
    assert refused is not None and "已达2个" in refused
    assert budget.take("H2", 10, now=0.0) is None  # another institution has its own
    budget.release("H1")
    assert budget.take("H1", 10, now=0.0) is None  # one finished: room again
    assert budget.refused == 1


def test_bytes_are_charged_at_least_the_floor_and_refill() -> None:
    budget = UploadBudget(rate=MIB, burst=3 * MIB, floor=MIB)
    for _ in range(3):  # three small files: a mebibyte each, whatever their size
        assert budget.take("H1", 1000, now=0.0) is None
        budget.release("H1")
    refused = budget.take("H1", 1000, now=0.5)  # half a mebibyte back: not enough
    assert refused is not None and "流量限额" in refused and "1MB" in refused
    assert budget.take("H1", 1000, now=1.0) is None  # a whole one back
    budget.release("H1")
    assert budget.in_flight == {}


def test_the_largest_body_fits_a_full_budget() -> None:
    # A body past the burst is charged the burst: it waits for a full budget, never for ever.
    budget = UploadBudget(rate=MIB, burst=2 * MIB, floor=MIB)
    assert budget.charge(8 * MIB) == 2 * MIB
    assert budget.take("H1", 8 * MIB, now=0.0) is None
    budget.release("H1")
    assert budget.take("H1", 8 * MIB, now=1.0) is not None
    assert budget.take("H1", 8 * MIB, now=2.0) is None


def test_no_bounds_admit_everything() -> None:
    budget = UploadBudget()
    assert not budget.active
    assert all(budget.take("H1", 8 * MIB, now=0.0) is None for _ in range(100))
