"""The bounds on service dates (gateway.core.dates) and their configuration."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app.config import load_config
from gateway.core.dates import DateRules, within_visit
from gateway.protocol.errors import LineRejected, RuleRejected

NOW = dt.datetime(2026, 12, 2, 12, 0, 0)


def test_a_moment_up_to_the_tolerance_ahead_is_accepted() -> None:
    rules = DateRules(future_tolerance_seconds=600)
    rules.check("挂号时间begntime", NOW + dt.timedelta(minutes=10), admdvs="441800", now=NOW)
    with pytest.raises(RuleRejected, match="晚于当前时间2026-12-02 12:00:00"):
        rules.check(
            "挂号时间begntime", NOW + dt.timedelta(minutes=10, seconds=1), admdvs="441800", now=NOW
        )


def test_a_day_after_today_is_refused_even_minutes_before_midnight() -> None:
    """Found from outside: a 3201 of tomorrow, sent in the last ten minutes of today, was
    answered; the moments' tolerance carried the day's midnight into it."""
    late = dt.datetime(2026, 12, 2, 23, 55, 0)
    DateRules.check_day_not_ahead("对账开始日期stmt_begndate", dt.date(2026, 12, 2), now=late)
    with pytest.raises(RuleRejected) as refused:
        DateRules.check_day_not_ahead("对账开始日期stmt_begndate", dt.date(2026, 12, 3), now=late)
    assert str(refused.value) == (
        "对账开始日期stmt_begndate（2026-12-03）晚于今天（2026-12-02），"
        "不能办理未来日期的业务，请核对日期"
    )


def test_the_late_bound_is_the_first_of_january_years_back() -> None:
    rules = DateRules(late_years=2)
    assert rules.earliest("441800", NOW) == dt.date(2024, 1, 1)
    rules.check("入院时间begntime", dt.datetime(2024, 1, 1), admdvs="441800", now=NOW)
    with pytest.raises(RuleRejected, match="最早日期2024-01-01"):
        rules.check("入院时间begntime", dt.datetime(2023, 12, 31, 23, 59), admdvs="441800", now=NOW)


def test_a_region_sets_its_own_bound() -> None:
    rules = DateRules(late_years=2, late_years_by_region={"520500": 0})
    assert rules.earliest("520500", NOW) == dt.date(2026, 1, 1)
    assert rules.earliest("441800", NOW) == dt.date(2024, 1, 1)
    with pytest.raises(LineRejected, match="费用明细流水号9"):
        rules.check_line("9", dt.datetime(2025, 12, 31), admdvs="520500", now=NOW)


def test_a_fee_line_lies_within_its_visit_by_whole_days() -> None:
    begun, ended = dt.datetime(2026, 11, 1, 9, 0), dt.datetime(2026, 11, 5, 10, 0)
    within_visit("1", dt.datetime(2026, 11, 1), begntime=begun, endtime=ended, start="入院")
    within_visit("1", dt.datetime(2026, 11, 5, 18), begntime=begun, endtime=ended, start="入院")
    with pytest.raises(LineRejected, match="早于入院时间"):
        within_visit(
            "1", dt.datetime(2026, 10, 31, 23), begntime=begun, endtime=ended, start="入院"
        )
    with pytest.raises(LineRejected, match="晚于出院时间"):
        within_visit("1", dt.datetime(2026, 11, 6), begntime=begun, endtime=ended, start="入院")
    # An outpatient visit that ends (a manual claim's) has no discharge: found from outside,
    # its clerk was told the fee could not go on "this stay".
    with pytest.raises(LineRejected) as refused:
        within_visit(
            "1", dt.datetime(2026, 11, 6), begntime=begun, endtime=ended, start="就诊", stay=False
        )
    assert "晚于就诊结束时间" in str(refused.value) and "出院" not in str(refused.value)
    assert "住院" not in str(refused.value)


def test_the_shipped_configuration_and_unknown_keys(tmp_path: Path) -> None:
    shipped = load_config().dates
    assert shipped.future_tolerance_seconds == 600 and shipped.late_years == 2
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[dates]\nlate_years = 1\n[dates.late_years_by_region]\n"441800" = 3\n', encoding="utf-8"
    )
    rules = load_config(path).dates
    assert rules.late_years == 1 and rules.late_years_by_region == {"441800": 3}
    path.write_text("[dates]\nlate_days = 30\n", encoding="utf-8")
    with pytest.raises(ValueError, match="late_days"):
        load_config(path)


class _Line:
    def __init__(self, feedetl_sn: str, fee_ocur_time: dt.datetime) -> None:
        self.feedetl_sn, self.fee_ocur_time = feedetl_sn, fee_ocur_time


# Moments around both bounds of 2026-12-02 12:00 with 2 years back and 10 minutes ahead.
_moments = st.sampled_from(
    [
        dt.datetime(2023, 12, 31, 23, 59, 59),
        dt.datetime(2024, 1, 1),
        dt.datetime(2025, 6, 1, 8, 30),
        NOW + dt.timedelta(minutes=10),
        NOW + dt.timedelta(minutes=10, microseconds=1),
    ]
) | st.datetimes(min_value=dt.datetime(2023, 12, 1), max_value=dt.datetime(2026, 12, 3))


@settings(max_examples=300, deadline=None)
@given(st.lists(_moments, max_size=6), st.sampled_from(["441800", "520500"]))
def test_checking_a_batch_of_lines_is_checking_each(
    moments: list[dt.datetime], admdvs: str
) -> None:
    """The bounds worked out once for a batch refuse the first line that checking each one by
    one refuses, with the same words, and nothing else."""
    rules = DateRules(late_years=2, late_years_by_region={"520500": 0})
    lines = [_Line(str(i + 1), m) for i, m in enumerate(moments)]

    def verdict(check: Callable[[], None]) -> str | None:
        try:
            check()
        except LineRejected as exc:
            return str(exc)
        return None

    def one_by_one() -> None:
        for ln in lines:
            rules.check_line(ln.feedetl_sn, ln.fee_ocur_time, admdvs=admdvs, now=NOW)

    batch = verdict(lambda: rules.check_lines(lines, admdvs=admdvs, now=NOW))
    assert batch == verdict(one_by_one)
