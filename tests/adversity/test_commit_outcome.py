"""What a COMMIT's end tells about its outcome (`gateway.ledger.db.committing`): the server's
own answer, an error included, is an outcome; a connection lost or cut before the answer is
none, the COMMIT perhaps on its way. Found from outside: a COMMIT cut when the breaker opened
was taken for an answer (asyncpg counts a lost connection among the server's errors), its
message's retry became an all-cash claim, and then the COMMIT landed: cash and account both
paid."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db
from tests.adversity.proxy import Proxy
from tests.adversity.test_ledger_outage import _tcp, _through
from tests.integration.emergency_helpers import until


async def _commit(conn: asyncpg.Connection, told: list[str], *statements: str) -> None:
    async with db.committing(conn, lambda: told.append("sending"), lambda: told.append("answered")):
        for sql in statements:
            await conn.execute(sql)


async def test_a_commit_cut_before_its_answer_leaves_its_outcome_unknown(
    new_database: Callable[..., Any],
) -> None:
    dsn = await new_database("commitcut")
    proxy = Proxy(*_tcp(dsn))
    await proxy.start()
    conn = await asyncpg.connect(_through(dsn, proxy.port))
    try:
        told: list[str] = []
        proxy.freeze_at(b"COMMIT")
        task = asyncio.create_task(_commit(conn, told, "SELECT 1"))

        async def sent() -> bool:
            return told == ["sending"]

        await until(sent)
        await asyncio.sleep(0.2)  # the COMMIT held in the hung network
        conn.terminate()  # as the runtime cuts a batch's connection when the breaker opens
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await task
        assert told == ["sending"]  # no answer: the message stays in doubt
    finally:
        conn.terminate()
        await proxy.close()


async def test_a_commit_the_server_refuses_is_an_answer(new_database: Callable[..., Any]) -> None:
    dsn = await new_database("commitrefused")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE once (a int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        told: list[str] = []
        with pytest.raises(asyncpg.UniqueViolationError):
            await _commit(conn, told, "INSERT INTO once VALUES (1)", "INSERT INTO once VALUES (1)")
        assert told == ["sending", "answered"]  # rolled back, and known to be
        told.clear()
        await _commit(conn, told, "INSERT INTO once VALUES (2)")
        assert told == ["sending", "answered"]
    finally:
        await conn.close()
