"""The console page shows every time in the gateway's local time, as its windows and lock-out
refusals do (found from outside: rules and audit rows read in UTC beside windows in local
time, eight hours apart on a Beijing-time gateway). The API keeps ISO times with their offset."""

from __future__ import annotations

import pytest

from gateway.emergency.console import pages


@pytest.mark.usefixtures("beijing")
def test_a_utc_time_is_shown_in_local_time() -> None:
    assert pages.local_time("2026-12-05T07:38:53+00:00") == "2026-12-05 15:38:53"
    assert pages.local_time("2026-12-05T07:38:53.123456+00:00") == "2026-12-05 15:38:53"
    assert pages.local_time("2026-12-05T16:17:19") == "2026-12-05 16:17:19"  # already local
    assert pages.local_time(None) == "" and pages.local_time("不是时间") == "不是时间"
