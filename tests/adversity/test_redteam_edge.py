"""What an attack on the HTTP edge and the console found, replayed over real loopback HTTP:

- slow bodies signed by one institution, from one address or many, held every in-flight slot and
  everyone else was answered busy;
- five wrong passwords for the duty operator, from anywhere, locked the duty team out;
- an unknown institution code was refused in other words than a wrong secret;
- a GBK byte in a field no transaction reads was accepted, though bodies had to be UTF-8 (GBK
  bodies are read as GBK now, whole: real Windows clients send them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.app.config import GatewayConfig, Overload
from gateway.emergency import operators
from gateway.emergency.operators import LoginPolicy
from gateway.pipeline.auth import sign_headers
from gateway.pipeline.edge import BodyRefused, EdgeConfig, read_body
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import until
from tests.integration.his_client import CALL_SERVICE, CREDENTIALS, HisClient, decode

pytestmark = pytest.mark.integration

VICTIM = "P52050000001"  # another region's pharmacy, from an address of its own
VICTIM_ADDRESS = "127.0.0.9"
IN_FLIGHT = 8
SHARE = 2  # a quarter of the bound (the default share)
GUARD_SECONDS = 3.0
DUTY = {"operator": "duty", "password": "duty-2026"}
LOGIN = "/api/console/login"


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    config = GatewayConfig(
        rate_limit=GENEROUS.rate_limit,
        overload=Overload(max_in_flight=IN_FLIGHT),
        # A long grace: these bodies stay held for the whole test, so what keeps room for
        # others is the share alone (the minimum body rate has a test of its own).
        http=EdgeConfig(body_grace_seconds=20.0),
        # Every guess is hashed (the hashing budget has tests of its own): what is tested here
        # is the name's guard and the desks.
        login=LoginPolicy(guarded_interval_seconds=GUARD_SECONDS, hashes_per_second=1e6),
    )
    async with running_gateway(new_database, config) as srv:
        yield srv


def _port(srv: Server) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _signed(code: str, secret: str | None = None) -> dict[str, str]:
    return sign_headers(code, secret or CREDENTIALS[code], uuid.uuid4().hex)


async def _response(reader: asyncio.StreamReader, within: float) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    async with asyncio.timeout(within):
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
    return int(status_line.split()[1]), body


def _from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


def _sign_in(code: str) -> dict[str, Any]:
    client = HisClient(None, "", code, region=code[1:7])  # type: ignore[arg-type]
    return client.envelope("9001", {"signIn": {"opter_no": "OP001", "mac": "", "ip": ""}})


# --------------------------------------------------------------------------- slow bodies (D1)

# Each case from addresses and institutions of its own, so that what the previous one held
# until its sockets closed cannot change the count.
ONE_ADDRESS = [("127.0.0.1", "H44180000001")] * 12
ONE_INSTITUTION = [(f"127.0.0.{11 + n % 6}", "H44180000002") for n in range(12)]
ONE_NAT = [
    ("127.0.0.20", code)
    for code in ["H44180000003", "P44180000001", "H52050000001", "H33030000001"] * 3
]


@pytest.mark.parametrize(
    "senders",
    [ONE_ADDRESS, ONE_INSTITUTION, ONE_NAT],
    ids=["one institution from one address", "one institution from six", "four from one NAT"],
)
async def test_slow_bodies_from_one_sender_leave_room_for_everyone_else(
    server: Server, senders: list[tuple[str, str]]
) -> None:
    """12 signed requests declare 100 kB and send 18 bytes of it (the bound is 8). Before, the
    first 8 held every slot and the victim was answered busy; now the sender holds its share."""
    held: list[asyncio.StreamWriter] = []
    answers: list[str] = []

    async def attack(local: str, code: str) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", _port(server), local_addr=(local, 0)
        )
        held.append(writer)
        head = [f"POST {CALL_SERVICE} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100000"]
        head += [f"{k}: {v}" for k, v in _signed(code).items()]
        writer.write("\r\n".join(head).encode() + b'\r\n\r\n{"infno": "2207", ')
        await writer.drain()
        _, body = await _response(reader, within=30.0)
        answers.append(decode(body)["err_msg"])

    attacks = [asyncio.create_task(attack(local, code)) for local, code in senders]
    try:

        async def bound_reached() -> bool:
            # Four refusals mean the other eight were admitted: the bound is as full as this
            # sender can make it.
            return len(answers) >= len(senders) - IN_FLIGHT

        await until(bound_reached, within=15.0)
        connector = aiohttp.TCPConnector(local_addr=(VICTIM_ADDRESS, 0))
        async with aiohttp.ClientSession(connector=connector) as victim:
            for _ in range(3):
                body = msgspec.json.encode(_sign_in(VICTIM))
                async with victim.post(
                    server.url + CALL_SERVICE, data=body, headers=_signed(VICTIM)
                ) as r:
                    answer = decode(await r.read())
                assert answer["infcode"] == 0, answer["err_msg"]

        async def all_but_the_share_refused() -> bool:
            return len(answers) >= len(senders) - SHARE

        await until(all_but_the_share_refused, within=15.0)
        assert len(answers) == len(senders) - SHARE
        assert all("繁忙" in text for text in answers)
    finally:
        for task in attacks:
            task.cancel()
        await asyncio.gather(*attacks, return_exceptions=True)
        for writer in held:
            writer.close()


def _request(stream: aiohttp.StreamReader, length: int) -> Any:
    return make_mocked_request(
        "POST", "/hsa/hgs/2207", headers={"Content-Length": str(length)}, payload=stream
    )


async def test_a_body_that_stops_arriving_is_refused_after_the_grace() -> None:
    """A 2,000-byte sale at 20 bytes a second: within body_seconds (60 s), but it falls behind
    the minimum rate once the grace is over, so its slot is freed long before."""
    stream = aiohttp.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    config = EdgeConfig(body_seconds=60.0, body_grace_seconds=0.5, body_min_rate=1000)

    async def trickle() -> None:
        for _ in range(2000):
            stream.feed_data(b" ")
            await asyncio.sleep(0.05)

    feeding = asyncio.create_task(trickle())
    try:
        with pytest.raises(BodyRefused, match="接收超时"):
            async with asyncio.timeout(20.0):  # the old deadline alone: 60 s
                await read_body(_request(stream, 2000), config, "2207")
    finally:
        feeding.cancel()


async def test_a_body_arriving_above_the_minimum_rate_is_read_past_the_grace() -> None:
    stream = aiohttp.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    config = EdgeConfig(body_seconds=60.0, body_grace_seconds=0.5, body_min_rate=1000)

    async def feed() -> None:
        for _ in range(20):  # 10,000 bytes over about 2 s: four times the grace
            stream.feed_data(b" " * 500)
            await asyncio.sleep(0.1)
        stream.feed_eof()

    feeding = asyncio.create_task(feed())
    body = await read_body(_request(stream, 10_000), config, "2207")
    await feeding
    assert len(body) == 10_000


# ------------------------------------------------------------------- what the answer says (D9)


async def test_an_unknown_institution_code_is_refused_like_a_wrong_secret(server: Server) -> None:
    body = msgspec.json.encode(_sign_in(VICTIM))
    said = []
    for headers in (
        _signed("H99999999999", secret="a-guess"),  # not registered
        _signed(VICTIM, secret="a-guess"),  # registered, wrong secret
    ):
        async with (
            _from(VICTIM_ADDRESS) as client,
            client.post(server.url + CALL_SERVICE, data=body, headers=headers) as r,
        ):
            answer = decode(await r.read())
        assert answer["infcode"] == -1
        said.append(answer["err_msg"])
    assert said[0] == said[1] and "签名不一致" in said[0] and "H99999999999" not in said[0]


async def test_a_body_not_utf8_is_read_as_gbk_whole_or_refused(server: Server) -> None:
    envelope = _sign_in(VICTIM)
    envelope["input"]["x"] = "值班"
    utf8 = msgspec.json.encode(envelope)
    before = await server.ledger_fingerprint()
    # A GBK byte in a field nobody reads, beside UTF-8 text elsewhere: not one encoding, and
    # the whole body is judged (this one is neither UTF-8 nor GBK).
    mixed = utf8.replace("值班".encode(), "值班".encode("gbk"))
    assert mixed != utf8 and mixed.count("值班".encode("gbk")) == 1
    async with (
        _from(VICTIM_ADDRESS) as client,
        client.post(server.url + CALL_SERVICE, data=mixed, headers=_signed(VICTIM)) as r,
    ):
        assert r.status == 200
        answer = decode(await r.read())
    assert answer["infcode"] == -1 and "UTF-8" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before
    envelope["msgid"] = envelope["msgid"] + "G"
    async with (
        _from(VICTIM_ADDRESS) as client,
        client.post(  # the whole envelope in GBK is served
            server.url + CALL_SERVICE,
            data=msgspec.json.encode(envelope).decode().encode("gbk"),
            headers=_signed(VICTIM),
        ) as r,
    ):
        assert decode(await r.read())["infcode"] == 0
    envelope["msgid"] = envelope["msgid"] + "U"
    async with (
        _from(VICTIM_ADDRESS) as client,
        client.post(  # the same in UTF-8 is served
            server.url + CALL_SERVICE, data=msgspec.json.encode(envelope), headers=_signed(VICTIM)
        ) as r,
    ):
        assert decode(await r.read())["infcode"] == 0


# ---------------------------------------------------------------------- console log-ins (D5)


async def _login(address: str, url: str, who: dict[str, str]) -> tuple[int, Any]:
    async with _from(address) as client, client.post(url + LOGIN, json=who) as r:
        return r.status, await r.json()


async def _forget_logins(server: Server) -> None:
    await server.fetch("DELETE FROM console_login_failures")
    await server.fetch("DELETE FROM console_login_desks")


async def test_guessing_does_not_lock_the_duty_operator_out_from_elsewhere(
    server: Server,
) -> None:
    await _forget_logins(server)
    guesses = [
        (await _login("127.0.0.31", server.url, {"operator": "duty", "password": f"g{n}"}))[0]
        for n in range(6)
    ]
    assert guesses == [401] * 5 + [429]
    status, body = await _login("127.0.0.31", server.url, DUTY)
    assert status == 429 and "锁定" in body["error"]  # the guesser's address stays locked out

    waits = []
    for _ in range(20):  # the right password from another address: at most one interval's wait
        status, body = await _login("127.0.0.32", server.url, DUTY)
        if status == 200:
            break
        assert status == 429 and "限速" in body["error"] and "锁定" not in body["error"], body
        waits.append(body["error"])
        await asyncio.sleep(0.5)
    assert status == 200 and "token" in body, waits
    assert len(waits) <= 2 * GUARD_SECONDS + 2

    rows = await server.fetch(
        "SELECT action, target FROM audit_log WHERE action LIKE 'console.login.%'"
    )
    seen = {(r["action"], r["target"]) for r in rows}
    assert ("console.login.guarded", "operator:duty") in seen
    assert ("console.login.locked", "pair:duty@127.0.0.31") in seen


async def test_a_desk_the_operator_used_before_is_not_slowed_down(server: Server) -> None:
    await _forget_logins(server)
    assert (await _login("127.0.0.33", server.url, DUTY))[0] == 200  # the duty desk
    for n in range(5):
        await _login("127.0.0.34", server.url, {"operator": "duty", "password": f"g{n}"})
    status, body = await _login("127.0.0.36", server.url, DUTY)  # a new address waits its turn
    assert status == 429 and "限速" in body["error"]
    status, body = await _login("127.0.0.33", server.url, DUTY)  # the desk does not
    assert status == 200 and "token" in body
    guarded = await server.fetchval(
        "SELECT locked_until > now() FROM console_login_failures"
        " WHERE kind = 'operator' AND key = 'duty'"
    )
    assert guarded is True  # getting in does not lift the guard: the guessing goes on


async def test_counts_for_made_up_names_are_forgotten_after_their_window(server: Server) -> None:
    policy = LoginPolicy(window_seconds=0.5, lockout_seconds=0.5)
    conn = await asyncpg.connect(server.dsn)
    try:
        for n in range(10):
            await operators.reserve_attempt(conn, policy, f"nobody{n}", "10.9.9.9")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM console_login_failures WHERE key LIKE 'nobody%'"
            )
            == 20
        )  # a name and a name-at-address row each
        await asyncio.sleep(1.0)
        await operators.reserve_attempt(conn, policy, "somebody", "10.9.9.8")
        left = await conn.fetchval(
            "SELECT count(*) FROM console_login_failures WHERE key LIKE 'nobody%'"
            " OR key = '10.9.9.9'"
        )
    finally:
        await conn.close()
    assert left == 0


async def test_the_duty_teams_networks_are_not_held_up_by_a_guarded_name(server: Server) -> None:
    """The second black-box pass's N2: one wrong guess at a name every guarded interval from a
    fresh address kept its operator waiting at any desk it had never used. An address in
    `[console] trusted_networks` is a desk of every name: not slowed by the guard; a fresh
    address elsewhere still waits its turn, and the name stays guarded."""
    await _forget_logins(server)
    policy = LoginPolicy(trusted_networks=("10.20.0.0/16",))
    conn = await asyncpg.connect(server.dsn)
    try:
        for n in range(5):
            await operators.reserve_attempt(conn, policy, "duty", f"10.9.8.{n}")
        elsewhere = await operators.reserve_attempt(conn, policy, "duty", "10.9.7.1")
        assert elsewhere is not None and elsewhere.kind == "operator"  # guarded: wait
        assert await operators.reserve_attempt(conn, policy, "duty", "10.20.3.4") is None
        assert not LoginPolicy().trusted("10.20.3.4")  # nothing is trusted unless configured
        assert policy.trusted("10.20.255.1") and not policy.trusted("10.21.0.1")
        assert not policy.trusted("not an address")
    finally:
        await conn.close()
    with pytest.raises(ValueError, match="trusted_networks"):
        LoginPolicy(trusted_networks=("10.20.0.0/33",))
