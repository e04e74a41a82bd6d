"""The local journal: fsynced records, torn tails skipped, segments of live processes left alone."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from gateway.emergency.deferred.journal import Journal, read_segment
from gateway.ledger.deferred import Entry


def entry(n: int) -> Entry:
    return Entry(
        kind="claim", fixmedins_code="P1", msgid=f"m{n}", infno="2102", psn_no="p", mdtrt_id="",
        service_date=dt.date(2026, 7, 1), medfee_sumamt=11500, body=b'{"x":1}', answer=b"{}",
        received_at=dt.datetime(2026, 7, 1, 10, 0), claim_id=f"DF{n}", digest=b"\x01" * 32,
    )  # fmt: skip


async def test_records_survive_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for n in range(3):
        await journal.append(entry(n))
    assert journal.answers[("P1", "m1")] == b"{}" and "DF2" in journal.claims
    # A live process's segment is locked: nobody else drains it.
    assert Journal(tmp_path).drainable() == []
    journal.close()  # as if the process died: the lock goes with it
    _torn_tail_is_skipped(tmp_path)


def _torn_tail_is_skipped(tmp_path: Path) -> None:
    (segment,) = tmp_path.glob("*.journal")
    with segment.open("ab") as f:
        f.write(b'{"kind":"claim","fixmedins_code":"P1","ms')  # killed mid-write, never answered
    assert [e.msgid for e in read_segment(segment)] == ["m0", "m1", "m2"]
    assert next(iter(read_segment(segment))) == entry(0)
    found = Journal(tmp_path).drainable()
    assert [p for p, _ in found] == [segment]
    for _, handle in found:
        handle.close()


async def test_the_claims_a_dead_worker_left_are_counted_until_drained(tmp_path: Path) -> None:
    """Found from outside: a worker killed with kill -9 during an outage took its claims out
    of the claims gauge until they were drained. A live worker counts the claims of segments no
    process holds, less those withdrawn there; its own segment is its own gauge's."""
    dead = Journal(tmp_path)
    for n in range(3):
        await dead.append(entry(n))
    await dead.append(
        Entry(
            kind="withdrawal", fixmedins_code="P1", msgid="w1", infno="2103", psn_no="p",
            mdtrt_id="", service_date=dt.date(2026, 7, 1), medfee_sumamt=0, body=b"{}",
            answer=b"{}", received_at=dt.datetime(2026, 7, 1, 10, 5), claim_id="DF1",
        )
    )  # fmt: skip
    (segment,) = _segments(tmp_path)
    alive = Journal(tmp_path)
    await alive.append(entry(7))
    assert alive.unheld_claims() == frozenset()  # the other process is running: its own count
    dead.close()  # killed: its lock goes with it
    _tear(segment)
    assert alive.unheld_claims() == {"DF0", "DF2"}
    assert alive.unheld_claims() == {"DF0", "DF2"}  # counted again from what it kept
    for path, handle in alive.drainable():  # drained: gone from the count
        handle.close()
        _drained(path)
    assert alive.unheld_claims() == frozenset()
    alive.close()


def _tear(segment: Path) -> None:
    with segment.open("ab") as f:
        f.write(b'{"kind":"claim","fixmedins_')  # killed mid-write, never answered


def _segments(directory: Path) -> list[Path]:
    return list(directory.glob("*.journal"))


def _drained(segment: Path) -> None:
    segment.unlink()


async def test_other_processes_claims_are_answered_here_until_their_segment_is_drained(
    tmp_path: Path,
) -> None:
    """Found from outside, twice: a gateway restarted after kill -9, and a worker started in
    place of a killed one beside a live sibling, met the claims journaled by another process
    (not yet drained) as new requests, and settled their retries for real. Every process
    answers the claims of every other segment, a live one's as it grows, until the segment is
    gone (drained, here or by its owner)."""
    sibling = Journal(tmp_path)
    for n in range(2):
        await sibling.append(entry(n))
    alive = Journal(tmp_path)
    await alive.append(entry(7))
    alive.adopt_siblings()
    assert alive.answered("P1", "m0") == (b"\x01" * 32, b"{}")  # a live sibling's claim
    await sibling.append(entry(2))
    (segment,) = [p for p in _segments(tmp_path) if p != alive._path]
    with segment.open("ab") as f:
        f.write(b'{"kind":"claim","fixmedins_')  # a line being written: read when complete
    alive.adopt_siblings()
    assert alive.answered("P1", "m2") is not None and alive.holds_anything
    sibling.close()  # killed: its segment stays until drained
    alive.adopt_siblings()
    assert alive.answered("P1", "m1") is not None
    for path, handle in alive.drainable():
        handle.close()
        _drained(path)
    alive.adopt_siblings()
    assert [alive.answered("P1", f"m{n}") for n in range(3)] == [None, None, None]
    assert alive.answered("P1", "m7") is not None  # its own, until its own drain
    alive.close()


async def test_the_visits_and_claims_a_journal_names_are_pending_until_drained(
    tmp_path: Path,
) -> None:
    """What the ledger cannot see yet waits: a visit whose calls, or a claim, a segment holds
    (this process's or a sibling's) is pending until that segment's entries are drained; a
    withdrawal names nothing of its own, and another institution's same number is not it."""
    call = dataclasses.replace(entry(1), kind="call", infno="2204", mdtrt_id="V1", claim_id=None)
    own = Journal(tmp_path)
    assert not own.names_anything
    await own.append(call)
    assert own.names_anything and own.pending("P1", ("V1",))
    assert not own.pending("P2", ("V1",)) and not own.pending("P1", ("V2",))
    sibling = Journal(tmp_path)
    await sibling.append(entry(2))
    await sibling.append(dataclasses.replace(entry(3), kind="withdrawal", claim_id="DF9"))
    own.adopt_siblings()
    assert own.pending("P1", ("DF2",)) and not own.pending("P1", ("DF9",))
    own.forget([call])
    assert not own.pending("P1", ("V1",)) and own.pending("P1", ("V2", "DF2"))
    sibling.close()
    for path, handle in own.drainable():
        handle.close()
        _drained(path)
    own.adopt_siblings()
    assert not own.names_anything
    own.close()
