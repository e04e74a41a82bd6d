"""Argument types the command line shares: a bad value is a usage error in words (exit 2),
never a traceback from deep inside a command."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from gateway.app.config import DEFAULT_CONFIG
from gateway.core.timestamps import as_local
from gateway.jobs.clearing import check_month


def month_arg(text: str) -> str:
    """--month: YYYY-MM."""
    try:
        return check_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_arg(text: str) -> str:
    """--config: a file named on the command line must be there (found from outside: a typo in
    its name ran the command on every default, silently); the default file may be absent,
    which means every default (`load_config`)."""
    if text != str(DEFAULT_CONFIG) and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"找不到配置文件{text}")
    return text


def local_time_arg(text: str) -> dt.datetime:
    """A local date and time: 2022-03-04T00:00, with a space for the T, seconds or an offset
    if wished."""
    try:
        return as_local(dt.datetime.fromisoformat(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"时间“{text[:40]}”无效，应为日期和时间，如2022-03-04T00:00"
        ) from None


def date_arg(text: str) -> dt.date:
    """A date: 2026-12-01 (found from outside: `corrections plan --from 2026-13-01` printed a
    traceback)."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"日期“{text[:40]}”无效，应为yyyy-MM-dd，如2026-12-01"
        ) from None


def port_arg(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535. Found from outside: 99999 died in a traceback."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"“{text[:40]}”不是有效的端口号（0–65535）")
    return n


def count_arg(text: str) -> int:
    """A count of one or more (`--limit`): 0 or a negative number would do nothing and say so
    as if there were nothing to do."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"“{text[:40]}”应为正整数")
    return n
