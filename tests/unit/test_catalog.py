"""The catalog snapshot: lookups by key and date, superseding versions, memoized item rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app.reference import load_reference, snapshot_of
from gateway.core.catalog import NOT_LISTED_MEMO, UNMAPPED, UNMAPPED_MEMO, Snapshot
from gateway.core.model import CatalogEntry, Institution, Mapping, PriceCap, SelfpayRatio

ROOT = Path(__file__).resolve().parents[2]
REF = load_reference(ROOT / "config" / "demo")
DEMO = snapshot_of(REF, version=7)
D = dt.date


def test_demo_lookups() -> None:
    assert DEMO.version == 7
    assert DEMO.class_b_default_bp == 1000
    assert DEMO.institutions == REF.institutions and DEMO.mappings == REF.mappings
    inst = DEMO.institution("P44180000001")
    assert inst is not None and inst.hosp_lv == 1 and inst.admdvs == "441800"
    assert DEMO.institution("H00000000000") is None

    m = DEMO.mapping("H44180000001", "YP0003", D(2025, 3, 10))
    assert m is not None and m.med_list_codg == "XC10AAA140A001010100003"
    assert DEMO.mapping("H44180000001", "YP0003", D(2019, 12, 31)) is None  # before begndate
    assert DEMO.mapping("H44180000001", "NOPE", D(2025, 3, 10)) is None
    assert DEMO.mapping("H00000000000", "YP0003", D(2025, 3, 10)) is None

    e = DEMO.entry("XC10AAA140A001010100003", D(2025, 3, 10))
    assert e is not None and e.chrgitm_lv == "02"
    assert DEMO.selfpay_bp("XC10AAA140A001010100003", "441800", D(2025, 3, 10)) == 1000
    assert DEMO.selfpay_bp("XC10AAA140A001010100003", "520500", D(2025, 3, 10)) == 1500
    assert DEMO.selfpay_bp("XC10AAA140A001010100003", "999999", D(2025, 3, 10)) is None
    assert DEMO.cap_micro("002705000010000", "441800", D(2025, 3, 10)) == 520_000_000
    assert DEMO.cap_micro("002705000010000", "441800", D(2100, 1, 1)) is None


def test_policy_version_by_service_date() -> None:
    old = DEMO.policy("441800", D(2025, 12, 31))
    new = DEMO.policy("441800", D(2026, 1, 1))
    assert old is not None and new is not None
    assert old.employee.outpatient.ratio_by_level_bp == (7000, 6500, 6000)
    assert new.employee.outpatient.ratio_by_level_bp == (7500, 7000, 6500)
    assert DEMO.policy("441800", D(2019, 12, 31)) is None
    assert DEMO.policy("000000", D(2025, 1, 1)) is None


# --------------------------------------------------------------------------- versions

HOSPITAL = Institution(
    fixmedins_code="H1", fixmedins_name="h", fixmedins_type="1", hosp_lv=2, admdvs="441800"
)


def mapping(codg: str, begin: dt.date, end: dt.date, item: str = "A1") -> Mapping:
    return Mapping(
        fixmedins_code="H1",
        medins_list_codg=item,
        fixmedins_hilist_name=codg,
        list_type="101",
        med_list_codg=codg,
        begndate=begin,
        enddate=end,
    )


def entry(codg: str, lv: str, begin: dt.date, end: dt.date, lmt: str = "0") -> CatalogEntry:
    return CatalogEntry(
        med_list_codg=codg,
        med_list_name=codg,
        list_type="101",
        med_chrgitm_type="09",
        chrgitm_lv=lv,
        lmt_used_flag=lmt,
        begndate=begin,
        enddate=end,
    )


def snapshot(
    mappings: Sequence[Mapping],
    entries: Sequence[CatalogEntry] = (),
    ratios: Sequence[SelfpayRatio] = (),
    caps: Sequence[PriceCap] = (),
) -> Snapshot:
    return Snapshot.build(
        version=1,
        institutions=[HOSPITAL],
        catalog=entries,
        mappings=mappings,
        ratios=ratios,
        caps=caps,
        policies=(),
        class_b_default_bp=1200,
    )


def test_a_newer_upload_supersedes_from_its_begndate() -> None:
    snap = snapshot(
        [
            mapping("OLD", D(2020, 1, 1), D(2099, 12, 31)),
            mapping("NEW", D(2025, 7, 1), D(2099, 12, 31)),
        ]
    )
    got = snap.mapping("H1", "A1", D(2025, 6, 30))
    assert got is not None and got.med_list_codg == "OLD"
    got = snap.mapping("H1", "A1", D(2025, 7, 1))
    assert got is not None and got.med_list_codg == "NEW"


def test_a_later_upload_supersedes_from_its_begndate_even_before_an_earlier_one() -> None:
    # Rows in upload order. README (3301): "a new row supersedes from its begndate" — a
    # correction dated back replaces the mistake it corrects; where the later row does not
    # reach, the earlier one still holds.
    rows = [
        mapping("NEW", D(2025, 7, 1), D(2099, 12, 31)),
        mapping("OLD", D(2020, 1, 1), D(2099, 12, 31)),
        mapping("YEAR", D(2024, 1, 1), D(2024, 12, 31)),
        mapping("HALF", D(2024, 7, 1), D(2024, 12, 31)),
        mapping("TIE-1", D(2030, 1, 1), D(2030, 12, 31)),
        mapping("TIE-2", D(2030, 1, 1), D(2030, 12, 31)),
    ]
    snap = snapshot(rows)
    for day, codg in [
        (D(2023, 1, 1), "OLD"),
        (D(2026, 1, 1), "OLD"),  # uploaded after NEW, valid from 2020: it supersedes NEW
        (D(2024, 3, 1), "YEAR"),
        (D(2024, 8, 1), "HALF"),
        (D(2030, 6, 1), "TIE-2"),
    ]:
        got = snap.mapping("H1", "A1", day)
        assert got is not None and got.med_list_codg == codg, (day, got)


def test_item_rules() -> None:
    always = (D(2020, 1, 1), D(2099, 12, 31))
    snap = snapshot(
        [
            mapping("A", *always, item="IA"),
            mapping("B", *always, item="IB"),
            mapping("B2", *always, item="IB2"),
            mapping("C", *always, item="IC"),
            mapping("GONE", *always, item="IG"),
            mapping("R", *always, item="IR"),
        ],
        [
            entry("A", "01", *always),
            entry("B", "02", *always),
            entry("B2", "02", *always),
            entry("C", "03", *always),
            entry("R", "02", *always, lmt="1"),
        ],
        [
            SelfpayRatio(
                med_list_codg="B",
                insu_admdvs="441800",
                selfpay_bp=500,
                begndate=always[0],
                enddate=always[1],
            )
        ],
        [
            PriceCap(
                med_list_codg="A",
                insu_admdvs="441800",
                cap_micro=9_000_000,
                begndate=always[0],
                enddate=always[1],
            )
        ],
    )
    day = D(2025, 1, 1)
    a = snap.item("H1", "IA", day)
    assert a.listed and not a.never_covered and a.cap_micro == 9_000_000
    assert a.split.selfpay_bp == 0 and a.selfpay.selfpay_bp == 10_000
    assert a.split.medins_list_codg == "IA" and a.split.med_list_codg == "A"
    assert snap.item("H1", "IB", day).split.selfpay_bp == 500  # the region's ratio
    assert snap.item("H1", "IB2", day).split.selfpay_bp == 1200  # class B without a row: default
    c = snap.item("H1", "IC", day)
    assert c.listed and c.never_covered
    gone = snap.item("H1", "IG", day)  # mapped, but the national catalog has no such entry
    assert not gone.listed and gone.never_covered and gone.split.memo == NOT_LISTED_MEMO
    assert gone.med_list_codg == "GONE" and gone.split.chrgitm_lv == "03"
    assert snap.item("H1", "IR", day).restricted
    assert snap.item("H1", "NOPE", day) is UNMAPPED
    assert UNMAPPED.split.memo == UNMAPPED_MEMO and UNMAPPED.split.chrgitm_lv == "03"
    assert snap.item("H1", "IA", D(2019, 1, 1)) is UNMAPPED  # before the mapping


def test_end_of_time_is_handled() -> None:
    snap = snapshot(
        [mapping("A", D(2020, 1, 1), dt.date.max)], [entry("A", "01", dt.date.min, dt.date.max)]
    )
    assert snap.item("H1", "A1", dt.date.max).listed
    assert snap.item("H1", "A1", dt.date(2019, 12, 31)) is UNMAPPED


# Dates inside a small window so that the generated versions overlap and abut a lot.
days = st.dates(D(2024, 1, 1), D(2024, 3, 31))


@st.composite
def ranges(draw: st.DrawFn) -> tuple[dt.date, dt.date]:
    a, b = draw(days), draw(days)
    return (a, b) if a <= b else (b, a)


@st.composite
def versioned(draw: st.DrawFn) -> Snapshot:
    codes = ["X", "Y"]
    mappings = [
        mapping(draw(st.sampled_from(codes)), *draw(ranges()))
        for _ in range(draw(st.integers(1, 3)))
    ]
    entries = [
        entry(
            draw(st.sampled_from(codes)),
            draw(st.sampled_from(["01", "02", "03"])),
            *draw(ranges()),
            lmt=draw(st.sampled_from("01")),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    ratios = [
        SelfpayRatio(
            med_list_codg=draw(st.sampled_from(codes)),
            insu_admdvs="441800",
            selfpay_bp=draw(st.integers(0, 10_000)),
            begndate=r[0],
            enddate=r[1],
        )
        for r in (draw(ranges()) for _ in range(draw(st.integers(0, 3))))
    ]
    caps = [
        PriceCap(
            med_list_codg=draw(st.sampled_from(codes)),
            insu_admdvs=draw(st.sampled_from(["441800", "520500"])),
            cap_micro=draw(st.integers(1, 10**9)),
            begndate=r[0],
            enddate=r[1],
        )
        for r in (draw(ranges()) for _ in range(draw(st.integers(0, 3))))
    ]
    return snapshot(mappings, entries, ratios, caps)


@settings(max_examples=200, deadline=None)
@given(versioned(), st.lists(st.dates(D(2023, 12, 25), D(2024, 4, 5)), min_size=1, max_size=8))
def test_memoized_item_equals_the_rows_on_every_date(snap: Snapshot, on: list[dt.date]) -> None:
    for day in on:
        assert snap.item("H1", "A1", day) == snap.resolve("H1", "A1", day)


def test_snapshot_is_immutable() -> None:
    snap = snapshot([mapping("A", D(2020, 1, 1), D(2099, 12, 31))])
    with pytest.raises(AttributeError):
        snap.version = 8
    with pytest.raises(AttributeError):
        snap.mappings = ()
    with pytest.raises(AttributeError):
        del snap.caps
    with pytest.raises(AttributeError):
        snap.extra = 1
    assert snap.version == 1 and len(snap.mappings) == 1


def test_build_takes_any_iterables() -> None:
    snap = Snapshot.build(
        version=2,
        institutions=iter(REF.institutions),
        catalog=(e for e in REF.catalog),
        mappings=list(REF.mappings),
        ratios=iter(REF.ratios),
        caps=iter(REF.caps),
        policies=iter(REF.policies),
        class_b_default_bp=1000,
    )
    assert snap.mappings == REF.mappings and snap.policies == REF.policies
