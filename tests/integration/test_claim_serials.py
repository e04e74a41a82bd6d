"""A group commit claims its msgids and draws its 就诊ID/结算ID serials in one statement: a pair
for each claimed request that draws, none for one already claimed (a retry answered from what
is stored) and none for one that draws nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db, idempotency, settlements

LAST = "SELECT (SELECT last_value FROM mdtrt_seq), (SELECT last_value FROM setl_seq)"


def _key(n: int) -> tuple[str, str, str, bytes]:
    return ("H44180000001", f"MSG{n:04d}", "2102", bytes([n]) * 32)


@pytest.fixture
async def ledger(new_database: Callable[..., Any]) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(await new_database("claims"))
    await db.migrate(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def _drawn(conn: asyncpg.Connection) -> tuple[int, int]:
    first = await conn.fetchrow(LAST)
    assert first is not None
    return int(first[0]), int(first[1])


async def test_pairs_for_the_claimed_that_draw_and_no_others(ledger: asyncpg.Connection) -> None:
    await settlements.draw_serials(ledger, 1)  # the sequences' last_value is theirs from here
    before = await _drawn(ledger)
    keys = [_key(n) for n in range(4)]
    drawing = [k[:2] for k in keys[:2]]
    claimed = await idempotency.claim_many(ledger, keys, drawing, settlements.SERIALS)
    assert set(claimed) == {k[:2] for k in keys}
    pairs = [claimed[k] for k in drawing]
    assert claimed[keys[2][:2]] is None and claimed[keys[3][:2]] is None
    # Each sequence steps by 2: visits' serials odd, settlements' even (migration 037).
    assert sorted(p[0] for p in pairs if p) == [before[0] + 2, before[0] + 4]
    assert sorted(p[1] for p in pairs if p) == [before[1] + 2, before[1] + 4]
    assert all(p[0] % 2 == 1 and p[1] % 2 == 0 for p in pairs if p)
    assert await _drawn(ledger) == (before[0] + 4, before[1] + 4)

    # The same requests again, with one new: only the new one is claimed, and it takes the next
    # pair; the retries drew nothing.
    again = await idempotency.claim_many(
        ledger, [*keys, _key(9)], [*drawing, _key(9)[:2]], settlements.SERIALS
    )
    assert again == {_key(9)[:2]: (before[0] + 6, before[1] + 6)}


async def test_a_claim_without_serials_draws_none(ledger: asyncpg.Connection) -> None:
    await settlements.draw_serials(ledger, 1)
    before = await _drawn(ledger)
    claimed = await idempotency.claim_many(ledger, [_key(1), _key(2)])
    assert claimed == {_key(1)[:2]: None, _key(2)[:2]: None}
    assert await _drawn(ledger) == before
