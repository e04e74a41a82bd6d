"""An operator's day at the counter: 9001 签到 hands out a sign-in number, 9002 签退 closes it."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from gateway.ledger import signins
from gateway.protocol.errors import Conflict, NotFound


class SignIn(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 9001: who signs in, from where ("" where not sent)."""

    opter_no: str
    mac: str
    ip: str


async def sign_in(
    conn: asyncpg.Connection, fixmedins_code: str, admdvs: str, now: dt.datetime, a: SignIn
) -> str:
    """9001: record the sign-in; its number (sign_no): region, day, serial."""
    serial = await signins.next_serial(conn)
    sign_no = f"{admdvs}{now:%Y%m%d}{serial:08d}"
    await signins.insert(
        conn,
        sign_no=sign_no,
        fixmedins_code=fixmedins_code,
        opter_no=a.opter_no,
        mac=a.mac,
        ip=a.ip,
        sign_time=now.replace(microsecond=0),
    )
    return sign_no


async def sign_out(
    conn: asyncpg.Connection, fixmedins_code: str, now: dt.datetime, sign_no: str
) -> None:
    """9002: close the institution's sign-in, once."""
    signed_in = await signins.lock(conn, sign_no, fixmedins_code)
    if signed_in is None:
        raise NotFound(f"签到编号{sign_no}不存在或不属于本机构")
    if signed_in.sign_out_time is not None:
        raise Conflict(f"签到编号{sign_no}已签退")
    await signins.sign_out(conn, sign_no, now.replace(microsecond=0))
