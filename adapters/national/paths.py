"""How a refusal names the field it refuses, as the counter's clerk reads it.

A list's items are counted from 1 (第1条), as a clerk counts the lines on the screen. msgspec's
paths and the length and control-character walks count from 0, and the value checks named a
line by its serial number in the same brackets, so `feedetail[1]` was the first line in one
refusal and the second in another (found from outside). A line named by its serial number says
so: `feedetail(流水号7)`, as LineRejected's `费用明细流水号7`.
"""

from __future__ import annotations

import re

_INDEX = re.compile(r"\[(\d+)\]")


def clerk_path(path: str) -> str:
    """A decoder's path with its list positions counted from 1: `feedetail[0].pric` →
    `feedetail第1条.pric`."""
    return _INDEX.sub(lambda m: f"第{int(m.group(1)) + 1}条", path)


def by_serial(node: str, feedetl_sn: str) -> str:
    """A line of `node` named by its serial number."""
    return f"{node}(流水号{feedetl_sn})"


# A control character can only come from an escape in the JSON (\u0000-\u001f, \u007f-\u009f);
# the bidirectional controls (found from outside: U+202E in an infno turned the clerk's err_msg
# around on screen) and the invisible format characters are written out too.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def printable(name: str) -> str:
    """A name from the body as a refusal may quote it: each control character written out
    (\u0000). Found from outside: a NUL or an escape sequence in a key went back raw, and a till
    reading err_msg as a C string showed "字段app"; a terminal ran the escape."""
    return _CONTROL.sub(lambda ch: f"\\u{ord(ch[0]):04x}", name)
