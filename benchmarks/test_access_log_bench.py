"""The access log's cost per answered request: gathering a line, and writing a batch of 1,000
(formatted and masked) to a log stream. With --benchmark-disable each runs once, as a test."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.ops.access_log import AccessLog
from gateway.ops.logs import JsonFormatter

pytestmark = pytest.mark.benchmark

BATCH = 1000


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.access.bench")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _gathered(log: AccessLog) -> None:
    for n in range(BATCH):
        log.answered(
            f"{n:016x}", "2101", f"P44180000001202612060000{n:06d}", "P44180000001", "POS01",
            "ok", 0.0123,
        )  # fmt: skip


async def test_a_batch_of_1000_lines_written(
    benchmark: Any, logged: tuple[logging.Logger, io.StringIO]
) -> None:
    """`make bench`: a batch's flush divided by 1,000 is the per-line cost RESULTS.md quotes."""
    logger, stream = logged
    log = AccessLog(logger, delay=3600, limit=10**9)

    def flush() -> None:
        stream.seek(0)
        stream.truncate()
        _gathered(log)
        log.flush()

    benchmark(flush)
    lines = stream.getvalue().splitlines()
    assert len(lines) == BATCH and json.loads(lines[-1])["msgid"].endswith("000999")
