"""Recovery: drain the local journal into the ledger, apply journaled calls, replay claims.

Claims are settled in service-date order with the rules in force on their service date, the
accumulators at replay time and the personal account not used (settlement-rules §7), through the
very handlers that settle online. Each claim is one transaction that also marks it settled, so a
replay interrupted anywhere and run again settles nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from adapters.national import deferral
from adapters.national.envelope import Request, encode_response
from gateway.app.runtime import Gateway
from gateway.emergency.deferred import PROVISIONAL_PREFIX
from gateway.emergency.deferred.journal import KEPT, Damaged, Journal, held_elsewhere, read_segment
from gateway.ledger import db, deferred, fees, idempotency, reference_store, reversals, settlements
from gateway.ledger.partitions import Partition
from gateway.protocol.errors import (
    BatchSettled,
    Conflict,
    GatewayError,
    NotFound,
    NotYetApplied,
    SelfPayStay,
)
from gateway.protocol.transaction import TRANSACTIONS, Call, Mode
from gateway.services import payouts

log = logging.getLogger("gateway.replay")
# Amounts in the stored setlinfo keep their exact wire text ("123.40"), never a float.
_exact = msgspec.json.Decoder(float_hook=str)


# ------------------------------------------------------------------------------------ draining


async def drain(
    gw: Gateway,
    journal: Journal,
    reachable: Callable[[str], bool] | None = None,
    claims_failed: list[dict[str, Any]] | None = None,
) -> int:
    """Move every segment no running process holds into the ledger; returns entries moved.

    The process's own segment is rotated first so that it is drained too. Each entry goes to the
    ledger database of its request's region (gateway.ledger.partitions); those of a database
    `reachable` says no to (its breaker open) stay, and so does their segment, whose other entries
    are then inserted again next time. Inserting is keyed by (institution, msgid): a segment
    drained twice adds nothing twice.
    """
    await journal.rotate()
    journal.forget_drained_elsewhere()
    moved = 0
    if journal.holds_anything or journal.drainable_exists():
        gw.ledger_claims.clear()  # claims may reach the ledger: pre-settlements read them
    for path, handle in journal.drainable():
        try:
            damaged: list[Damaged] = []
            entries = list(read_segment(path, damaged))
            by_ledger: dict[str, tuple[Partition, list[deferred.Entry]]] = {}
            for e in entries:
                ledger = await gw.ledgers.of_request(deferral.request_of(e.body), LOOKUP_SECONDS)
                by_ledger.setdefault(ledger.name, (ledger, []))[1].append(e)
            whole = True
            for name, (ledger, mine) in by_ledger.items():
                if reachable is not None and not reachable(name):
                    whole = False
                    continue
                # In chunks, each committed: a segment of thousands of claims (a busy outage)
                # drained in one transaction could not finish within the watcher's budget and
                # would roll back whole every time. Draining again inserts nothing twice.
                async with ledger.pool.acquire() as conn:
                    # What an earlier, cut-short drain moved already is passed over in one
                    # round trip, not one an entry.
                    there = await deferred.present(
                        conn, [(e.fixmedins_code, e.msgid) for e in mine if e.kind != "withdrawal"]
                    )
                    mine = [e for e in mine if (e.fixmedins_code, e.msgid) not in there]
                    for start in range(0, len(mine), DRAIN_CHUNK):
                        answered: list[deferred.Entry] = []
                        async with conn.transaction():
                            moved += await _drain_chunk(
                                conn, mine[start : start + DRAIN_CHUNK], answered
                            )
                        # The journal forgets them below, and the ledger answers their retries:
                        # while it is away again, this process still does, byte for byte (found
                        # from outside: a claim's retry in a later outage was made a claim again,
                        # its setl_time the retry's).
                        for e in answered:
                            gw.recent.remember(e.fixmedins_code, e.msgid, e.digest, e.answer)
            if whole and damaged:
                # An acknowledged claim the disk damaged: its segment is kept whole for the
                # team (its readable entries are in the ledger; draining it again adds nothing
                # twice), and each msgid still legible is barred, so that the till's retry is
                # refused in words rather than settled as new (found from outside: the segment
                # was deleted and the retry charged the patient's account a second time).
                await _bar_damaged(gw, damaged)
                path.rename(path.with_suffix(KEPT))
                _fsync_dir(path.parent)
                journal.drained(path, entries)
                log.error(
                    "journal segment with unreadable records kept",
                    extra={
                        "segment": path.with_suffix(KEPT).name,
                        "lines": [d.line for d in damaged],
                        "msgids": [d.msgid for d in damaged],
                    },
                )
            elif whole:
                path.unlink()
                _fsync_dir(path.parent)
                journal.drained(path, entries)
        finally:
            handle.close()
    if moved:
        log.warning("journal drained into the ledger", extra={"entries": moved})
        await apply_calls(gw, claims_failed=claims_failed)
    return moved


def kept_segments(journal: Journal) -> list[Path]:
    """Segments kept because records in them could not be read (`drain`), oldest first."""
    if not journal.directory.exists():
        return []
    return sorted(journal.directory.glob(f"*{KEPT}"), key=lambda p: p.stat().st_mtime)


async def _bar_damaged(gw: Gateway, damaged: list[Damaged]) -> None:
    """Each damaged record whose institution and msgid can be made out: the msgid's retries
    get a refusal that tells the counter not to charge again (kept where the institution's
    region keeps its msgids; a msgid the ledger knows already keeps its answer)."""
    for d in damaged:
        if not d.fixmedins_code or not d.msgid:
            continue
        institution = gw.snapshot.institution(d.fixmedins_code)
        ledger = gw.ledgers.of_region(institution.admdvs) if institution else gw.ledgers.main
        refusal = encode_response(
            region=gw.region,
            received=dt.datetime.now(),
            output=None,
            err_msg=(
                f"报文ID{d.msgid}的交易已在医保系统故障期间受理（主动报），其记录受损未能补办；"
                "请勿向参保人重复收费，由医保经办机构核实后处理"
            ),
        )
        async with ledger.pool.acquire() as conn:
            await reversals.bar(conn, d.fixmedins_code, d.msgid, d.infno or "", refusal)


LOOKUP_SECONDS = 5.0  # a person-directory look-up for an entry without its region
# Journal entries per drain transaction: each entry is a few round trips, and the watcher gives a
# drain 30 s; a chunk must commit well within it on a ledger some way off (found from outside: a
# ledger 30 ms away each way never drained 211 entries in one chunk of 256, each attempt rolled
# back at the budget, and the gateway deferred sales on a working ledger for good).
DRAIN_CHUNK = 32


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _drain_chunk(
    conn: asyncpg.Connection, chunk: list[deferred.Entry], answered: list[deferred.Entry]
) -> int:
    """Move a chunk of entries into the ledger (in the caller's transaction); how many were
    moved. `answered` gets each whose answer is now its msgid's. The claims and calls go in
    one statement per table, their order kept (found from outside: one round trip or two an
    entry kept an outage's 3,000 claims draining, the breaker half-open and every sale a claim,
    for about 20 s after the ledger was back); then the withdrawals, each after its claim."""
    taken = [e for e in chunk if e.kind != "withdrawal"]
    added = await deferred.insert_many(conn, taken, "journal")
    taken = [e for e in taken if (e.fixmedins_code, e.msgid) in added]
    # The msgid journal gets the answer the counter was given: a retry replays it.
    fresh = await idempotency.keep_fresh(
        conn,
        [
            idempotency.Kept(e.fixmedins_code, e.msgid, e.infno, e.digest, e.answer, 0)
            for e in taken
        ],
    )
    for e in taken:
        if (e.fixmedins_code, e.msgid) in fresh or await _adopt_registration(conn, e):
            answered.append(e)
        else:
            # The ledger answered this msgid besides the claim (before the outage, through
            # another process or node, or during it): replaying it would do it twice. The team
            # settles the patient's cash against the ledger's answer instead.
            words = deferred.ANSWERED_IN_LEDGER if e.kind == "claim" else deferred.CALL_IN_LEDGER
            await deferred.fail_answered(
                conn, e.fixmedins_code, e.msgid, words.format(msgid=e.msgid)
            )
    moved = len(taken)
    for e in chunk:
        if e.kind != "withdrawal":
            continue
        assert e.claim_id is not None
        await deferred.withdraw(conn, e.claim_id, e.fixmedins_code, e.psn_no, e.msgid)
        if await idempotency.record_deferred(
            conn, e.fixmedins_code, e.msgid, e.infno, e.digest, e.answer
        ):
            answered.append(e)
        moved += 1
    return moved


def _opened_visit(output: dict[str, Any]) -> Any:
    """The visit id a registration's answer gives: 2201's `data`, 2401's `result`."""
    return (output.get("data") or output.get("result") or {})["mdtrt_id"]


async def _adopt_registration(conn: asyncpg.Connection, e: deferred.Entry) -> bool:
    """A journaled registration (its provisional visit id) whose message the ledger settled
    beside it, with the same body (its COMMIT in doubt in another process or node, landed when
    the network healed): that registration is the visit the provisional id stands for, and the
    visit's journaled calls and claim go on against it. Found from outside: the registration was
    filed failed, then the visit's 2203 and 2204 with it, and its claim, which promised the
    patient a reimbursement, failed at replay with nothing to flag it."""
    if e.kind != "call" or not e.provisional_id:
        return False
    stored = await idempotency.lookup(conn, e.fixmedins_code, e.msgid)
    if stored is None or stored.tombstone or stored.body_sha256 != e.digest:
        return False
    try:
        answer = msgspec.json.decode(stored.answer)
        mdtrt_id = _opened_visit(answer.get("output") or {}) if answer.get("infcode") == 0 else None
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError):
        return False
    if not isinstance(mdtrt_id, str) or not mdtrt_id:
        return False
    await deferred.record_provisional(conn, e.provisional_id, mdtrt_id)
    await deferred.applied_as_answered(conn, e.fixmedins_code, e.msgid)
    return True


