"""Each institution's share of the ledger's connections: past it, busy in words, others unheld."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.ledger_shares import LedgerShares, share_of
from gateway.protocol.errors import Busy


async def test_past_its_share_an_institution_is_told_busy_and_why() -> None:
    """Found from outside: the first sales of a ledger outage were told only that the
    institution sent too much; the ledger answering slowly fills the share as well."""
    shares = LedgerShares(1)
    loop = asyncio.get_running_loop()
    async with shares.turn("H1", loop.time() + 5):
        with pytest.raises(Busy) as busy:
            async with shares.turn("H1", loop.time() + 0.05):
                pass
        assert busy.value.retryable
        assert "医保结算数据库响应缓慢" in busy.value.err_msg
        assert "使用相同报文ID重试" in busy.value.err_msg
        async with shares.turn("H2", loop.time() + 0.05):  # another institution is not held
            pass
    async with shares.turn("H1", loop.time() + 0.05):  # its own turn back once released
        pass


def test_a_share_is_at_least_one_and_at_most_all() -> None:
    assert [share_of(16, p) for p in (0, 25, 50, 100, 150)] == [16, 4, 8, 16, 16]
    assert share_of(2, 10) == 1
