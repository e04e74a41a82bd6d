"""The process's Redis client: one server named by URL, or the master a set of Sentinels names.

Redis is never required (rate limits fall back to process-local buckets, announcements to
polling), so neither form connects here: the first command does. Behind Sentinel the client asks
the sentinels for the master's address on every new connection, so after a failover the next
command reaches the promoted replica without a restart; commands on connections to the old
master fail meanwhile, which the Redis breaker already absorbs.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from gateway.app.config import RedisConfig


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)  # checked at start-up (RedisConfig)


def open_redis(config: RedisConfig, url: str | None, *, timeout: float) -> Redis | None:
    """The client for `[redis]` sentinels when listed, else for `url`; None without either."""
    if config.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # unannotated in redis-py
            [_address(a) for a in config.sentinels],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        master: Redis = sentinel.master_for(
            config.master_name,
            db=config.db,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return master
    if url:
        return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return None


async def close_redis(redis: Redis) -> None:
    """Close the client, and behind Sentinel the connections to the sentinels as well."""
    await redis.aclose()
    pool = redis.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        for client in pool.sentinel_manager.sentinels:
            await client.aclose()
