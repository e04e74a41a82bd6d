"""Connection pool and numbered SQL migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import asyncpg
import msgspec

from gateway.protocol.errors import LedgerDown

log = logging.getLogger("gateway.ledger.db")

# What a ledger call may fail with when the ledger is unreachable or is no longer the primary
# (a failover under way): the request is answered "retry the same msgid" and the breaker
# counts it, as for a dead network. Anything else from PostgreSQL is a refusal or a bug.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.InterfaceError,  # the connection was lost under a query
    # A pooled connection the server ended (pg_terminate_backend, a restart) meets its next
    # query in a state asyncpg cannot leave ("cannot switch to state …"): lost, like the above
    # (seen when a database stopped taking connections: the first sale was "internal error").
    asyncpg.InternalClientError,
    # 57P01-03: the server is shutting down (a switchover demotes the old primary) or is not yet
    # accepting connections (a standby being promoted, a restart).
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    # 25006: the connection reached a standby (a primary demoted under an open connection).
    asyncpg.ReadOnlySQLTransactionError,
    # No host of a multi-host DSN is the primary right now (mid-failover).
    asyncpg.TargetServerAttributeNotMatched,
)


class RefusedConnection(ConnectionError):
    """The server answered a new connection with a refusal that means "not now", not "never":
    it does not accept connections to the database for the moment (55000: ALLOW_CONNECTIONS
    off, a database being dropped or restored) or has none left (53300). An OSError, so the
    ledger's breaker counts it and settlements go the plan's way, as for a dead network (found
    from outside: 55000 was answered "internal error" to every counter and the breaker stayed
    closed). Raised only while connecting: 55P03 (a lock not granted in time) is a subclass of
    55000 and means something else."""


_REFUSED_AT_CONNECT = ("55000", "53300")


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg's connect, its "not now" refusals raised as `RefusedConnection`."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate in _REFUSED_AT_CONNECT:
            raise RefusedConnection(f"{exc.sqlstate}: {exc}") from exc
        raise


# Several workers start at once: one advisory lock makes migrations run exactly once.
_MIGRATION_LOCK = 0x5E771E  # arbitrary, stable


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("gateway.ledger") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied, in order; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


_JSONB_VERSION = b"\x01"  # jsonb's binary format: a version byte, then the JSON text


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # msgspec instead of the json module: settlements carry their lines and deltas as jsonb, and
    # encoding them was a tenth of a durable settlement's CPU in the profile (benchmarks/RESULTS.md).
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def _reset(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: only a rollback, if a transaction
    was left open. Pooled connections carry no session state (no SET, LISTEN or session
    advisory lock; `deferred replay` releases its own lock or drops the connection), and the
    default reset (RESET ALL, UNLISTEN, advisory unlock) cost a round trip on every request."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# Sent with each connection's start-up (no round trip of its own). No JIT: a serving statement
# reads or writes a few rows, and PostgreSQL compiles a statement whenever its estimate passes
# jit_above_cost, which an estimate over a parameter it cannot see does (the commands' scans,
# the checker's and the reports', lose little without it). Found measuring two workers after
# an outage's backlog: the claims holding a visit's lines, read on every settlement of a visit
# (`deferred.pending_on_visits`), was estimated at every pending claim and compiled on each
# call (45-70 ms for 0.02 ms of work), 96% of PostgreSQL's time.
_SERVER_SETTINGS = {"jit": "off"}


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 16, **kw: Any
) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python values.

    `dsn` may name one server (or HAProxy's read-write listener in front of a Patroni cluster),
    or every member: `postgresql://u@h1:5432,h2:5432,h3:5432/db?target_session_attrs=read-write`
    connects to whichever is the primary. Either way a connection lost in a failover is dropped
    by the pool and the next acquire connects afresh, to the new primary once it is promoted."""
    settings = {**_SERVER_SETTINGS, **kw.pop("server_settings", {})}
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        connect=_connect,
        init=_init_connection,
        reset=_reset,
        server_settings=settings,
        **kw,
    )
    assert pool is not None
    _DSNS[id(pool)] = (pool, dsn)
    return pool


