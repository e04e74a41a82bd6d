"""What every priced request pays for hearing another worker's catalog change: one read of its
institution's slot in the shared map (`CatalogVersions.wanted`, gateway/app/catalog_versions.py).
RESULTS.md quotes this figure against a settlement's CPU. With --benchmark-disable it runs once,
as a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app.catalog_versions import CatalogVersions

pytestmark = pytest.mark.benchmark

CODES = [f"H44180000{n:03d}" for n in range(100)]


def test_reading_an_institutions_slot(benchmark: Any, tmp_path: Path) -> None:
    versions = CatalogVersions(tmp_path, "postgresql://bench@127.0.0.1/ledger")
    try:
        versions.raise_to(CODES[7], 42)

        def hundred_reads() -> int:
            wanted = versions.wanted
            return sum(wanted(code) for code in CODES)

        # A hundred institutions a round, as a serving worker sees many: the figure per read is
        # the round's median divided by 100.
        assert benchmark(hundred_reads) == 42
    finally:
        versions.close()
