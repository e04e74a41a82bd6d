"""Prometheus metrics. Label sets are bounded: infno from the transaction table, outcome from a
fixed list, institutions from the reference data, terminals capped per process.

Under several worker processes prometheus-client's multiprocess mode is used: the serving CLI
sets PROMETHEUS_MULTIPROC_DIR before this module is imported, and /metrics aggregates.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.emergency.plan.rules import ACTIONS, CLASSES

# Latency targets sit on bucket boundaries: 25 ms (P1 p99), 50 ms (P6), 800 ms (inpatient anchor).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.8,
    1.0,
    2.5,
    5.0,
    10.0,
)
OUTCOMES = ("ok", "rejected", "replayed", "busy", "error", "deferred", "legacy")
MAX_TERMINALS = 2000  # distinct terminal label values per process before folding into "other"
MAX_TERMINALS_PER_INSTITUTION = 200  # of those, one institution's
OTHER_TERMINAL = "other"

REQUESTS = Counter(
    "sgw_requests", "Requests answered, by transaction and outcome", ["infno", "outcome"]
)
DURATION = Histogram(
    "sgw_request_duration_seconds",
    "Time to answer, by transaction",
    ["infno"],
    buckets=LATENCY_BUCKETS,
)
# The answers that did their work (outcome "ok": a settlement committed before its answer), for
# the latency target P1. Found from outside: one till's retry storm during an outage put 21,000
# rate-limit refusals, each under a millisecond, into the histogram above in five minutes, and
# its p99 stayed under 25 ms whatever the settlements took.
DONE_DURATION = Histogram(
    "sgw_done_duration_seconds",
    "Time to answer the requests that did their work (outcome ok), by transaction",
    ["infno"],
    buckets=LATENCY_BUCKETS,
)
# Primed at start: the transactions whose latency the alert and the dashboard follow.
DONE_PRIMED = ("2102", "2207", "2304")
# In fen, counted by whole numbers: a sample is a float, and a count of yuan added up fractions
# of a yuan a float cannot hold (found from outside: 2892.0000000000005 where the account had
# paid 2892.00); whole fen stay exact to 2^53 fen.
FUND_PAID = Counter(
    "sgw_fund_paid_fen", "Money paid by each fund in settlements (fen)", ["fund_pay_type"]
)
LOOP_STALLED = Counter(
    "sgw_event_loop_stalled_seconds",
    "Seconds the serving event loop stood still (a blocking call, or the process not scheduled); "
    "the breakers do not count this time against the ledger",
)
REPLAYS = Counter("sgw_idempotent_replays", "Answers replayed from the msgid journal")
AUTH_REASONS = ("missing", "malformed", "timestamp", "signature", "nonce")
UNREGISTERED = "unregistered"
AUTH_FAILURES = Counter(
    "sgw_auth_failures",
    "Requests refused by the signature check, by the institution they named (a registered"
    " code, else unregistered) and why (missing, malformed, timestamp, signature, nonce)",
    ["fixmedins_code", "reason"],
)
INSTITUTION_ERRORS = Counter(
    "sgw_institution_errors",
    "Failed requests per institution: timeouts and dependency errors (kind=timeout|error)",
    ["fixmedins_code", "kind"],
)
IDENTITY_FAILURES = Counter(
    "sgw_terminal_identity_failures",
    "Certificate / card failures at a terminal (unknown certificate, card mismatch)",
    ["fixmedins_code", "terminal"],
)
RECONCILE_MISMATCHES = Counter(
    "sgw_reconcile_mismatches",
    "Reconciliations (3201/3202) that did not balance",
    ["fixmedins_code"],
)
CATALOG_VERSION = Gauge(
    "sgw_catalog_version", "Catalog snapshot version in use", multiprocess_mode="livemax"
)
DB_POOL_SIZE = Gauge(
    "sgw_db_pool_connections", "Ledger pool connections", ["state"], multiprocess_mode="livesum"
)

PLAN_DEGRADED = Gauge(
    "sgw_plan_degraded",
    "1 while a rule or window of the plan applies a degraded action (reject/defer/selfpay/"
    "route_legacy) to the scope and class; a breaker's own action (the ledger's: defer while"
    " open or half-open) shows in sgw_breaker_state instead",
    ["scope", "class"],
    multiprocess_mode="livemax",
)
PLAN_CHANGES = Counter(
    "sgw_plan_changes",
    "Emergency-plan state changes: rules set and cleared, windows opening and closing (once per"
    " gateway), breakers (each process's own; scope breaker:<dependency>, action = the breaker's"
    " new state)",
    ["scope", "class", "action"],
)
# A rule or a window is the whole gateway's, and every worker reads it from the ledger and sees it
# change: counted by each, the summed counter said two changes for one under `--workers 2` (found
# from outside). Worker 0 counts them (its replacement too, from where it starts); a breaker is
# its own process's, so every worker counts its breakers' changes.
_counts_plan_changes = True


def leave_plan_changes_to_the_first_worker() -> None:
    """This process is a later worker: the plan's changes are counted by worker 0."""
    global _counts_plan_changes
    _counts_plan_changes = False


