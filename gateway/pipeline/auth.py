"""Signed requests, as Guangdong's x-tif gateway does them, and the institution they bind to.

Headers: `x-tif-paasid` (the institution code), `x-tif-timestamp` (Unix seconds),
`x-tif-nonce`, `x-tif-signature` = lower-case hex SHA-256(timestamp + secret + nonce + timestamp).
A request is accepted within ±300 s of its timestamp and a nonce only once per timestamp (Redis when configured,
so every worker shares the memory; the host's workers share theirs in a mapped file too). The envelope's fixmedins_code must
then be the authenticated institution: no institution can speak for another.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.emergency.breaker import SharedStoreGate
from gateway.ops.keys import NONCE, NONCE_TTL_SECONDS
from gateway.ops.metrics import UNREGISTERED
from gateway.pipeline.shared_nonces import SharedNonces
from gateway.protocol.errors import BadRequest

log = logging.getLogger("gateway.pipeline.auth")

WINDOW_SECONDS = 300
_PAASID = re.compile(r"[0-9A-Za-z_\-]{1,40}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[\x21-\x7e]{1,64}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")  # compare_digest refuses non-ASCII text
SIGNATURE_MISMATCH = "签名不一致！请核对接入账号（机构编号）与接入密钥"
MAX_LOCAL_NONCES = 200_000  # bounded memory: older nonces are outside the window anyway
SHARE_BACK_BATCH = 1000  # nonces written back to Redis in one round trip


class AuthError(BadRequest):
    """The request's signature does not authenticate an institution; `reason` is the metrics'
    label (missing, malformed, timestamp, signature, nonce): a wrong key, a clock off, a replay."""

    def __init__(self, err_msg: str, reason: str = "malformed") -> None:
        super().__init__(err_msg)
        self.reason = reason


def signature(timestamp: str, secret: str, nonce: str) -> str:
    """The x-tif signature of a request."""
    return hashlib.sha256(f"{timestamp}{secret}{nonce}{timestamp}".encode()).hexdigest()


def load_credentials(path: Path) -> dict[str, str]:
    """`[institutions.<code>] secret = "…"` → {code: secret}."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    return {code: str(entry["secret"]) for code, entry in doc.get("institutions", {}).items()}


def sign_headers(paasid: str, secret: str, nonce: str, now: float | None = None) -> dict[str, str]:
    """The headers a client sends (used by the tests, the load tests and tools)."""
    ts = str(int(time.time() if now is None else now))
    return {
        "x-tif-paasid": paasid,
        "x-tif-timestamp": ts,
        "x-tif-nonce": nonce,
        "x-tif-signature": signature(ts, secret, nonce),
    }


_SIGNED_HEADERS = ("x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature")


