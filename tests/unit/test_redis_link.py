"""`[redis]`: one server by URL, or the master a set of Sentinels names (gateway.app.redis_link).
Following a real failover is tests/cluster/test_failover.py's business."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.app.config import ConfigError, RedisConfig, decode_config
from gateway.app.redis_link import close_redis, open_redis


async def test_sentinels_win_over_the_url_and_name_the_master() -> None:
    config = RedisConfig(sentinels=("127.0.0.1:26379", "10.0.0.2:26380"), master_name="gw", db=3)
    redis = open_redis(config, "redis://127.0.0.1:6379/1", timeout=0.2)
    assert redis is not None
    pool = redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "gw"
    assert pool.connection_kwargs["db"] == 3
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    await close_redis(redis)  # nothing was connected: closing is quiet


async def test_without_sentinels_the_url_or_nothing() -> None:
    redis = open_redis(RedisConfig(), "redis://127.0.0.1:6379/2", timeout=0.2)
    assert redis is not None
    assert not isinstance(redis.connection_pool, SentinelConnectionPool)
    assert redis.connection_pool.connection_kwargs["db"] == 2
    await close_redis(redis)
    assert open_redis(RedisConfig(), None, timeout=0.2) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", ":26379"])
def test_a_sentinel_without_host_and_port_stops_start_up(address: str) -> None:
    with pytest.raises(ConfigError, match="expected host:port"):
        decode_config(f'[redis]\nsentinels = ["{address}"]\n', "gateway.toml")
