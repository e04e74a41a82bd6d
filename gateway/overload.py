"""Overload: a bound on requests in flight per process, past which new ones are answered busy.

A gateway past saturation that keeps accepting work only queues it: every request waits behind
all the others and latency grows until clients time out and retry, which adds more work. Bounding
what is in flight keeps the accepted requests fast and turns the excess into immediate, explicit
"busy" answers that a counter can retry with the same msgid (nothing was done for them).

A request holds its slot from its signed headers on, while its body is still arriving: that is
what keeps a flood of large bodies from being buffered at once. A body can be sent slowly on
purpose, so the requests still receiving a body are bounded per client address and per
institution to `share` of the bound: one holder of one institution's secret, from one address or
many, cannot stall the whole bound with bodies that never finish.
"""

from __future__ import annotations

from collections import Counter

SHED_MESSAGE = "医保结算服务繁忙，请稍候使用相同报文ID重试（本次交易未处理）"


class Admission:
    """Counts requests in flight; `limit` 0 admits everything."""

    __slots__ = ("in_flight", "limit", "receiving", "share")

    def __init__(self, limit: int, share: float = 0.25) -> None:
        self.limit = limit
        self.share = share
        self.in_flight = 0
        self.receiving: Counter[str] = Counter()  # requests still receiving a body, per key

    @property
    def share_limit(self) -> int:
        """Bodies one address or one institution may be sending at once (0: no bound)."""
        if not self.limit:
            return 0
        return max(1, int(self.limit * self.share))

    def enter(self) -> bool:
        """Admit one request, or False when the process is at its limit."""
        if self.limit and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def start_body(self, keys: tuple[str, ...]) -> bool:
        """Let an admitted request receive its body, or False when one of its keys (its address,
        its institution) already has its share of the bound receiving bodies."""
        cap = self.share_limit
        if cap and any(self.receiving[key] >= cap for key in keys):
            return False
        for key in keys:
            self.receiving[key] += 1
        return True

    def end_body(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.receiving[key] -= 1
            if self.receiving[key] <= 0:
                del self.receiving[key]
