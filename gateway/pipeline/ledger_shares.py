"""Each institution's share of the ledger's connections.

The pool is shared by every institution. Requests that are legal but slow (a pre-settlement over
tens of thousands of lines) hold a connection for seconds; a dozen of them from one hospital
would otherwise take the whole pool, and every other institution's sale would wait in
`pool.acquire` until its deadline. So one institution holds at most a share of the pool at once
(`[ledger_pool] institution_share_percent`); past it, its own requests wait for one of its own
connections, within their own deadline, and are answered "busy" (nothing done, retry the same
msgid) if none frees up in time. Other institutions never wait behind that queue.

The group commit has the same rule over its writers (gateway.pipeline.group_commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.protocol.errors import Busy

# "Or the database slow": found from outside, the first sales of a ledger outage were told only
# that the institution sent too much, and ops and the clerk looked for a load that was not there.
SHARE_BUSY = (
    "本机构同时办理的医保业务过多或医保结算数据库响应缓慢，已占满本机构可用的结算通道，"
    "请稍候使用相同报文ID重试（本次交易未处理）"
)


def share_of(total: int, percent: int) -> int:
    """An institution's share of `total` slots: at least one; 0 or 100 % or more: all of them."""
    if percent <= 0 or percent >= 100:
        return max(1, total)
    return max(1, total * percent // 100)


class LedgerShares:
    """Per institution, the connections it may hold at once."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._turns: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def turn(self, fixmedins_code: str, expires: float) -> AsyncIterator[None]:
        """One of the institution's connections, waited for until `expires` (the event loop's
        clock): the caller's own deadline pays for the wait. Not nested inside another timeout
        on the same deadline, so that running out here is this institution's backlog (busy),
        not a ledger that failed to answer (which the breakers count)."""
        turn = self._turns.get(fixmedins_code)
        if turn is None:
            turn = self._turns[fixmedins_code] = asyncio.Semaphore(self.limit)
        if turn.locked():
            try:
                async with asyncio.timeout_at(expires):
                    await turn.acquire()
            except TimeoutError:
                raise Busy(SHARE_BUSY) from None
        else:
            await turn.acquire()  # free: no wait, so no timeout to arm (every request comes here)
        try:
            if asyncio.get_running_loop().time() >= expires:
                raise Busy(SHARE_BUSY)
            yield
        finally:
            turn.release()
