"""The parallel run's comparisons (shadow_comparisons) and their attributed differences
(shadow_differences): written by gateway.emergency.shadow, read by the cut-over report."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class Comparison:
    """One settlement priced by both systems. `request`/`answer`/`shadow_answer` are kept only
    for a difference (None otherwise); `differences` are (cause, place, item, field, answered,
    shadowed)."""

    answered_by: str  # "gateway" | "legacy": who answered the counter
    fixmedins_code: str
    admdvs: str
    infno: str
    shadow_infno: str
    msgid: str
    med_type: str
    category: str
    differs: bool
    cause: str | None
    item: str | None
    request: str | None
    answer: str | None
    shadow_answer: str | None
    diagnosis: dict[str, Any] | None
    differences: tuple[tuple[str, str, str, str, str | None, str | None], ...] = ()


async def insert(conn: asyncpg.Connection, c: Comparison) -> int:
    """Writes the comparison and its differences in one transaction; returns its id."""
    async with conn.transaction():
        comparison_id: int = await conn.fetchval(
            "INSERT INTO shadow_comparisons (answered_by, fixmedins_code, admdvs, infno,"
            " shadow_infno, msgid, med_type, category, differs, cause, item, request, answer,"
            " shadow_answer, diagnosis)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            " RETURNING comparison_id",
            c.answered_by,
            c.fixmedins_code,
            c.admdvs,
            c.infno,
            c.shadow_infno,
            c.msgid,
            c.med_type,
            c.category,
            c.differs,
            c.cause,
            c.item,
            c.request,
            c.answer,
            c.shadow_answer,
            c.diagnosis,
        )
        if c.differences:
            await conn.executemany(
                "INSERT INTO shadow_differences (comparison_id, fixmedins_code, cause, place,"
                " item, field, answered, shadowed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(comparison_id, c.fixmedins_code, *d) for d in c.differences],
            )
    return comparison_id


@dataclass(frozen=True, slots=True)
class Rate:
    """Compared and differing settlements of one group (an institution, a category)."""

    key: str
    compared: int
    differing: int

    @property
    def rate_bp(self) -> int:
        """The difference rate in basis points, rounded half up (found from outside: 7 of 9
        read 77.77%)."""
        if not self.compared:
            return 0
        return (self.differing * 20000 + self.compared) // (2 * self.compared)


async def rates(
    conn: asyncpg.Connection, begins: dt.datetime, ends: dt.datetime, by: str
) -> list[Rate]:
    """Reads compared and differing counts in [begins, ends) per `by`: "fixmedins_code",
    "category", "admdvs" or "cause" (the last counts differing settlements only)."""
    column = {
        "fixmedins_code": "fixmedins_code",
        "category": "category",
        "admdvs": "admdvs",
        "cause": "coalesce(cause, '')",
    }[by]
    rows = await conn.fetch(
        f"SELECT {column} AS key, count(*) AS compared, count(*) FILTER (WHERE differs)"
        " AS differing FROM shadow_comparisons WHERE compared_at >= $1 AND compared_at < $2"
        + (" AND differs" if by == "cause" else "")
        + " GROUP BY 1 ORDER BY 3 DESC, 1",
        begins,
        ends,
    )
    return [Rate(r["key"], r["compared"], r["differing"]) for r in rows]


@dataclass(frozen=True, slots=True)
class ItemCount:
    """How many settlements differ at one institution's item, by one cause."""

    fixmedins_code: str
    item: str
    cause: str
    settlements: int
    answered: str | None  # one example of the two values, as the answers wrote them
    shadowed: str | None
    field: str


