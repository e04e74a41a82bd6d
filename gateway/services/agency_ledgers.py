"""Where the agency's records live when the ledger is split by region, and how its desks reach
them.

A manual claim (零星报销) settles a person's money, so it lives with that money, in the ledger
database of the insured's region: the claim, its lines, its visit and settlement, the person's
payout account, what is owed to them (a claim's reimbursement, a replayed deferred claim's) and
the payout batches that pay it. Each step stays one transaction in one database as it is with a
single ledger, and the guards that join these rows (a cancelled settlement whose reimbursement
is in a batch, clearing leaving a claim's settlement out) keep working unchanged. An
institution's monthly clearing amounts, and the batches that pay them, stay in the main
database with the institutions.

A step names a person (registration by certificate, a payout account), a claim or a batch: the
person is found through the directory, a claim or a batch by asking each database for it (the
desks' traffic is a few steps a minute; a number does not say where it lives). Lists (claims,
what is owed, batches) gather every database. A batch is made in each database that owes
something payable: one bank file per batch, each paid from one place.

One guard spans databases: an invoice (发票号) of an institution is claimed once, whoever's
region claims it. The main database's `invoice_registry` names the claim holding each invoice;
the holder's own database is the truth (a withdrawn or refused claim lets its invoices go there,
and its registry rows are then taken over by the next claim). The registry row is written in a
main-database transaction that commits only after the claim's database has committed: a second
claim of the same invoice waits for the first's answer, then sees it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import asyncpg
from asyncpg.transaction import Transaction

from gateway.ledger import manual_claims as claim_store
from gateway.ledger import payouts as payout_store
from gateway.ledger.partitions import Partition, Partitions, region_of
from gateway.protocol.errors import BadRequest, Conflict, NotFound, Unavailable
from gateway.services import manual_claims, payouts
from gateway.services.manual_claims import InvoiceGuard

T = TypeVar("T")
# How long a desk's step waits for a database's connection (a desk, not a till: a clerk waits).
WAIT = 5.0
UNREACHABLE = "账务数据库暂时无法连接，请稍后再试"
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
)
_FAILURES = (*_LOST, asyncpg.PostgresError)


@contextlib.asynccontextmanager
async def connection(ledger: Partition) -> AsyncIterator[asyncpg.Connection]:
    """A connection to one ledger database; unreachable or lost, a refusal the desk can read
    (its step is one transaction: lost, nothing of it stays)."""
    try:
        conn = await ledger.pool.acquire(timeout=WAIT)
    except _FAILURES:
        raise Unavailable(UNREACHABLE) from None
    try:
        yield conn
    except _LOST:
        raise Unavailable(UNREACHABLE) from None
    finally:
        await ledger.pool.release(conn)


async def of_person(
    ledgers: Partitions, psn_no: str = "", cert_type: str = "", cert_no: str = ""
) -> Partition:
    """The database of the person's region (the directory's word); the main one for anyone it
    does not know, where the service then refuses them as it would on a single ledger."""
    if not ledgers.split:
        return ledgers.main
    async with connection(ledgers.main) as conn:
        region = await region_of(conn, psn_no, cert_type, cert_no)
    return ledgers.main if region is None else ledgers.of_region(region)


async def _find(
    ledgers: Partitions,
    holds: Callable[[asyncpg.Connection, str], Awaitable[bool]],
    key: str,
    missing: str,
) -> Partition:
    """The database that `holds` the key: the only one when the ledger is whole. A key with a
    control character names nothing (and PostgreSQL's text cannot hold a NUL: the lookup failed
    as if the database were down)."""
    if not key.isprintable():
        raise NotFound(missing)
    if not ledgers.split:
        return ledgers.main
    unreachable = False
    for ledger in ledgers.all:
        try:
            async with connection(ledger) as conn:
                if await holds(conn, key):
                    return ledger
        except (Unavailable, *_FAILURES):
            unreachable = True
    raise Unavailable(UNREACHABLE) if unreachable else NotFound(missing)


async def of_claim(ledgers: Partitions, claim_no: str) -> Partition:
    return await _find(ledgers, claim_store.exists, claim_no, f"零星报销受理号{claim_no}不存在")


async def of_batch(ledgers: Partitions, batch_no: str) -> Partition:
    return await _find(ledgers, payout_store.batch_exists, batch_no, f"支付批次号{batch_no}不存在")


async def claims_by_ledger(
    ledgers: Partitions, claim_nos: Sequence[str]
) -> list[tuple[Partition, list[str]]]:
    """The claims grouped by the database holding each, in the order of the databases."""
    found: dict[str, list[str]] = {}
    for claim_no in claim_nos:
        ledger = await of_claim(ledgers, claim_no)
        found.setdefault(ledger.name, []).append(claim_no)
    return [(p, found[p.name]) for p in ledgers.all if p.name in found]


async def across(
    ledgers: Partitions, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> list[T]:
    """`work` in every database, main first (a list is whole or refused: a desk shown part of
    the claims would take the missing ones for settled elsewhere)."""
    out: list[T] = []
    for ledger in ledgers.all:
        async with connection(ledger) as conn:
            out.append(await work(conn))
    return out


# ---------------------------------------------------------------- the steps over many databases


async def claims(ledgers: Partitions, status: str | None) -> list[claim_store.Claim]:
    """Every database's claims (of a status), in claim number order (date, then database)."""
    lists = await across(ledgers, lambda conn: claim_store.listing(conn, status))
    return sorted((c for found in lists for c in found), key=lambda c: c.claim_no)


