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

Key = tuple[str, str]  # (fixmedins_code, msgid)


class Attempts:
    """How many attempts of each message are at work here: a request's write, from its start
    to its end, and a group commit's batch, from taking the message to committing or failing
    (a batch outlives a waiter whose deadline passed)."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[Key, int] = {}

    def begin(self, key: Key) -> None:
        running = self._running
        running[key] = running.get(key, 0) + 1

    def end(self, key: Key) -> None:
        running = self._running
        left = running.get(key, 0) - 1
        if left > 0:
            running[key] = left
        else:
            running.pop(key, None)

    def running(self, key: Key) -> bool:
        return key in self._running
