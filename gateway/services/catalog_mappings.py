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

# A row uploaded without an end date: open-ended.
OPEN_END = dt.date(2099, 12, 31)


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


def never_in_force(rows: Sequence[MappingRow]) -> list[int]:
    """The positions of the rows that a later row of the same upload supersedes on every day of
    their period: a later row is tried first on each of its days (gateway.core.catalog), so such
    a row is written and never used. Sent in an order the client did not mean (a history newest
    first), the item is priced by a row it thought replaced; the answer names them."""
    later: dict[str, list[tuple[dt.date, dt.date]]] = {}  # each item's later rows' periods
    unused: list[int] = []
    for i in range(len(rows) - 1, -1, -1):
        row = rows[i]
        periods = later.setdefault(row.fixmedins_hilist_id, [])
        if _covered(periods, row.begndate, row.enddate):
            unused.append(i)
        periods.append((row.begndate, row.enddate))
    unused.reverse()
    return unused


def _covered(periods: list[tuple[dt.date, dt.date]], begn: dt.date, end: dt.date) -> bool:
    """Whether the periods (inclusive days) together hold every day from begn to end."""
    reached = begn  # every day before it is held
    for first, last in sorted(periods):
        if first > reached:
            return False
        if last >= reached:
            if last >= end:
                return True
            reached = last + dt.timedelta(days=1)
    return False


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


async def left_words(
    conn: asyncpg.Connection, fixmedins_code: str, revoked: Sequence[Revocation]
) -> str:
    """What each item revoked is mapped by now, for the 3302's warn_msg. A revoke takes its rows
    away as if never uploaded: an earlier row they had replaced applies again (found from
    outside: a row 1317 showed as replaced came back unannounced and priced the lines), so the
    answer names it; or says the item's lines are now unmapped."""
    items = list(dict.fromkeys(r.fixmedins_hilist_id for r in revoked))
    rows = await reference_store.mappings_in_force(conn, fixmedins_code, items)
    words = []
    for item in items:
        left = [r for r in rows if r["medins_list_codg"] == item]
        if not left:
            words.append(
                f"项目{item}已无有效对照，其费用按未对照全额自费；如需医保结算请重新上传对照（3301）"
            )
            continue
        kept = "、".join(
            f"{r['med_list_codg']}（{r['begndate']:%Y-%m-%d}起"
            + ("" if r["enddate"] >= OPEN_END else f"至{r['enddate']:%Y-%m-%d}")
            + "）"
            for r in left[:3]
        )
        more = f"等{len(left)}条" if len(left) > 3 else ""
        words.append(
            f"项目{item}撤销后按本机构此前上传、仍未撤销的对照结算：{kept}{more}"
            "（后上传的优先）；如不应再适用，请一并撤销"
        )
    return "；".join(words)
