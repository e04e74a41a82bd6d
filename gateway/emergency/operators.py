"""The emergency team's operators: who they are, their role, their sessions, their log-ins.

Operators are configuration (`config/demo/operators.toml`, scrypt password hashes). Sessions live
in the ledger database so that every worker process accepts them; only a token's SHA-256 is
stored, so the table does not hand out sessions if it leaks.

Log-ins are throttled (`[console]` in gateway.toml). Failures are counted per client address,
per operator name and address, and per name. An address past its limit, or a name past its limit
from one address, is locked for a while: the lock lands on whoever guessed. A name guessed at from
many addresses is not locked for everyone, which would let anyone keep the duty team out: it is
slowed down instead, to one attempt per interval from the addresses that have not failed it, and
not at all from the desks it has logged in from before. Locks are visible (console, `python -m
gateway operators lockouts`) and clearable by the duty team, with both in the audit log. The
counters live in the database too, so every worker counts the same attempts. An unknown name costs
the same scrypt as a known one, and the hashing runs on a few threads of its own, never on the
event loop. The counters' and sessions' statements are gateway.ledger.operators'.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gateway.ledger import operators as ledger
from gateway.ops import audit, priority

# viewer and operator: the emergency plan (look / change); clerk, reviewer and approver: the
# agency's manual claims and payouts (gateway.emergency.console.agency), which change no plan.
ROLES = ("viewer", "operator", "clerk", "reviewer", "approver")
SESSION_HOURS = 8  # one duty shift
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True, slots=True)
class Operator:
    login: str
    name: str
    role: str
    password: str  # scrypt$<salt hex>$<hash hex>

    @property
    def may_change(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    login: str
    role: str
    expires_at: dt.datetime

    @property
    def may_change(self) -> bool:
        return self.role == "operator"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=_N, r=_R, p=_P, dklen=32
    )
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        scheme, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=bytes.fromhex(salt),
        n=_N,
        r=_R,
        p=_P,
        dklen=32,
    )
    return hmac.compare_digest(digest.hex(), expected)


class LoginPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[console]` in gateway.toml."""

    # Failed log-ins for one name from one address within the window: that address is locked
    # out of that name; from all addresses together: the name is slowed down (guarded).
    operator_failures: int = 5
    address_failures: int = 20  # per client address (several operators may share a desk)
    window_seconds: float = 900.0
    lockout_seconds: float = 900.0  # how long a lock, or a name's guard, lasts
    # A guarded name takes one attempt per interval from addresses that have not failed it and
    # are not among its desks: guessing stays slow, its operator waits at most this long.
    guarded_interval_seconds: float = 30.0
    # scrypt runs here, off the event loop. One thread: on a box of two cores a flood of guesses
    # from many addresses must not take both from the settlements.
    hash_threads: int = 1
    hash_queue: int = 8  # attempts waiting for a thread; beyond that "busy, try later"
    # Hashes started per second per process, per known operator name and one budget for every
    # other name (token buckets; the burst is one second's worth, at least one): an operator
    # logs in a few times a day, a guesser rotating addresses thousands of times a minute, and
    # each guess costs ~50 ms of CPU that the counters' settlements would otherwise get. At 0.2
    # a flood of made-up names costs ~1% of a core; a name's own operator, or one at a desk it
    # logged in from before, does not wait for it.
    hashes_per_second: float = 0.2
    # The networks of the duty team's own desks (CIDR, e.g. "10.8.0.0/16"): an address in one
    # is treated as a desk of every operator name — not slowed by a guarded name, not held to a
    # name's hashing budget; its locks per name and per address still count. Without it, one
    # wrong guess at a name every guarded interval from a fresh address keeps that name's
    # operator waiting at any desk it never used (the second black-box pass's N2).
    trusted_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for net in self.trusted_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"[console] trusted_networks: {net!r} is not a network") from None

    def trusted(self, address: str) -> bool:
        """Whether the address is in one of the duty team's own networks."""
        if not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.trusted_networks)


KINDS = ("operator", "address", "pair")


