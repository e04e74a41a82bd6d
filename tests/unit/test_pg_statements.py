"""PostgreSQL's statement profile of the harness (benchmarks/pg_statements.py): shares are of the
top-level statements' time alone, a statement fired inside another (a foreign-key check, a
trigger's INSERT) is listed apart and never counted twice, and µs per answer divides by the
scenario's answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pg_statements", ROOT / "benchmarks" / "pg_statements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pg_statements", module)
    spec.loader.exec_module(module)
    return module


def _row(toplevel: bool, calls: int, rows: int, ms: float, query: str) -> dict[str, object]:
    return {
        "toplevel": toplevel,
        "calls": calls,
        "rows": rows,
        "total_exec_time": ms,
        "query": query,
    }


def test_shares_are_of_top_level_time_and_nested_statements_are_apart() -> None:
    render = _module().render
    rows = [
        _row(True, 10, 120, 30.0, "INSERT INTO settlements (a, b)\n   SELECT *   FROM unnest($1)"),
        _row(False, 120, 120, 12.0, 'SELECT 1 FROM ONLY "public"."persons" x WHERE psn_no = $1'),
        _row(True, 10, 12, 10.0, "UPDATE accounts SET balance_fen = $2 WHERE psn_no = $1"),
    ]
    text = render("2102", rows, answers=100)
    lines = text.splitlines()
    # 40 ms of top-level time over 100 answers; the nested 12 ms is not added to it.
    assert lines[0].startswith(
        "2102: 100 answers; PostgreSQL's execution time 40 ms in all, 400 µs"
    )
    top = lines[lines.index(next(x for x in lines if x.startswith("share"))) + 1]
    assert top.split()[:6] == ["75.0%", "10", "120", "3000.0", "300.0", "INSERT"]
    assert "SELECT * FROM unnest($1)" in top  # whitespace folded to one line
    nested_at = next(i for i, x in enumerate(lines) if x.startswith("fired inside them"))
    assert lines[nested_at + 1].split()[:5] == ["30.0%", "120", "120", "100.0", "120.0"]
    assert all("persons" not in x for x in lines[:nested_at])


def test_a_long_statement_is_cut_and_no_nested_section_without_nested_rows() -> None:
    render = _module().render
    text = render("reject", [_row(True, 1, 1, 1.0, "SELECT " + "x, " * 100)], answers=0)
    assert "fired inside" not in text
    assert text.splitlines()[-1].endswith("…")
    assert "1 answers" in text.splitlines()[0]  # no division by zero: at least one answer
