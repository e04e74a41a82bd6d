"""`deferred retry` of a claim that did not fail says where it stands (found from outside: a
settled claim and a withdrawn one were told alike that no failed claim had the number)."""

from __future__ import annotations

import pytest

from gateway.app.plan_cli import _not_failed


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("settled", "暂存结算DF1已补结算（结算ID44180001），无需重新补结算"),
        ("withdrawn", "暂存结算DF1已由医药机构撤销，不能补结算"),
        ("pending", "暂存结算DF1正待补结算，`deferred replay`即会结算，无需重试"),
        ("applied", "暂存结算DF1当前状态为applied，只有补结算未成功（failed）的才能重新补结算"),
    ],
)
def test_a_claim_that_did_not_fail_is_told_where_it_stands(status: str, words: str) -> None:
    assert _not_failed("DF1", status, "44180001") == words