@dataclass(frozen=True, slots=True)
class Lockout:
    # operator: a guarded name (until then, one attempt per interval); address: an address
    # locked; pair: a name locked for one address (key "<name>@<address>")
    kind: str
    key: str
    failures: int
    locked_until: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "failures": self.failures,
            "locked_until": self.locked_until.isoformat() if self.locked_until else None,
        }


KEY_CHARS = 64
DESK_DAYS = 90  # a desk not used to log in for this long is treated as a new address again


def throttle_key(text: str) -> str:
    """What is stored for a name or address: bounded, and only characters that print."""
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text)[
        :KEY_CHARS
    ]


def pair_key(login: str, address: str) -> str:
    """A name from one address; addresses never contain "@", so the last one splits it."""
    return f"{throttle_key(login)}@{throttle_key(address)}"


def pair_login(key: str) -> str:
    return key.rpartition("@")[0]


async def reserve_attempt(
    conn: asyncpg.Connection, policy: LoginPolicy, login: str, address: str
) -> Lockout | None:
    """Count this attempt as failed before its password is checked (so concurrent attempts
    cannot all slip under the limit); the lock or guard that refuses it, if any."""
    name, addr = throttle_key(login), throttle_key(address)
    limits = {
        "operator": (name, policy.operator_failures),
        "pair": (pair_key(name, addr), policy.operator_failures),
        "address": (addr, policy.address_failures),
    }
    async with conn.transaction():
        await ledger.lock_throttle(conn)
        now = await ledger.clock(conn)
        counts = await ledger.failures(conn, name, limits["pair"][0], addr)
        held = {
            kind: Lockout(kind, row.key, row.failures, row.locked_until)
            for kind, row in counts.items()
            if row.locked_until is not None and row.locked_until > now
        }
        if "address" in held:
            return held["address"]
        refusal = held.get("pair")
        if refusal is None and "operator" in held:
            next_at = counts["operator"].last_at + dt.timedelta(
                seconds=policy.guarded_interval_seconds
            )
            if next_at > now and not (policy.trusted(address) or await is_desk(conn, name, addr)):
                refusal = Lockout("operator", name, held["operator"].failures, next_at)
        # A refused attempt counts nothing: its password is never checked, so it teaches a
        # guesser nothing, and a guesser trying name after name is counted by the attempts that
        # are checked. Found from outside: a locked-out operator retrying with the right password
        # raised the address's count until every operator at that desk (behind one NAT address)
        # was locked out too.
        if refusal is None:
            for kind, (key, _) in limits.items():
                await _count_failure(conn, policy, counts.get(kind), kind, key, now)
        # A count whose window has passed, with no lock in force, is the same as no row: names
        # made up by guessers do not pile up.
        await ledger.forget_stale(conn, now - dt.timedelta(seconds=policy.window_seconds), now)
    return refusal


async def is_desk(conn: asyncpg.Connection, name: str, address: str) -> bool:
    """Whether the name has logged in from this address within DESK_DAYS."""
    return await ledger.is_desk(conn, name, address, dt.timedelta(days=DESK_DAYS))


async def _count_failure(
    conn: asyncpg.Connection,
    policy: LoginPolicy,
    row: ledger.Failures | None,
    kind: str,
    key: str,
    now: dt.datetime,
) -> tuple[int, dt.datetime | None]:
    """One more failure for a key in its window; its lock (or guard) from the limit on, kept
    while in force even when the window starts again."""
    limit = policy.address_failures if kind == "address" else policy.operator_failures
    window = dt.timedelta(seconds=policy.window_seconds)
    fresh = row is None or row.first_at < now - window
    failures = 1 if row is None or fresh else row.failures + 1
    until: dt.datetime | None = None
    if failures >= limit:
        until = now + dt.timedelta(seconds=policy.lockout_seconds)
    elif row is not None and row.locked_until is not None and row.locked_until > now:
        until = row.locked_until
    await ledger.put_failures(
        conn, kind=kind, key=key, failures=failures, now=now, locked_until=until, fresh=fresh
    )
    return failures, until


