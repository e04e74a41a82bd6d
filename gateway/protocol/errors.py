"""Every error the gateway answers with, in one tree.

All of them reach the client the same way: HTTP 200, a well-formed envelope, ``infcode -1``
and ``err_msg`` (Chinese, written for the counter clerk). ``retryable`` says whether the
same request may succeed later unchanged; only retryable failures are not journaled against
their msgid, so a retry after an outage is not answered with the outage.

    GatewayError                 base; never raised itself
    ├── BadRequest               the envelope or input is malformed or mistyped
    ├── RuleRejected             well-formed, but the settlement rules refuse it
    │   ├── NotInsured           unknown person, or psn_insu_stas is not 1
    │   │   └── IdentityRejected the card / e-voucher does not identify the person (terminal fault signal)
    │   └── LineRejected         one fee line fails its checks (names feedetl_sn)
    ├── NotFound                 the mdtrt_id / setl_id / batch does not exist for this institution
    │   └── NotYetApplied        a provisional visit id still waiting to be applied (retryable)
    ├── Conflict                 the state forbids it: settled twice, cancelled twice, msgid reused
    │   └── HeldByPlan           an undo the emergency plan holds back while its rule lasts (retryable)
    ├── Busy                     shed under overload or rate limit; retry shortly (retryable)
    └── Unavailable              a dependency failed or timed out (retryable)
        ├── LedgerDown           another region's ledger database did not answer (named)
        └── DependencyDown       refused without trying: the ledger's or the old system's
                                 breaker is open

``counts_as_error`` says whether the metrics count the refusal as a failed request (outcome
``error``, the institution's errors) rather than a refusal of what was asked: true of every
refusal a dependency out of reach causes (DependencyDown, LedgerDownRefusal).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the tree; carries the clerk-facing message."""

    retryable = False
    counts_as_error = False

    def __init__(self, err_msg: str) -> None:
        super().__init__(err_msg)
        self.err_msg = err_msg


class BadRequest(GatewayError):
    """The envelope or input is malformed, mistyped or incomplete."""


class RuleRejected(GatewayError):
    """Well-formed, but the settlement rules refuse it."""


class SelfPayStay(RuleRejected):
    """A stay admitted as self-pay under the plan (自费入院), not yet converted to insurance.

    `err_msg` is the counter's: a refused settlement stays its msgid's answer, so it says to
    settle under a new msgid once converted (found from outside: converted, the same msgid was
    told to convert again). `waiting` is replay's, whose claim simply waits for the conversion."""

    def __init__(self, mdtrt_id: str) -> None:
        self.waiting = f"就诊ID{mdtrt_id}为应急期间自费入院，待办理自费转医保后补结算"
        super().__init__(
            f"就诊ID{mdtrt_id}为应急期间自费入院，请先办理自费转医保，再使用新的报文ID结算"
        )


class NotInsured(RuleRejected):
    """Unknown person, or not in insured status."""


class IdentityRejected(NotInsured):
    """The certificate read at the counter does not identify an insured person."""


class LineRejected(RuleRejected):
    """A fee line fails its checks."""

    def __init__(self, feedetl_sn: str, reason: str) -> None:
        super().__init__(f"费用明细流水号{feedetl_sn}：{reason}")
        self.feedetl_sn = feedetl_sn


class NotFound(GatewayError):
    """The referenced visit, batch or settlement does not exist for this institution."""


class NotYetApplied(NotFound):
    """A provisional visit id (handed out under the emergency plan) whose registration is still
    waiting to be applied: the same request succeeds once it is, so its refusal is not kept
    against the msgid (found from outside: kept, every retry of a 2207 on such a visit got
    "retry later" back, even after the registration was applied)."""

    retryable = True


class Conflict(GatewayError):
    """The current state forbids the operation."""


class HeldByPlan(Conflict):
    """A cancellation or a 2601 the emergency plan refuses while a rule takes its settlements
    off the normal path: the same request succeeds once the rule is cleared, so the refusal is
    not kept against its msgid (found from outside: kept, a 2601 refused under a rule was refused
    for good in the plan's words after it was cleared, as were a 2208 and a 2601 under a rule
    narrowed to a medical category)."""

    retryable = True


class BatchSettled(Conflict):
    """A charge batch settled before: a second settlement or claim of it is refused (`batch`
    names it, for the words a replayed claim of it is failed in)."""

    def __init__(self, message: str, batch: str) -> None:
        super().__init__(message)
        self.batch = batch


class Busy(GatewayError):
    """Shed under overload or rate limit."""

    retryable = True


class Unavailable(GatewayError):
    """A dependency failed or timed out."""

    retryable = True


class LedgerDown(Unavailable):
    """A ledger database other than the request's own did not answer (the ledger split by
    region, gateway.ledger.db.elsewhere): its breaker counts it, not the request's ledger's."""

    counts_as_error = True

    def __init__(self, message: str, ledger: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.ledger = ledger
        self.timeout = timeout


class DependencyDown(Unavailable):
    """Refused without trying, its dependency out of reach (the ledger's breaker open, the old
    system's): counted as a failed request, as the timeouts that opened the breaker were. Found
    from outside: counted as a refusal of bad input, the error-ratio alert read 0.08 while every
    1101 failed, and an institution's error alerts cleared with the ledger still down."""

    counts_as_error = True


class LedgerDownRefusal(RuleRejected):
    """The plan's `reject` while the ledger's breaker is open: final for the counter (it settles
    as self-pay), and a failed request for the metrics, as DependencyDown is."""

    counts_as_error = True
