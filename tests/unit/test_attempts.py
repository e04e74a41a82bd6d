"""Attempts: which messages may still commit, and which are in doubt (their COMMIT sent, no
reply) until the ledger answers an attempt of them."""

from __future__ import annotations

import pytest

from gateway.pipeline import attempts as attempts_module
from gateway.pipeline.attempts import Attempts

KEY = ("P44180000001", "P4418000000120261207000000001")


def test_an_attempt_is_running_from_begin_to_end() -> None:
    at = Attempts()
    at.begin(KEY)
    at.begin(KEY)
    at.end(KEY)
    assert at.running(KEY) and not at.in_doubt(KEY)
    at.end(KEY)
    assert not at.running(KEY)


def test_a_commit_answered_leaves_no_doubt() -> None:
    at = Attempts()
    at.begin(KEY)
    at.committing(KEY)
    at.committed(KEY)
    at.end(KEY)
    assert not at.running(KEY) and not at.in_doubt(KEY)


def test_a_commit_without_reply_leaves_the_message_in_doubt_until_resolved() -> None:
    at = Attempts()
    at.begin(KEY)
    at.committing(KEY)
    at.end(KEY)
    assert at.running(KEY) and at.in_doubt(KEY)
    at.begin(KEY)  # a retry at work: running, not only in doubt
    assert at.running(KEY) and not at.in_doubt(KEY)
    at.end(KEY)
    assert at.in_doubt(KEY)  # that retry never reached the ledger either
    at.resolved(KEY)
    assert not at.running(KEY) and not at.in_doubt(KEY)


def test_the_oldest_doubts_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempts_module, "DOUBTS_KEPT", 2)
    at = Attempts()
    keys = [("H", str(n)) for n in range(3)]
    for key in keys:
        at.begin(key)
        at.committing(key)
        at.end(key)
    assert [at.in_doubt(k) for k in keys] == [False, True, True]