async def _audit_lock(
    conn: asyncpg.Connection,
    policy: LoginPolicy,
    kind: str,
    key: str,
    limit: int,
    until: dt.datetime,
) -> None:
    # In the gateway's local time, as the log-in page and the console's tables say it (found from
    # outside: the audit row said "+0000" beside a page's Beijing time).
    until = until.astimezone()
    if kind == "operator":
        action = "console.login.guarded"
        reason = (
            f"连续{limit}次登录失败，至{until:%Y-%m-%d %H:%M:%S}前限速："
            f"未失败过的地址每{policy.guarded_interval_seconds:g}秒受理一次，常用登录地址不受限"
        )
    else:
        action = "console.login.locked"
        reason = f"连续{limit}次登录失败，锁定至{until:%Y-%m-%d %H:%M:%S}"
    await audit.append(
        conn,
        operator="system:console-login",
        action=action,
        target=f"{kind}:{key}",
        reason=reason,
        after={"failures": limit},
    )


async def settle_attempt(
    conn: asyncpg.Connection, policy: LoginPolicy, login: str, address: str, ok: bool
) -> None:
    """After the password check: a success clears the name's count from this address, gives the
    address its attempt back and remembers the address as one of the name's desks; a failure
    that reached a limit is written to the audit log."""
    name, addr = throttle_key(login), throttle_key(address)
    pair = pair_key(name, addr)
    async with conn.transaction():
        await ledger.lock_throttle(conn)
        if ok:
            await ledger.forgive(
                conn, name=name, pair=pair, address=addr, address_failures=policy.address_failures
            )
            await ledger.remember_desk(conn, name, addr, dt.timedelta(days=DESK_DAYS))
            return
        for kind, key, limit in (
            ("operator", name, policy.operator_failures),
            ("pair", pair, policy.operator_failures),
            ("address", addr, policy.address_failures),
        ):
            row = await ledger.count(conn, kind, key)
            if row is not None and row.failures == limit and row.locked_until is not None:
                await _audit_lock(conn, policy, kind, key, limit, row.locked_until)


async def lockouts(conn: asyncpg.Connection, policy: LoginPolicy) -> list[Lockout]:
    """Keys locked (or names guarded) now, and keys with failures in the current window."""
    found = await ledger.locked(conn, dt.timedelta(seconds=policy.window_seconds))
    return [Lockout(r.kind, r.key, r.failures, r.locked_until) for r in found]


class NoSuchLockout(LookupError):
    """Nothing to clear for that key."""


async def clear_lockout(
    conn: asyncpg.Connection, kind: str, key: str, *, operator: str, reason: str
) -> Lockout:
    """Clear a name (its guard and its locks at every address), an address, or a name at one
    address, in the audit log; raises NoSuchLockout."""
    if kind not in KINDS:
        raise NoSuchLockout(kind)
    async with conn.transaction():
        await ledger.lock_throttle(conn)
        row = await ledger.delete_failures(conn, kind, key)
        pairs: list[str] = []
        if kind == "operator":
            candidates = await ledger.pair_keys(conn, key)
            pairs = sorted(k for k in candidates if pair_login(k) == key)
            await ledger.delete_pairs(conn, pairs)
        if row is None and not pairs:
            raise NoSuchLockout(key)
        cleared = Lockout(
            kind,
            key,
            row.failures if row is not None else 0,
            row.locked_until if row is not None else None,
        )
        before: dict[str, Any] = cleared.as_json()
        if pairs:
            before["pairs"] = pairs
        await audit.append(
            conn,
            operator=operator,
            action="console.login.unlock",
            target=f"{kind}:{key}",
            reason=reason,
            before=before,
        )
    return cleared


class HashersBusy(Exception):
    """More log-ins waiting for a hash than the policy allows."""