# ------------------------------------------------------------------------------ journaled calls


async def _run(
    gw: Gateway,
    conn: asyncpg.Connection,
    row: deferred.Pending,
    now: dt.datetime,
    pool: asyncpg.Pool | None = None,
) -> Any:
    """Run a stored request through its transaction's handler; returns the handler's output.
    `pool`: the ledger database's a claim is replayed in (`conn` is one of its connections)."""
    req = deferral.request_of(row.body)
    req = deferral.for_replay(req, await deferred.provisional_ids(conn, req.input))
    institution = gw.snapshot.institution(req.fixmedins_code)
    if institution is None:
        raise NotFound(f"定点医药机构编号{req.fixmedins_code}未登记")
    if row.kind == "claim":
        req = await _corrected(gw, conn, row, req, conn if pool is gw.pool else None)
    call = Call(gw, req, conn, now, institution, Mode.REPLAY)
    tx = TRANSACTIONS[req.infno]
    if row.kind == "claim" and row.lines is not None and tx.settle_claim is not None:
        answer = await tx.settle_claim(call, frozenset(row.lines))
    else:
        answer = await tx.handler(call)
    return _exact.decode(msgspec.json.encode(answer.output))


async def _corrected(
    gw: Gateway,
    conn: asyncpg.Connection,
    row: deferred.Pending,
    req: Request,
    main: asyncpg.Connection | None,
) -> Request:
    """The claim with its lines' national codes as the catalog maps their item codes now,
    where the code sent was once the institution's own mapping of the item.

    Found from outside: a mapping corrected after the claim was taken (the documented repair of
    a wrong mapping) left every claim of that item unable to replay, its lines refused as
    "目录对照不一致" against the code they were uploaded with, and `deferred retry` could not
    mend it. A claim is settled with the catalog in force (settlement-rules §7) and the lines
    are resolved again by their item codes, as a bulk correction does; a code the institution
    never mapped the item to stays, and is refused as a counter's would be. `main`: a
    connection to the main database (the catalog's) where `conn` is one, None where the claim
    is in a ledger cluster's (replay holds one of the main pool's few connections already).
    """
    code = req.fixmedins_code
    scope = deferral.claim_scope(req)
    if scope is not None and row.lines is not None:
        mine = set(row.lines)
        lines = [ln for ln in await fees.unsettled(conn, scope[0]) if ln.feedetl_sn in mine]
        sent = [(ln.medins_list_codg, ln.med_list_codg or "", ln.fee_date) for ln in lines]
        now = await _now_mapped(gw, main, code, sent)
        for ln in lines:
            if new := now.get((ln.medins_list_codg, ln.med_list_codg or "", ln.fee_date)):
                await fees.set_national_code(conn, ln.mdtrt_id, ln.feedetl_sn, new)
        return req
    if scope is None and row.lines is None:
        sold = deferral.purchase_codes(req, row.received_at.date())
        now = await _now_mapped(gw, main, code, sold)
        return deferral.with_purchase_codes(req, {(i, c): new for (i, c, _), new in now.items()})
    return req


