"""The requests waiting on a ledger database, answered when its breaker opens.

A request stuck on a hung ledger is answered at its deadline ("retry the same msgid"), and its
retry then takes the emergency plan's path once the breaker has opened. But the breaker opens
only after its probe has failed too, which is after the first deadline; a retry sent meanwhile
went back to the hung ledger and waited out a deadline of its own. Found from outside: one
till alone on a hung ledger, one sale at a time, was protected after about 12.5 s with the
shipped 5 s deadline, against R5's 10 s. So when a ledger's breaker opens, every request
waiting on that ledger is answered at once, in the words a deadline's answer has, and its work
is ended as a deadline ends it (gateway.app.server cancels it; the runtime cuts the group
commit's running batches on that ledger): found from outside, a released retry's work, still
within its deadline, committed the sale when the hung network healed, beside the claim its next
retry had become. Its retry is answered by the plan (gateway.pipeline.attempts keeps a claim
from being taken while any attempt of the message is still at work).
"""

from __future__ import annotations

import asyncio


class Wait:
    """One request at the edge: the ledger it went to (set once its ledger is known, with the
    request's institution, infno and msgid, which its edge's own answer carries and words by)
    and the future its edge waits on, woken early when that ledger's breaker opens."""

    __slots__ = ("code", "infno", "ledger", "msgid", "released", "waiter")

    def __init__(self) -> None:
        self.ledger: str | None = None
        self.code = ""
        self.infno = ""
        self.msgid = ""
        self.waiter: asyncio.Future[None] | None = None
        self.released = False


class LedgerWaits:
    """The requests in flight at the edge, by the ledger each went to."""

    __slots__ = ("_waits",)

    def __init__(self) -> None:
        self._waits: set[Wait] = set()

    def begin(self) -> Wait:
        wait = Wait()
        self._waits.add(wait)
        return wait

    def end(self, wait: Wait) -> None:
        self._waits.discard(wait)

    def release(self, ledger: str) -> int:
        """Wake every request waiting on `ledger`; how many were."""
        released = 0
        for wait in self._waits:
            waiter = wait.waiter
            if wait.ledger != ledger or waiter is None or waiter.done():
                continue
            wait.released = True
            waiter.set_result(None)
            released += 1
        return released

    def __len__(self) -> int:
        return len(self._waits)
