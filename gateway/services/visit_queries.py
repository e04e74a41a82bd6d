"""5201 就诊信息查询 and 5202 诊断信息查询: an institution reads back its own visits.

Found from outside: HIS code calls both (the Dongguan header, nhis-web's 5201, binzhe's
JZ5201) and was told the transaction was not supported. They read what the ledger already
holds: the visits' rows and what their calls kept as sent (2201/2203/2401/2403's nodes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from gateway.core.model import Person
from gateway.ledger import encounters, persons
from gateway.ledger.encounters import Encounter as Encounter
from gateway.protocol.errors import BadRequest, NotFound
from gateway.services.settlement_queries import here_or_elsewhere

Visit = tuple[Encounter, dict[str, Any]]  # a visit and what its calls kept as sent


class VisitQuery(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 5201: the person's visits begun within [begntime, endtime], of one med_type or any;
    `mdtrt_id` ("" where not sent) narrows them to one."""

    psn_no: str
    begntime: dt.datetime
    endtime: dt.datetime
    med_type: str
    mdtrt_id: str


async def visits(
    conn: asyncpg.Connection, fixmedins_code: str, q: VisitQuery
) -> tuple[Person, list[Visit]]:
    """The person, and the institution's visits of theirs the query names (none is an answer,
    not a refusal: the counter asked whether there are any)."""
    if q.endtime < q.begntime:
        raise BadRequest("结束时间endtime早于开始时间begntime")
    person, _ = await persons.read(conn, q.psn_no)
    if q.mdtrt_id:
        one = await encounters.with_detail(conn, q.mdtrt_id, fixmedins_code, psn_no=q.psn_no)
        enc = one[0]
        within = q.begntime <= enc.begntime <= q.endtime
        fits = within and enc.status != "cancelled" and q.med_type in ("", enc.med_type)
        return person, [one] if fits and enc.kind != "pharmacy" else []
    found = await encounters.of_person(
        conn, fixmedins_code, q.psn_no, q.begntime, q.endtime, q.med_type
    )
    return person, found


async def diagnoses(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    mdtrt_id: str,
    psn_no: str,
    elsewhere: Sequence[asyncpg.Pool] = (),
) -> Visit:
    """The institution's visit (of the person, when named), with what its calls kept: its
    diagnoses are those the latest 2203/2401/2403 sent. Not in the caller's database, it is
    looked for in `elsewhere` (a ledger split by region)."""
    if not mdtrt_id:
        raise BadRequest("缺少就诊ID mdtrt_id")

    async def find(db_conn: asyncpg.Connection) -> list[Visit]:
        try:
            return [await encounters.with_detail(db_conn, mdtrt_id, fixmedins_code, psn_no or None)]
        except NotFound:
            return []

    found = await here_or_elsewhere(conn, elsewhere, find)
    if not found:
        raise NotFound(f"就诊ID{mdtrt_id}不存在或不属于本机构")
    return found[0]
