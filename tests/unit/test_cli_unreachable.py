"""Every command that works on the database says in one line that it cannot reach it: no
traceback (found from outside: `operators lockouts` printed one while the ledger was down, and
so did `idempotency purge`, `clearing monthly`, `corrections plan`, `shadow report` and `demo
load` against a closed port)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

DOWN = "postgresql://nobody@127.0.0.1:1/x"  # nothing listens there
COMMANDS = [
    ["operators", "lockouts"],
    ["operators", "lockouts", "--json"],
    ["operators", "unlock", "--login", "duty", "--reason", "演练"],
    ["plan", "show"],
    ["deferred", "list"],
    ["audit", "verify"],
    ["idempotency", "purge"],
    ["payouts", "owed"],
    ["claims", "list"],
    ["shadow", "report", "--from", "2026-12-01", "--to", "2026-12-02"],
    ["clearing", "monthly", "--month", "2026-11"],
    ["corrections", "plan", "--institution", "H44180000001", "--item", "YP0001"],
    ["demo", "load"],
]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv, "--database-url", DOWN],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def answers() -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(4) as pool:
        return dict(zip((" ".join(c) for c in COMMANDS), pool.map(_run, COMMANDS), strict=True))


@pytest.mark.parametrize("command", [" ".join(c) for c in COMMANDS])
def test_a_command_says_the_database_is_unreachable_in_one_line(
    answers: dict[str, subprocess.CompletedProcess[str]], command: str
) -> None:
    done = answers[command]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("refused: 无法连接数据库"), done.stderr


def _run_in(zone: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv, "--database-url", DOWN],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TZ": zone},
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["corrections", "plan", "--institution", "H44180000001", "--item", "YP0001"],
        ["payouts", "owed"],
        ["deferred", "list"],
        ["shadow", "report", "--from", "2026-12-01", "--to", "2026-12-02"],
    ],
)
def test_a_command_that_dates_what_it_writes_runs_in_beijing_time(argv: list[str]) -> None:
    """Found from outside: `corrections apply` from a shell in UTC dated its re-settlements 8
    hours behind the counter's, with nothing said; then a warning was all (and `serve` served
    on in UTC). A command started in another zone runs in Beijing time, and says so."""
    off = _run_in("UTC", argv)
    assert "note: this process's local time was not Beijing time (UTC+0 now" in off.stderr, (
        off.stderr
    )
    assert "it runs in Beijing time (TZ=CST-8)" in off.stderr
    beijing = _run_in("CST-8", argv)
    assert "note" not in beijing.stderr and "warning" not in beijing.stderr, beijing.stderr


def test_a_command_that_dates_nothing_runs_in_beijing_time_too() -> None:
    done = _run_in("UTC", ["operators", "lockouts"])
    assert "warning" not in done.stderr, done.stderr
    assert "it runs in Beijing time" in done.stderr, done.stderr
