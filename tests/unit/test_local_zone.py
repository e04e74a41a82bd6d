"""The gateway dates in its process's local time; at start it warns when that is not Beijing
time (found from outside: on a UTC host a Beijing-time begntime was refused as in the future)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import pytest

from gateway.core.timestamps import zone_warning
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


@pytest.mark.parametrize(("tz", "shown"), [("UTC0", "UTC+0"), ("EST5", "UTC-5")])
def test_a_process_not_on_beijing_time_is_warned(zone: None, tz: str, shown: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()
    warning = zone_warning()
    assert warning is not None and shown in warning and "TZ=Asia/Shanghai" in warning


@pytest.mark.parametrize("tz", ["CST-8", "Asia/Shanghai"])
def test_beijing_time_is_not_warned(zone: None, tz: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()
    if tz == "Asia/Shanghai" and time.timezone != -8 * 3600:
        pytest.skip("this machine has no zone files")
    assert zone_warning() is None


def test_a_rules_time_of_setting_is_given_in_local_time(zone: None) -> None:
    """Found from outside: GET /api/plan gave set_at in UTC from a gateway on Beijing time,
    where its pages show local time. Given with its offset, it is read back as the same moment."""
    os.environ["TZ"] = "CST-8"
    time.tzset()
    stored = dt.datetime(2026, 12, 6, 20, 22, 30, 959356, tzinfo=dt.UTC)
    shown = store.shown_at(stored)
    assert shown == "2026-12-07 04:22:30.959356+08:00"
    assert dt.datetime.fromisoformat(shown) == stored