async def batches(ledgers: Partitions) -> list[payout_store.Batch]:
    """Every database's payout batches, newest first."""
    lists = await across(ledgers, payout_store.batches)
    return sorted((b for found in lists for b in found), key=lambda b: b.batch_no, reverse=True)


async def batch_review(
    ledgers: Partitions, claim_nos: Sequence[str], operator: str
) -> list[claim_store.Claim]:
    """结算审核 of claims wherever they live, all or none: each database's part runs in a
    transaction held open until every part has passed, then they commit one after the other
    (a refusal in any rolls back all; found from outside: answered 409 while the parts before
    it had committed). The databases are taken in one order and the claims in each sorted, so
    two reviews never wait on each other across databases, where no deadlock detector looks."""
    if not claim_nos:  # the service's own refusal, before anything is looked up
        raise BadRequest("请选择需要结算审核的零星报销")
    done: list[claim_store.Claim] = []
    async with contextlib.AsyncExitStack() as stack:
        held: list[Transaction] = []
        try:
            for ledger, nos in await claims_by_ledger(ledgers, claim_nos):
                conn = await stack.enter_async_context(connection(ledger))
                held.append(conn.transaction())
                await held[-1].start()
                # The service's own transaction nests in this one (a savepoint).
                done += await manual_claims.batch_review(conn, nos, operator)
        except BaseException:
            for tx in reversed(held):
                with contextlib.suppress(*_FAILURES):
                    await tx.rollback()
            raise
        for tx in held:
            await tx.commit()
    return done


class Made(NamedTuple):
    """The batches made (each with its view), and the databases that could not be reached."""

    batches: list[tuple[payout_store.Batch, dict[str, Any]]]
    unreachable: list[str]

    def note(self) -> str:
        """What the clerk is told besides the batches: the databases left for later."""
        if not self.unreachable:
            return ""
        return f"（账务库{'、'.join(self.unreachable)}暂时无法连接，其待付款项未制单）"


async def make_batches(
    ledgers: Partitions, operator: str, now: dt.datetime, limit: int | None, source: str | None
) -> Made:
    """银行报盘制单: a batch in each database owing something payable (clearing amounts in the
    main one only), each with its view; refused as the service refuses when none does. A
    database that does not answer is left for a later batch (the others' payees need not wait
    for one region group's outage)."""
    where = (ledgers.main,) if source == "clearing" else ledgers.all
    made = Made([], [])
    waiting: list[str] = []  # payees without a usable account, in every database
    for ledger in where:
        try:
            async with connection(ledger) as conn:
                await payouts.gather(conn)
                try:
                    b = await payouts.create_batch(conn, operator, now, limit=limit, source=source)
                except payouts.NothingToPay as exc:
                    waiting += exc.missing
                    continue
                made.batches.append((b, await payouts.batch_view(conn, b.batch_no)))
        except Unavailable:
            made.unreachable.append(ledger.name)
    if not made.batches:
        if made.unreachable:
            raise Unavailable(f"{UNREACHABLE}{made.note()}")
        raise payouts.NothingToPay(source, waiting)
    return made


# ------------------------------------------------------------------------ the invoice registry


@contextlib.asynccontextmanager
async def invoice_registry(
    ledgers: Partitions, home: Partition
) -> AsyncIterator[InvoiceGuard | None]:
    """For a registration in `home`: the guard that holds the claim's invoices in the main
    database's registry (None when the ledger is whole: the claim's own database guards them).
    The registry's transaction commits when the block ends without error, after the claim's."""
    if not ledgers.split:
        yield None
        return
    async with connection(ledgers.main) as main, main.transaction():

        async def guard(claim_no: str, fixmedins_code: str, invoices: Sequence[str]) -> None:
            await _hold(ledgers, home, main, claim_no, fixmedins_code, invoices)

        yield guard


async def _hold(
    ledgers: Partitions,
    home: Partition,
    main: asyncpg.Connection,
    claim_no: str,
    fixmedins_code: str,
    invoices: Sequence[str],
) -> None:
    """Registry rows for the invoices, or a refusal naming the live claim holding one."""
    for invono in sorted(invoices):  # one order: two registrations never wait on each other
        holder = await claim_store.register_invoice(main, fixmedins_code, invono, claim_no)
        if holder == claim_no:
            continue
        if await _still_holds(ledgers, home, holder, fixmedins_code, invono):
            raise Conflict(f"发票号{invono}已在零星报销{holder}中登记，不能重复报销")
        await claim_store.take_over_invoice(main, fixmedins_code, invono, claim_no)


async def _still_holds(
    ledgers: Partitions, home: Partition, claim_no: str, fixmedins_code: str, invono: str
) -> bool:
    """Whether the claim still holds the invoice in its database (the home database was asked
    already, inside the registration's own transaction)."""
    for ledger in ledgers.all:
        if ledger is home:
            continue
        async with connection(ledger) as conn:
            if await claim_store.holds_invoice(conn, fixmedins_code, invono, claim_no):
                return True
    return False
