"""The transaction table: each national transaction declared once, in its `register(...)`.

Everything the gateway needs to know about a transaction number lives in its entry: the input
type it decodes, its emergency-plan class, whether it writes, its group-commit form, what the
plan's `defer` does with it, what a 2601 reversal of it undoes, and which kind of visit it
settles. Other modules ask the entry (`TRANSACTIONS[infno]`), never compare numbers.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from adapters.national.envelope import Request
from gateway.app.runtime import Gateway
from gateway.core.model import FundRow, Institution
from gateway.emergency.plan.rules import TxClass

if TYPE_CHECKING:
    from gateway.core.catalog import Snapshot
    from gateway.core.model import LineSplit
    from gateway.ledger.fees import StoredLine
    from gateway.pipeline.grouped import Job


class Kind(enum.StrEnum):
    """The kind of visit a settlement or its cancellation belongs to."""

    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    PHARMACY = "pharmacy"


class Deferral(enum.Enum):
    """What the emergency plan's `defer` does with the transaction (gateway.emergency.hook)."""

    NONE = "none"  # no deferred form: refused, or answered by its class's rule
    PRESETTLEMENT = "presettlement"  # answered all-cash, nothing written
    CLAIM = "claim"  # the settlement becomes a claim paid back later (主动报)
    CANCEL_CLAIM = "cancel_claim"  # withdraws a claim before its replay
    CALL = "call"  # journaled with its visit and applied in order on recovery


class Mode(enum.StrEnum):
    """How a handler runs: the plan's detours and replay change what it may do."""

    NORMAL = "normal"
    SELFPAY = "selfpay"  # an admission taken as self-pay under the plan's selfpay action
    DEFERRED = "deferred"  # the transaction's deferred form (a claim, a journaled call)
    REPLAY = "replay"  # a deferred claim or call applied on recovery


class Undo(enum.Enum):
    """What a 2601 reversal of the transaction undoes (gateway.services.reversal)."""

    NONE = "none"  # not reversible
    SETTLEMENT = "settlement"
    CANCELLATION = "cancellation"  # revives the settlement it cancelled, if nothing changed
    ADMISSION = "admission"


@dataclass(slots=True)
class Call:
    """One transaction being handled."""

    gw: Gateway
    req: Request
    conn: asyncpg.Connection
    now: dt.datetime
    institution: Institution
    mode: Mode = Mode.NORMAL
    # The ledger database `conn` is on (gateway.ledger.partitions; "main" unless the ledger is
    # split by region): a 2601 bars its unknown original in the others.
    ledger: str = "main"


@dataclass(slots=True)
class Answer:
    output: Any
    warn_msg: str | None = None
    paid: tuple[FundRow, ...] = ()  # a committed settlement's fund rows, for the payment metrics
    raw: bytes | None = None  # a file answered as itself (9102), not inside an envelope
    mismatch: bool = False  # a reconciliation that did not balance
    catalog_changed: bool = False  # reference data changed: swap this process's snapshot now


