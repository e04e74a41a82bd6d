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

The till's retry may reach another worker of the host (`gateway.pipeline.shared_doubts`): a
message still at work when its till is told to retry, or left in doubt, is written where the
host's workers look before taking a message off the ledger's path.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.pipeline.shared_doubts import AT_WORK, IN_DOUBT, Key, SharedDoubts

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

    __slots__ = ("_doubts", "_files", "_running", "_sending", "shared")

    def __init__(self, shared: SharedDoubts | None = None) -> None:
        self._running: dict[Key, int] = {}
        # COMMITs sent and not answered, by message: counted per attempt, so that one attempt's
        # answer does not stand for another's (found from outside: a retry's batch, which wrote
        # nothing of the message, was answered and cleared the first attempt's unanswered COMMIT).
        self._sending: dict[Key, int] = {}
        self._doubts: OrderedDict[Key, None] = OrderedDict()
        self.shared = shared
        # Messages with a file in `shared` that this process knows of: True where it wrote the
        # file (its own attempt), False where a sibling did.
        self._files: dict[Key, bool] = {}

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
        if self._sending.pop(key, 0) > 0:  # a COMMIT of it went out and no reply came back
            doubts = self._doubts
            doubts[key] = None
            doubts.move_to_end(key)
            if len(doubts) > DOUBTS_KEPT:
                doubts.popitem(last=False)
            if self.shared is not None:
                self.shared.mark(key, IN_DOUBT)
                self._files[key] = True
        elif self._files.get(key) and key not in self._doubts:
            # Told to retry while at work, and over without a doubt, this attempt or an earlier
            # one's (found from outside: a retry's attempt ended and cleared the file its
            # siblings read, the first attempt's COMMIT still in doubt, and a sibling took the
            # next retry as a claim).
            del self._files[key]
            if self.shared is not None:
                self.shared.clear(key)

    def committing(self, key: Key) -> None:
        """The attempt's COMMIT is about to be sent."""
        sending = self._sending
        sending[key] = sending.get(key, 0) + 1

    def committed(self, key: Key) -> None:
        """The server answered that attempt's COMMIT: its outcome is known."""
        sending = self._sending
        left = sending.get(key, 0) - 1
        if left > 0:
            sending[key] = left
        else:
            sending.pop(key, None)

    def resolved(self, key: Key) -> None:
        """The ledger answered an attempt of the message: whatever the doubt, it is over."""
        self._doubts.pop(key, None)
        if self._files and key in self._files:  # here or in a sibling: over for every worker
            del self._files[key]
            if self.shared is not None:
                self.shared.clear_all(key)

    def told_to_retry(self, key: Key) -> None:
        """Its till has been told to retry while an attempt of the message may yet commit here:
        the retry may come to another worker, which must not take it as a claim meanwhile."""
        if self.shared is None or self._files.get(key):
            return
        if key in self._doubts and key not in self._running:
            self.shared.mark(key, IN_DOUBT)
        elif key in self._running:
            self.shared.mark(key, AT_WORK)
        else:
            return
        self._files[key] = True

    def elsewhere(self, key: Key) -> str | None:
        """Whether another worker of the host holds the message at work (AT_WORK) or in doubt
        (IN_DOUBT), by its file; None when none does (or nothing is shared)."""
        if self.shared is None:
            return None
        held = self.shared.held(key)  # the others' files, whatever this process holds
        if held is not None:
            self._files.setdefault(key, False)
        return held

    def running(self, key: Key) -> bool:
        return key in self._running or key in self._doubts

    def in_doubt(self, key: Key) -> bool:
        return key in self._doubts and key not in self._running