async def _now_mapped(
    gw: Gateway,
    main: asyncpg.Connection | None,
    fixmedins_code: str,
    sent: list[tuple[str, str, dt.date]],
) -> dict[tuple[str, str, dt.date], str]:
    """For each (item code, national code sent, date) the catalog now maps to another code on
    that date, and which the institution once mapped the item to: the code it maps to now."""
    stale: dict[tuple[str, str, dt.date], str] = {}
    for item, sent_code, on in sent:
        mapping = gw.snapshot.mapping(fixmedins_code, item, on)
        if sent_code and mapping is not None and mapping.med_list_codg != sent_code:
            stale[(item, sent_code, on)] = mapping.med_list_codg
    if not stale:
        return {}
    items = sorted({key[0] for key in stale})
    if main is not None:
        once = await reference_store.ever_mapped(main, fixmedins_code, items)
    else:
        async with gw.pool.acquire() as ref:
            once = await reference_store.ever_mapped(ref, fixmedins_code, items)
    return {key: new for key, new in stale.items() if key[:2] in once}


async def apply_calls(
    gw: Gateway, held: Sequence[str] = (), claims_failed: list[dict[str, Any]] | None = None
) -> tuple[int, int]:
    """Apply pending journaled encounter calls in the order received, in every ledger database,
    but those of the institutions `held`; (applied, failed). The claims failed on the way (their
    visit's registration or lines failed to apply) are added to `claims_failed`."""
    applied = failed = 0
    claims = [] if claims_failed is None else claims_failed
    for ledger in gw.ledgers.all:
        done, refused = await _apply_calls(gw, ledger.pool, held, claims)
        applied, failed = applied + done, failed + refused
    return applied, failed


