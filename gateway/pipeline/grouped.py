"""A transaction's grouped form: what it hands the group commit and what it gets back.

A transaction registered with `grouped=` turns a request into a Job: whom (and which visit) to
lock, and a pure build from the locked state (Held) to the rows it stages (Built). The group
commit (gateway.pipeline.group_commit) runs jobs in batches, the single path one at a time; dispatch
only passes them on. Here, apart from both, so that the transaction table can name a Job
without reaching into the batch that runs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.national.envelope import Request
from gateway.core.model import Accumulators, FundRow, Person, Settlement
from gateway.core.settle import apply
from gateway.ledger import deferred, fees
from gateway.ledger.encounters import Encounter
from gateway.ledger.idempotency import Kept, Stored
from gateway.ledger.writes import Writes
from gateway.pipeline.attempts import Attempts
from gateway.pipeline.outcome import Outcome
from gateway.protocol.errors import Unavailable


@dataclass(slots=True)
class VisitHeld:
    """A locked visit as the batch has it so far (a settlement of it consumes its lines)."""

    encounter: Encounter
    unsettled: list[fees.StoredLine]  # in feedetl_sn order
    settled_batches: set[str]  # chrg_bchno values with lines settled already
    refunded: dict[str, str]  # chrg_bchno -> its latest refunded settlement nothing replaces yet
    # Lines under the institution's pending deferred claims: settled by replay, not here.
    claimed: list[deferred.Held] = field(default_factory=list)
    # Bills of the person at the institution on the visit's day the agency reimbursed as manual
    # claims, in force: (claim_no, medfee_sumamt). A settlement of the same total is refused.
    reimbursed: list[tuple[str, int]] = field(default_factory=list)
    # A stay: the agency's inpatient manual claims in force for a stay of the person at the
    # institution overlapping this one: (claim_no, admitted, discharged). Refused whatever the
    # total (found from outside: the hospital's bill of one more line than the claim's settled,
    # and the funds paid the stay twice).
    stay_reimbursed: list[tuple[str, dt.datetime, dt.datetime]] = field(default_factory=list)
    # A stay: another stay of the person settled in the same year (the second admission's
    # deductible rule, settlement-rules §3).
    other_inpatient_in_force: bool = False
    # A stay: its closing settlement in force, if any (nothing more is settled on it then).
    closing: str | None = None
    # Changed by an earlier job of the batch (a 2203's diagnosis, a 2204's lines): see
    # `unchanged`.
    changed: bool = False


def unchanged(visit: VisitHeld) -> None:
    """Refuse, retryably, a job on a visit an earlier job of the same batch changed: the batch
    sends one statement per table in first-staged order, so a settlement staged after an
    upload could mark its lines settled before they are inserted. Refused here, the request
    takes the single path once the batch has committed and reads the visit as it is then. A
    client waits for each answer before its next call, so this is a burst's oddity, never the
    visit chain's common case."""
    if visit.changed:
        raise Unavailable("就诊信息正在更新，请稍后重试")


@dataclass(slots=True)
class Held:
    """A person's locked state as the batch has it so far, and the job's visit if it has one."""

    person: Person | None  # None: no such person (the build refuses)
    balance: int
    year: Accumulators
    visit: VisitHeld | None = None  # None for a job without one, or an unknown mdtrt_id


@dataclass(slots=True)
class Built:
    """One settlement computed and staged."""

    output: Any
    writes: Writes
    balance: int  # the account balance after it
    year: Accumulators  # the year's accumulators after it
    paid: tuple[FundRow, ...] = ()
    warn_msg: str | None = None

    @classmethod
    def settled(cls, s: Settlement, held: Held, output: Any, writes: Writes) -> Built:
        """A settlement staged: the person's balance and accumulators are those after it."""
        return cls(
            output=output,
            writes=writes,
            balance=s.balc if s.acct_pay else held.balance,
            year=apply(held.year, s.delta),
            paid=s.funds,
        )


@dataclass(slots=True)
class Job:
    """What a transaction's grouped form needs from the batch: whom (and which visit) to lock,
    and a pure build from the locked state and two fresh serials (就诊ID, 结算ID) to the staged
    writes. Locks are taken visits first, then persons, each in key order, as the single path
    takes them (visit, then person): no two transactions wait for each other in a cycle."""

    psn_no: str
    year: int | None  # None: the year of the visit's service date
    build: Callable[[Held, int, int], Built]
    mdtrt_id: str | None = None  # a visit to lock and load with its unsettled lines
    # What the build reads besides the locks. A settlement (`settles`) reads the person's
    # accumulators of the year and its visit's settled batches, refunds and pending claims; a
    # settlement or a registration (`draws`) takes two fresh serials. A job without them (a
    # visit's diagnosis or fee upload) is built with zero accumulators and serials, and a batch
    # that holds no job needing them skips their reads.
    settles: bool = True
    draws: bool = True
    # A job that reads its visit's settled batches without settling (an outpatient fee upload,
    # which a settled batch refuses); a settlement reads them anyway.
    reads_batches: bool = False
    # A job that reads the deferred claims holding its visit's lines without settling (a
    # visit's information, which does not change under one); a settlement reads them anyway.
    reads_claims: bool = False


class Batches(Protocol):
    """The group commit as the process holds it (gateway.pipeline.group_commit.GroupCommit). Named here
    because the group commit reaches the transaction table, which imports the runtime: the
    runtime holds it by this shape, and the server hands the real one to Gateway.start."""

    async def submit(
        self,
        req: Request,
        body_hash: bytes,
        received: dt.datetime,
        job: Job,
        expires: float | None = None,
        attempts: Attempts | None = None,
    ) -> Outcome | None:
        """The settlement's answer, or None (take the single path). `attempts`: where its
        batch says the message is at work until the batch is over."""

    def abort(self) -> int:
        """Cut the running batches' connections; how many."""


class Unread(Exception):
    """A group read's batch failed whole: read this one on its own."""


class Reads(Protocol):
    """The group read of one ledger database (gateway.pipeline.group_read.GroupRead), held by
    the runtime by this shape for the same reason as Batches."""

    claims_held: Callable[[], bool]  # whether its previews read the claims holding lines

    async def preview(self, job: Job, expires: float) -> Built | None:
        """The job's build over the state as it is, or None (take the single path)."""

    async def answer(self, fixmedins_code: str, msgid: str, expires: float) -> Stored | None:
        """The msgid journal's answer for this key, if any (Unread: look it up alone)."""

    async def keep(self, kept: Kept, expires: float) -> Stored | None:
        """Keep an answer against its key; the earlier one, if the key had one (Unread: keep
        it alone)."""
