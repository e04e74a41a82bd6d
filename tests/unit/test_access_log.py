"""The access log's batches: the same masked JSON lines, one write per batch, none lost."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from gateway.ops.access_log import AccessLog
from gateway.ops.logs import JsonFormatter, configure

CERTNO = "441802199001011234"


class Counting(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.emits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.emits += 1
        super().emit(record)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, Counting, io.StringIO]]:
    stream = io.StringIO()
    handler = Counting(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.access.test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, handler, stream
    finally:
        logger.removeHandler(handler)


def _answer(log: AccessLog, n: int, msgid: str | None = None) -> None:
    log.answered(f"{n:016x}", "2102", msgid or f"M{n}", "P44180000001", "T1", "ok", n / 1000)


async def test_lines_wait_for_the_timer_then_come_in_one_write(
    logged: tuple[logging.Logger, Counting, io.StringIO],
) -> None:
    logger, handler, stream = logged
    log = AccessLog(logger, delay=0.05)
    for n in range(5):
        _answer(log, n)
    assert stream.getvalue() == ""  # nothing written per answer
    await asyncio.sleep(0.15)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert handler.emits == 1
    assert [(e["msgid"], e["ms"], e["outcome"]) for e in lines] == [
        (f"M{n}", float(n), "ok") for n in range(5)
    ]
    first = lines[0]
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert (first["level"], first["logger"], first["msg"]) == (
        "info",
        "gateway.access.test",
        "answered",
    )
    assert first["request_id"] == f"{0:016x}" and first["fixmedins_code"] == "P44180000001"


async def test_a_full_batch_is_written_at_once_and_flush_writes_the_rest(
    logged: tuple[logging.Logger, Counting, io.StringIO],
) -> None:
    logger, handler, stream = logged
    log = AccessLog(logger, delay=60, limit=3)
    for n in range(4):
        _answer(log, n)
    assert handler.emits == 1 and len(stream.getvalue().splitlines()) == 3
    log.flush()  # at shutdown: nothing gathered is lost
    assert handler.emits == 2 and len(stream.getvalue().splitlines()) == 4
    log.flush()
    assert handler.emits == 2


async def test_client_text_is_masked(
    logged: tuple[logging.Logger, Counting, io.StringIO],
) -> None:
    logger, _, stream = logged
    log = AccessLog(logger, delay=60)
    _answer(log, 1, msgid=f"X{CERTNO}")
    _answer(log, 2, msgid=f"{CERTNO}")
    log.flush()
    text = stream.getvalue()
    # As every log line is masked (gateway.ops.logs.mask): an ID number standing alone.
    assert [json.loads(line)["msgid"] for line in text.splitlines()] == [
        f"X{CERTNO}",
        "441802********4",
    ]


async def test_nothing_is_gathered_when_the_level_is_off(
    logged: tuple[logging.Logger, Counting, io.StringIO],
) -> None:
    logger, handler, _ = logged
    logger.setLevel(logging.WARNING)
    log = AccessLog(logger, delay=0.01)
    _answer(log, 1)
    await asyncio.sleep(0.05)
    assert handler.emits == 0


def test_lines_go_to_stderr_as_it_is_when_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch written after stderr was swapped (a test's captured output closed, a redirect)
    goes to the stderr of that moment, not to the stream of when the logs were configured."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first, then = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure()
        logging.getLogger("gateway.test").info("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", then)
        logging.getLogger("gateway.test").info("two")
        assert json.loads(then.getvalue())["msg"] == "two"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    "label",
    [
        f"\n{CERTNO}",  # after a line break: written `\n` in the line, masked as the text it is
        f"T-{CERTNO}",
        f"终端{CERTNO}",
        f"{CERTNO[:17]}X",
        f'{{"certno": "{CERTNO[:10]}"}}',
        f"{CERTNO} ",
    ],
)
async def test_an_id_number_in_any_label_is_masked_wherever_it_stands(
    logged: tuple[logging.Logger, Counting, io.StringIO], label: str
) -> None:
    """Each label is masked as the client sent it: an ID number beside characters that are not
    letters or digits, in the terminal or the msgid, never reaches the line."""
    logger, _, stream = logged
    log = AccessLog(logger, delay=60)
    log.answered("0" * 16, "2102", label, "P44180000001", label, "rejected", 0.001)
    log.flush()
    entry = json.loads(stream.getvalue())
    for key in ("msgid", "terminal"):
        assert CERTNO[6:14] not in entry[key] and CERTNO[:10] not in entry[key]


async def test_labels_that_hold_no_id_number_are_written_as_sent(
    logged: tuple[logging.Logger, Counting, io.StringIO],
) -> None:
    logger, _, stream = logged
    log = AccessLog(logger, delay=60)
    labels = ["P44180000001202612060000000001", "POS-01", "收费窗口3", "A" * 18, "1" * 18, ""]
    for label in labels:
        log.answered("0" * 16, "2101", label, "P44180000001", label, "ok", 0.0)
    log.flush()
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["msgid"], e["terminal"]) for e in written] == [(x, x) for x in labels]


@pytest.mark.parametrize("end", ["\u2028", "\u2029", "\x85"])
async def test_a_clients_text_cannot_start_a_line_of_its_own(
    logged: tuple[logging.Logger, Counting, io.StringIO], end: str
) -> None:
    """Found from outside: a dev_no holding U+2028 and then a JSON object was written raw, and a
    reader splitting lines as Python does read a forged line `{"level":"error",…}`. Such
    characters are escaped, in the access log's lines and in every other log line."""
    logger, _, stream = logged
    forged = end + '{"level":"error","msg":"FORGED"}'
    log = AccessLog(logger, delay=10)
    log.answered("r1", "2201", "M1", "H44180000001", "T" + forged, "refused", 0.001)
    log.answered("r2", "2201", "M2", "H44180000001", "T2", "ok", 0.001)
    log.flush()
    logger.warning("refused", extra={"dev_no": "D" + forged})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    parsed = [json.loads(line) for line in lines]
    assert parsed[0]["terminal"] == "T" + forged
    assert parsed[2]["dev_no"] == "D" + forged
    assert not [p for p in parsed if p.get("msg") == "FORGED"]
