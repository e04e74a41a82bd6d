"""Signed requests: the x-tif signature, its time window, single-use nonces, institution binding."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from gateway.emergency.breaker import Breaker, BreakerConfig
from gateway.ops.keys import NONCE, NONCE_TTL_SECONDS
from gateway.pipeline.auth import AuthError, Verifier, sign_headers, signature
from tests.integration.conftest import Server, another_worker, running_gateway
from tests.integration.his_client import CREDENTIALS, decode

CODE = "H44180000001"
QUERY = {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802199001011234"}}


async def _post(server: Server, headers: dict[str, str], code: str = CODE) -> dict[str, Any]:
    client = server.client(code)
    body = msgspec.json.encode(client.envelope("1101", QUERY))
    async with server.session.post(
        server.url + "/fsi/api/rsfComIfsService/callService", data=body, headers=headers
    ) as r:
        assert r.status == 200
        return decode(await r.read())


def _signed(
    nonce: str | None = None, now: float | None = None, secret: str | None = None
) -> dict[str, str]:
    return sign_headers(CODE, secret or CREDENTIALS[CODE], nonce or uuid.uuid4().hex, now)


async def test_a_signed_request_is_answered(server: Server) -> None:
    assert (await _post(server, _signed()))["infcode"] == 0


# Headers are built when the test runs, not when it is collected: a timestamp 400 s off taken at
# collection is within the 300 s window by the time a slow suite reaches the test.
@pytest.mark.parametrize(
    ("make_headers", "fragment", "counted"),
    [
        (lambda: {}, "缺少", ("unregistered", "missing")),
        (lambda: {**_signed(), "x-tif-signature": "0" * 64}, "签名不一致", (CODE, "signature")),
        (lambda: _signed(secret="wrong-secret"), "签名不一致", (CODE, "signature")),
        (lambda: _signed(now=time.time() - 400), "时间戳", (CODE, "timestamp")),
        (lambda: _signed(now=time.time() + 400), "时间戳", (CODE, "timestamp")),
        (
            lambda: {**_signed(), "x-tif-paasid": "H99999999999"},
            "签名不一致",
            ("unregistered", "signature"),
        ),
        (lambda: {**_signed(), "x-tif-timestamp": "yesterday"}, "Unix", (CODE, "malformed")),
    ],
)
async def test_bad_signatures_are_refused(
    server: Server,
    make_headers: Callable[[], dict[str, str]],
    fragment: str,
    counted: tuple[str, str],
) -> None:
    """Refused, nothing written, and counted by the institution named and why (found from
    outside: a wrong key, a clock off and a replay were one count under infno "unknown")."""
    before = await server.ledger_fingerprint()
    labels = dict(zip(("fixmedins_code", "reason"), counted, strict=True))
    counted_before = REGISTRY.get_sample_value("sgw_auth_failures_total", labels) or 0.0
    answer = await _post(server, make_headers())
    assert answer["infcode"] == -1 and fragment in answer["err_msg"], answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert REGISTRY.get_sample_value("sgw_auth_failures_total", labels) == counted_before + 1


async def test_a_nonce_is_accepted_once(server: Server) -> None:
    headers = _signed(nonce="reused-nonce-1")
    assert (await _post(server, headers))["infcode"] == 0
    replays = {"fixmedins_code": CODE, "reason": "nonce"}
    before = REGISTRY.get_sample_value("sgw_auth_failures_total", replays) or 0.0
    again = await _post(server, headers)
    assert again["infcode"] == -1 and "nonce" in again["err_msg"]
    assert REGISTRY.get_sample_value("sgw_auth_failures_total", replays) == before + 1


async def test_a_short_nonce_drawn_again_under_another_timestamp_is_not_a_replay(
    server: Server,
) -> None:
    """A client drawing nonces of 1 to 10 random digits (binzhe12123/Medical) draws a one-digit
    nonce again within the window every few dozen calls: refused as a replay, though its
    signature, over another timestamp, only the secret's holder could have made. The same
    headers again are still a replay."""
    now = time.time()
    first = _signed(nonce="7", now=now - 2)
    assert (await _post(server, first))["infcode"] == 0
    later = _signed(nonce="7", now=now)
    assert (await _post(server, later))["infcode"] == 0
    replayed = await _post(server, later)
    assert replayed["infcode"] == -1 and "nonce" in replayed["err_msg"]


async def test_an_institution_cannot_speak_for_another(server: Server) -> None:
    answer = await _post(server, _signed(), code="H44180000002")
    assert answer["infcode"] == -1 and "认证身份" in answer["err_msg"]


async def test_nonces_shared_through_redis(redis_url: str) -> None:
    import redis.asyncio as aioredis

    a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        worker_a, worker_b = Verifier(CREDENTIALS, a), Verifier(CREDENTIALS, b)
        headers = _signed(nonce=uuid.uuid4().hex)
        assert await worker_a.verify(headers) == CODE
        with pytest.raises(Exception, match="nonce"):
            await worker_b.verify(headers)  # another worker remembers it too
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_nonce_taken_by_one_worker_is_refused_by_another_without_redis(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: with `serve --workers 2` and no Redis, one set of signed headers was
    taken once by each worker, the second time with a body of the sender's choosing. The host's
    workers share their nonces through the journal directory."""
    journal = Path(tempfile.mkdtemp(prefix="gw-journal-"))
    async with (
        running_gateway(new_database, journal_dir=journal) as first,
        another_worker(first.dsn, journal) as second,
    ):
        headers = _signed()
        assert (await _post(first, headers))["infcode"] == 0
        replay = await _post(second, headers)
        assert replay["infcode"] == -1 and "已使用过" in replay["err_msg"], replay
        assert (await _post(second, _signed()))["infcode"] == 0  # a fresh nonce is taken
        again = _signed()
        assert (await _post(second, again))["infcode"] == 0
        assert (await _post(first, again))["infcode"] == -1  # either way round


