"""`serve`'s numbers are checked by the command line, in one line, exit 2."""

from __future__ import annotations

import pytest

from gateway.app.cli import parser


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "99999"], "不是有效的端口号"),  # found from outside: a traceback
        (["--port", "-1"], "不是有效的端口号"),
        (["--port", "http"], "不是有效的端口号"),
        (["--pool-max", "0"], "应为正整数"),  # found from outside: a traceback after "serving"
        (["--workers", "-1"], "应为正整数"),  # found from outside: it served, "-1 worker(s)"
        (["--workers", "0"], "应为正整数"),
    ],
)
def test_a_number_serve_cannot_use_is_refused(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["serve", *argv])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err


def test_the_usual_numbers_are_taken() -> None:
    args = parser().parse_args(["serve", "--port", "0", "--workers", "2", "--pool-max", "4"])
    assert (args.port, args.workers, args.pool_max) == (0, 2, 4)
