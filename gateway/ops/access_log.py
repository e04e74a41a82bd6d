"""The access log: one JSON line per answer, written a batch at a time.

Formatting a log record per request (a LogRecord, `json.dumps`, two regular expressions per
field, a write to stderr) was 12% of the gateway's CPU in a 2101 (the wrk harness's profile).
Here an answer appends a tuple; a timer started by the first one writes every line gathered
since as one log record (`JsonFormatter` writes its prepared lines as they are): the same
lines, masked as every line is, one `emit` and one write per batch. The lines of a batch wait
at most `delay` seconds; `flush` writes what is left when the process stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import msgspec

from gateway.ops.logs import LINES, mask, one_line

_Entry = tuple[float, str, str, str, str, str, str, float]
_encode = msgspec.json.Encoder().encode


class _Line(msgspec.Struct):
    """One line, its keys in the order every log line has them (gateway.ops.logs)."""

    ts: str
    level: str
    logger: str
    msg: str
    request_id: str
    infno: str
    msgid: str
    fixmedins_code: str
    terminal: str
    outcome: str
    ms: float


def _masked(label: str) -> str:
    """A label as it may be logged: the client's own text (a msgid may hold an ID number),
    masked as any log line is (`mask`), each value before it is written into its line.

    Most labels are one run of ASCII letters and digits (a msgid, an institution's code, a
    terminal's): such a run holds no quoted field, and holds an ID number, which stands alone
    between characters that are neither, only when it is the whole run, 18 long. Those pass
    without the two expressions, which cost the access log more than writing its lines did
    (a tenth of a `reject`'s CPU with the line's formatting).
    """
    if label.isascii() and label.isalnum() and len(label) != _ID_LENGTH:
        return label
    return mask(label)


_ID_LENGTH = 18


class AccessLog:
    """The answered requests of one process, written to `logger` in batches."""

    def __init__(self, logger: logging.Logger, *, delay: float = 0.1, limit: int = 1024) -> None:
        self.logger = logger
        self.delay = delay
        self.limit = limit  # a batch this long is written at once
        self._pending: list[_Entry] = []
        self._timer: asyncio.TimerHandle | None = None

    def answered(
        self,
        request_id: str,
        infno: str,
        msgid: str,
        fixmedins_code: str,
        terminal: str,
        outcome: str,
        seconds: float,
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._pending.append(
            (time.time(), request_id, infno, msgid, fixmedins_code, terminal, outcome, seconds)
        )
        if len(self._pending) >= self.limit:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        """Write every line gathered so far."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        name = self.logger.name
        lines = [
            _encode(
                _Line(
                    dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds"),
                    "info",
                    name,
                    "answered",
                    request_id,
                    _masked(infno),
                    _masked(msgid),
                    _masked(fixmedins_code),
                    _masked(terminal),
                    outcome,
                    round(seconds * 1000, 2),
                )
            )
            for at, request_id, infno, msgid, fixmedins_code, terminal, outcome, seconds in pending
        ]
        record = self.logger.makeRecord(
            name,
            logging.INFO,
            __file__,
            0,
            "answered",
            (),
            None,
            extra={LINES: one_line(b"\n".join(lines).decode())},
        )
        self.logger.handle(record)
