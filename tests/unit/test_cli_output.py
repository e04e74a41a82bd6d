"""A command's output reaches its reader whole when its pipe is in non-blocking mode
(gateway.app.cli_output). Found in CI: `corrections plan --json` handed its reader 128 KiB of a
385 KiB plan and exited 0; with O_NONBLOCK on the pipe the interpreter's stdout drops what the
pipe cannot take at once, without an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT_BYTES = 400_000  # several times a pipe's capacity

# After main() has run (here: `serve --help`, which needs no database), a long print.
THROUGH_MAIN = f"""
import sys
from gateway.app import cli
try:
    cli.main(["serve", "--help"])
except SystemExit:
    pass
print("@" * {TEXT_BYTES})
"""
WITHOUT = f'print("@" * {TEXT_BYTES})'


def _read_slowly(code: str, unbuffered: bool = True) -> tuple[int, bytes]:
    """Run `code` with its stdout a non-blocking pipe, read it slowly; (exit status, output).
    `unbuffered`: PYTHONUNBUFFERED set, as on the machines CI runs on."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the open file's mode, which the child shares
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=write_end,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    os.close(write_end)
    time.sleep(1.0)  # the child meets a full pipe
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    return child.wait(timeout=60), b"".join(chunks)


@pytest.mark.parametrize("unbuffered", [True, False])
def test_the_whole_output_reaches_a_slow_reader_through_a_non_blocking_pipe(
    unbuffered: bool,
) -> None:
    status, out = _read_slowly(THROUGH_MAIN, unbuffered)
    assert status == 0
    assert out.count(b"@") == TEXT_BYTES


def test_without_it_the_interpreter_drops_the_rest_and_succeeds() -> None:
    """What the wrapper is for: the plain interpreter's stdout loses the text silently."""
    status, out = _read_slowly(WITHOUT)
    assert status == 0
    assert out.count(b"@") < TEXT_BYTES
