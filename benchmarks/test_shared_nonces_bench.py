"""What a signed request pays for sharing its nonce with the host's other workers: one look and
one write in the shared table (`SharedNonces.first_use`, gateway/pipeline/shared_nonces.py), its
lock taken and given back, in the host's shared memory as served. With --benchmark-disable it
runs once, as a test."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from gateway.pipeline.shared_nonces import SharedNonces, memory_dir

pytestmark = pytest.mark.benchmark


def test_a_hundred_new_nonces_taken(benchmark: Any, tmp_path: Path) -> None:
    table = SharedNonces(memory_dir(tmp_path), f"{tmp_path}\npostgresql://bench@127.0.0.1/ledger")
    serial = itertools.count()
    try:
        # A serving host's table: its pages touched by earlier nonces (a fresh page's first
        # touch, a fault and a block of the file, is paid once per page, not per nonce).
        for n in range(20_000):
            table.first_use(f"warm:{n}", 1_765_000_000.0, 660)

        def hundred() -> int:
            start = next(serial) * 100
            return sum(
                bool(table.first_use(f"H44180000001:1765000000:{n:032x}", 1_765_000_000.0, 660))
                for n in range(start, start + 100)
            )

        # The figure per signed request is the round's median divided by 100.
        assert benchmark(hundred) == 100
    finally:
        table.close()
