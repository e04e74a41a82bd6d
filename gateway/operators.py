"""The emergency team's operators: who they are, their role, their sessions.

Operators are configuration (`config/demo/operators.toml`, scrypt password hashes). Sessions live
in the ledger database so that every worker process accepts them; only a token's SHA-256 is
stored, so the table does not hand out sessions if it leaks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROLES = ("viewer", "operator")
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
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        scheme, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=_N, r=_R, p=_P, dklen=32)
    return hmac.compare_digest(digest.hex(), expected)


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
    await conn.execute(
        "INSERT INTO operator_sessions (token_sha256, operator, role, expires_at) VALUES ($1,$2,$3,$4)",
        _digest(token),
        operator.login,
        operator.role,
        expires,
    )
    await conn.execute("DELETE FROM operator_sessions WHERE expires_at < now()")
    return Session(token, operator.login, operator.role, expires)


async def find_session(conn: asyncpg.Connection, token: str) -> Session | None:
    if not token:
        return None
    row = await conn.fetchrow(
        "SELECT operator, role, expires_at FROM operator_sessions"
        " WHERE token_sha256 = $1 AND expires_at > now()",
        _digest(token),
    )
    if row is None:
        return None
    return Session(token, row["operator"], row["role"], row["expires_at"])


async def close_session(conn: asyncpg.Connection, token: str) -> None:
    await conn.execute("DELETE FROM operator_sessions WHERE token_sha256 = $1", _digest(token))


def csrf_token(session: Session) -> str:
    """Derived from the session token (which only the operator's browser holds): a form posted
    from another site cannot carry it. No server secret, so every worker agrees."""
    return hmac.new(session.token.encode(), b"sgw-console-csrf", hashlib.sha256).hexdigest()