# The DSN each pool was made from (`writable_afresh` connects on its own), kept with the pool
# so that a new pool at a freed address is not taken for it.
_DSNS: dict[int, tuple[asyncpg.Pool, str]] = {}


@contextlib.asynccontextmanager
async def leased(pool: asyncpg.Pool, wait: float) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for a call with a deadline (`wait`: the most seconds to wait for one,
    and to hand it back).

    When the deadline interrupts it mid-query the connection is dropped, not handed back. asyncpg
    cancels an interrupted query by opening a second connection to send the server a
    CancelRequest, and a connection handed back waits for that to finish: on a dead network (a
    peer that swallows packets, no reset) it never does, so the caller would hold its connection,
    its institution's share and, in the group commit, a writer long past its deadline, and the
    breaker would never count the timeout. Dropped, the caller is free at once; the cancel still
    reaches a live server (it is sent either way) and a fresh connection replaces this one."""
    conn = await pool.acquire(timeout=wait)
    try:
        yield conn
    except (asyncio.CancelledError, TimeoutError):
        conn.terminate()
        raise
    finally:
        await pool.release(conn, timeout=wait)


@contextlib.asynccontextmanager
async def committing(
    conn: asyncpg.Connection, sending: Callable[[], None], answered: Callable[[], None]
) -> AsyncIterator[None]:
    """`conn.transaction()`, telling `sending` just before its COMMIT goes out and `answered`
    once the server replied to it: between the two the outcome is unknown. A COMMIT whose
    reply never came (a deadline, a cut connection) may still land when a hung network heals,
    where a statement without its COMMIT is rolled back by the server."""
    tr = conn.transaction()
    await tr.start()
    try:
        yield
    except BaseException:
        await tr.rollback()
        raise
    sending()
    try:
        await tr.commit()
    except asyncpg.PostgresConnectionError:
        # The connection lost, or cut by the breaker's opening (asyncpg counts it among the
        # server's errors): no answer came, the COMMIT may yet land (found from outside: taken
        # for an answer, a cut COMMIT's retry became an all-cash claim, and then it landed).
        raise
    except asyncpg.PostgresError:  # the server's own answer: rolled back
        answered()
        raise
    answered()


# Each ledger database's pool by its name (gateway.ledger.partitions), for `elsewhere`: keyed by
# id, the pool kept beside it so that a new pool at a freed address is not taken for it.
_NAMES: dict[int, tuple[asyncpg.Pool, str]] = {}


def name_pool(pool: asyncpg.Pool, name: str) -> None:
    """Register the ledger database a pool reaches, for the failures `elsewhere` names."""
    _NAMES[id(pool)] = (pool, name)


def pool_name(pool: asyncpg.Pool) -> str:
    entry = _NAMES.get(id(pool))
    return entry[1] if entry is not None and entry[0] is pool else ""


ELSEWHERE_MSG = (
    "参保地医保结算数据库暂时不可用，暂不能完成本交易，请稍后使用相同报文ID重试；"
    "如持续失败请按应急预案处理"
)


@contextlib.asynccontextmanager
async def elsewhere(pool: asyncpg.Pool, wait: float) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a ledger database other than the one the request runs in (the ledger
    split by region: a reconciliation's other regions, a query or a 2601 looking for what
    another holds), within `wait`. Its failure is that database's, named (`LedgerDown`), not
    the request's own: found from outside, one region's database down made every 3201, 5203
    and 2601 that looked there count against the main database's breaker, which opened and
    deferred every other region's settlements."""
    try:
        async with asyncio.timeout(wait), leased(pool, wait) as conn:
            yield conn
    except UNAVAILABLE as exc:
        raise LedgerDown(ELSEWHERE_MSG, pool_name(pool), isinstance(exc, TimeoutError)) from exc


async def close_pool(pool: asyncpg.Pool, within: float) -> bool:
    """Close the pool once its connections are released, but not wait longer than `within`
    seconds: then terminate it (a stop must not hang on a connection some background task still
    holds). Safe for the ledger: an answer leaves only after its commit, so what a terminated
    connection loses was never acknowledged. False when it had to terminate."""
    _DSNS.pop(id(pool), None)
    _NAMES.pop(id(pool), None)
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.warning("ledger pool not released within %g s; terminated", within)
        pool.terminate()
        return False
    return True