async def worst_items(
    conn: asyncpg.Connection, begins: dt.datetime, ends: dt.datetime, limit: int = 50
) -> list[ItemCount]:
    """Reads the items whose lines differ most often in [begins, ends), with one example."""
    rows = await conn.fetch(
        "SELECT d.fixmedins_code, d.item, d.cause, count(DISTINCT d.comparison_id) AS n,"
        " (array_agg(d.field ORDER BY d.comparison_id))[1] AS field,"
        " (array_agg(d.answered ORDER BY d.comparison_id))[1] AS answered,"
        " (array_agg(d.shadowed ORDER BY d.comparison_id))[1] AS shadowed"
        " FROM shadow_differences d JOIN shadow_comparisons c USING (comparison_id)"
        " WHERE c.compared_at >= $1 AND c.compared_at < $2 AND d.item <> ''"
        " GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT $3",
        begins,
        ends,
        limit,
    )
    return [
        ItemCount(
            r["fixmedins_code"],
            r["item"],
            r["cause"],
            r["n"],
            r["answered"],
            r["shadowed"],
            r["field"],
        )
        for r in rows
    ]


async def differing(
    conn: asyncpg.Connection,
    begins: dt.datetime,
    ends: dt.datetime,
    limit: int = 1000,
    *,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """Reads the differing comparisons of [begins, ends) with both answers: the first `limit`,
    oldest first, or with `newest_first` the latest `limit`, newest first."""
    order = "DESC" if newest_first else "ASC"
    rows = await conn.fetch(
        "SELECT comparison_id, compared_at, answered_by, fixmedins_code, admdvs, infno,"
        " shadow_infno, msgid, med_type, category, cause, item, request, answer, shadow_answer,"
        " diagnosis FROM shadow_comparisons"
        " WHERE differs AND compared_at >= $1 AND compared_at < $2"
        f" ORDER BY compared_at {order}, comparison_id {order} LIMIT $3",
        begins,
        ends,
        limit,
    )
    return [dict(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Bound:
    """A group past the protective bound (an institution or a region, perhaps one medical
    category of it): its counts, and the cause found most."""

    key: str  # the fixmedins_code or admdvs counted
    compared: int
    differing: int
    cause: str


async def past_bound(
    conn: asyncpg.Connection,
    *,
    by: str,
    key: str,
    category: str | None,
    cleared_target: str,
    since: dt.datetime,
    min_compared: int,
    rate_bp: int,
) -> Bound | None:
    """Reads whether the settlements answered here of one institution (`by` "fixmedins_code")
    or region ("admdvs"), of one medical category when `category` is given, differ past
    `rate_bp` (at least `min_compared` compared) since `since`, counting only those compared
    after the rule `cleared_target` (the audit log's target, "<scope>/settlement") was last
    cleared: a cleared rule starts the count afresh."""
    column = {"fixmedins_code": "fixmedins_code", "admdvs": "admdvs"}[by]
    row = await conn.fetchrow(
        "SELECT count(*) AS compared, count(*) FILTER (WHERE differs) AS differing,"
        " mode() WITHIN GROUP (ORDER BY cause) FILTER (WHERE differs) AS cause"
        f" FROM shadow_comparisons WHERE {column} = $1 AND answered_by = 'gateway'"
        " AND ($2::text IS NULL OR category = $2)"
        " AND compared_at >= $3 AND compared_at > coalesce((SELECT max(at) FROM audit_log"
        " WHERE target = $4 AND action = 'plan.clear'), '-infinity')",
        key,
        category,
        since,
        cleared_target,
    )
    if row is None or row["compared"] < min_compared:
        return None
    if row["differing"] * 10000 <= rate_bp * row["compared"]:
        return None
    return Bound(key, row["compared"], row["differing"], row["cause"] or "")


@dataclass(frozen=True, slots=True)
class Bucket:
    """Compared and differing settlements of one medical category in one hour."""

    hour: dt.datetime
    category: str
    compared: int
    differing: int


async def rates_by_hour(
    conn: asyncpg.Connection, begins: dt.datetime, ends: dt.datetime
) -> list[Bucket]:
    """Reads compared and differing counts in [begins, ends) per hour and medical category."""
    rows = await conn.fetch(
        "SELECT date_trunc('hour', compared_at) AS hour, category, count(*) AS compared,"
        " count(*) FILTER (WHERE differs) AS differing FROM shadow_comparisons"
        " WHERE compared_at >= $1 AND compared_at < $2 GROUP BY 1, 2 ORDER BY 1, 2",
        begins,
        ends,
    )
    return [Bucket(r["hour"], r["category"], r["compared"], r["differing"]) for r in rows]
