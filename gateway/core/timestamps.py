"""Dates and times as the interface and the ledger's ids write them.

%-formatting and `isoformat` instead of `strftime` or an f-string's date spec, which cost three
to five times as much: a durable sale writes two ids and four or five times, and a slow
formatter was 3.5% of a 2102's samples in the gateway's profile (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import datetime as dt


def day_digits(on: dt.date) -> str:
    """yyyyMMdd."""
    return "%04d%02d%02d" % (on.year, on.month, on.day)  # noqa: UP031 (speed, see above)


def second_digits(at: dt.datetime) -> str:
    """yyyyMMddHHmmss."""
    return "%04d%02d%02d%02d%02d%02d" % (  # noqa: UP031
        at.year,
        at.month,
        at.day,
        at.hour,
        at.minute,
        at.second,
    )


def wire_moment(at: dt.datetime) -> str:
    """yyyy-MM-dd HH:mm:ss (a zone offset, were one attached, is not written)."""
    return at.isoformat(" ", "seconds")[:19]


def as_local(value: dt.datetime) -> dt.datetime:
    """A time as the gateway's clocks and the ledger read it (local, without an offset): one
    given with an offset is converted, not compared with local times as it stands (which
    Python cannot do and PostgreSQL refuses)."""
    return value.astimezone().replace(tzinfo=None) if value.tzinfo is not None else value


BEIJING_OFFSET = dt.timedelta(hours=8)


def local_offset() -> dt.timedelta:
    """This process's local time's offset from UTC now."""
    return dt.datetime.now().astimezone().utcoffset() or dt.timedelta(0)


def beijing_all_year() -> bool:
    """Whether this process's local time is UTC+8 in winter and in summer alike (found from
    outside: a zone of UTC+8 with summer time passed in December, and a July time given with
    an offset was stored an hour late, on the next day)."""
    year = dt.date.today().year
    return all(
        dt.datetime(year, month, 1, 12).astimezone().utcoffset() == BEIJING_OFFSET
        for month in (1, 7)
    )


BEIJING = dt.timezone(BEIJING_OFFSET)


def as_beijing(value: dt.datetime) -> dt.datetime:
    """A time as the gateway reads it, the gateway running in Beijing time (README, `TZ`): one
    given with an offset is converted to Beijing time, one without is taken as written."""
    return value.astimezone(BEIJING).replace(tzinfo=None) if value.tzinfo is not None else value
