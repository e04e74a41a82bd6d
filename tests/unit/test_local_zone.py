"""The gateway dates in its process's local time; a command started in another zone runs in
Beijing time (found from outside: on a UTC host a Beijing-time begntime was refused as in the
future, and then a warning at start was all)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import pytest

from gateway.app.cli import in_beijing_time
from gateway.core.timestamps import local_offset
from gateway.emergency.plan import store


@pytest.fixture
def zone() -> Iterator[None]:
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    ("tz", "shown"),
    [("UTC0", "UTC+0 now"), ("EST5", "UTC-5 now"), ("CST-8CDT,M3.2.0,M11.1.0", "not Beijing")],
)
def test_a_process_not_on_beijing_time_runs_in_it(zone: None, tz: str, shown: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()
    note = in_beijing_time()
    assert note is not None and shown in note and "TZ=CST-8" in note
    assert os.environ["TZ"] == "CST-8" and local_offset() == dt.timedelta(hours=8)
    assert in_beijing_time() is None  # once is enough


@pytest.mark.parametrize("tz", ["CST-8", "Asia/Shanghai"])
def test_beijing_time_is_left_as_it_is(zone: None, tz: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()
    if tz == "Asia/Shanghai" and time.timezone != -8 * 3600:
        pytest.skip("this machine has no zone files")
    assert in_beijing_time() is None
    assert os.environ["TZ"] == tz


def test_a_rules_time_of_setting_is_given_in_local_time(zone: None) -> None:
    """Found from outside: GET /api/plan gave set_at in UTC from a gateway on Beijing time,
    where its pages show local time. Given with its offset, it is read back as the same moment."""
    os.environ["TZ"] = "CST-8"
    time.tzset()
    stored = dt.datetime(2026, 12, 6, 20, 22, 30, 959356, tzinfo=dt.UTC)
    shown = store.shown_at(stored)
    assert shown == "2026-12-07 04:22:30.959356+08:00"
    assert dt.datetime.fromisoformat(shown) == stored
