"""A month given to the clearing and payout commands: YYYY-MM, or a usage error in words."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from gateway.jobs.clearing import check_month, month_bounds


@pytest.mark.parametrize(
    "month",
    # The last three: no month after 9999-12 bounds it (found from outside: a traceback), and
    # year 0 is no date.
    [
        "2026-13",
        "2026-00",
        "2026-3",
        "2026-03-01",
        "26-03",
        "",
        "２０２６-03",
        "9999-12",
        "0000-01",
        "3000-01",
    ],
)
def test_a_month_that_is_not_yyyy_mm_is_refused_in_words(month: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        check_month(month)
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_bounds(month)


def test_month_bounds() -> None:
    assert month_bounds("2026-02") == (dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert month_bounds("2028-02") == (dt.date(2028, 2, 1), dt.date(2028, 2, 29))
    assert month_bounds("2026-12") == (dt.date(2026, 12, 1), dt.date(2026, 12, 31))


@pytest.mark.parametrize(
    "argv",
    [
        ["clearing", "monthly", "--month", "2026-13"],
        ["payouts", "gather-clearing", "--month", "2026-13"],
        ["clearing", "monthly", "--month", "9999-12"],
        ["payouts", "gather-clearing", "--month", "9999-12"],
    ],
)
def test_the_commands_answer_a_bad_month_with_usage_not_a_traceback(argv: list[str]) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            *argv,
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "YYYY-MM" in run.stderr
    assert "Traceback" not in run.stderr