async def test_a_nonce_taken_while_redis_was_away_is_refused_by_another_host_after(
    redis_url: str,
) -> None:
    """Found from outside: a nonce one host took during a Redis outage was taken by another host
    once Redis was back, the second time with a body of the sender's choosing. What a process
    took while Redis was away is written to it when it answers again."""
    import redis.asyncio as aioredis

    a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        here, elsewhere = Verifier(CREDENTIALS, a), Verifier(CREDENTIALS, b)
        here.gate.breaker = breaker = _redis_breaker()
        breaker.record(False)
        assert breaker.is_open  # Redis away for this host
        during = [_signed(nonce=uuid.uuid4().hex) for _ in range(3)]
        for headers in during:
            assert await here.verify(headers) == CODE  # this process's memory alone
        here.gate.breaker = None  # back, and asked again
        assert await here.verify(_signed(nonce=uuid.uuid4().hex)) == CODE
        assert here._sharing is not None
        await here._sharing
        for headers in during:
            with pytest.raises(AuthError, match="nonce"):
                await elsewhere.verify(headers)
        ttl = await a.ttl(
            f"{NONCE}{CODE}:{during[0]['x-tif-timestamp']}:{during[0]['x-tif-nonce']}"
        )
        assert 0 < ttl <= NONCE_TTL_SECONDS  # kept no longer than the window needs
    finally:
        await a.aclose()
        await b.aclose()


def test_signature_is_sha256_of_ts_secret_nonce_ts() -> None:
    import hashlib

    assert (
        signature("1700000000", "s3cret", "n1")
        == hashlib.sha256(b"1700000000s3cretn11700000000").hexdigest()
    )


async def test_a_signed_header_sent_twice_is_refused(server: Server) -> None:
    """Found from outside: a second x-tif-signature (or x-tif-paasid) after a good one was
    ignored and the sale settled, the gateway reading the first copy where a proxy or a log
    reading the last saw another signature or institution."""
    client = server.client(CODE)
    before = await server.ledger_fingerprint()
    for name in ("x-tif-signature", "x-tif-paasid", "x-tif-nonce", "x-tif-timestamp"):
        signed = _signed()
        second = {"x-tif-paasid": "H44180000002", "x-tif-signature": "0" * 64}.get(name, "1")
        headers = [*signed.items(), (name, second)]
        body = msgspec.json.encode(client.envelope("1101", QUERY))
        async with server.session.post(
            server.url + "/fsi/api/rsfComIfsService/callService", data=body, headers=headers
        ) as r:
            assert r.status == 200
            answer = decode(await r.read())
        assert answer["infcode"] == -1 and f"请求头{name}重复" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before


