"""A settlement's cancellation (2208 门诊, 2305 住院, 2103 药店结算撤销): exactly what it applied,
reversed, its lines unsettled again. A deferred claim's id is withdrawn by the adapter instead
(adapters.national.deferral), before this is reached."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from gateway.core import eligibility
from gateway.ledger import settlements
from gateway.ledger.settlements import Record
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Kind


class SettlementCancel(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2208/2305/2103: the settlement, its visit and its person."""

    setl_id: str
    mdtrt_id: str
    psn_no: str


class Cancelled(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The settlement reversed and the account balance after the refund (fen)."""

    record: Record
    balc: int


async def cancel(
    conn: asyncpg.Connection, origin: Origin, now: dt.datetime, kind: Kind, a: SettlementCancel
) -> Cancelled:
    """Reverse the institution's settlement, only by the kind of visit it belongs to (an
    outpatient cancellation never reverses a stay's settlement)."""
    rec, balance_after = await settlements.cancel(
        conn,
        fixmedins_code=origin.fixmedins_code,
        setl_id=a.setl_id,
        mdtrt_id=a.mdtrt_id,
        psn_no=a.psn_no,
        msgid=origin.msgid,
        now=now,
        categories=frozenset(c.value for c in eligibility.KIND_CATEGORIES[kind]),
    )
    return Cancelled(record=rec, balc=balance_after)
