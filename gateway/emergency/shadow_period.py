"""A moment of the parallel run's period as the team types it: `shadow report --from/--to` and
the console's `/api/parallel-run?from=&to=` (docs/emergency.md "Parallel run"), one rule for
both, in the gateway's local time."""

from __future__ import annotations

import datetime as dt

# Times the report can be asked about: a period typed as "everything" (0001-01-01 to
# 9999-12-31) is in the right form but reaches years the local clock cannot convert, so it is
# refused naming these bounds (found from outside: it was refused as if mistyped).
EARLIEST = dt.datetime(1900, 1, 1)
LATEST = dt.datetime(9999, 12, 31)


class MomentRefused(ValueError):
    """A time that cannot be read, or lies outside [EARLIEST, LATEST]; its text is the clerk's."""


def moment(text: str) -> dt.datetime:
    """A local time (2026-05-08 or 2026-05-08T10:00; one with an offset is converted), aware."""
    try:
        typed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise MomentRefused(f"时间{text}无效：应为YYYY-MM-DD或YYYY-MM-DDTHH:MM") from None
    try:
        local: dt.datetime | None = typed.astimezone()
    except (ValueError, OverflowError):  # past year 1 or 9999 once converted
        local = None
    if local is None or not EARLIEST <= local.replace(tzinfo=None) <= LATEST:
        raise MomentRefused(
            f"时间{text}超出可查询的范围：应在{EARLIEST.date()}至{LATEST.date()}之间（本地时间）"
        )
    return local
