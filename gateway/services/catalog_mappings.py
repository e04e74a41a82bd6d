"""An institution's catalog mappings (目录对照): 3301 adds rows, 3302 revokes them.

The snapshot settlements read is rebuilt after either (the adapter's answer says the catalog
changed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import asyncpg
import msgspec

from gateway.core.model import Mapping
from gateway.ledger import reference_store
from gateway.protocol.errors import NotFound


class MappingRow(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One row of a 3301 (its dates read and in order)."""

    fixmedins_hilist_id: str
    fixmedins_hilist_name: str
    list_type: str
    med_list_codg: str
    begndate: dt.date
    enddate: dt.date


class Revocation(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One row of a 3302: the item's mapping to that national code (list_type "": any)."""

    fixmedins_hilist_id: str
    list_type: str
    med_list_codg: str


async def upload(conn: asyncpg.Connection, fixmedins_code: str, rows: Sequence[MappingRow]) -> int:
    """3301: the institution's rows added (each supersedes the item's mapping from its
    begndate); how many."""
    mappings = [
        Mapping(
            fixmedins_code=fixmedins_code,
            medins_list_codg=r.fixmedins_hilist_id,
            fixmedins_hilist_name=r.fixmedins_hilist_name,
            list_type=r.list_type,
            med_list_codg=r.med_list_codg,
            begndate=r.begndate,
            enddate=r.enddate,
        )
        for r in rows
    ]
    return await reference_store.upload_mappings(conn, mappings)


async def revoke(
    conn: asyncpg.Connection, fixmedins_code: str, rows: Iterable[Revocation]
) -> list[Revocation]:
    """3302: each row's active mapping revoked, in order; the rows revoked. `rows` may be read
    as it goes (the adapter decodes each row when it is reached), so a request is refused for
    its first fault in row order."""
    revoked: list[Revocation] = []
    for r in rows:
        n = await reference_store.revoke_mapping(
            conn, fixmedins_code, r.fixmedins_hilist_id, r.list_type, r.med_list_codg
        )
        if not n:
            raise NotFound(
                f"本机构目录{r.fixmedins_hilist_id}与医保目录{r.med_list_codg}的有效对照不存在"
            )
        revoked.append(r)
    return revoked
