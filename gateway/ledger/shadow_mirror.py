"""Visit mirroring in a parallel run: the outbox of encounter calls to replay at the shadow
(shadow_mirror_calls) and the map of the two systems' visit numbers (shadow_mirror_visits).
Written and read by gateway.emergency.mirror; the order it delivers in is explained there."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encounter call answered at the counter, to replay at the shadow (`target`)."""

    fixmedins_code: str
    mdtrt_id: str  # the visit, as the counter's system numbers it
    target: str  # "gateway" | "legacy": the shadow
    infno: str
    msgid: str
    opens_visit: bool
    body: bytes
    answer: bytes
    received_at: dt.datetime  # aware


@dataclass(frozen=True, slots=True)
class Claimed:
    call_id: int
    fixmedins_code: str
    mdtrt_id: str
    target: str
    infno: str
    msgid: str
    opens_visit: bool
    body: bytes
    received_at: dt.datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class Visit:
    """What the mirror knows of one visit: None from `visit` when it never saw it (a visit
    opened before the run, carried over under the same number)."""

    state: str  # open | mapped | not_mirrored
    shadow_mdtrt_id: str | None
    pending: int  # its calls received before the asked moment and not yet delivered


async def enqueue(
    conn: asyncpg.Connection,
    calls: Iterable[Outgoing],
    lost: Iterable[tuple[str, str, str]] = (),
) -> None:
    """Writes the calls to the outbox (an opening call notes its visit as `open`), and the
    visits known not mirrored (fixmedins_code, mdtrt_id, reason), in one transaction. A call
    whose msgid is there already (a retry answered again) is not written twice."""
    rows = list(calls)
    async with conn.transaction():
        opened = [(c.fixmedins_code, c.mdtrt_id) for c in rows if c.opens_visit]
        if opened:
            await conn.executemany(
                "INSERT INTO shadow_mirror_visits (fixmedins_code, mdtrt_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                opened,
            )
        if rows:
            await conn.executemany(
                "INSERT INTO shadow_mirror_calls (fixmedins_code, mdtrt_id, target, infno,"
                " msgid, opens_visit, body, answer, received_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (fixmedins_code, msgid, target) DO NOTHING",
                [
                    (
                        c.fixmedins_code,
                        c.mdtrt_id,
                        c.target,
                        c.infno,
                        c.msgid,
                        c.opens_visit,
                        c.body,
                        c.answer,
                        c.received_at,
                    )
                    for c in rows
                ],
            )
        for code, mdtrt_id, reason in lost:
            await lose_visit(conn, code, mdtrt_id, reason)


async def claim(conn: asyncpg.Connection, grace_seconds: float) -> Claimed | None:
    """Locks the next call to deliver, inside the caller's transaction: the oldest pending
    call (by the counter's received time) received at least `grace_seconds` ago whose visit has
    no earlier call pending; a call another worker holds is skipped, and so, by the NOT EXISTS,
    is every later call of its visit."""
    row = await conn.fetchrow(
        "SELECT c.call_id, c.fixmedins_code, c.mdtrt_id, c.target, c.infno, c.msgid,"
        " c.opens_visit, c.body, c.received_at, c.attempts FROM shadow_mirror_calls c"
        " WHERE c.state = 'pending' AND c.not_before <= now()"
        " AND c.received_at <= now() - make_interval(secs => $1)"
        " AND NOT EXISTS (SELECT 1 FROM shadow_mirror_calls e"
        "  WHERE e.fixmedins_code = c.fixmedins_code AND e.mdtrt_id = c.mdtrt_id"
        "  AND e.state = 'pending' AND (e.received_at, e.call_id) < (c.received_at, c.call_id))"
        " ORDER BY c.received_at, c.call_id LIMIT 1 FOR UPDATE OF c SKIP LOCKED",
        grace_seconds,
    )
    if row is None:
        return None
    return Claimed(**dict(row))


async def finish(
    conn: asyncpg.Connection,
    call_id: int,
    state: str,
    detail: str | None,
    shadow_answer: bytes | None = None,
) -> None:
    """Marks a call delivered (`ok`), refused by the shadow or failed for good."""
    await conn.execute(
        "UPDATE shadow_mirror_calls SET state = $2, detail = $3, done_at = now(),"
        " attempts = attempts + 1, shadow_answer = $4 WHERE call_id = $1",
        call_id,
        state,
        detail,
        shadow_answer,
    )


async def retry_later(
    conn: asyncpg.Connection, call_id: int, delay_seconds: float, detail: str
) -> None:
    """Leaves a call pending for another attempt after `delay_seconds` (its visit waits)."""
    await conn.execute(
        "UPDATE shadow_mirror_calls SET attempts = attempts + 1, detail = $3,"
        " not_before = now() + make_interval(secs => $2) WHERE call_id = $1",
        call_id,
        delay_seconds,
        detail,
    )


