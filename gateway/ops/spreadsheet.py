"""CSV reports for agency staff, written so that opening one in a spreadsheet runs nothing.

A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is read by Excel, WPS and
LibreOffice as a formula (`=HYPERLINK(...)`, `=cmd|' /C calc'!A0`). Several of these reports
quote what an institution sent (its item codes, its msgid, its mapping codes), so such a text is
written with a leading apostrophe, which the spreadsheet shows as text and does not display. A
number (an amount of fen as decimal text, negative included) is left as it is: it is data, and
the sheet must be able to sum it.

Rows end in CR LF (RFC 4180, as spreadsheets write CSV): Python's writer quotes a cell holding a
character of the line ending only, so with LF alone a carriage return in a HIS's text was written
bare, and a spreadsheet broke the row there.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any, Protocol

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


class _Target(Protocol):
    def write(self, s: str, /) -> object: ...


def cell(value: object) -> object:
    """A value as a spreadsheet may show it: a text that would start a formula, made text."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class Writer:
    """csv.writer whose every cell goes through `cell`, its rows ending in CR LF."""

    def __init__(self, target: _Target, **options: Any) -> None:
        self._writer = csv.writer(target, lineterminator="\r\n", **options)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([cell(v) for v in row])
