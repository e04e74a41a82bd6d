"""Rate limits shared through Redis across workers, and settlement going on when Redis is down."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as aioredis

from gateway.pipeline.ratelimit import Limiter, Limits
from gateway.protocol.errors import Busy

LIMITS = Limits(
    terminal_rate=0.001, terminal_burst=5, institution_rate=1000, institution_burst=1000
)


async def _admitted(limiter: Limiter, institution: str, terminal: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await limiter.admit(institution, terminal)
            ok += 1
        except Busy:
            pass
    return ok


async def test_two_workers_share_one_terminal_bucket(redis_url: str) -> None:
    a = aioredis.Redis.from_url(redis_url)
    b = aioredis.Redis.from_url(redis_url)
    try:
        worker_a, worker_b = Limiter(LIMITS, a), Limiter(LIMITS, b)
        institution = f"P{uuid.uuid4().hex[:11]}"
        total = await _admitted(worker_a, institution, "POS1", 4) + await _admitted(
            worker_b, institution, "POS1", 4
        )
        assert total == 5  # one burst between them, not one each
        # Another terminal of the same institution has its own bucket.
        assert await _admitted(worker_b, institution, "POS2", 3) == 3
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_down_falls_back_to_local_buckets_quickly() -> None:
    dead = aioredis.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    try:
        limiter = Limiter(LIMITS, dead)
        started = time.perf_counter()
        assert await _admitted(limiter, "P44180000001", "POS1", 8) == 5  # local bucket still limits
        # One connect timeout, then local buckets without waiting on Redis again.
        assert time.perf_counter() - started < 1.0
    finally:
        await dead.aclose()


@pytest.mark.parametrize("burst", [1, 3])
def test_local_bucket_refills_at_its_rate(burst: int) -> None:
    from gateway.pipeline.ratelimit import Buckets

    buckets = Buckets(rate=2.0, burst=burst)
    assert all(buckets.take("k", now=100.0) for _ in range(burst))
    assert not buckets.take("k", now=100.0)
    assert buckets.take("k", now=100.5)  # half a second at 2/s = one token
    assert not buckets.take("k", now=100.5)