async def wait_for_locks_at_most(conn: asyncpg.Connection, seconds: float) -> None:
    """Within the caller's transaction: a statement waiting longer for a row lock fails with
    LockNotAvailable instead of waiting on."""
    await conn.execute(f"SET LOCAL lock_timeout = '{max(1, int(seconds * 1000))}ms'")


async def ping(conn: asyncpg.Connection) -> None:
    """Reads nothing: one round trip that proves the ledger answers."""
    await conn.fetchval("SELECT 1")


# The tables a settlement writes (its answer, visit, lines, row, funds, events, the person's year
# and account).
SETTLEMENT_TABLES = (
    "idempotency, encounters, fee_lines, settlements, settlement_funds, settlement_events,"
    " accumulators, accounts"
)


async def writable(pool: asyncpg.Pool) -> bool:
    """The ledger's probe over a pooled connection (the breaker's watcher, the breaker open and
    the pool idle): `ping_writes` within the probe's time."""
    try:
        conn = await pool.acquire(timeout=PROBE_SECONDS)
    except (*UNAVAILABLE, asyncpg.PostgresError):
        return False
    try:
        return await _pinged(conn)
    finally:
        await pool.release(conn, timeout=PROBE_SECONDS)


async def writable_afresh(pool: asyncpg.Pool) -> bool:
    """`writable` over a connection of its own, made for the probe and let go: the pool's may
    all be busy with the load, which says nothing of the database (a probe waiting for one of
    them would open the breaker under load), while a database that takes no new connection, or
    never answers one, fails this as it fails the next request."""
    entry = _DSNS.get(id(pool))
    if entry is None or entry[0] is not pool:
        return await writable(pool)
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            conn = await _connect(entry[1], timeout=PROBE_SECONDS)
    except (*UNAVAILABLE, asyncpg.PostgresError):
        return False
    try:
        return await _pinged(conn)
    finally:
        conn.terminate()  # never waits on the network, as a close would


# How long the probe may take, each of its connection and its ping: a ledger 200 ms away
# (targets R1) connects in about six round trips and answers the ping in one; a hung one fails
# it, one deadline and this after the first timeout, within R5's 10 s (found from outside: a
# probe of a second in all failed on a ledger 150 ms away, and opened the breaker).
PROBE_SECONDS = 2.5


async def _pinged(conn: asyncpg.Connection) -> bool:
    """`ping_writes` on this connection within the probe's time; a connection it failed on is
    dropped (its transaction may be left aborted, or its query still running)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await ping_writes(conn, 0.5)
        return True
    except (*UNAVAILABLE, asyncpg.PostgresError):
        conn.terminate()
        return False


async def ping_writes(conn: asyncpg.Connection, wait: float) -> None:
    """The ledger can settle now, asked in one round trip: the tables a settlement writes, each
    taken in the lock a write takes (ROW EXCLUSIVE) within `wait` seconds; the server taking
    writes; a transaction id drawn and committed (a commit waits on the WAL's flush and the
    synchronous standby as a settlement's does). Nothing is written to any table.

    Found from outside: the ledger breaker's probe (SELECT 1) closed the breaker while the
    settlements table was still locked, and the next sale waited on the lock. Found by a test:
    a server that takes no writes grants these locks to its read-only transactions, and the
    probe passed over it."""
    await conn.execute(
        "BEGIN;"
        f" SET LOCAL lock_timeout = '{max(1, int(wait * 1000))}ms';"
        f" LOCK TABLE {SETTLEMENT_TABLES} IN ROW EXCLUSIVE MODE;"
        " DO $$ BEGIN IF current_setting('transaction_read_only') = 'on' THEN"
        " RAISE EXCEPTION 'the ledger takes no writes' USING ERRCODE = '25006'; END IF; END $$;"
        " SELECT txid_current();"
        " COMMIT"
    )
