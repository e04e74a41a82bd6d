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


def test_recalled_answers_are_older_than_the_process_own_and_forgotten_first() -> None:
    """A starting process recalls the ledger's latest answers (newest first); its own answers
    stay newer, and a full store forgets the oldest recalled ones first."""
    from gateway.ledger.idempotency import Stored

    recent = RecentAnswers(3)
    recent.remember("P1", "own", b"o" * 32, b"own answer")
    recent.recall(
        [("P1", f"r{n}", Stored(b"r" * 32, f"recalled {n}".encode())) for n in (9, 8, 7, 6)]
        + [("P1", "own", Stored(b"x" * 32, b"older copy"))]
    )
    assert len(recent) == 3
    own = recent.answered("P1", "own")
    assert own is not None and own.answer == b"own answer"  # not replaced by the older copy
    kept = [m for m in ("r9", "r8", "r7", "r6") if recent.answered("P1", m) is not None]
    assert kept == ["r9", "r8"]  # the newest of the recalled
    recent.remember("P1", "later", b"l" * 32, b"later answer")
    assert recent.answered("P1", "r8") is None and recent.answered("P1", "r9") is not None