class Hasher:
    """scrypt on threads of its own, with a bound on the attempts waiting for them: a flood of
    log-ins queues here (and past the bound is refused) instead of stalling settlements."""

    __slots__ = ("_buckets", "_dummy", "_executor", "pending", "policy")

    def __init__(self) -> None:
        self.policy = LoginPolicy()
        self._executor: ThreadPoolExecutor | None = None
        self._dummy: str | None = None
        self.pending = 0
        # Budget buckets: (tokens, last refill). One per known operator name, one ("") for
        # every name that is not an operator: a flood of made-up names spends only its own.
        self._buckets: dict[str, tuple[float, float]] = {}

    def _take_token(self, bucket: str) -> bool:
        """One hash from the bucket's per-second budget; the burst is one second's worth (at
        least one hash, so a rate under one a second still lets one through)."""
        rate = self.policy.hashes_per_second
        burst = max(rate, 1.0)
        now = time.monotonic()
        tokens, refilled = self._buckets.get(bucket, (burst, now))
        tokens = min(burst, tokens + (now - refilled) * rate)
        if tokens < 1.0:
            self._buckets[bucket] = (tokens, now)
            return False
        self._buckets[bucket] = (tokens - 1.0, now)
        return True

    def take(self, name: str, *, known: bool) -> bool:
        """One hash from the budget of this name (a known operator's) or of all other names,
        taken before the attempt costs anything else; False when it is spent. Given back with
        `give_back` when the attempt is refused before hashing (a lock)."""
        return self._take_token(name if known else "")

    def give_back(self, name: str, *, known: bool) -> None:
        bucket = name if known else ""
        tokens, refilled = self._buckets.get(bucket, (0.0, time.monotonic()))
        self._buckets[bucket] = (tokens + 1.0, refilled)

    def configure(self, policy: LoginPolicy) -> None:
        self.policy = policy

    async def check(
        self,
        stored: str | None,
        password: str,
        *,
        desk: bool = False,
        name: str = "",
        paid: bool = False,
    ) -> bool:
        """The password against the stored hash; None (no such operator) costs the same.

        `desk`: the name has logged in from this address before; its attempt is not counted
        against the budget, so a flood of guesses from elsewhere cannot keep the duty team out
        (the per-pair lock still bounds guessing from a desk). A known operator's `name` has a
        budget of its own: guesses at made-up names, from however many addresses, cannot spend
        it (guesses at the name itself are slowed by the name's guard). `paid`: the hash was
        taken from the budget already (`take`)."""
        if self.pending >= self.policy.hash_threads + self.policy.hash_queue:
            raise HashersBusy
        if not (desk or paid) and not self.take(name, known=stored is not None):
            raise HashersBusy
        executor = self._threads()
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            if stored is None:
                dummy = self._dummy or await self.warm()
                await loop.run_in_executor(executor, check_password, dummy, password)
                return False
            return await loop.run_in_executor(executor, check_password, stored, password)
        finally:
            self.pending -= 1

    def _threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=max(self.policy.hash_threads, 1),
                thread_name_prefix="scrypt",
                initializer=priority.lower_this_thread,
            )
        return self._executor

    async def warm(self) -> str:
        """The threads started and the hash an unknown name is checked against made, at
        start-up: the first guess of a flood must not be the one that pays for them."""
        if self._dummy is None:
            loop = asyncio.get_running_loop()
            made = await loop.run_in_executor(self._threads(), hash_password, secrets.token_hex(16))
            self._dummy = self._dummy or made
        return self._dummy

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def load_operators(path: Path) -> dict[str, Operator]:
    """Operators from TOML; a missing file means nobody may log in."""
    if not path.exists():
        return {}
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Operator] = {}
    for login, entry in doc.get("operators", {}).items():
        role = str(entry.get("role", "viewer"))
        if role not in ROLES:
            raise ValueError(f"operator {login}: unknown role {role}")
        out[login] = Operator(login, str(entry.get("name", login)), role, str(entry["password"]))
    return out


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def open_session(conn: asyncpg.Connection, operator: Operator) -> Session:
    token = secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=SESSION_HOURS)
    await ledger.insert_session(conn, _digest(token), operator.login, operator.role, expires)
    await ledger.delete_expired_sessions(conn)
    return Session(token, operator.login, operator.role, expires)


async def find_session(conn: asyncpg.Connection, token: str) -> Session | None:
    if not token:
        return None
    row = await ledger.find_session(conn, _digest(token))
    if row is None:
        return None
    return Session(token, row.operator, row.role, row.expires_at)


async def close_session(conn: asyncpg.Connection, token: str) -> None:
    await ledger.delete_session(conn, _digest(token))


def csrf_token(session: Session) -> str:
    """Derived from the session token (which only the operator's browser holds): a form posted
    from another site cannot carry it. No server secret, so every worker agrees."""
    return hmac.new(session.token.encode(), b"sgw-console-csrf", hashlib.sha256).hexdigest()
