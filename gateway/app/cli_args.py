"""Argument types the command line shares: a bad value is a usage error in words (exit 2),
never a traceback from deep inside a command."""

from __future__ import annotations

import argparse

from gateway.jobs.clearing import check_month


def month_arg(text: str) -> str:
    """--month: YYYY-MM."""
    try:
        return check_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
