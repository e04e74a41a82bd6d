"""Each transaction is declared once, in its `register(...)`: no module compares or lists
transaction numbers of its own, and the table holds every fact the other modules ask."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.app.server  # noqa: F401 - registers every transaction
from adapters.national.envelope import REVISIONS
from gateway.app.openapi import input_types
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.transaction import TRANSACTIONS, Deferral, Kind, Undo

ROOT = Path(__file__).resolve().parents[1]
# Where a transaction number may be written outside a register(...) call, and why.
ALLOWED = {
    "adapters/national/envelope.py",  # REVISIONS: a revision's code and the base it stands for
    "gateway/pipeline/edge.py",  # the default body limits per transaction, a configuration default
    "gateway/app/demo_client.py",  # a client: it sends transactions by number
}


def _numbers_outside_register(path: Path) -> list[str]:
    """Transaction numbers a module compares with, keys a table by, or collects in a set:
    the ways a second table of transactions is written. (A value that only happens to look
    like one, such as the person type 1101, is none of these.)"""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    suspects: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                suspects += list(ast.walk(side))
        elif isinstance(node, ast.Dict):
            suspects += [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Set):
            suspects += node.elts
    found = []
    for node in suspects:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and (node.value in TRANSACTIONS or node.value in REVISIONS)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    return found


def test_no_transaction_number_outside_its_registration() -> None:
    found = []
    for folder in ("gateway", "adapters"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if str(path.relative_to(ROOT)) not in ALLOWED:
                found += _numbers_outside_register(path)
    assert found == [], "transaction numbers outside register(...):\n" + "\n".join(found)


def test_the_table_declares_the_facts_the_plan_and_reversal_ask() -> None:
    by = {t.infno: t for t in TRANSACTIONS.values()}
    claims = {i for i, t in by.items() if t.deferral is Deferral.CLAIM}
    assert claims == {"2102", "2207", "2304"}
    pre = {i for i, t in by.items() if t.deferral is Deferral.PRESETTLEMENT}
    assert pre == {"2101", "2206", "2303"}
    assert {i for i, t in by.items() if t.deferral is Deferral.CANCEL_CLAIM} == {
        "2103",
        "2208",
        "2305",
    }
    # Every settlement-class transaction that writes a visit's money names its kind, and its
    # pre-settlement, settlement and cancellation agree on it.
    for trio in (("2206", "2207", "2208"), ("2303", "2304", "2305"), ("2101", "2102", "2103")):
        assert len({by[i].kind for i in trio}) == 1 and by[trio[0]].kind is not None
    reversible = {i for i, t in by.items() if t.undo is not Undo.NONE}
    assert reversible == {"2102", "2103", "2207", "2208", "2304", "2305", "2401"}
    assert [i for i, t in by.items() if t.admits] == ["2401"]
    assert by["2401"].kind is Kind.INPATIENT
    # Whatever the plan journals while the ledger is down is a writing encounter call.
    for t in by.values():
        if t.deferral is Deferral.CALL:
            assert t.writes and t.klass == "encounter", t.infno


def test_every_transaction_declares_its_input_type() -> None:
    missing = sorted(t.infno for t in TRANSACTIONS.values() if t.input is None)
    assert missing == []
    # Revision codes are documented with their base's type.
    types = input_types()
    for code, base in REVISIONS.items():
        assert types[code] is types[base]


def test_every_transaction_names_its_class_by_the_enum() -> None:
    assert all(type(t.klass) is TxClass for t in TRANSACTIONS.values())
    assert {t.klass for t in TRANSACTIONS.values()} == set(TxClass)
