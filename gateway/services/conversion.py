"""自费转医保: a self-pay admission made under the emergency plan becomes an insured visit.

After conversion the visit is settled normally (2303/2304) with the fees uploaded meanwhile. A
self-pay admission has no settlement to revive: conversion only needs the visit still open and
the person insured now, under the same insutype as at admission.
"""

from __future__ import annotations

import asyncpg

from gateway.ledger import encounters, persons
from gateway.ops import audit
from gateway.protocol.errors import Conflict, NotFound


async def convert(conn: asyncpg.Connection, mdtrt_id: str, *, operator: str, reason: str) -> str:
    """Mark the self-pay visit insured, after checking the person is insured; returns psn_no."""
    # Audited with its reason, as every plan change is (found from outside: "" was taken).
    reason = audit.reason_given(reason, "请填写转医保原因")
    async with conn.transaction():
        row = await encounters.lock_for_conversion(conn, mdtrt_id)
        if row is None:
            raise NotFound(f"就诊ID{mdtrt_id}不存在")
        if not row.selfpay:
            # Found from outside: said of a stay converted a moment before, as if it never was.
            raise Conflict(
                f"就诊ID{mdtrt_id}不是待转医保的自费入院（未按自费入院，或已转医保），无需转医保"
            )
        if row.status == "cancelled":
            raise Conflict(f"就诊ID{mdtrt_id}已撤销")
        # The visit alone is locked (nothing of the person changes here): no lock-order concern.
        person, _ = await persons.read(conn, row.psn_no)
        persons.require_insured(person)
        if person.insutype != row.insutype:
            # The admission was taken under the insutype of its day; settling it now would use
            # another scheme's rules (employee vs resident) for it.
            raise Conflict(
                f"参保人险种已由{row.insutype}变更为{person.insutype}，不能转医保，"
                "请撤销入院后按现险种重新办理"
            )
        await encounters.insure(conn, mdtrt_id)
        await audit.append(
            conn,
            operator=operator,
            action="encounter.convert",
            target=f"{row.fixmedins_code}/{mdtrt_id}",
            reason=reason,
            before={"selfpay": True},
            after={"selfpay": False},
        )
        return str(row.psn_no)