CALLS_LOOKUP_SECONDS = 2.0  # the watcher's look for released calls, each ledger database


async def apply_released_calls(
    gw: Gateway, still_deferred: Callable[[str], bool]
) -> tuple[int, int]:
    """The encounter calls the plan deferred while the ledger answered, applied once no rule
    defers them any more (`still_deferred(fixmedins_code)`); (applied, failed). Found from
    outside: they waited for a person to run `deferred replay`, and a 2207 on a visit they
    registered was told to retry until then. One gateway applies at a time (the replay lock):
    two would take a visit's calls out of order."""
    codes: set[str] = set()
    for ledger in gw.ledgers.all:
        async with db.leased(ledger.pool, CALLS_LOOKUP_SECONDS) as conn:
            codes.update(await deferred.institutions_with_calls(conn))
    held = sorted(c for c in codes if still_deferred(c))
    if len(held) == len(codes):
        return 0, 0
    async with gw.pool.acquire() as lock_conn:
        if not await _try_lock(lock_conn):
            return 0, 0  # another gateway, or `deferred replay`, is applying them
        try:
            done = await apply_calls(gw, held)
        finally:
            try:
                await deferred.unlock_replay(lock_conn)
            except BaseException:
                lock_conn.terminate()  # as in `replay`: a session lock is not reset by the pool
                raise
    if done != (0, 0):
        log.warning(
            "deferred encounter calls applied", extra={"applied": done[0], "failed": done[1]}
        )
    return done


async def _try_lock(lock_conn: asyncpg.Connection) -> bool:
    """The replay lock, if free. Interrupted while asking (the watcher's step runs within a
    timeout), the server may have granted it with no one to hear: the connection is dropped,
    which frees it, rather than handed back to the pool holding a session lock that every
    later replay would wait for in vain."""
    try:
        return await deferred.try_lock_replay(lock_conn)
    except BaseException:
        lock_conn.terminate()
        raise


# Calls, and the fixing of claims' lines, in the order the gateways received them: with several
# gateway nodes behind a load balancer that does not keep an institution on one node, a visit's
# calls and its claim are in different nodes' journals, drained at different moments, so the
# order they reach the ledger in (seq) is not the visit's (found in a failover drill: a claim
# drained before its visit's calls was fixed with no line and failed at replay).
RECEIVED = "received_at, seq"


