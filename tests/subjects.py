"""Tests by subject: every test is marked with the transactions its module exercises.

`pytest -m tx2207` (or `make test-subject S=2207`) runs everything about the outpatient
settlement, wherever it sits (integration flows, adversity, conformance, the money machine);
`pytest -m pharmacy` everything about one kind of visit. A module's transactions are the
transaction numbers written as string constants in it (the infno it sends or names), read from
its source, so a new test is marked by what it does without anyone keeping a list.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import gateway.app.server  # noqa: F401 - registers every transaction
from adapters.national.envelope import base_infno
from gateway.protocol.transaction import TRANSACTIONS, Kind


def register_markers(config: pytest.Config) -> None:
    for tx in sorted(TRANSACTIONS.values(), key=lambda t: t.infno):
        config.addinivalue_line("markers", f"tx{tx.infno}: exercises {tx.infno} {tx.name}")
    for kind in Kind:
        config.addinivalue_line("markers", f"{kind.value}: exercises a {kind.value} transaction")


@cache
def transactions_in(path: Path) -> frozenset[str]:
    """The transaction numbers a test module writes as string constants."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            infno = base_infno(node.value)
            if infno in TRANSACTIONS:
                found.add(infno)
    return frozenset(found)


def mark(items: list[pytest.Item]) -> None:
    for item in items:
        for infno in sorted(transactions_in(Path(item.path))):
            item.add_marker(f"tx{infno}")
            kind = TRANSACTIONS[infno].kind
            if kind is not None:
                item.add_marker(kind.value)
