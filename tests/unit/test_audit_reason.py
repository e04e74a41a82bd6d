"""One rule for every audited reason (found from outside: a plan change refused "x" and
invisible characters, while unlocking a log-in, a payee's account, a claim's withdrawal or
refusal, a returned batch and a conversion took them)."""

from __future__ import annotations

import pytest

from gateway.ops.audit import reason_given
from gateway.protocol.errors import BadRequest


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("", "请填写"),
        ("   ", "请填写"),
        ("x", "过短"),
        ("\u202e\u202e", "控制字符"),
        ("\u200b\u200b", "控制字符"),
        ("演\x01练", "控制字符"),
    ],
)
def test_a_reason_that_says_nothing_is_refused(reason: str, words: str) -> None:
    with pytest.raises(BadRequest) as refused:
        reason_given(reason, "请填写原因")
    assert words in refused.value.err_msg


def test_a_reason_in_words_is_kept_without_its_blanks() -> None:
    assert reason_given("  账户已更正 ", "请填写原因") == "账户已更正"
