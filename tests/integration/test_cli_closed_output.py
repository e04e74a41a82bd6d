"""A command whose reader goes away (`… | head -1`) stops quietly, as Unix tools do: found from
outside, `deferred list --json | head -1` said the database could not be reached, and an
operator would go looking for an outage that was not there."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

# One command of each family, each with its own handling of what goes wrong: the plan's, the
# agency's, the console's operators, and the commands the entry point answers for.
COMMANDS = [
    ["plan", "show", "--json"],
    ["payouts", "owed"],
    ["operators", "lockouts", "--json"],
    ["clearing", "monthly", "--month", "2026-11"],
]


def _into_closed_pipe(argv: list[str], dsn: str) -> subprocess.CompletedProcess[str]:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *argv, "--database-url", dsn],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
async def test_a_command_whose_output_is_closed_says_nothing_of_the_database(
    new_database: Callable[[str], Awaitable[str]], argv: list[str]
) -> None:
    dsn = await new_database("pipe")
    migrated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "audit", "verify", "--database-url", dsn],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr  # a ledger as the gateway keeps one
    done = await asyncio.to_thread(_into_closed_pipe, argv, dsn)
    assert done.returncode == 141, done.stderr  # as a shell reports a command SIGPIPE ended
    assert "无法连接数据库" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
