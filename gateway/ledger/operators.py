"""The console's log-in throttle (failed log-ins per name, per name at an address and per
address; the desks a name has logged in from) and operators' sessions, stored by the SHA-256 of
their token. The rules that read and write them are gateway.emergency.operators'."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

THROTTLE_LOCK = 0xC0DE5  # arbitrary, stable: log-in counters change one attempt at a time


class Failures(msgspec.Struct, frozen=True, gc=False):
    """A key's failed log-ins in its window, and its lock (or a name's guard)."""

    kind: str  # operator | pair | address
    key: str
    failures: int
    first_at: dt.datetime
    last_at: dt.datetime
    locked_until: dt.datetime | None


class Count(msgspec.Struct, frozen=True, gc=False):
    """A key's failures and its lock, as a refusal or a clearing reports them."""

    failures: int
    locked_until: dt.datetime | None


class Locked(msgspec.Struct, frozen=True, gc=False):
    """A key listed on the console: locked (or guarded), or with failures in its window."""

    kind: str
    key: str
    failures: int
    locked_until: dt.datetime | None


class StoredSession(msgspec.Struct, frozen=True, gc=False):
    """An operator's session as stored (its token is not)."""

    operator: str
    role: str
    expires_at: dt.datetime


# ------------------------------------------------------------------------------ the throttle


async def lock_throttle(conn: asyncpg.Connection) -> None:
    """Takes the log-in counters' lock until the end of the transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", THROTTLE_LOCK)


async def clock(conn: asyncpg.Connection) -> dt.datetime:
    """Reads the database's clock (the start of the transaction)."""
    found: dt.datetime = await conn.fetchval("SELECT now()")
    return found


async def failures(
    conn: asyncpg.Connection, name: str, pair: str, address: str
) -> dict[str, Failures]:
    """Reads the counts of a name, of the name at an address and of the address, by kind."""
    rows = await conn.fetch(
        "SELECT kind, key, failures, first_at, last_at, locked_until"
        " FROM console_login_failures WHERE (kind, key) IN"
        " (('operator', $1), ('pair', $2), ('address', $3))",
        name,
        pair,
        address,
    )
    return {
        r["kind"]: Failures(
            r["kind"], r["key"], r["failures"], r["first_at"], r["last_at"], r["locked_until"]
        )
        for r in rows
    }


async def put_failures(
    conn: asyncpg.Connection,
    *,
    kind: str,
    key: str,
    failures: int,
    now: dt.datetime,
    locked_until: dt.datetime | None,
    fresh: bool,
) -> None:
    """Writes a key's count, last failure and lock; `fresh` starts its window at `now`."""
    await conn.execute(
        "INSERT INTO console_login_failures AS f"
        " (kind, key, failures, first_at, last_at, locked_until)"
        " VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (kind, key) DO UPDATE SET"
        " failures = $3, first_at = CASE WHEN $6 THEN $4 ELSE f.first_at END,"
        " last_at = $4, locked_until = $5",
        kind,
        key,
        failures,
        now,
        locked_until,
        fresh,
    )


async def forget_stale(conn: asyncpg.Connection, before: dt.datetime, now: dt.datetime) -> None:
    """Deletes the counts whose window began before `before` and that hold no lock at `now`."""
    await conn.execute(
        "DELETE FROM console_login_failures WHERE first_at < $1"
        " AND (locked_until IS NULL OR locked_until <= $2)",
        before,
        now,
    )


async def count(conn: asyncpg.Connection, kind: str, key: str) -> Count | None:
    """Reads a key's failures and lock; None when it has no count."""
    row = await conn.fetchrow(
        "SELECT failures, locked_until FROM console_login_failures WHERE kind = $1 AND key = $2",
        kind,
        key,
    )
    return None if row is None else Count(row["failures"], row["locked_until"])


async def forgive(
    conn: asyncpg.Connection, *, name: str, pair: str, address: str, address_failures: int
) -> None:
    """Writes a successful log-in: the pair's count goes, the name's and address's drop by one."""
    await conn.execute("DELETE FROM console_login_failures WHERE kind = 'pair' AND key = $1", pair)
    # A guarded name stays guarded: others' guessing goes on after its operator got in.
    await conn.execute(
        "DELETE FROM console_login_failures WHERE kind = 'operator' AND key = $1"
        " AND (locked_until IS NULL OR locked_until <= now())",
        name,
    )
    await conn.execute(
        "UPDATE console_login_failures SET failures = greatest(failures - 1, 0)"
        " WHERE kind = 'operator' AND key = $1",
        name,
    )
    # The address gets its attempt back, and its lock goes once it is under its limit again.
    await conn.execute(
        "UPDATE console_login_failures SET failures = greatest(failures - 1, 0),"
        " locked_until = CASE WHEN failures - 1 >= $2 THEN locked_until END"
        " WHERE kind = 'address' AND key = $1",
        address,
        address_failures,
    )


