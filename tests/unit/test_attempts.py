"""Attempts: which messages may still commit, and which are in doubt (their COMMIT sent, no
reply) until the ledger answers an attempt of them; and what the host's other workers see of
them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.pipeline import attempts as attempts_module
from gateway.pipeline.attempts import Attempts
from gateway.pipeline.shared_doubts import AT_WORK, IN_DOUBT, KEPT_SECONDS, SUBDIR, SharedDoubts

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


# The host's workers share the journal's directory, and with it the messages each holds.


def _workers(tmp_path: Path) -> tuple[Attempts, Attempts]:
    return Attempts(SharedDoubts(tmp_path)), Attempts(SharedDoubts(tmp_path))


def test_a_doubt_is_seen_by_the_other_workers_until_the_ledger_answers(tmp_path: Path) -> None:
    first, second = _workers(tmp_path)
    first.begin(KEY)
    first.committing(KEY)
    first.end(KEY)
    assert second.elsewhere(KEY) == IN_DOUBT and not second.running(KEY)
    second.resolved(KEY)  # the ledger answered the retry there: over for every worker
    assert first.elsewhere(KEY) is None and Attempts(SharedDoubts(tmp_path)).elsewhere(KEY) is None


def test_a_message_at_work_whose_till_was_told_to_retry_is_seen_elsewhere_until_it_ends(
    tmp_path: Path,
) -> None:
    first, second = _workers(tmp_path)
    first.begin(KEY)
    assert second.elsewhere(KEY) is None  # at work, its till not answered yet: nothing written
    first.told_to_retry(KEY)
    assert second.elsewhere(KEY) == AT_WORK
    first.committing(KEY)
    first.end(KEY)  # its COMMIT unanswered: now in doubt
    assert Attempts(SharedDoubts(tmp_path)).elsewhere(KEY) == IN_DOUBT
    first.resolved(KEY)
    assert Attempts(SharedDoubts(tmp_path)).elsewhere(KEY) is None


def test_an_attempt_over_without_a_doubt_clears_what_it_told(tmp_path: Path) -> None:
    first, second = _workers(tmp_path)
    first.begin(KEY)
    first.told_to_retry(KEY)
    first.committing(KEY)
    first.committed(KEY)
    first.end(KEY)
    assert second.elsewhere(KEY) is None
    assert not any((tmp_path / SUBDIR).iterdir())


def test_a_worker_never_reads_its_own_hold_as_another_workers(tmp_path: Path) -> None:
    first, _ = _workers(tmp_path)
    first.begin(KEY)
    first.told_to_retry(KEY)
    assert first.elsewhere(KEY) is None and first.running(KEY)


def test_a_message_neither_at_work_nor_in_doubt_is_not_written(tmp_path: Path) -> None:
    first, _ = _workers(tmp_path)
    first.told_to_retry(KEY)
    assert not (tmp_path / SUBDIR).exists()


def test_a_msgid_of_any_text_is_a_file_name(tmp_path: Path) -> None:
    first, second = _workers(tmp_path)
    key = ("H44180000001", "../../etc/passwd\x00/ 医保")
    first.begin(key)
    first.committing(key)
    first.end(key)
    assert second.elsewhere(key) == IN_DOUBT and second.elsewhere(KEY) is None
    assert [p.parent for p in (tmp_path / SUBDIR).iterdir()] == [tmp_path / SUBDIR]


def test_old_files_are_swept(tmp_path: Path) -> None:
    doubts, sibling = SharedDoubts(tmp_path), SharedDoubts(tmp_path)
    doubts.mark(KEY, IN_DOUBT)
    assert doubts.sweep() == 0 and sibling.held(KEY) == IN_DOUBT
    assert doubts.sweep(now=time.time() + KEPT_SECONDS + 60) == 1
    assert sibling.held(KEY) is None
    assert not any((tmp_path / SUBDIR).iterdir())  # the message's folder too


def test_one_attempts_answered_commit_does_not_stand_for_anothers() -> None:
    """Found from outside: a retry's batch held the message beside the first attempt, its own
    COMMIT (which wrote nothing of the message) was answered, and the first attempt's COMMIT,
    still unanswered, was no longer counted: no doubt was left when both ended."""
    at = Attempts()
    at.begin(KEY)
    at.committing(KEY)  # the first attempt's COMMIT, never answered
    at.begin(KEY)
    at.committing(KEY)
    at.committed(KEY)  # the retry's batch, answered
    at.end(KEY)
    at.end(KEY)
    assert at.in_doubt(KEY)


def test_a_retry_over_without_a_doubt_leaves_an_earlier_doubt_told(tmp_path: Path) -> None:
    """Found from outside: the retry's attempt ended, its worker cleared the file though the
    first attempt's COMMIT was still in doubt there, and a sibling took the next try as a claim."""
    first, second = _workers(tmp_path)
    first.begin(KEY)
    first.told_to_retry(KEY)
    first.committing(KEY)
    first.end(KEY)  # in doubt
    first.begin(KEY)  # the second try, to the same worker
    first.told_to_retry(KEY)
    first.end(KEY)  # over without a COMMIT of its own
    assert first.in_doubt(KEY)
    assert second.elsewhere(KEY) == IN_DOUBT


def test_a_sibling_holding_the_message_for_a_moment_leaves_the_doubt_told(tmp_path: Path) -> None:
    """Found from outside: the other worker's own retry of the message was at work and told to
    retry (writing the message's one file over the first worker's doubt), then ended and
    cleared that file; its next try was taken as a claim while the first worker's COMMIT was
    still in doubt. Each process writes and clears its own file."""
    first, second = _workers(tmp_path)
    first.begin(KEY)
    first.committing(KEY)
    first.end(KEY)  # in doubt in the first worker
    second.begin(KEY)  # the retry, at work in the second
    second.told_to_retry(KEY)
    assert second.elsewhere(KEY) == IN_DOUBT  # its own file hides nothing of the first's
    second.end(KEY)
    assert second.elsewhere(KEY) == IN_DOUBT
    assert Attempts(SharedDoubts(tmp_path)).elsewhere(KEY) == IN_DOUBT