def plan_changed(scope: str, klass: str, action: str) -> None:
    """A rule or window changed what applies to (scope, class)."""
    if _counts_plan_changes:
        PLAN_CHANGES.labels(scope, klass, action).inc()


# Deferred claims waiting for replay, in two parts, since workers see them differently: every
# worker reads the same ledger (and the same segments of dead workers), so that part is the
# largest any live worker read; each holds its own journal, so that part is their sum (found from
# outside: one gauge of both, taken as the largest, showed one worker's share of an outage's
# claims with two). The total is max(sgw_deferred_claims) + sum(sgw_deferred_claims_journaled).
DEFERRED_CLAIMS = Gauge(
    "sgw_deferred_claims",
    "Deferred claims waiting for replay in the ledger, and in journal segments no running"
    " process holds (a killed worker's); with sgw_deferred_claims_journaled, all of them",
    multiprocess_mode="livemax",
)
# Found from outside: claims filed failed (their message settled besides, their visit's calls
# refused at recovery) were seen only in `deferred list` and `ledger check`, every patient of
# them owed cash back or a settlement, with nothing for ops to alert on.
FAILED_CLAIMS = Gauge(
    "sgw_deferred_claims_failed",
    "Deferred claims filed failed (by replay or by the drain) and not withdrawn: each a patient"
    " owed a settlement or the cash paid (python -m gateway deferred list --status failed)",
    multiprocess_mode="livemax",
)
JOURNALED_CLAIMS = Gauge(
    "sgw_deferred_claims_journaled",
    "Deferred claims in this process's own local journal, not yet drained into the ledger",
    multiprocess_mode="livesum",
)
PAYOUT_STATES = ("owed", "batched", "paid", "withdrawn", "failed")
PAYOUT_YUAN = Gauge(
    "sgw_payout_yuan",
    "Reimbursements owed to patients by state: owed, batched (in a payout batch), paid,"
    " withdrawn (its settlement cancelled while only owed) and failed (payments the bank"
    " returned failed, each attempt counted)",
    ["state"],
    multiprocess_mode="livemax",
)
PAYOUT_LINES = Gauge(
    "sgw_payout_lines",
    "Owed lines (reimbursements) by the same states as sgw_payout_yuan",
    ["state"],
    multiprocess_mode="livemax",
)
PAYOUT_OWED_OLDEST = Gauge(
    "sgw_payout_owed_oldest_seconds",
    "Age of the oldest reimbursement recorded as owed and not paid yet (0: none)",
    multiprocess_mode="livemax",
)
BREAKER_STATE = Gauge(
    "sgw_breaker_state",
    "Breaker per dependency: 0 closed, 1 half-open, 2 open",
    ["dependency"],
    multiprocess_mode="livemax",
)

