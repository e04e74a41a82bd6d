"""Tests by subject: the marks `pytest -m tx2207` selects by, and every transaction has its
integration tests."""

from __future__ import annotations

from pathlib import Path

from gateway.protocol.transaction import TRANSACTIONS
from tests.subjects import transactions_in

ROOT = Path(__file__).resolve().parent


def test_a_module_is_marked_by_the_transactions_it_writes(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text(
        'INFNO = "2207A"\n'  # a revision code stands for its base
        'def test_it():\n    send("2101", {"psn_type": "1201"})\n    assert "22070" != "9999"\n',
        encoding="utf-8",
    )
    assert transactions_in(module) == {"2207", "2101"}


def test_every_transaction_is_exercised_over_http() -> None:
    covered: set[str] = set()
    for folder in ("integration", "conformance"):
        for path in (ROOT / folder).rglob("test_*.py"):
            covered |= transactions_in(path)
    assert sorted(set(TRANSACTIONS) - covered) == []
