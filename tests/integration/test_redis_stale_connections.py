"""A connection Redis closed while it sat in the pool (Redis restarted, a proxy's idle timeout)
is found closed by the next command on it. Found from outside: after a Redis restart, the first
nonce checks after the breaker's half-open failed on such connections ("Connection closed by
server"), opening the breaker again and leaving the nonces to each process's memory a while
longer, where a nonce used at one worker can be taken again at another. A command that meets a
closed connection is sent once more on a new one."""

from __future__ import annotations

import pytest
import redis as sync_redis
import redis.exceptions

from gateway.app.config import RedisConfig
from gateway.app.redis_link import close_redis, open_redis


async def test_a_command_on_a_connection_the_server_closed_is_sent_again(redis_url: str) -> None:
    client = open_redis(RedisConfig(), redis_url, timeout=1.0)
    assert client is not None
    try:
        ids = [await client.client_id()]
        # Every pooled connection closed by the server, as a restart closes them.
        with sync_redis.Redis.from_url(redis_url) as admin:
            for client_id in ids:
                assert admin.client_kill_filter(_id=client_id) == 1
        assert await client.set("gwtest:stale", "1", ex=10) is True
        assert await client.get("gwtest:stale") == b"1"
    finally:
        await close_redis(client)


async def test_a_server_that_is_gone_still_fails_at_once() -> None:
    """Sent once more, not retried until it answers: with nothing listening the command fails
    as before, for the breaker to count."""
    client = open_redis(RedisConfig(), "redis://127.0.0.1:1/0", timeout=0.5)
    assert client is not None
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await close_redis(client)
