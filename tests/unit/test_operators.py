"""Operators: password hashes, the demo operators file, the CLI that makes hashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.emergency import operators
from gateway.emergency.operators import (
    Hasher,
    HashersBusy,
    LoginPolicy,
    check_password,
    hash_password,
    load_operators,
)

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo" / "operators.toml"


def test_hashes_verify_only_the_right_password() -> None:
    stored = hash_password("duty-2026")
    assert stored != hash_password("duty-2026")  # salted
    assert check_password(stored, "duty-2026")
    assert not check_password(stored, "duty-2027")
    assert not check_password("plain-text", "plain-text")


def test_demo_operators_and_the_hash_command() -> None:
    ops = load_operators(DEMO)
    assert {(o.login, o.role) for o in ops.values()} == {
        ("duty", "operator"),
        ("watch", "viewer"),
        ("clerk1", "clerk"),
        ("clerk2", "clerk"),
        ("reviewer1", "reviewer"),
        ("reviewer2", "reviewer"),
        *((f"approver{n}", "approver") for n in range(1, 5)),
    }
    assert all(
        check_password(o.password, f"{o.login}-2026")
        for o in ops.values()
        if o.role not in ("operator", "viewer")
    )
    assert check_password(ops["duty"].password, "duty-2026")
    assert check_password(ops["watch"].password, "watch-2026")
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "operators", "hash"],
        input="a-long-password\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert check_password(made.stdout.strip(), "a-long-password")


async def test_hashing_has_a_budget_per_second_and_refuses_past_it_without_hashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A guesser rotating addresses escapes the per-address lock; the budget bounds the CPU the
    # guesses can take from settlements whatever the number of addresses.
    clock = [1000.0]
    monkeypatch.setattr(operators.time, "monotonic", lambda: clock[0])
    hasher = Hasher()
    hasher.configure(LoginPolicy(hashes_per_second=2.0))
    stored = hash_password("right")
    try:
        # Made-up names share one budget: spent, they are refused before any hashing ...
        assert await hasher.check(None, "guess-1", name="ghost-1") is False
        assert await hasher.check(None, "guess-2", name="ghost-2") is False
        with pytest.raises(HashersBusy):  # the second's budget is spent
            await hasher.check(None, "guess-3", name="ghost-3")
        assert hasher.pending == 0  # refused before a thread was asked for
        # ... and cannot spend a known operator's own budget.
        assert await hasher.check(stored, "right", name="duty") is True
        assert await hasher.check(stored, "wrong", name="duty") is False
        with pytest.raises(HashersBusy):
            await hasher.check(stored, "right", name="duty")
        # The operator's own desk is not held to the budget the guessers spent.
        assert await hasher.check(stored, "right", desk=True, name="duty") is True
        clock[0] += 0.5  # half a second later: one more hash in each budget
        assert await hasher.check(stored, "right", name="duty") is True
        with pytest.raises(HashersBusy):
            await hasher.check(stored, "right", name="duty")
        assert await hasher.check(None, "guess-4", name="ghost-4") is False
    finally:
        hasher.close()
