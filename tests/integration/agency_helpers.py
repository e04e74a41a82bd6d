"""Shared by the agency tests: a migrated, demo-loaded ledger with its catalog snapshot, and
manual claims taken through every step."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.app.config import DEFAULT_REFERENCE
from gateway.app.reference import load_reference
from gateway.app.server import Settings, prepare_database
from gateway.core.catalog import Snapshot
from gateway.core.money import to_cnt, to_fen, to_micro
from gateway.ledger import db, persons, reference_store
from gateway.ledger.manual_claims import Claim, Line
from gateway.services import manual_claims
from tests.integration.conftest import Server
from tests.integration.emergency_helpers import until

HOSPITAL = "H44180000001"


@dataclass
class Ledger:
    dsn: str
    pool: asyncpg.Pool
    snapshot: Snapshot


@asynccontextmanager
async def agency_ledger(new_database: Callable[..., Any]) -> AsyncIterator[Ledger]:
    """A fresh database, migrated and demo-loaded, its pool and catalog snapshot."""
    dsn = await new_database("agency")
    await prepare_database(Settings(dsn))
    async with ledger_on(dsn) as ledger:
        yield ledger


@asynccontextmanager
async def ledger_on(dsn: str) -> AsyncIterator[Ledger]:
    """A pool and the catalog snapshot over a prepared database (a running gateway's)."""
    pool = await db.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            snapshot = await reference_store.read_snapshot(conn, load_reference(DEFAULT_REFERENCE))
        yield Ledger(dsn, pool, snapshot)
    finally:
        await pool.close()


def bank_answers(payment: bytes, failures: dict[int, str]) -> bytes:
    """The bank's return file (回盘) for a payment file: every line paid but `failures`
    (seq -> the bank's reason), with its own header, trailer and checksum."""
    rows = payment.decode().splitlines()
    head = rows[0].split("|")
    out = ["|".join(("H", "RET", head[2], head[3], head[4], head[5]))]
    for row in rows[1:-1]:
        f = row.split("|")
        seq = int(f[1])
        result, why = ("F", failures[seq]) if seq in failures else ("S", "")
        out.append("|".join(("D", f[1], f[5], f[6], result, why)))
    body = ("\n".join(out) + "\n").encode()
    trailer = rows[-1].split("|")
    return (
        body
        + "|".join(("T", trailer[1], trailer[2], hashlib.sha256(body).hexdigest())).encode()
        + b"\n"
    )


def with_checksum(body: bytes) -> bytes:
    """A (tampered) file given a correct trailer checksum again, as a careful forger would."""
    rows = body.decode().splitlines()
    covered = ("\n".join(rows[:-1]) + "\n").encode()
    t = rows[-1].split("|")
    return covered + "|".join((*t[:3], hashlib.sha256(covered).hexdigest())).encode() + b"\n"


def lines_of(rows: list[dict[str, Any]], fee_time: str) -> list[Line]:
    """Manual-claim lines from the example-style lines the HTTP tests upload."""
    at = dt.datetime.fromisoformat(fee_time)
    return [
        Line(
            feedetl_sn=r["feedetl_sn"],
            medins_list_codg=r["medins_list_codg"],
            med_list_codg=r.get("med_list_codg") or None,
            pric_micro=to_micro(Decimal(r["pric"])),
            cnt=to_cnt(Decimal(r["cnt"])),
            amount_fen=to_fen(Decimal(r["det_item_fee_sumamt"])),
            fee_ocur_time=at,
            hosp_appr_flag=r.get("hosp_appr_flag", "1"),
        )
        for r in rows
    ]


async def reviewed_claim(
    conn: asyncpg.Connection,
    ledger: Ledger,
    psn_no: str,
    day: str,
    rows: list[dict[str, Any]],
    invoice: str,
    *,
    acct_used: bool = False,
    med_type: str = "11",
    stay: tuple[dt.datetime, dt.datetime] | None = None,
) -> Claim:
    """A claim registered and its lines entered by one clerk, reviewed by another: ready to
    settle. A visit's on `day` at 08:30, its lines at 08:40; `stay`: an inpatient claim's
    admission and discharge, its lines on `day` at 15:00."""
    begntime, endtime = stay or (dt.datetime.fromisoformat(f"{day} 08:30:00"), None)
    claim = await manual_claims.register(
        conn,
        ledger.snapshot,
        manual_claims.Registration(
            cert_type="01",
            cert_no=psn_no,
            fixmedins_code=HOSPITAL,
            med_type=med_type,
            begntime=begntime,
            endtime=endtime,
            acct_used=acct_used,
            invoice_nos=(invoice,),
        ),
        "clerk1",
        dt.datetime.now(),
    )
    fee_time = f"{day} 15:00:00" if stay else f"{day} 08:40:00"
    await manual_claims.enter_lines(
        conn, ledger.snapshot, claim.claim_no, lines_of(rows, fee_time), "clerk1"
    )
    return await manual_claims.review(conn, claim.claim_no, "reviewer1")


async def settled_claim(
    ledger: Ledger,
    psn_no: str,
    day: str,
    rows: list[dict[str, Any]],
    invoice: str,
    *,
    acct_used: bool = False,
    med_type: str = "11",
    reviewed: bool = True,
) -> Claim:
    """A claim registered, its lines entered, reviewed, settled (and batch-reviewed) by four
    different clerks, as the agency does it."""
    now = dt.datetime.now()
    async with ledger.pool.acquire() as conn:
        claim = await reviewed_claim(
            conn, ledger, psn_no, day, rows, invoice, acct_used=acct_used, med_type=med_type
        )
        claim = await manual_claims.settle(conn, ledger.snapshot, claim.claim_no, "clerk2", now)
        if reviewed:
            [claim] = await manual_claims.batch_review(conn, [claim.claim_no], "reviewer2")
        return claim


# ------------------------------------------------------------- the console's API over HTTP


async def api_login(server: Server, login: str, password: str | None = None) -> str:
    who = {"operator": login, "password": password or f"{login}-2026"}
    async with server.session.post(server.url + "/api/console/login", json=who) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["token"]
    assert isinstance(token, str)
    return token


async def api_post(server: Server, path: str, token: str, doc: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with server.session.post(server.url + path, json=doc, headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, (await r.read(), r.headers.get("Content-Disposition", ""))


async def api_get(server: Server, path: str, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with server.session.get(server.url + path, headers=headers) as r:
        return r.status, await r.json()


async def api_ok(server: Server, path: str, token: str, doc: dict[str, Any]) -> Any:
    status, body = await api_post(server, path, token, doc)
    assert status == 200, body
    return body


async def settled_while_the_counter_waits(
    ledger: Ledger,
    psn_no: str,
    claim_no: str,
    counter_call: Awaitable[dict[str, Any]],
    waits: Callable[[asyncio.Future[dict[str, Any]]], Awaitable[bool]],
) -> dict[str, Any]:
    """The agency's 结算 of a claim begun (the person's lock taken, as it takes it), the
    counter's call sent, and the 结算 carried out and committed once `waits` says the call has
    come to where it waits for the person (or has answered); the call's answer."""
    async with ledger.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await persons.lock_many(conn, [psn_no])
            call = asyncio.ensure_future(counter_call)

            async def ready() -> bool:
                return await waits(call)

            await until(ready, within=5.0)
            settled = await manual_claims.settle(
                conn, ledger.snapshot, claim_no, "clerk2", dt.datetime.now()
            )
            assert settled.status == "settled"
        finally:
            await tx.commit()
        return await call


async def waiting_for_a_person(dsn: str) -> bool:
    """Whether a transaction waits for a person's lock (the account row, `persons.lock_many`):
    the race tests hold one until the other side waits there."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%FOR UPDATE OF a%'"
            )
        )
    finally:
        await conn.close()