async def is_desk(conn: asyncpg.Connection, login: str, address: str, within: dt.timedelta) -> bool:
    """Reads whether the name has logged in from this address within `within`."""
    found = await conn.fetchval(
        "SELECT 1 FROM console_login_desks WHERE login = $1 AND address = $2"
        " AND last_login > now() - $3::interval",
        login,
        address,
        within,
    )
    return found is not None


async def remember_desk(
    conn: asyncpg.Connection, login: str, address: str, keep: dt.timedelta
) -> None:
    """Writes the address as one of the name's desks; deletes desks not used for `keep`."""
    await conn.execute(
        "INSERT INTO console_login_desks (login, address, last_login) VALUES ($1, $2, now())"
        " ON CONFLICT (login, address) DO UPDATE SET last_login = EXCLUDED.last_login",
        login,
        address,
    )
    await conn.execute(
        "DELETE FROM console_login_desks WHERE last_login < now() - $1::interval", keep
    )


async def locked(conn: asyncpg.Connection, window: dt.timedelta) -> list[Locked]:
    """Reads the keys locked (or guarded) now and those with failures within `window`."""
    rows = await conn.fetch(
        "SELECT kind, key, failures, locked_until FROM console_login_failures"
        " WHERE locked_until > now() OR (failures > 0 AND first_at > now() - $1::interval)"
        " ORDER BY locked_until DESC NULLS LAST, kind, key",
        window,
    )
    return [Locked(r["kind"], r["key"], r["failures"], r["locked_until"]) for r in rows]


async def delete_failures(conn: asyncpg.Connection, kind: str, key: str) -> Count | None:
    """Deletes a key's count; returns it as it was, or None when there was none."""
    row = await conn.fetchrow(
        "DELETE FROM console_login_failures WHERE kind = $1 AND key = $2"
        " RETURNING failures, locked_until",
        kind,
        key,
    )
    return None if row is None else Count(row["failures"], row["locked_until"])


async def pair_keys(conn: asyncpg.Connection, login: str) -> list[str]:
    """Reads the keys of the name-at-an-address counts that begin with `login` and "@"."""
    rows = await conn.fetch(
        "SELECT key FROM console_login_failures"
        " WHERE kind = 'pair' AND left(key, length($1) + 1) = $1 || '@'",
        login,
    )
    return [r["key"] for r in rows]


async def delete_pairs(conn: asyncpg.Connection, keys: list[str]) -> None:
    """Deletes the name-at-an-address counts of these keys."""
    await conn.execute(
        "DELETE FROM console_login_failures WHERE kind = 'pair' AND key = ANY($1::text[])",
        keys,
    )


# ------------------------------------------------------------------------------ sessions


async def insert_session(
    conn: asyncpg.Connection, digest: bytes, operator: str, role: str, expires_at: dt.datetime
) -> None:
    """Writes a session under its token's digest."""
    await conn.execute(
        "INSERT INTO operator_sessions (token_sha256, operator, role, expires_at) VALUES ($1,$2,$3,$4)",
        digest,
        operator,
        role,
        expires_at,
    )


async def delete_expired_sessions(conn: asyncpg.Connection) -> None:
    """Deletes the sessions that have expired."""
    await conn.execute("DELETE FROM operator_sessions WHERE expires_at < now()")


async def find_session(conn: asyncpg.Connection, digest: bytes) -> StoredSession | None:
    """Reads the unexpired session of a token's digest; None when there is none."""
    row = await conn.fetchrow(
        "SELECT operator, role, expires_at FROM operator_sessions"
        " WHERE token_sha256 = $1 AND expires_at > now()",
        digest,
    )
    return None if row is None else StoredSession(row["operator"], row["role"], row["expires_at"])


async def delete_session(conn: asyncpg.Connection, digest: bytes) -> None:
    """Deletes the session of a token's digest."""
    await conn.execute("DELETE FROM operator_sessions WHERE token_sha256 = $1", digest)
