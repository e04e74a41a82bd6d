"""The answers a process keeps for retries while the ledger is out of reach: newest kept,
oldest forgotten first, none kept when turned off."""

from __future__ import annotations

from gateway.pipeline.recent_answers import RecentAnswers


def test_the_newest_answers_are_kept_and_the_oldest_forgotten() -> None:
    recent = RecentAnswers(3)
    for n in range(5):
        recent.remember("P1", f"m{n}", bytes([n]) * 32, f"answer {n}".encode())
    assert len(recent) == 3
    assert recent.answered("P1", "m0") is None and recent.answered("P1", "m1") is None
    kept = recent.answered("P1", "m4")
    assert kept is not None and kept.answer == b"answer 4" and kept.body_sha256 == b"\x04" * 32
    assert not kept.tombstone


def test_a_msgid_is_an_institutions_own() -> None:
    recent = RecentAnswers(10)
    recent.remember("P1", "m", b"d" * 32, b"one")
    assert recent.answered("P2", "m") is None


def test_zero_keeps_nothing() -> None:
    recent = RecentAnswers(0)
    recent.remember("P1", "m", b"d" * 32, b"one")
    assert len(recent) == 0 and recent.answered("P1", "m") is None