class Verifier:
    """Checks signatures and remembers nonces."""

    __slots__ = (
        "_local",
        "_sharing",
        "_unknown_secret",
        "_unshared",
        "credentials",
        "gate",
        "redis",
        "shared",
    )

    def __init__(
        self,
        credentials: Mapping[str, str],
        redis: Any | None = None,
        shared: SharedNonces | None = None,
    ) -> None:
        self.credentials = dict(credentials)
        self._unknown_secret = secrets.token_hex(32)
        self.redis = redis
        # The host's workers' nonces (gateway.pipeline.shared_nonces): without Redis, or while
        # it is away, a nonce one worker took is known to the others.
        self.shared = shared
        self._local: OrderedDict[str, float] = OrderedDict()
        # Nonces taken while Redis was away, to write to it once it answers (`_share_back`).
        self._unshared: OrderedDict[str, float] = OrderedDict()
        self._sharing: asyncio.Task[None] | None = None
        # The gateway's Redis breaker: while it is open nonces are this process's to remember
        # (docs/emergency.md), without waiting for a Redis that hangs.
        self.gate = SharedStoreGate(None if redis is None else redis.ping)

    def claimed(self, headers: Mapping[str, str]) -> str:
        """The institution a request names in x-tif-paasid, for the metrics: a registered code,
        else "unregistered" (the label takes no text a client makes up)."""
        paasid = headers.get("x-tif-paasid", "")
        return paasid if paasid in self.credentials else UNREGISTERED

    async def verify(self, headers: Mapping[str, str], now: float | None = None) -> str:
        """The authenticated institution code; raises AuthError with a clear message."""
        # A header sent twice is refused, as a key twice in the body is: the gateway read the
        # first, and a proxy or log reading the last saw another institution or signature
        # (found from outside).
        getall = getattr(headers, "getall", None)
        if getall is not None:
            for name in _SIGNED_HEADERS:
                if len(getall(name, ())) > 1:
                    raise AuthError(f"签名校验失败：请求头{name}重复，每个只能发送一次")
        paasid = headers.get("x-tif-paasid", "")
        ts = headers.get("x-tif-timestamp", "")
        nonce = headers.get("x-tif-nonce", "")
        sig = headers.get("x-tif-signature", "")
        if not (paasid and ts and nonce and sig):
            raise AuthError(
                "签名校验失败：缺少x-tif-paasid、x-tif-timestamp、x-tif-nonce或x-tif-signature请求头",
                "missing",
            )
        if not _PAASID.fullmatch(paasid):
            raise AuthError("签名校验失败：x-tif-paasid格式错误（应为机构编号）")
        # An unknown code goes through every check with a secret nobody holds and is refused
        # with the same words at the same step as a wrong secret: the answer does not tell which
        # institution codes are registered.
        secret = self.credentials.get(paasid)
        registered = secret is not None
        if secret is None:
            secret = self._unknown_secret
        # ASCII digits only, and few of them: str.isdigit() accepts "²", and int() of thousands
        # of digits raises instead of answering.
        if not _TIMESTAMP.fullmatch(ts):
            raise AuthError("签名校验失败：x-tif-timestamp应为Unix秒数")
        current = time.time() if now is None else now
        # Whole seconds on both sides: against the clock's fraction, ts - 300 was always refused
        # and ts + 300 always taken (found from outside).
        if abs(int(current) - int(ts)) > WINDOW_SECONDS:
            raise AuthError(
                "签名校验失败：请求时间戳超出允许范围（±300秒），请校准终端时间", "timestamp"
            )
        if len(nonce) > 64:
            raise AuthError("签名校验失败：x-tif-nonce过长")
        if not _NONCE.fullmatch(nonce):
            raise AuthError("签名校验失败：x-tif-nonce只能由可见ASCII字符组成")
        matches = _SIGNATURE.fullmatch(sig) is not None and hmac.compare_digest(
            sig.lower(), signature(ts, secret, nonce)
        )
        if not (matches and registered):
            raise AuthError(SIGNATURE_MISMATCH, "signature")
        # A nonce once per timestamp: the signature binds the two, so the same nonce under
        # another timestamp is a request only the secret's holder could sign, not a replay.
        # Found from outside: a client drawing nonces of 1 to 10 random digits (binzhe12123/
        # Medical SYBController) repeats a short one within the window every few dozen calls.
        if not await self._first_use(f"{paasid}:{ts}:{nonce}", current):
            raise AuthError("签名校验失败：x-tif-nonce已使用过（疑似重放），请重新生成", "nonce")
        return paasid

    async def _first_use(self, key: str, now: float) -> bool:
        """Whether the nonce is new: to this process, to the host's workers (their shared
        table) and, where configured, to Redis, shared by every host; while Redis is away (its
        breaker open, or failing), to this process and the host's workers, which are asked first
        even once Redis is back, so that a nonce used during the outage is not taken again on
        this host (found from outside; another host may still take it once, docs/emergency.md).
        Found from outside: without Redis, each of two workers took the same signed headers
        once."""
        while self._local and (
            len(self._local) >= MAX_LOCAL_NONCES
            or next(iter(self._local.values())) < now - NONCE_TTL_SECONDS
        ):
            self._local.popitem(last=False)
        if key in self._local:
            return False
        if self.shared is not None and self.shared.first_use(key, now, NONCE_TTL_SECONDS) is False:
            self._local[key] = now
            return False
        if self.redis is not None and self.gate.usable():
            try:
                first = bool(await self.redis.set(NONCE + key, "1", nx=True, ex=NONCE_TTL_SECONDS))
            except Exception as exc:
                self.gate.note(False, exc)
                # What failed, for the team (found from outside: a burst opened the breaker of a
                # healthy Redis, and the log did not say why).
                log.warning(
                    "nonce store unavailable; using process-local memory",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
            else:
                self.gate.note(True)
                if self._unshared and self._sharing is None:
                    self._sharing = asyncio.get_running_loop().create_task(self._share_back())
                if first:
                    # Remembered here too: while Redis is away this process still knows the
                    # nonces it took through Redis (found from outside: one taken a moment
                    # before the outage was taken again by the same worker during it).
                    self._local[key] = now
                return first
        self._local[key] = now
        if self.redis is not None:
            # Taken while Redis was away: written to it once it is back, for the other hosts.
            self._unshared[key] = now
            if len(self._unshared) > MAX_LOCAL_NONCES:
                self._unshared.popitem(last=False)
        return True

    async def _share_back(self) -> None:
        """The nonces this process took while Redis was away, written to Redis now that it is
        back (those still within their time), so that another host does not take them. Found
        from outside: a nonce taken on one host during an outage was taken on another after it,
        the second time with a body of the sender's choosing. Another host may still take one
        during the outage itself (docs/emergency.md)."""
        redis = self.redis
        assert redis is not None  # only nonces of a process with Redis are kept to write back
        try:
            while self._unshared:
                batch = [self._unshared.popitem(last=False) for _ in range(
                    min(len(self._unshared), SHARE_BACK_BATCH)
                )]  # fmt: skip
                now = time.time()
                try:
                    async with redis.pipeline(transaction=False) as pipe:
                        for key, taken in batch:
                            left = int(taken + NONCE_TTL_SECONDS - now)
                            if left > 0:
                                pipe.set(NONCE + key, "1", nx=True, ex=left)
                        await pipe.execute()
                except Exception as exc:
                    for key, taken in reversed(batch):  # kept for the next time Redis answers
                        self._unshared[key] = taken
                        self._unshared.move_to_end(key, last=False)
                    self.gate.note(False, exc)
                    log.warning(
                        "nonces taken during the Redis outage not written back yet",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                    return
        finally:
            self._sharing = None
