"""What the parallel run's report and rules are given, checked where they are typed: `shadow`
needs the old system's address as the routes to it do, `shadow report --limit` a count of one
or more, and its period (as the console's) a time it can convert, the bounds named when not."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from gateway.app.cli import parser
from gateway.emergency.console import parallel_run
from gateway.emergency.plan import store
from gateway.protocol.errors import BadRequest

REPORT = ["shadow", "report", "--from", "2026-12-06", "--to", "2026-12-07"]


@pytest.fixture(params=["CST-8", "UTC0", "EST5"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("action", ["route_legacy", "route_legacy_shadow", "shadow"])
def test_every_action_needing_the_old_system_needs_its_address(action: str) -> None:
    """Found from outside: `shadow` was taken with `[legacy] url` empty, the others refused."""
    # Blank, or not an address, is none either (found from outside: both were taken).
    for none in ("", "  ", "not a url", "old.example/fsi", "ftp://old.example/x"):
        with pytest.raises(BadRequest, match=r"需要原系统地址，配置文件的\[legacy\] url未填写"):
            store.check_routable(action, none)
    store.check_routable(action, "http://old.example/fsi/api/rsfComIfsService/callService")
    store.check_routable(action, " https://10.0.0.5:8443/fsi/api/rsfComIfsService/callService ")


@pytest.mark.parametrize("action", ["reject", "defer", "selfpay", ""])
def test_the_other_actions_need_no_old_system(action: str) -> None:
    store.check_routable(action, "")


def test_an_action_its_class_cannot_take_is_told_so_before_the_address() -> None:
    """Found from outside: `shadow` on encounter was sent to configure the old system's address,
    after which it would still have been refused."""
    with pytest.raises(BadRequest, match=r"shadow（并行比对）只适用于settlement类交易"):
        store.check_routable("shadow", "", "encounter")
    with pytest.raises(BadRequest, match=r"需要原系统地址"):
        store.check_routable("shadow", "", "settlement")


@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_a_limit_below_one_is_refused_in_one_line(
    limit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: `--limit -1` died in a traceback from PostgreSQL."""
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args([*REPORT, "--limit", limit])
    assert stopped.value.code == 2
    assert "应为正整数" in capsys.readouterr().err


def test_a_limit_of_one_or_more_is_taken() -> None:
    assert parser().parse_args([*REPORT, "--limit", "1"]).limit == 1
    assert parser().parse_args(REPORT).limit == 1000


@pytest.mark.parametrize(
    ("begins", "ends"), [("0001-01-01", "9999-12-31"), ("1899-12-31", "2026-12-07")]
)
def test_a_period_past_the_years_it_can_read_names_them(
    zone: str, begins: str, ends: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: 0001-01-01 was refused "应为YYYY-MM-DD…", the form it was in."""
    query = {"from": begins, "to": ends}
    with pytest.raises(parallel_run.PeriodRefused, match="1900-01-01至9999-12-31") as refused:
        parallel_run.period(query, dt.datetime.now().astimezone())
    assert "无效" not in str(refused.value)
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["shadow", "report", "--from", begins, "--to", ends])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "1900-01-01至9999-12-31" in err and "无效" not in err


def test_the_widest_period_is_read_in_local_time(zone: str) -> None:
    query = {"from": "1900-01-01", "to": "9999-12-31"}
    begins, ends = parallel_run.period(query, dt.datetime.now().astimezone())
    assert (begins.replace(tzinfo=None), ends.replace(tzinfo=None)) == (
        dt.datetime(1900, 1, 1),
        dt.datetime(9999, 12, 31),
    )
    args = parser().parse_args(["shadow", "report", "--from", "1900-01-01", "--to", "9999-12-31"])
    assert (args.date_from, args.date_to) == (begins, ends)
    assert ends.utcoffset() == dt.datetime.now().astimezone().utcoffset()


def test_a_mistyped_time_is_still_told_its_form() -> None:
    with pytest.raises(parallel_run.PeriodRefused, match="应为YYYY-MM-DD或YYYY-MM-DDTHH:MM"):
        parallel_run.period({"from": "yesterday"}, dt.datetime.now().astimezone())
