"""Mapping periods. A 3301 row that a later row of the same upload supersedes on every one of its
days is named in the answer (`catalog_mappings.never_in_force`), judged by the snapshot
settlements price with: a row is "never in force" exactly when `Snapshot.mapping` returns it on
no day. A 3302's answer names the days its items are left unmapped (`lost_days`)."""

from __future__ import annotations

import datetime as dt
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.catalog import Snapshot
from gateway.core.model import Institution
from gateway.services.catalog_mappings import (
    OPEN_END,
    MappingRow,
    as_mappings,
    lost_days,
    never_in_force,
)

D = dt.date
FIRST = D(2026, 1, 1)
DAYS = 12  # every begndate and bounded enddate falls within these days
LAST = FIRST + dt.timedelta(days=DAYS - 1)
HOSPITAL = Institution(
    fixmedins_code="H1", fixmedins_name="h", fixmedins_type="1", hosp_lv=2, admdvs="441800"
)


def row(item: str, codg: str, begin: dt.date, end: dt.date = OPEN_END) -> MappingRow:
    return MappingRow(
        fixmedins_hilist_id=item,
        fixmedins_hilist_name=item,
        list_type="101",
        med_list_codg=codg,
        begndate=begin,
        enddate=end,
    )


def _used(rows: list[MappingRow]) -> set[int]:
    """The positions of the rows the snapshot prices some day with."""
    mappings = as_mappings("H1", rows)
    snap = Snapshot.build(
        version=1, institutions=[HOSPITAL], catalog=(), mappings=mappings, ratios=(), caps=(),
        policies=(), class_b_default_bp=1200,
    )  # fmt: skip
    days = [FIRST + dt.timedelta(days=n) for n in range(DAYS + 1)] + [OPEN_END]
    used: set[int] = set()
    for item in {r.fixmedins_hilist_id for r in rows}:
        for day in days:
            got = snap.mapping("H1", item, day)
            used |= {i for i, m in enumerate(mappings) if m is got}
    return used


def test_a_history_sent_newest_first_leaves_its_newest_row_unused() -> None:
    rows = [
        row("A1", "NEW", D(2026, 1, 5)),
        row("A1", "OLD", D(2026, 1, 1)),  # later in the upload: tried first on every day
        row("B1", "ONLY", D(2026, 1, 1)),
    ]
    assert never_in_force(rows) == [0]
    assert _used(rows) == {1, 2}


def test_rows_covered_only_together_are_unused_and_a_gap_keeps_a_row() -> None:
    whole = row("A1", "WHOLE", D(2026, 1, 2), D(2026, 1, 9))
    first_half = row("A1", "H1", D(2026, 1, 1), D(2026, 1, 5))
    second_half = row("A1", "H2", D(2026, 1, 6), D(2026, 1, 10))
    assert never_in_force([whole, first_half, second_half]) == [0]
    short = row("A1", "H2", D(2026, 1, 7), D(2026, 1, 10))  # 01-06 left to the first row
    assert never_in_force([whole, first_half, short]) == []
    # Another item's rows cover nothing of this one's.
    assert never_in_force([whole, row("B1", "X", D(2026, 1, 1))]) == []


_day = st.integers(0, DAYS - 1).map(lambda n: FIRST + dt.timedelta(days=n))


@st.composite
def _uploads(draw: st.DrawFn) -> list[MappingRow]:
    rows = []
    for n in range(draw(st.integers(1, 7))):
        begin = draw(_day)
        length = draw(st.one_of(st.none(), st.integers(0, DAYS - 1)))
        end = OPEN_END if length is None else min(begin + dt.timedelta(days=length), LAST)
        rows.append(row(draw(st.sampled_from(["A1", "B1"])), f"C{n}", begin, end))
    return rows


@settings(max_examples=400, deadline=None)
@given(_uploads())
def test_the_rows_named_are_exactly_those_the_snapshot_never_prices_with(
    rows: list[MappingRow],
) -> None:
    unused = never_in_force(rows)
    assert unused == sorted(set(range(len(rows))) - _used(rows))


_periods = st.lists(
    st.tuples(_day, st.integers(0, DAYS - 1)).map(
        lambda p: (p[0], min(p[0] + dt.timedelta(days=p[1]), LAST))
    ),
    max_size=5,
)


def _days(periods: list[tuple[dt.date, dt.date]]) -> set[dt.date]:
    return {
        first + dt.timedelta(days=n)
        for first, last in periods
        for n in range((last - first).days + 1)
    }


@settings(max_examples=400, deadline=None)
@given(_periods, _periods)
def test_a_revokes_lost_days_are_the_days_held_before_and_not_after(
    before: list[tuple[dt.date, dt.date]], after: list[tuple[dt.date, dt.date]]
) -> None:
    """What a 3302's answer names as left unmapped (`lost_days`), day by day."""
    lost = lost_days(before, after)
    assert _days(lost) == _days(before) - _days(after)
    # As few periods as the days allow: in order, none touching the next.
    assert all(a[1] + dt.timedelta(days=1) < b[0] for a, b in itertools.pairwise(lost))
