"""Token buckets per terminal and per institution: a retry storm is refused at the door.

A refused request costs a dictionary lookup and is answered at once with `infcode -1`, so one
terminal hammering the gateway cannot take database connections or loop time from the others.
Shared through Redis when configured (every worker sees the same bucket); when Redis is absent
or failing, each process keeps its own buckets — settlement never waits on Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from gateway.emergency.breaker import SharedStoreGate
from gateway.ops.keys import RATE_INSTITUTION, RATE_TERMINAL, RATE_TTL_SECONDS
from gateway.protocol.errors import Busy

log = logging.getLogger("gateway.pipeline.ratelimit")

TERMINAL_BUSY = "本终端交易过于频繁，请稍候几秒后使用相同报文ID重试"
INSTITUTION_BUSY = "本机构当前交易量超过限额，请稍候几秒后使用相同报文ID重试"


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[rate_limit]` in config/gateway.toml."""

    terminal_rate: float = 50.0  # sustained requests per second per terminal
    terminal_burst: int = 100
    institution_rate: float = 5000.0
    institution_burst: int = 10000
    idle_seconds: float = 300.0  # buckets idle this long are forgotten (bounded memory)


class Buckets:
    """In-process token buckets keyed by a string."""

    __slots__ = ("_burst", "_last_sweep", "_rate", "_state", "idle")

    def __init__(self, rate: float, burst: int, idle: float = 300.0) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._state: dict[str, tuple[float, float]] = {}
        self.idle = idle
        self._last_sweep = time.monotonic()

    def take(self, key: str, now: float | None = None) -> bool:
        """Take one token; False when the bucket is empty."""
        t = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (self._burst, t))
        tokens = min(self._burst, tokens + (t - last) * self._rate)
        allowed = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if allowed else tokens, t)
        if t - self._last_sweep > self.idle:
            self._sweep(t)
        return allowed

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        stale = [k for k, (_, last) in self._state.items() if now - last > self.idle]
        for k in stale:
            del self._state[k]


# KEYS[1] bucket key; ARGV rate, burst, now (s), ttl (s). Returns 1 when a token was taken.
_LUA = """
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ok
"""


class Limiter:
    """Admission by terminal, then by institution."""

    __slots__ = (
        "_institutions",
        "_redis",
        "_script",
        "_terminals",
        "gate",
        "limits",
    )

    def __init__(self, limits: Limits, redis: Any | None = None) -> None:
        self.limits = limits
        self._terminals = Buckets(limits.terminal_rate, limits.terminal_burst, limits.idle_seconds)
        self._institutions = Buckets(
            limits.institution_rate, limits.institution_burst, limits.idle_seconds
        )
        self._redis = redis
        self._script = redis.register_script(_LUA) if redis is not None else None
        # After Redis failures the breaker opens and requests use local buckets instead of each
        # waiting for a connect timeout: a Redis outage must not add latency to settlement.
        self.gate = SharedStoreGate(None if redis is None else redis.ping)

    async def redis_status(self) -> str:
        """ "ok", "unreachable" or "not configured": reported by /readyz, never required."""
        if self._redis is None:
            return "not configured"
        try:
            await self._redis.ping()
        except Exception:
            return "unreachable"
        return "ok"

    async def admit(self, fixmedins_code: str, terminal: str) -> None:
        """Raise Busy when the terminal or the institution is over its rate."""
        tkey = f"{fixmedins_code}|{terminal}"
        if self._script is not None and self.gate.usable():
            try:
                await self._admit_shared(fixmedins_code, tkey)
                self.gate.note(True)
                return
            except Busy:
                self.gate.note(True)
                raise
            except Exception as exc:
                self.gate.note(False, exc)
                log.warning(
                    "rate limit store unavailable; using process-local buckets",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
        if not self._terminals.take(tkey):
            raise Busy(TERMINAL_BUSY)
        if not self._institutions.take(fixmedins_code):
            raise Busy(INSTITUTION_BUSY)

    async def _admit_shared(self, fixmedins_code: str, tkey: str) -> None:
        assert self._script is not None
        now = time.time()
        lim = self.limits
        if not await self._script(
            keys=[RATE_TERMINAL + tkey],
            args=[lim.terminal_rate, lim.terminal_burst, now, RATE_TTL_SECONDS],
        ):
            raise Busy(TERMINAL_BUSY)
        if not await self._script(
            keys=[RATE_INSTITUTION + fixmedins_code],
            args=[lim.institution_rate, lim.institution_burst, now, RATE_TTL_SECONDS],
        ):
            raise Busy(INSTITUTION_BUSY)
