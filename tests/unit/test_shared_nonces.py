"""The host's shared table of signed requests' nonces (gateway.pipeline.shared_nonces): two
tables of one key stand for two worker processes (each opens the file itself, so each holds its
own lock, as processes do). In a test's own directory, not the host's shared memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.pipeline import shared_nonces
from gateway.pipeline.shared_nonces import SharedNonces, memory_dir

KEY = "/srv/gateway/var/journal\npostgresql://postgres@127.0.0.1/ledger"
KEEP = 660


def test_a_nonce_one_worker_took_is_refused_by_the_other(tmp_path: Path) -> None:
    one, other = SharedNonces(tmp_path, KEY), SharedNonces(tmp_path, KEY)
    try:
        assert one.first_use("H1:1700000000:abc", 1_700_000_000.5, KEEP) is True
        assert other.first_use("H1:1700000000:abc", 1_700_000_001.0, KEEP) is False
        assert one.first_use("H1:1700000000:abc", 1_700_000_002.0, KEEP) is False
        assert other.first_use("H1:1700000000:abd", 1_700_000_002.0, KEEP) is True
        # Another deployment's gateways on the same host keep their own.
        elsewhere = SharedNonces(tmp_path, KEY + "2")
        assert elsewhere.first_use("H1:1700000000:abc", 1_700_000_002.0, KEEP) is True
        elsewhere.close()
    finally:
        one.close()
        other.close()


def test_a_nonce_is_forgotten_only_after_its_time(tmp_path: Path) -> None:
    table = SharedNonces(tmp_path, KEY)
    try:
        assert table.first_use("k", 1000.0, KEEP) is True
        assert table.first_use("k", 1000.0 + KEEP - 1, KEEP) is False
        assert table.first_use("k", 1000.0 + KEEP, KEEP) is True  # past its window: a slot again
    finally:
        table.close()


def test_a_full_window_gives_up_its_oldest_nonce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every nonce lands in one window of slots (a table of one slot): past WINDOW live nonces
    the oldest is forgotten, the others kept, as the process's own memory does past its bound."""
    monkeypatch.setattr(shared_nonces, "SLOTS", 1)
    monkeypatch.setattr(shared_nonces, "_UNTIL_AT", (1 + shared_nonces.WINDOW) * 16)
    monkeypatch.setattr(shared_nonces, "SIZE", (2 + shared_nonces.WINDOW) * 16)
    table = SharedNonces(tmp_path, KEY)
    try:
        window = shared_nonces.WINDOW
        for n in range(window):
            assert table.first_use(f"n{n}", 1000.0 + n, KEEP) is True
        assert all(table.first_use(f"n{n}", 1000.0 + window, KEEP) is False for n in range(window))
        assert table.first_use("late", 1000.0 + window, KEEP) is True
        assert table.first_use("n0", 1000.0 + window, KEEP) is True  # the oldest, given up
        assert table.first_use("n2", 1000.0 + window, KEEP) is False
    finally:
        table.close()


def test_a_directory_it_cannot_make_leaves_the_decision_to_the_process(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the journal directory's place is taken: no table can be made
    table = SharedNonces(blocked / "shm", KEY)
    try:
        assert table.first_use("k", 1000.0, KEEP) is None
    finally:
        table.close()


def test_the_table_lives_while_a_worker_uses_it(tmp_path: Path) -> None:
    """The last worker to close removes it (a table in shared memory is not left behind by
    every gateway a test starts); a worker starting afterwards begins a new one."""
    one, other = SharedNonces(tmp_path, KEY), SharedNonces(tmp_path, KEY)
    assert one.first_use("k", 1000.0, KEEP) is True
    assert other.first_use("j", 1000.0, KEEP) is True
    one.close()
    assert other.path.exists() and other.first_use("k", 1001.0, KEEP) is False
    other.close()
    assert not other.path.exists()
    assert list(tmp_path.iterdir()) == []
    later = SharedNonces(tmp_path, KEY)
    try:
        assert later.first_use("k", 1002.0, KEEP) is True
    finally:
        later.close()


def test_a_table_whose_workers_were_killed_is_removed_by_the_next_worker(tmp_path: Path) -> None:
    """Its last worker killed (kill -9) could not remove it: the next worker of any deployment
    that opens a table removes the tables nobody uses; one in use stays."""
    killed, alive = SharedNonces(tmp_path, KEY + "killed"), SharedNonces(tmp_path, KEY + "alive")
    assert killed.first_use("k", 1000.0, KEEP) and alive.first_use("k", 1000.0, KEEP)
    shared = killed._shared
    # What the kernel does for a killed process: its descriptors closed, its locks with them.
    os.close(shared._users)
    os.close(shared.fd)
    assert killed.path.exists()
    later = SharedNonces(tmp_path, KEY)
    try:
        assert later.first_use("k", 1001.0, KEEP) is True
        assert not killed.path.exists() and alive.path.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [
                alive.path.name,
                f"{alive.path.name}.users",
                later.path.name,
                f"{later.path.name}.users",
            ]
        )
    finally:
        later.close()
        alive.close()
        assert shared._map is not None
        shared._map.close()


def test_a_restart_within_the_window_finds_the_nonces_taken_before(tmp_path: Path) -> None:
    """Found from outside: a graceful stop of every worker removed the table, and headers taken
    in the five minutes before were taken again after the restart. The last worker leaves it
    while a nonce in it is within its window; once none is, the next worker removes it."""
    now = time.time()
    before = SharedNonces(tmp_path, KEY)
    assert before.first_use("k", now, KEEP) is True
    before.close()
    assert before.path.exists()
    after = SharedNonces(tmp_path, KEY)
    try:
        assert after.first_use("k", now + 1, KEEP) is False
    finally:
        after.close()
    # Its time past (a table of a deployment stopped long ago), the next worker removes it.
    stale = SharedNonces(tmp_path, KEY + "stale")
    assert stale.first_use("k", now - 2 * KEEP, KEEP) is True
    stale.close()
    assert stale.path.exists() is False  # its last nonce's window was over as it closed
    left = SharedNonces(tmp_path, KEY + "left")
    assert left.first_use("k", now, KEEP) is True
    shared = left._shared
    os.close(shared._users)  # killed with a nonce in its window: kept
    os.close(shared.fd)
    sweeper = SharedNonces(tmp_path, KEY + "sweeper")
    try:
        assert sweeper.first_use("j", now, KEEP) is True
        assert left.path.exists() and after.path.exists()
    finally:
        sweeper.close()
        assert shared._map is not None
        shared._map.close()


def test_the_tables_folder_is_the_one_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GATEWAY_SHARED_MEMORY` moves the tables (the suite keeps its gateways' in a folder of
    its own); without it they are in the host's shared memory where it can be written."""
    monkeypatch.setenv("GATEWAY_SHARED_MEMORY", str(tmp_path / "mine"))
    assert memory_dir(tmp_path / "journal") == tmp_path / "mine"
    monkeypatch.delenv("GATEWAY_SHARED_MEMORY")
    shm = Path("/dev/shm")
    expected = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / "journal"
    assert memory_dir(tmp_path / "journal") == expected
