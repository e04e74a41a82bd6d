"""The console's hashing budget below one hash a second (gateway.emergency.operators.Hasher), with a clock
the test sets: one hash at once, then one per 1/rate seconds; a hash taken for an attempt that
a lock then refuses is given back."""

from __future__ import annotations

import pytest

from gateway.emergency import operators
from gateway.emergency.operators import Hasher, LoginPolicy


def test_a_budget_under_one_a_second_still_lets_one_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(operators.time, "monotonic", lambda: clock[0])
    hasher = Hasher()
    hasher.configure(LoginPolicy(hashes_per_second=0.2))
    assert hasher.take("ghost", known=False)
    assert not hasher.take("ghost-2", known=False)  # made-up names share one budget
    assert hasher.take("duty", known=True)  # a known name has its own
    clock[0] += 4.0
    assert not hasher.take("ghost-3", known=False)
    clock[0] += 1.0  # five seconds: one more
    assert hasher.take("ghost-3", known=False)
    hasher.give_back("ghost-3", known=False)  # then refused by a lock, before any hashing
    assert hasher.take("ghost-4", known=False)
    assert not hasher.take("ghost-5", known=False)