async def _apply_calls(
    gw: Gateway, pool: asyncpg.Pool, held: Sequence[str], claims_failed: list[dict[str, Any]]
) -> tuple[int, int]:
    applied = failed = 0
    waiting: list[int] = []  # calls on a visit whose registration is not in the ledger yet
    async with pool.acquire() as conn:
        unfixed = await _unfixed(conn)
        while True:
            async with conn.transaction():
                row = await deferred.next_pending(conn, "call", RECEIVED, held, waiting)
                await _fix_lines(conn, unfixed, None if row is None else row.key, claims_failed)
                if row is None:
                    break
                try:
                    async with conn.transaction():  # a savepoint: a refusal leaves no trace
                        output = await _run(gw, conn, row, row.received_at)
                        if row.provisional_id:
                            await deferred.record_provisional(
                                conn, row.provisional_id, _opened_visit(output)
                            )
                    await deferred.mark_applied(conn, row.seq)
                    applied += 1
                except NotYetApplied:
                    # Its visit's registration is in another gateway's journal, not drained
                    # yet: it stays pending for a later round (found in a failover drill:
                    # acknowledged 2203/2204 were filed failed, the fee lines never recorded).
                    # Unless that registration failed when applied: the visit will never be
                    # (found from outside: a lapsed person's 2201 failed, and the visit's
                    # calls and claim stayed pending for good).
                    opened = await deferred.failed_registration(
                        conn, deferred.provisional_ids_in(deferral.request_of(row.body).input)
                    )
                    if opened is None:
                        waiting.append(row.seq)
                        continue
                    await deferred.fail(conn, row.seq, _unapplied(opened, "就诊登记"))
                    failed += 1
                except GatewayError as exc:
                    await deferred.fail(conn, row.seq, exc.err_msg)
                    failed += 1
        # The visits are in the ledger now: their claims are dated by them, for replay's order.
        await deferred.date_by_visits(conn)
    return applied, failed


@dataclass(frozen=True, slots=True)
class Unfixed:
    """A pending claim of a visit's lines that does not name its lines yet."""

    place: tuple[dt.datetime, int]  # (received_at, seq)
    mdtrt_id: str  # as the claim names it: a provisional id, or the visit's
    batch: str  # its charge batch, or fees.ALL
    fixmedins_code: str
    claim_id: str


async def _settled_already(conn: asyncpg.Connection, visit: str, batch: str) -> bool:
    """Whether the lines a claim names were uploaded and are settled (a claim of them fails at
    replay, with its reason), as against not in the ledger yet (it waits for them)."""
    if batch == fees.ALL:
        return await fees.has_lines(conn, visit)
    return await fees.batch_settled(conn, visit, batch)


def _of_lines(row: deferred.Pending) -> bool:
    """A claim settling a visit's uploaded lines (2207/2304), not a purchase carrying its own."""
    if row.kind != "claim":
        return False
    return deferral.claim_scope(deferral.request_of(row.body)) is not None


async def _unfixed(conn: asyncpg.Connection) -> list[Unfixed]:
    """The pending claims of a visit's lines that do not name their lines yet, in the order
    received."""
    out: list[Unfixed] = []
    of_lines = [t.infno for t in TRANSACTIONS.values() if t.settle_claim is not None]
    for r in await deferred.unfixed_claims(conn, of_lines):
        scope = deferral.claim_scope(deferral.request_of(bytes(r["body"])))
        if scope is not None:
            place = (r["received_at"], int(r["seq"]))
            out.append(Unfixed(place, scope[0], scope[1], r["fixmedins_code"], r["claim_id"]))
    return out


