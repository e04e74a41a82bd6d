"""Operator sign-ins (9001 签到) and sign-outs (9002 签退) at an institution's counters."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec


async def next_serial(conn: asyncpg.Connection) -> int:
    """Draws the next sign-in serial."""
    return int(await conn.fetchval("SELECT nextval('sign_seq')"))


async def insert(
    conn: asyncpg.Connection,
    *,
    sign_no: str,
    fixmedins_code: str,
    opter_no: str,
    mac: str,
    ip: str,
    sign_time: dt.datetime,
) -> None:
    """Writes a sign-in."""
    await conn.execute(
        "INSERT INTO sign_ins (sign_no, fixmedins_code, opter_no, mac, ip, sign_time)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        sign_no,
        fixmedins_code,
        opter_no,
        mac,
        ip,
        sign_time,
    )


class SignIn(msgspec.Struct, frozen=True, gc=False):
    """A sign-in as 9002 sees it."""

    sign_out_time: dt.datetime | None  # None while still signed in


async def lock(conn: asyncpg.Connection, sign_no: str, fixmedins_code: str) -> SignIn | None:
    """Reads and locks the institution's sign-in; None when it has no such sign-in."""
    row = await conn.fetchrow(
        "SELECT sign_out_time FROM sign_ins WHERE sign_no = $1 AND fixmedins_code = $2 FOR UPDATE",
        sign_no,
        fixmedins_code,
    )
    return None if row is None else SignIn(row["sign_out_time"])


async def sign_out(conn: asyncpg.Connection, sign_no: str, sign_out_time: dt.datetime) -> None:
    """Writes when a sign-in was signed out."""
    await conn.execute(
        "UPDATE sign_ins SET sign_out_time = $2 WHERE sign_no = $1",
        sign_no,
        sign_out_time,
    )
