"""The writes this process is working on against a ledger, by (institution, msgid).

A request answered "retry the same msgid" before its work is over (its edge's deadline, or its
ledger's breaker opening: gateway.pipeline.ledger_waits) may still commit: its statements wait
in a hung network, or its group commit's batch waits for a connection, and reach a ledger that
comes back within the work's own deadline. Found from outside: a ledger hung for ten seconds,
a till's retry taken as an all-cash claim while the first attempt of the same msgid was still
in flight here, and that attempt then committed the sale when the network healed: the patient
paid in cash and the account paid too. So the emergency plan takes a write off the normal path
(a claim, the old system) only when no attempt of the same message is still in flight in this
process; otherwise the counter is told the outcome is pending and to retry the same msgid.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, str]  # (fixmedins_code, msgid)

# Messages whose outcome is unknown kept at most (the oldest forgotten first): a till that never
# retries leaves its message here, and a doubt only matters to the till's next retries.
DOUBTS_KEPT = 100_000


class Attempts:
    """How many attempts of each message are at work here: a request's write, from its start
    to its end, and a group commit's batch, from taking the message to committing or failing
    (a batch outlives a waiter whose deadline passed).

    And the messages whose outcome is in doubt: an attempt that sent its COMMIT and ended
    without the server's reply (its deadline, its ledger's breaker opening, the connection
    cut). The COMMIT may be on its way in a hung network and land when it heals; found from
    outside: a ledger frozen under load, 6 of the 8 sales in flight had their retries taken as
    all-cash claims and were committed too, the account and the cash both paying. Such a
    message stays at work until an attempt of it is answered by the ledger (`resolved`)."""

    __slots__ = ("_doubts", "_running", "_sending")

    def __init__(self) -> None:
        self._running: dict[Key, int] = {}
        self._sending: set[Key] = set()
        self._doubts: OrderedDict[Key, None] = OrderedDict()

    def begin(self, key: Key) -> None:
        running = self._running
        running[key] = running.get(key, 0) + 1

    def end(self, key: Key) -> None:
        running = self._running
        left = running.get(key, 0) - 1
        if left > 0:
            running[key] = left
            return
        running.pop(key, None)
        if key in self._sending:  # its COMMIT went out and no reply came back
            self._sending.discard(key)
            doubts = self._doubts
            doubts[key] = None
            doubts.move_to_end(key)
            if len(doubts) > DOUBTS_KEPT:
                doubts.popitem(last=False)

    def committing(self, key: Key) -> None:
        """The attempt's COMMIT is about to be sent."""
        self._sending.add(key)

    def committed(self, key: Key) -> None:
        """The server answered the COMMIT (or nothing was sent after all): the outcome is known."""
        self._sending.discard(key)

    def resolved(self, key: Key) -> None:
        """The ledger answered an attempt of the message: whatever the doubt, it is over."""
        self._doubts.pop(key, None)

    def running(self, key: Key) -> bool:
        return key in self._running or key in self._doubts

    def in_doubt(self, key: Key) -> bool:
        return key in self._doubts and key not in self._running