async def map_visit(
    conn: asyncpg.Connection, fixmedins_code: str, mdtrt_id: str, shadow_mdtrt_id: str
) -> None:
    """Notes the shadow's number of the visit (unless it is already known not mirrored)."""
    await conn.execute(
        "INSERT INTO shadow_mirror_visits (fixmedins_code, mdtrt_id, shadow_mdtrt_id, state)"
        " VALUES ($1, $2, $3, 'mapped') ON CONFLICT (fixmedins_code, mdtrt_id) DO UPDATE"
        " SET shadow_mdtrt_id = EXCLUDED.shadow_mdtrt_id, state = CASE"
        " WHEN shadow_mirror_visits.state = 'not_mirrored' THEN 'not_mirrored' ELSE 'mapped' END",
        fixmedins_code,
        mdtrt_id,
        shadow_mdtrt_id,
    )


async def lose_visit(
    conn: asyncpg.Connection, fixmedins_code: str, mdtrt_id: str, reason: str
) -> None:
    """Notes that the shadow's copy of the visit is not the counter's (a call dropped,
    refused or failed): its pricing is then a shadow failure."""
    await conn.execute(
        "INSERT INTO shadow_mirror_visits (fixmedins_code, mdtrt_id, state, reason)"
        " VALUES ($1, $2, 'not_mirrored', $3) ON CONFLICT (fixmedins_code, mdtrt_id) DO UPDATE"
        " SET state = 'not_mirrored', reason = coalesce(shadow_mirror_visits.reason,"
        " EXCLUDED.reason)",
        fixmedins_code,
        mdtrt_id,
        reason,
    )


async def shadow_ids(
    conn: asyncpg.Connection, fixmedins_code: str, mdtrt_ids: Iterable[str]
) -> dict[str, str]:
    """Reads the shadow's numbers of these visits, where the map has them."""
    rows = await conn.fetch(
        "SELECT mdtrt_id, shadow_mdtrt_id FROM shadow_mirror_visits WHERE fixmedins_code = $1"
        " AND mdtrt_id = ANY($2::text[]) AND shadow_mdtrt_id IS NOT NULL",
        fixmedins_code,
        list(mdtrt_ids),
    )
    return {r["mdtrt_id"]: r["shadow_mdtrt_id"] for r in rows}


async def visit(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    mdtrt_id: str,
    before: dt.datetime,
    target: str | None = None,
) -> Visit | None:
    """Reads the visit's mirror state and its calls received before `before` still pending;
    None when the mirror never saw the visit. With `target`, None as well when none of its
    calls was mirrored to that shadow: the number is then the other system's own (a visit the
    old system opened, mirrored here, is not renumbered on its way back there)."""
    row = await conn.fetchrow(
        "SELECT v.state, v.shadow_mdtrt_id, (SELECT count(*) FROM shadow_mirror_calls c"
        "  WHERE c.fixmedins_code = $1 AND c.mdtrt_id = $2 AND c.state = 'pending'"
        "  AND c.received_at <= $3) AS pending,"
        " (SELECT count(*) FROM shadow_mirror_calls c WHERE c.fixmedins_code = $1"
        "  AND c.mdtrt_id = $2) AS calls,"
        " (SELECT count(*) FROM shadow_mirror_calls c WHERE c.fixmedins_code = $1"
        "  AND c.mdtrt_id = $2 AND c.target = $4) AS to_target"
        " FROM (SELECT 1) one LEFT JOIN shadow_mirror_visits v"
        " ON v.fixmedins_code = $1 AND v.mdtrt_id = $2",
        fixmedins_code,
        mdtrt_id,
        before,
        target,
    )
    if row is None or (row["state"] is None and row["calls"] == 0):
        return None
    if target is not None and row["to_target"] == 0:
        return None
    # Calls mirrored for a visit it never saw opened (carried over): the same number there.
    return Visit(row["state"] or "mapped", row["shadow_mdtrt_id"], row["pending"])


@dataclass(frozen=True, slots=True)
class Delivered:
    """One call of a visit delivered to the shadow: the counter's request and both answers."""

    infno: str
    body: bytes
    answer: bytes
    shadow_answer: bytes
    target: str  # the system it was delivered to (the one that did not answer the counter)


async def delivered(
    conn: asyncpg.Connection, fixmedins_code: str, mdtrt_id: str
) -> list[Delivered]:
    """Reads the visit's calls delivered to the shadow, in the counter's order."""
    rows = await conn.fetch(
        "SELECT infno, body, answer, shadow_answer, target FROM shadow_mirror_calls"
        " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND state = 'ok'"
        " AND shadow_answer IS NOT NULL ORDER BY received_at, call_id",
        fixmedins_code,
        mdtrt_id,
    )
    return [
        Delivered(r["infno"], r["body"], r["answer"], r["shadow_answer"], r["target"]) for r in rows
    ]