async def _fix_lines(
    conn: asyncpg.Connection,
    unfixed: list[Unfixed],
    before: tuple[dt.datetime, int] | None,
    claims_failed: list[dict[str, Any]],
) -> None:
    """A claim covers its batch's (or the visit's) lines uploaded before it in the order
    received: fixed once every call received before it is applied and none after it (`before`:
    the next call's place). A line added to the batch later is not the bill the patient paid in
    cash. A claim on a visit whose registration is not in the ledger yet (another gateway's
    journal) is left for a later round: fixed now it would cover nothing. One whose visit's
    registration or lines failed to apply is failed with that call's reason: its lines will
    never be in the ledger."""
    kept: list[Unfixed] = []
    while unfixed and (before is None or unfixed[0].place < before):
        claim = unfixed.pop(0)
        visit = await deferred.visit_of(conn, claim.mdtrt_id)
        provisional = visit == claim.mdtrt_id and claim.mdtrt_id.startswith(PROVISIONAL_PREFIX)
        lines = [] if provisional else fees.of_batch(await fees.unsettled(conn, visit), claim.batch)
        if not lines and (provisional or not await _settled_already(conn, visit, claim.batch)):
            # Found from outside: a visit's 2204 (or 2201) that failed when applied left its
            # claim pending for good, the cash never reimbursed, and a manual claim of the
            # bill refused as one still waiting. A call of the visit that failed says the lines
            # are not coming; without one they may be in a journal not drained yet (found
            # from outside: two workers, the 2204 in one's journal, the claim in the other's,
            # drained first and fixed with no line): it waits for them. Looked for once the
            # round's calls are all applied (`before` None), not again at every call for each
            # claim still waiting.
            if before is not None or not await _failed_for_its_visit(
                conn, claim, visit, claims_failed
            ):
                kept.append(claim)
            continue
        await deferred.fix_lines(conn, claim.place[1], [ln.feedetl_sn for ln in lines])
    unfixed[:0] = kept


def _names(stored: bytes, ids: set[str]) -> bool:
    """Whether a kept call's input names one of these visit ids."""
    sent = deferral.request_of(bytes(stored)).input
    return any(mdtrt_id.encode() in sent for mdtrt_id in ids)


def _unapplied(call: Any, what: str) -> str:
    """The words of a call of the visit that failed when applied."""
    return f"本就诊的{what}{call['infno']}（报文ID{call['msgid']}）未成功：{call['fail_reason']}"


async def _with_the_visits_failure(
    conn: asyncpg.Connection, row: deferred.Pending, refusal: str
) -> str:
    """A claim's refusal at replay, after the failure of a call of its visit sent before it,
    where one failed (found from outside: a chronic visit's claim was told to fill in the
    disease its 2203 had sent, the 2203 itself refused for want of a chronic registration)."""
    if not row.mdtrt_id:
        return refusal
    ids = {row.mdtrt_id, await deferred.visit_of(conn, row.mdtrt_id)}
    call = await _failed_call_naming(conn, row.fixmedins_code, ids, row.key)
    if call is None:
        return refusal
    return f"{_unapplied(call, '补报交易')}；本暂存结算因此未能补结算：{refusal}"


async def _failed_call_naming(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    ids: set[str],
    before: tuple[dt.datetime, int],
) -> Any:
    """The first call of the institution received before `before` that failed when applied and
    opened or names one of these visit ids."""
    return next(
        (
            call
            for call in await deferred.failed_calls(conn, fixmedins_code, before)
            if call["provisional_id"] in ids or _names(call["body"], ids)
        ),
        None,
    )


async def _failed_for_its_visit(
    conn: asyncpg.Connection, claim: Unfixed, visit: str, claims_failed: list[dict[str, Any]]
) -> bool:
    """Fails the claim when a call of its visit sent before it failed to apply."""
    call = await _failed_call_naming(
        conn, claim.fixmedins_code, {claim.mdtrt_id, visit}, claim.place
    )
    if call is None:
        return False
    reason = _unapplied(call, "补报交易") + (
        "；本暂存结算的费用未能入账，无法补结算：请医疗机构办理撤销（退还现金）后按实重新结算，"
        "或由经办机构核实后按手工报销办理"
    )
    await deferred.fail(conn, claim.place[1], reason)
    log.warning(
        "deferred claim failed: a call of its visit failed",
        extra={"claim_id": claim.claim_id, "mdtrt_id": claim.mdtrt_id, "call": call["msgid"]},
    )
    claims_failed.append({"claim_id": claim.claim_id, "mdtrt_id": claim.mdtrt_id, "reason": reason})
    return True


@dataclass(slots=True)
class Progress:
    total: int = 0
    settled: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    # Claims left pending for a later replay, each with why (found from outside: "settled 1 of
    # 3" named neither the claims left nor the reason).
    waiting: list[dict[str, Any]] = field(default_factory=list)
    owed: int = 0  # reimbursements recorded as owed to patients (`payouts.gather`)


