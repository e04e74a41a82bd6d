"""The process's Redis client: one server named by URL, or the master a set of Sentinels names.

Redis is never required (rate limits fall back to process-local buckets, announcements to
polling), so neither form connects here: the first command does. Behind Sentinel the client asks
the sentinels for the master's address on every new connection, so after a failover the next
command reaches the promoted replica without a restart; commands on connections to the old
master fail meanwhile, which the Redis breaker already absorbs.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

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
            retry=_once_more(),
        )
        return master
    if url:
        # A bounded pool that waits (up to `timeout`) for a connection: a burst of requests in
        # flight shares these instead of opening one each and failing past the pool's size
        # (found from outside: 1,000 requests at once opened a hundred connections, and every
        # use past them failed and opened the Redis breaker).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_once_more(),
        )
        return Redis.from_pool(pool)
    return None


def _once_more() -> Retry:
    """A command that meets a closed connection is sent once more, on a new one: a connection
    Redis closed while it sat in the pool (a restart) is found closed only by the next command
    on it (found from outside: after a Redis restart the first nonce checks failed so, opening
    the breaker again). Once: a server that is gone fails at once, for the breaker to count; a
    timeout is not sent again, which would double the wait of every command while Redis hangs."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


# A command takes a fraction of a millisecond: a few dozen connections carry thousands of
# requests a second (a nonce and a rate-limit bucket each).
POOL_CONNECTIONS = 32


async def close_redis(redis: Redis) -> None:
    """Close the client, and behind Sentinel the connections to the sentinels as well."""
    await redis.aclose()
    pool = redis.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        for client in pool.sentinel_manager.sentinels:
            await client.aclose()
