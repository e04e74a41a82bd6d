"""Overload: a bound on requests in flight per process, past which new ones are answered busy.

A gateway past saturation that keeps accepting work only queues it: every request waits behind
all the others and latency grows until clients time out and retry, which adds more work. Bounding
what is in flight keeps the accepted requests fast and turns the excess into immediate, explicit
"busy" answers that a counter can retry with the same msgid (nothing was done for them).
"""

from __future__ import annotations

SHED_MESSAGE = "医保结算服务繁忙，请稍候使用相同报文ID重试（本次交易未处理）"


class Admission:
    """Counts requests in flight; `limit` 0 admits everything."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Admit one request, or False when the process is at its limit."""
        if self.limit and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