# Why a claim is left pending, in the agency's words.
# Found from outside: a visit whose 2204 the counter's own refusal kept out of every journal was
# said to have its lines "still in a gateway's journal", for good; which it is cannot be told
# from here (another node's journal), so both are said, with what to do in each.
SETTLED_BATCH_CLAIM = (
    "收费批次{batch}已另行结算，本暂存结算不再补结算：参保人就本暂存结算已全额支付的现金应予退还，"
    "请医疗机构以暂存结算单号{claim_id}办理撤销（退还现金），结算信息请用5203查询"
)
LINES_NOT_IN = (
    "本就诊在暂存结算之前没有已入账的费用明细：如仍有网关的应急日志未并入账本，待其并入后再次"
    "补结算；如各网关的应急日志均已并入（费用明细上传未成功），请医疗机构以暂存结算单号撤销"
    "（退还现金）后按实重新结算，或由经办机构核实后按手工报销办理"
)
CALLS_NOT_IN = "本就诊的登记或其他补报交易尚未全部入账，待其并入账本后再次补结算"


def _waiting(row: deferred.Pending, reason: str) -> dict[str, Any]:
    return {"claim_id": row.claim_id, "mdtrt_id": row.mdtrt_id, "reason": reason}


# How long a replay waits for the replay lock before it refuses. A gateway that applies the
# encounter calls a rule deferred takes the same lock for the moment it applies them (found in
# CI: `deferred replay` run right after a recovery was told another replay was running, while
# the gateway was applying the last calls); another `deferred replay` holds it for its whole run.
LOCK_WAIT_SECONDS = 30.0
LOCK_POLL_SECONDS = 0.2
JOURNAL_POLL_SECONDS = 0.5


async def wait_for_journals(directory: Path | None, wait: float = LOCK_WAIT_SECONDS) -> None:
    """Waits until no serving gateway holds undrained records in `directory`; refuses after
    `wait` seconds. Found from outside: replay run the moment the ledger came back settled a
    person's later visits while the serving gateway's journal still held the earlier one (it
    drained it seconds later), so the deductible fell on the wrong visit: claims are settled
    in service-date order only among those in the ledger."""
    deadline = time.monotonic() + wait
    while held := held_elsewhere(directory) if directory is not None else []:
        if time.monotonic() >= deadline:
            names = "、".join(p.name for p in held)
            raise Conflict(
                f"运行中的网关仍有{len(held)}个应急日志段未并入账本（{names}），已等待{wait:g}秒："
                "请待其自动并入（账本恢复后数秒内）后再补结算，以免同一参保人的就诊未按时间顺序结算"
            )
        await asyncio.sleep(JOURNAL_POLL_SECONDS)


async def replay(
    gw: Gateway,
    on_progress: Callable[[Progress], None] | None = None,
    wait: float = LOCK_WAIT_SECONDS,
    failed_already: Sequence[dict[str, Any]] = (),
) -> Progress:
    """Settle every pending claim in service-date order; safe to interrupt and run again.
    `failed_already`: claims the same run failed before (draining a journal), reported with
    those failed here."""
    async with gw.pool.acquire() as lock_conn:
        deadline = time.monotonic() + wait
        while not await _try_lock(lock_conn):
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"另一补结算（deferred replay）或网关补报就诊登记正在进行，已等待{wait:g}秒"
                    "仍未结束：请勿重复启动，稍后再试"
                )
            await asyncio.sleep(LOCK_POLL_SECONDS)
        try:
            refused = list(failed_already)
            await apply_calls(gw, claims_failed=refused)
            return await _replay_claims(
                gw, on_progress, Progress(total=len(refused), failed=refused)
            )
        finally:
            try:
                await deferred.unlock_replay(lock_conn)
            except BaseException:
                # The pool does not reset session locks: a connection that may still hold
                # the lock is closed instead of going back (closing releases it).
                lock_conn.terminate()
                raise


async def _replay_claims(
    gw: Gateway, on_progress: Callable[[Progress], None] | None, progress: Progress
) -> Progress:
    """Every ledger database's claims, one database after the other (no claim spans two)."""
    for ledger in gw.ledgers.all:
        async with ledger.pool.acquire() as conn:
            progress.total += await deferred.pending_claims(conn)
    for ledger in gw.ledgers.all:
        await _replay_claims_in(gw, ledger.pool, progress, on_progress)
    return progress