async def test_the_time_window_is_the_same_both_ways() -> None:
    """Found from outside: a timestamp 300 s behind was always refused and one 300 s ahead
    always taken, the whole-second timestamp compared with the clock's fraction."""
    verifier = Verifier(CREDENTIALS)
    now = 1_790_000_000.9
    for offset in (-300, 300):
        headers = sign_headers(CODE, CREDENTIALS[CODE], uuid.uuid4().hex, int(now) + offset)
        assert await verifier.verify(headers, now=now) == CODE, offset
    for offset in (-301, 301):
        headers = sign_headers(CODE, CREDENTIALS[CODE], uuid.uuid4().hex, int(now) + offset)
        with pytest.raises(AuthError, match="时间戳"):
            await verifier.verify(headers, now=now)


class _Redis:
    """A Redis as the verifier sees it: working (a set of keys), refusing, or hanging."""

    def __init__(self) -> None:
        self.mode = "up"
        self.keys: set[str] = set()

    async def set(self, key: str, _value: str, *, nx: bool, ex: int) -> bool:
        if self.mode == "down":
            raise ConnectionError("refused")
        if self.mode == "hung":
            await asyncio.Event().wait()
        assert nx and ex > 0
        if key in self.keys:
            return False
        self.keys.add(key)
        return True

    async def ping(self) -> bool:
        if self.mode == "down":
            raise ConnectionError("refused")
        if self.mode == "hung":
            await asyncio.Event().wait()
        return True


def _redis_breaker() -> Breaker:
    return Breaker("redis", BreakerConfig(consecutive_failures=1, min_open_seconds=60.0))


async def test_a_hung_redis_is_not_waited_for_once_its_breaker_is_open() -> None:
    """Found from outside: with Redis stalled (SIGSTOP) every request waited on the nonce store
    for 0.2–0.4 s although the Redis breaker was open; the rate limiter had moved on."""
    redis = _Redis()
    verifier = Verifier(CREDENTIALS, redis)
    verifier.gate.breaker = breaker = _redis_breaker()
    breaker.record(False)  # opened, as by the failures the other callers saw
    assert breaker.is_open
    redis.mode = "hung"
    async with asyncio.timeout(1.0):
        assert await verifier.verify(_signed()) == CODE


async def test_no_request_waits_on_the_probe_of_a_hung_redis() -> None:
    """Found from outside: with Redis hung and its breaker open, one request a second per worker
    was the breaker's probe and waited the Redis timeout (0.2-0.4 s) all through the outage. The
    probe is a PING in the background; requests go on with this process's memory."""
    redis = _Redis()
    verifier = Verifier(CREDENTIALS, redis)
    verifier.gate.breaker = breaker = Breaker(
        "redis", BreakerConfig(consecutive_failures=1, min_open_seconds=0.0)
    )
    breaker.record(False)
    assert breaker.is_open and breaker.probe_due()
    redis.mode = "hung"
    async with asyncio.timeout(0.5):
        for _ in range(3):
            assert await verifier.verify(_signed()) == CODE
    assert breaker.is_open  # the probe still waits on the hung Redis


async def test_a_nonce_taken_through_redis_is_not_taken_again_while_it_is_away() -> None:
    """Found from outside: a nonce taken through Redis a moment before it went away was taken
    again by the same worker during the outage: only what was checked in memory was known."""
    redis = _Redis()
    verifier = Verifier(CREDENTIALS, redis)
    verifier.gate.breaker = breaker = _redis_breaker()
    headers = _signed()
    assert await verifier.verify(headers) == CODE
    redis.mode = "down"
    breaker.record(False)
    assert breaker.is_open
    with pytest.raises(AuthError, match="nonce"):
        await verifier.verify(headers)


async def test_a_nonce_taken_while_redis_was_away_is_not_taken_again_after() -> None:
    redis = _Redis()
    verifier = Verifier(CREDENTIALS, redis)
    verifier.gate.breaker = _redis_breaker()
    headers = _signed()
    redis.mode = "down"
    assert await verifier.verify(headers) == CODE  # remembered by this process
    redis.mode = "up"
    verifier.gate.breaker = None  # Redis back and asked again
    with pytest.raises(AuthError, match="nonce"):
        await verifier.verify(headers)
    fresh = _signed()
    assert await verifier.verify(fresh) == CODE
    assert any(fresh["x-tif-nonce"] in key for key in redis.keys)  # shared again
