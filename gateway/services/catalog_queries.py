"""The catalog queries 1312/1317/1318/1319: rows of the snapshot this process settles with, so
that what an institution reads is exactly what its settlements use. Paging is the adapter's."""

from __future__ import annotations

import datetime as dt

import msgspec

from gateway.core.catalog import Snapshot
from gateway.core.model import CatalogEntry, Mapping, PriceCap, SelfpayRatio
from gateway.protocol.errors import BadRequest


class CatalogQuery(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 13xx query's filters as sent ("" where not sent: no filter)."""

    query_date: str = ""  # yyyy-MM-dd
    begndate: str = ""  # yyyy-MM-dd: rows (1317: periods) beginning on or after it
    hilist_code: str = ""
    hilist_name: str = ""
    insu_admdvs: str = ""
    fixmedins_code: str = ""
    medins_list_codg: str = ""
    medins_list_name: str = ""
    med_list_codg: str = ""
    list_type: str = ""
    chrgitm_lv: str = ""
    med_chrgitm_type: str = ""
    lmt_used_flag: str = ""
    vali_flag: str = ""  # "1", "0" or "" (either)


def _query_day(q: CatalogQuery) -> dt.date | None:
    day = q.query_date
    if not day:
        return None
    try:
        return dt.date.fromisoformat(day[:10])
    except ValueError as exc:
        raise BadRequest("字段query_date日期格式错误") from exc


def _begins(q: CatalogQuery, first: dt.date) -> bool:
    """The `begndate` filter: rows beginning on or after it (found from outside: ignored)."""
    return not q.begndate or first >= dt.date.fromisoformat(q.begndate)


def _valid_on(q: CatalogQuery, begn: dt.date, end: dt.date) -> bool:
    # Read for each row it is asked of: a query no row reaches is answered, whatever its date.
    if q.vali_flag == "0":
        # Every row the snapshot holds is in force (a revoked mapping is gone from it): a query
        # for invalid rows gets none (found from outside: it got the valid ones).
        return False
    on = _query_day(q)
    return on is None or begn <= on <= end


def _match(value: str, wanted: str) -> bool:
    return not wanted or value == wanted


def catalog(snapshot: Snapshot, q: CatalogQuery) -> list[CatalogEntry]:
    """1312: national catalog entries, by code and date."""
    name = q.hilist_name
    rows = [
        e
        for e in snapshot.catalog
        if _match(e.med_list_codg, q.hilist_code)
        and (not name or name in e.med_list_name)
        and _match(e.list_type, q.list_type)
        and _match(e.chrgitm_lv, q.chrgitm_lv)
        and _match(e.med_chrgitm_type, q.med_chrgitm_type)
        and _match(e.lmt_used_flag, q.lmt_used_flag)
        and _valid_on(q, e.begndate, e.enddate)
        and _begins(q, e.begndate)
    ]
    return sorted(rows, key=lambda e: (e.med_list_codg, e.begndate))


def mappings(
    snapshot: Snapshot, fixmedins_code: str, q: CatalogQuery
) -> list[tuple[Mapping, dt.date, dt.date]]:
    """1317: the asking institution's own mappings, never another's: each period a settlement
    uses one (on the query's date, or, without one, every period), with its first and last day;
    or, asked for invalid rows (vali_flag 0), those it never uses, with their own dates."""
    owner = q.fixmedins_code or fixmedins_code
    if owner != fixmedins_code:
        raise BadRequest("只能查询本机构的目录对照")
    name = q.medins_list_name
    on = _query_day(q)
    items: dict[str, list[Mapping]] = {}
    for m in snapshot.mappings:
        if m.fixmedins_code == owner and _match(m.medins_list_codg, q.medins_list_codg):
            items.setdefault(m.medins_list_codg, []).append(m)
    invalid = q.vali_flag == "0"
    listed: list[tuple[Mapping, dt.date, dt.date]] = []
    for code, held in items.items():
        periods = _periods(snapshot, owner, code, held)
        if invalid:
            # Never used: a later upload replaced it from its first day (found from outside:
            # it was listed valid beside the row that replaced it).
            used = {id(m) for m, _, _ in periods}
            listed += [(m, m.begndate, m.enddate) for m in held if id(m) not in used]
        else:
            listed += [
                (m, first, last) for m, first, last in periods if on is None or first <= on <= last
            ]
    return sorted(
        (
            row
            for row in listed
            if (not name or name in row[0].fixmedins_hilist_name)
            and _match(row[0].list_type, q.list_type)
            and _match(row[0].med_list_codg, q.med_list_codg)
            and _begins(q, row[1])
        ),
        key=lambda row: (row[0].medins_list_codg, row[1]),
    )


def _periods(
    snapshot: Snapshot, owner: str, code: str, held: list[Mapping]
) -> list[tuple[Mapping, dt.date, dt.date]]:
    """The periods in which a settlement uses each of an item's rows, in order: the row the
    snapshot picks on each day, runs of the same row joined. Found from outside: a row replaced
    for five days by an upload with an enddate was listed as ending the day before them, though
    settlements used it again from the sixth day, and a HIS mirroring the table from 1317 would
    take the item for unmapped after them; and, before, a row replaced from a later day was
    listed to 2099 beside the row replacing it."""
    one_day = dt.timedelta(days=1)
    starts = {m.begndate for m in held} | {
        m.enddate + one_day for m in held if m.enddate < dt.date.max
    }
    last_of_all = max(m.enddate for m in held)
    days = sorted(d for d in starts if d <= last_of_all)
    periods: list[tuple[Mapping, dt.date, dt.date]] = []
    for i, first in enumerate(days):
        last = days[i + 1] - one_day if i + 1 < len(days) else last_of_all
        used = snapshot.mapping(owner, code, first)
        if used is None:
            continue
        if periods and periods[-1][0] is used and periods[-1][2] + one_day == first:
            periods[-1] = (used, periods[-1][1], last)
        else:
            periods.append((used, first, last))
    return periods


def caps(snapshot: Snapshot, q: CatalogQuery) -> list[PriceCap]:
    """1318: price caps, by code, region and date."""
    rows = [
        c
        for c in snapshot.caps
        if _match(c.med_list_codg, q.hilist_code)
        and _match(c.insu_admdvs, q.insu_admdvs)
        and _valid_on(q, c.begndate, c.enddate)
        and _begins(q, c.begndate)
    ]
    return sorted(rows, key=lambda c: (c.med_list_codg, c.insu_admdvs, c.begndate))


def ratios(snapshot: Snapshot, q: CatalogQuery) -> list[SelfpayRatio]:
    """1319: self-pay ratios, by code, region and date."""
    rows = [
        r
        for r in snapshot.ratios
        if _match(r.med_list_codg, q.hilist_code)
        and _match(r.insu_admdvs, q.insu_admdvs)
        and _valid_on(q, r.begndate, r.enddate)
        and _begins(q, r.begndate)
    ]
    return sorted(rows, key=lambda r: (r.med_list_codg, r.insu_admdvs, r.begndate))
