"""A msgid used again with another body is refused in words that fit its transaction: the
settlement query (5203) only where it tells the outcome (found from outside: a 9101 upload
under a used msgid was sent to 5203)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

import gateway.app.server  # noqa: F401 - registers every transaction
from gateway.ledger import idempotency
from gateway.pipeline import dispatch
from gateway.pipeline.attempts import Attempts
from gateway.pipeline.dispatch import settling
from gateway.protocol.errors import Conflict

STORED = idempotency.Stored(b"\x01" * 32, b'{"infcode":0,"output":{}}')


@pytest.mark.parametrize("infno", ["9101", "3202", "2201", "1101"])
def test_a_file_upload_or_a_visit_call_is_told_to_send_the_original_again(infno: str) -> None:
    with pytest.raises(Conflict) as refused:
        idempotency.replay(STORED, b"\x02" * 32, "M1", settling(infno))
    assert "5203" not in refused.value.err_msg
    assert "以原报文内容和该报文ID重发即返回原交易的应答" in refused.value.err_msg


@pytest.mark.parametrize("infno", ["2207", "2102", "2304", "2208", "2103"])
def test_a_settlement_is_told_to_query_it(infno: str) -> None:
    with pytest.raises(Conflict, match="5203结算信息查询"):
        idempotency.replay(STORED, b"\x02" * 32, "M1", settling(infno))


@pytest.mark.parametrize("doubt", [False, True], ids=["at-work", "in-doubt"])
@pytest.mark.parametrize(("infno", "cash"), [("2102", True), ("2207", True), ("2201", False), ("2204", False)])  # fmt: skip
def test_a_message_still_at_work_is_told_in_its_own_words(
    infno: str, cash: bool, doubt: bool
) -> None:
    """Found from outside: a 2201 whose first attempt was still at work was told not to take the
    bill in cash; only a settlement has cash to speak of. A message whose COMMIT had no reply is
    told that only the ledger, once back, can say (gateway.pipeline.attempts)."""
    req = SimpleNamespace(fixmedins_code="H44180000001", msgid="M1", infno=infno)
    gw = SimpleNamespace(attempts=Attempts())
    key = (req.fixmedins_code, req.msgid)
    gw.attempts.begin(key)
    if doubt:
        gw.attempts.committing(key)
        gw.attempts.end(key)
    words = dispatch._still_at_work(cast(Any, gw), cast(Any, req)).err_msg
    assert "相同报文ID重试" in words
    assert ("结果须待数据库恢复后确认" in words) is doubt
    assert ("结果待定" in words) is not doubt
    assert ("请勿按现金收费" in words) is cash