# gateway.pipeline.group_read's kinds of batch (kept: refusals the plan keeps, written)
GROUP_READ_KINDS = ("preview", "msgid", "kept")
GROUP_READ_BATCH_SIZE = Histogram(
    "sgw_group_read_batch_size",
    "Reads done together by the group read (kind: preview, msgid; kept: the plan's refusals kept)",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
GROUP_BATCH_SIZE = Histogram(
    "sgw_group_commit_batch_size",
    "Settlements committed together by the group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ADMISSION_LIMIT = Gauge(
    "sgw_admission_limit",
    "Requests the process admits at once now: [overload] max_in_flight, or below it while a"
    " latency target holds it lower (0: no bound)",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "sgw_shed_requests",
    "Requests answered busy at once because the process was at its in-flight limit",
)

# The parallel run (gateway.emergency.shadow): settlements priced by both systems, by the
# answering institution's region, the institution and the medical category (outpatient,
# chronic, inpatient, pharmacy). A settlement is counted once in compared and, if its money
# differs, once in differing: differing/compared is its rate. The causes (gateway.core.
# shadow_diff.Cause, every one found in a settlement) are counted per region and category; per
# institution and item they are in the ledger (the cut-over report), not in label sets.
SHADOW_COMPARED = Counter(
    "sgw_shadow_compared",
    "Settlements priced by both systems and compared",
    ["admdvs", "fixmedins_code", "category"],
)
SHADOW_DIFFERING = Counter(
    "sgw_shadow_differing",
    "Compared settlements whose money differs",
    ["admdvs", "fixmedins_code", "category"],
)
SHADOW_CAUSES = Counter(
    "sgw_shadow_causes",
    "Causes found in differing settlements (one settlement may count under several)",
    ["admdvs", "category", "cause"],
)
# Pricings that produced no comparison: the shadow failed (error), ran past its time (timeout),
# was not asked because its breaker is open (unavailable), the queue was full (dropped), or the
# visit priced was not mirrored to the shadow (not_mirrored: a call of it dropped, refused or
# failed there, or still not delivered when the pricing stopped waiting).
SHADOW_FAILURES = Counter(
    "sgw_shadow_failures",
    "Shadow pricings that produced no comparison, by which system shadowed and why",
    ["shadow", "kind"],
)
SHADOW_KINDS = ("error", "timeout", "unavailable", "dropped", "not_mirrored")
# Encounter calls replayed at the shadow (visit mirroring, gateway.emergency.mirror): delivered
# (ok), refused by the shadow (refused), dropped before the outbox (dropped: its queue full), or
# not delivered (failed: the shadow down or slow past its attempts, or an earlier call of the
# visit not mirrored).
SHADOW_MIRRORED = Counter(
    "sgw_shadow_mirrored",
    "Encounter calls mirrored to the shadow system, by which system shadowed and outcome",
    ["shadow", "outcome"],
)
MIRROR_OUTCOMES = ("ok", "refused", "dropped", "failed")
SHADOW_SYSTEMS = ("legacy", "gateway")
# Medical categories by institution type: (a hospital's, a pharmacy's).
SHADOW_CATEGORIES = (("outpatient", "chronic", "inpatient"), ("pharmacy",))
# gateway.core.shadow_diff.Cause's values (metrics sit below the rules and do not import them;
# tests/unit/test_shadow_diff.py holds the two equal).
SHADOW_CAUSE_NAMES = (
    "catalog_class",
    "selfpay_ratio",
    "price_cap",
    "deductible",
    "pool_ratio",
    "cap_reached",
    "account",
    "refusal",
    "other",
)

_terminals: set[str] = set()
_per_institution: dict[str, int] = {}


def prime(infnos: Iterable[str], institutions: list[str], fund_types: list[str]) -> None:
    """Known label values start at 0: every family the dashboard and the alert rules select is
    in the exposition from the moment a process starts (a panel shows 0, not "no data"), and
    rate() and increase() see the first event.

    `infnos` is the transaction table's keys, handed in by the app once the adapters have filled
    it: metrics sit below dispatch and do not reach up for it.

    Under several workers each process primes its own samples in its multiprocess file, so
    whichever worker answers a scrape, the aggregate holds every series.
    """
    for infno in DONE_PRIMED:
        DONE_DURATION.labels(infno)
    for infno in infnos:
        DURATION.labels(infno)
        for outcome in OUTCOMES:
            REQUESTS.labels(infno, outcome)
    for code in institutions:
        for kind in ("timeout", "error"):
            INSTITUTION_ERRORS.labels(code, kind)
        RECONCILE_MISMATCHES.labels(code)
        # Terminals are not known in advance; the fold-over label is, and the alert ignores it.
        IDENTITY_FAILURES.labels(code, OTHER_TERMINAL)
    for code in (*institutions, UNREGISTERED):
        for reason in AUTH_REASONS:
            AUTH_FAILURES.labels(code, reason)
    for fund in fund_types:
        FUND_PAID.labels(fund)
    for klass in CLASSES:
        for action in (*ACTIONS, "normal"):
            PLAN_CHANGES.labels("global", klass, action)
    DEFERRED_CLAIMS.set(0)
    FAILED_CLAIMS.set(0)
    JOURNALED_CLAIMS.set(0)
    for state in PAYOUT_STATES:
        PAYOUT_YUAN.labels(state).set(0)
        PAYOUT_LINES.labels(state).set(0)
    PAYOUT_OWED_OLDEST.set(0)
    for system in SHADOW_SYSTEMS:
        for kind in SHADOW_KINDS:
            SHADOW_FAILURES.labels(system, kind)
        for mirrored in MIRROR_OUTCOMES:
            SHADOW_MIRRORED.labels(system, mirrored)
    for kind in GROUP_READ_KINDS:
        GROUP_READ_BATCH_SIZE.labels(kind)


def prime_shadow(institutions: Iterable[tuple[str, str, str]]) -> None:
    """The parallel run's rates from 0 for each (admdvs, fixmedins_code, fixmedins_type): a
    pharmacy's pharmacy category, a hospital's three, so that increase() sees the first."""
    regions: set[str] = set()
    for admdvs, code, kind in institutions:
        regions.add(admdvs)
        for category in SHADOW_CATEGORIES[kind == "2"]:
            SHADOW_COMPARED.labels(admdvs, code, category)
            SHADOW_DIFFERING.labels(admdvs, code, category)
    for admdvs in regions:
        for category in (*SHADOW_CATEGORIES[0], *SHADOW_CATEGORIES[1]):
            for cause in SHADOW_CAUSE_NAMES:
                SHADOW_CAUSES.labels(admdvs, category, cause)


def prime_breaker(dependency: str) -> None:
    """A dependency's breaker: closed, and each transition it can make counted from 0."""
    from gateway.emergency.breaker import CLOSED, HALF_OPEN, OPEN, STATE_VALUE

    BREAKER_STATE.labels(dependency).set(STATE_VALUE[CLOSED])
    for state in (CLOSED, HALF_OPEN, OPEN):
        PLAN_CHANGES.labels(f"breaker:{dependency}", "*", state)


def terminal_label(fixmedins_code: str, terminal: str) -> str:
    """Bound the terminal label: past the cap, new terminals count as "other". One institution
    takes at most its own share of the labels (found from outside: a client sending a made-up
    `dev_no` with each request added a series per request, and could have taken every label
    from the other institutions' real terminals)."""
    key = f"{fixmedins_code}|{terminal}"
    if key in _terminals:
        return terminal
    held = _per_institution.get(fixmedins_code, 0)
    if len(_terminals) < MAX_TERMINALS and held < MAX_TERMINALS_PER_INSTITUTION:
        _terminals.add(key)
        _per_institution[fixmedins_code] = held + 1
        return terminal
    return OTHER_TERMINAL


def exposition() -> bytes:
    """The text exposition, aggregated over worker processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
