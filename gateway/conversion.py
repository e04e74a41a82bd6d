"""自费转医保: a self-pay admission made under the emergency plan becomes an insured visit.

After conversion the visit is settled normally (2303/2304) with the fees uploaded meanwhile.
"""

from __future__ import annotations

import asyncpg

from gateway import audit
from gateway.errors import Conflict, NotFound
from gateway.ledger import persons


async def convert(conn: asyncpg.Connection, mdtrt_id: str, *, operator: str, reason: str) -> str:
    """Mark the self-pay visit insured, after checking the person is insured; returns psn_no."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT psn_no, fixmedins_code, selfpay, status FROM encounters WHERE mdtrt_id = $1"
            " FOR UPDATE",
            mdtrt_id,
        )
        if row is None:
            raise NotFound(f"就诊ID{mdtrt_id}不存在")
        if not row["selfpay"]:
            raise Conflict(f"就诊ID{mdtrt_id}不是自费入院，无需转医保")
        if row["status"] == "cancelled":
            raise Conflict(f"就诊ID{mdtrt_id}已撤销")
        person, _ = await persons.read(conn, row["psn_no"])
        persons.require_insured(person)
        await conn.execute("UPDATE encounters SET selfpay = false WHERE mdtrt_id = $1", mdtrt_id)
        await audit.append(
            conn,
            operator=operator,
            action="encounter.convert",
            target=f"{row['fixmedins_code']}/{mdtrt_id}",
            reason=reason,
            before={"selfpay": True},
            after={"selfpay": False},
        )
        return str(row["psn_no"])