# Claims replayed at once, each lane a connection taking its persons' claims in order. A claim
# is a dozen round trips and a commit, mostly waited for: found measuring a long outage's
# backlog, one at a time replayed about 60 claims a second on a box that settles 2,000 sales a
# second online (a day's outage of a busy region would take hours to pay back).
REPLAY_LANES = 4


def lanes_for(pool: asyncpg.Pool, main: asyncpg.Pool) -> int:
    """How many lanes a ledger database's pool can run: one connection each, the main pool's
    replay lock holding one of its own."""
    room = int(pool.get_max_size()) - (1 if pool is main else 0)
    return max(1, min(REPLAY_LANES, room))


async def _replay_claims_in(
    gw: Gateway,
    pool: asyncpg.Pool,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    """The claims of one ledger database, in lanes by person (each person's claims in service
    date order, as one at a time would take them; no claim of one person is replayed while
    another of theirs is); the first lane's failure stops the others."""
    count = lanes_for(pool, gw.pool)
    lanes = [
        asyncio.create_task(_replay_lane(gw, pool, deferred.Lane(n, count), progress, on_progress))
        for n in range(count)
    ]
    try:
        await asyncio.gather(*lanes)
    except BaseException:
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        raise
    # The reimbursements the replayed claims owe their patients, recorded at once (found from
    # outside: recorded only when a clerk next listed or batched payouts, so ops' owed gauges
    # read nothing after a replay and the ageing alert counted from the clerk's listing).
    async with pool.acquire() as conn:
        progress.owed += await payouts.gather(conn)


async def _replay_lane(
    gw: Gateway,
    pool: asyncpg.Pool,
    lane: deferred.Lane,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    waiting: list[int] = []
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                row = await deferred.next_pending(
                    conn, "claim", "service_date, received_at, seq", waiting=waiting, lane=lane
                )
                if row is None:
                    break
                if row.lines is None and _of_lines(row):
                    # A visit's claim whose lines are not in the ledger yet (their upload in a
                    # journal not drained): it stays pending, listed, for the next replay.
                    waiting.append(row.seq)
                    progress.waiting.append(_waiting(row, LINES_NOT_IN))
                    continue
                try:
                    async with conn.transaction():
                        # Never before the claim was taken: found from outside, a replay run
                        # from a shell in UTC judged every sale's Beijing-time begntime to be
                        # in the future and filed all of them failed, beyond retrying.
                        when = max(dt.datetime.now(), row.received_at)
                        output = await _run(gw, conn, row, when, pool)
                        info = output["setlinfo"]
                        _, cash = await settlements.paid(conn, info["setl_id"])
                    # The patient paid the whole bill in cash; what they owe now is psn_cash_pay.
                    owed = row.medfee_sumamt - cash
                    await deferred.mark_settled(conn, row.seq, info["setl_id"], info, owed)
                    progress.settled += 1
                except (NotYetApplied, SelfPayStay) as exc:
                    # Its visit's calls are not all in the ledger yet (a gateway's journal not
                    # drained), or its stay, admitted self-pay under the plan, is not converted
                    # yet (自费转医保; found from outside: filed failed, and the conversion
                    # afterwards did not bring it back): it stays pending for the next replay.
                    waiting.append(row.seq)
                    why = exc.waiting if isinstance(exc, SelfPayStay) else CALLS_NOT_IN
                    progress.waiting.append(_waiting(row, why))
                except GatewayError as exc:
                    if isinstance(exc, BatchSettled):
                        # Settled at a counter meanwhile (another process, the plan over): the
                        # claim's cash is owed back (found from outside: failed in the words a
                        # counter is given, "no need to collect or refund").
                        words = SETTLED_BATCH_CLAIM.format(batch=exc.batch, claim_id=row.claim_id)
                    else:
                        words = exc.err_msg
                    reason = await _with_the_visits_failure(conn, row, words)
                    await deferred.fail(conn, row.seq, reason)
                    progress.failed.append(
                        {"claim_id": row.claim_id, "mdtrt_id": row.mdtrt_id, "reason": reason}
                    )
            if on_progress is not None:
                on_progress(progress)
