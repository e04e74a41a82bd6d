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
    later: dict[str, list[Period]] = {}  # each item's later rows' periods
    unused: list[int] = []
    for i in range(len(rows) - 1, -1, -1):
        row = rows[i]
        periods = later.setdefault(row.fixmedins_hilist_id, [])
        if _covered(periods, row.begndate, row.enddate):
            unused.append(i)
        periods.append((row.begndate, row.enddate))
    unused.reverse()
    return unused


Period = tuple[dt.date, dt.date]  # begndate, enddate: both days included
_DAY = dt.timedelta(days=1)


def _union(periods: Iterable[Period]) -> list[Period]:
    """The days the periods hold, as the fewest periods, in order (adjacent ones joined)."""
    joined: list[Period] = []
    for first, last in sorted(periods):
        if joined and first <= joined[-1][1] + _DAY:
            if last > joined[-1][1]:
                joined[-1] = (joined[-1][0], last)
        else:
            joined.append((first, last))
    return joined


def _covered(periods: Iterable[Period], begn: dt.date, end: dt.date) -> bool:
    """Whether the periods together hold every day from begn to end."""
    return any(first <= begn and end <= last for first, last in _union(periods))


def lost_days(before: Iterable[Period], after: Iterable[Period]) -> list[Period]:
    """The days `before` holds and `after` does not, as periods in order."""
    lost: list[Period] = []
    kept = _union(after)
    for first, last in _union(before):
        day = first
        for k_first, k_last in kept:
            if k_last < day or k_first > last:
                continue
            if k_first > day:
                lost.append((day, k_first - _DAY))
            day = k_last + _DAY
            if day > last:
                break
        if day <= last:
            lost.append((day, last))
    return lost


def as_mappings(fixmedins_code: str, rows: Sequence[MappingRow]) -> list[Mapping]:
    """A 3301's rows as the catalog holds them, in upload order."""
    return [
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


async def upload(conn: asyncpg.Connection, fixmedins_code: str, rows: Sequence[MappingRow]) -> int:
    """3301: the institution's rows added (each supersedes the item's mapping from its
    begndate); how many."""
    mappings = as_mappings(fixmedins_code, rows)
    return await reference_store.upload_mappings(conn, mappings)


class Revoked(msgspec.Struct, frozen=True, kw_only=True):
    """What a 3302 took away: its rows in order, and the periods of the mapping rows each item
    lost (a row may name several uploads of one pairing)."""

    rows: list[Revocation]
    periods: dict[str, list[Period]]


async def revoke(
    conn: asyncpg.Connection, fixmedins_code: str, rows: Iterable[Revocation]
) -> Revoked:
    """3302: each row's active mapping revoked, in order. `rows` may be read as it goes (the
    adapter decodes each row when it is reached), so a request is refused for its first fault
    in row order."""
    revoked = Revoked(rows=[], periods={})
    for r in rows:
        periods = await reference_store.revoke_mapping(
            conn, fixmedins_code, r.fixmedins_hilist_id, r.list_type, r.med_list_codg
        )
        if not periods:
            raise NotFound(
                f"本机构目录{r.fixmedins_hilist_id}与医保目录{r.med_list_codg}的有效对照不存在"
            )
        revoked.rows.append(r)
        revoked.periods.setdefault(r.fixmedins_hilist_id, []).extend(periods)
    return revoked


def period_words(period: Period) -> str:
    first, last = period
    return f"{first:%Y-%m-%d}起" if last >= OPEN_END else f"{first:%Y-%m-%d}至{last:%Y-%m-%d}"


async def left_words(conn: asyncpg.Connection, fixmedins_code: str, revoked: Revoked) -> str:
    """What each item revoked is mapped by now, for the 3302's warn_msg. A revoke takes its rows
    away as if never uploaded: an earlier row they had replaced applies again (found from
    outside: a row 1317 showed as replaced came back unannounced and priced the lines), so the
    answer names it, and the days the item had a mapping and has none now (found from outside:
    a revoke of a pairing uploaded twice took the earlier upload too, and the answer named only
    the later row left, not the years before it now unmapped); or says the item is unmapped."""
    items = list(revoked.periods)
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
            f"{r['med_list_codg']}（{period_words((r['begndate'], r['enddate']))}）"
            for r in left[:3]
        )
        more = f"等{len(left)}条" if len(left) > 3 else ""
        periods = [(r["begndate"], r["enddate"]) for r in left]
        lost = lost_days([*periods, *revoked.periods[item]], periods)
        unmapped = (
            f"；{'、'.join(period_words(p) for p in lost[:3])}"
            f"{f'等{len(lost)}段' if len(lost) > 3 else ''}已无有效对照，其间费用按未对照全额自费"
            if lost
            else ""
        )
        words.append(
            f"项目{item}撤销后按本机构此前上传、仍未撤销的对照结算：{kept}{more}"
            f"（后上传的优先）{unmapped}；如不应再适用，请一并撤销"
        )
    return "；".join(words)