Handler = Callable[[Call], Awaitable[Answer]]
# A writing transaction's group-commit form: validate (raising refuses it, and the single path
# then answers and journals the refusal), then a Job the batch locks, builds and commits.
# None: this request takes the single path after all.
Prepare = Callable[[Gateway, Request, Institution, dt.datetime], "Job | None"]
# What a transaction reads of a request before the ledger, raising its refusal; its result is
# not kept (a journaled call is read again when it is applied).
Check = Callable[[Gateway, Request, Institution, dt.datetime], object]
# A journaled call's answer while the ledger is down (its visit's provisional id, if it opens one;
# the catalog held in memory, to price uploaded lines as the ledger's path would). Raising
# refuses the call: nothing is journaled.
JournalAnswer = Callable[[Request, "str | None", "Snapshot"], Any]
# The lines a request carries (a pharmacy purchase's), split by the catalog in memory: what a
# claim or pre-settlement of it answers line by line while settlements are deferred, the ledger
# away or not. Raising refuses the request, as its settlement would.
CarriedLines = Callable[[Request, "Snapshot"], "tuple[LineSplit, ...]"]
# What a call journaled on a provisional visit does to the visit's lines, before the ledger
# has them: an upload adds its lines, a withdrawal takes some away. Read by a pre-settlement or
# a claim of that visit under `defer`, which prices the lines replay will settle.
JournaledLines = Callable[[Request, "list[StoredLine]"], "list[StoredLine]"]
# How replay settles a deferred claim of a visit's lines: exactly the lines (feedetl_sn) the
# claim was taken for, not whatever the visit holds unsettled by then.
ClaimSettle = Callable[[Call, frozenset[str]], Awaitable[Answer]]
# Where a request carries a service date: (node, "*" for each row of a list node or "", field,
# the name a clerk reads).
Dated = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class Transaction:
    infno: str
    name: str
    handler: Handler
    writes: bool  # journaled by msgid and run in one transaction with its effects
    klass: TxClass  # what the emergency plan's rules and windows name
    grouped: Prepare | None = None
    input: type[Any] | None = None  # the input node's wire type (OpenAPI, fuzzing)
    kind: Kind | None = None  # the visit kind it settles, pre-settles or cancels
    deferral: Deferral = Deferral.NONE
    undo: Undo = Undo.NONE
    opens_visit: bool = False  # a visit begins with it (a journaled one gets a provisional id)
    journal_answer: JournalAnswer | None = None
    dated: tuple[Dated, ...] = ()  # its service dates, judged when it is deferred
    # A claim's replay (Deferral.CLAIM of a visit); None: the handler settles the claim whole.
    settle_claim: ClaimSettle | None = None
    # The msgid of the earlier transaction this one acts on (2601's omsgid): in a ledger split
    # by region it runs in the database whose msgid journal holds that msgid, wherever the
    # request's own region or person points.
    acts_on: Callable[[Request], str] | None = None
    # A pre-settlement's read form: the Job whose build over the state as it is (no lock) is the
    # answer; the group read (gateway.pipeline.group_read) reads such requests in batches. The
    # handler must answer the same: it previews the same Job on its own connection.
    previewed: Prepare | None = None
    # A visit's settlement (2207/2304): its own Job, final, whose build over the state as it is
    # (nothing written) judges the claim taken for it under the plan's `defer`.
    judged: Prepare | None = None
    # For a transaction without a grouped form: its reading of the request before the ledger,
    # run when it is journaled with the ledger away (gateway.emergency.hook), so that what the
    # normal path refuses is refused then too.
    checked: Check | None = None
    # A purchase's lines split by the catalog, for its claim's and pre-settlement's answers.
    carried_lines: CarriedLines | None = None
    # A call's effect on its provisional visit's lines (an upload's, a withdrawal's).
    journaled_lines: JournaledLines | None = None
    # A withdrawal's lines as the claims that hold lines name them (a batch, fees.ALL).
    withdraws: Callable[[Request], str | None] | None = None
    # A discharge (True) or its undoing (False): a kept stay's closing claim needs the first.
    discharges: bool | None = None

    @property
    def admits(self) -> bool:
        """An admission: what the plan's `selfpay` action takes as self-pay."""
        return self.opens_visit and self.kind is Kind.INPATIENT


TRANSACTIONS: dict[str, Transaction] = {}


def register(
    infno: str,
    name: str,
    *,
    writes: bool,
    klass: TxClass,
    input: type[Any] | None = None,
    grouped: Prepare | None = None,
    kind: Kind | None = None,
    deferral: Deferral = Deferral.NONE,
    undo: Undo = Undo.NONE,
    opens_visit: bool = False,
    journal_answer: JournalAnswer | None = None,
    dated: tuple[Dated, ...] = (),
    settle_claim: ClaimSettle | None = None,
    acts_on: Callable[[Request], str] | None = None,
    previewed: Prepare | None = None,
    judged: Prepare | None = None,
    checked: Check | None = None,
    carried_lines: CarriedLines | None = None,
    journaled_lines: JournaledLines | None = None,
    withdraws: Callable[[Request], str | None] | None = None,
    discharges: bool | None = None,
) -> Callable[[Handler], Handler]:
    """Decorator adding a handler to the transaction table."""

    def add(handler: Handler) -> Handler:
        TRANSACTIONS[infno] = Transaction(
            infno,
            name,
            handler,
            writes,
            klass,
            grouped,
            input,
            kind,
            deferral,
            undo,
            opens_visit,
            journal_answer,
            dated,
            settle_claim,
            acts_on,
            previewed,
            judged,
            checked,
            carried_lines,
            journaled_lines,
            withdraws,
            discharges,
        )
        return handler

    return add


def of(infno: str) -> Transaction | None:
    """The entry of a transaction number (a revision code's base already applied)."""
    return TRANSACTIONS.get(infno)
