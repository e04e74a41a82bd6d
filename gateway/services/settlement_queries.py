"""5203 结算信息查询: an institution reads back one of its own settlements."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway.ledger import settlements
from gateway.ledger.settlements import Record as Record
from gateway.protocol.errors import BadRequest, NotFound


class SettlementQuery(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 5203: by setl_id or mdtrt_id (at least one), psn_no narrowing; "" where not sent."""

    setl_id: str
    mdtrt_id: str
    psn_no: str


async def settlement_info(
    conn: asyncpg.Connection, fixmedins_code: str, a: SettlementQuery
) -> Record:
    """The institution's settlement the query names (cancelled ones included)."""
    if not (a.setl_id or a.mdtrt_id):
        raise BadRequest("结算ID setl_id与就诊ID mdtrt_id至少填写一项")
    found = await settlements.find(
        conn,
        fixmedins_code,
        setl_id=a.setl_id,
        mdtrt_id=a.mdtrt_id,
        psn_no=a.psn_no,
        limit=1,
    )
    if not found:
        raise NotFound("未查询到本机构的结算信息")
    return found[0]
