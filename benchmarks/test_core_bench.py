"""The settlement core: the split of 10 and 100 lines, catalog look-ups and a 500,000-mapping
snapshot build (targets P4, P7). With --benchmark-disable each runs once, as a test."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.national.category import request_category
from adapters.national.envelope import Request
from gateway.app.reference import load_reference, snapshot_of
from gateway.core.catalog import Snapshot
from gateway.core.model import Accumulators, FeeLine, Mapping, PersonState, Visit
from gateway.core.money import price_times_cnt_fen
from gateway.core.settle import settle, split_lines
from gateway.emergency.plan.rules import Action, Plan, Rule, TxClass
from gateway.protocol.transaction import Kind

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
REF = load_reference(ROOT / "config" / "demo")
SNAPSHOT = snapshot_of(REF)
PERSON = next(p for p in REF.persons if p.psn_no == "441800000000000001")
DAY = dt.date(2026, 3, 1)
ITEMS = [
    ("ZL0001", 25_000_000, 10_000),
    ("YP0003", 40_000_000, 20_000),
    ("YP0010", 35_000_000, 10_000),
    ("ZL0007", 600_000_000, 10_000),
    ("YP0005", 30_000_000, 30_000),
    ("ZL0004", 30_000_000, 10_000),
    ("YP0002", 12_500_000, 20_000),
    ("HC0001", 8_000_000, 10_000),
    ("ZL0012", 5_000_000, 10_000),
    ("YP0009", 28_800_000, 20_000),
]


def basket(n: int) -> list[FeeLine]:
    """n lines cycling through class A, B, C, capped and uncapped items."""
    lines = []
    for i in range(n):
        code, price, cnt = ITEMS[i % len(ITEMS)]
        lines.append(
            FeeLine(
                feedetl_sn=str(i + 1),
                medins_list_codg=code,
                med_list_codg=None,
                pric_micro=price,
                cnt=cnt,
                det_item_fee_sumamt=price_times_cnt_fen(price, cnt),
                fee_date=DAY,
                hosp_appr_flag="1",
            )
        )
    return lines


VISIT = Visit(
    fixmedins_code="H44180000001",
    mdtrt_id="M1",
    med_type="11",
    service_date=DAY,
    acct_used_flag=True,
)
STATE = PersonState(person=PERSON, balance_fen=200_000, year=Accumulators(dedc_outpatient=10_000))


def test_settle_10_lines(benchmark: Any) -> None:
    """P4: ≤ 15 µs median for an employee's 10-line outpatient settlement."""
    lines = basket(10)
    s = benchmark(settle, SNAPSHOT, VISIT, STATE, lines)
    assert s.medfee_sumamt == sum(ln.det_item_fee_sumamt for ln in lines)
    assert s.hifp_pay > 0 and s.overlmt_selfpay > 0 and s.fulamt_ownpay_amt > 0


def test_settle_100_lines(benchmark: Any) -> None:
    lines = basket(100)
    s = benchmark(settle, SNAPSHOT, VISIT, STATE, lines)
    assert len(s.lines) == 100


def test_split_10_lines(benchmark: Any) -> None:
    splits = benchmark(split_lines, SNAPSHOT, VISIT, basket(10))
    assert len(splits) == 10


def test_catalog_lookup(benchmark: Any) -> None:
    mapping = benchmark(SNAPSHOT.mapping, "H44180000001", "YP0003", DAY)
    assert mapping is not None and mapping.med_list_codg == "XC10AAA140A001010100003"


def test_item_lookup(benchmark: Any) -> None:
    """The memoized (institution, item, date) resolution a split makes per line."""
    rule = benchmark(SNAPSHOT.item, "H44180000001", "YP0003", DAY)
    assert rule.listed and rule.split.selfpay_bp == 1000


def test_snapshot_build_500k_mappings(benchmark: Any) -> None:
    """P7/P8: indexing 500,000 mappings (it runs in a thread; this is its CPU cost)."""
    begin, end = dt.date(2020, 1, 1), dt.date(2099, 12, 31)
    codes = [e.med_list_codg for e in REF.catalog]
    mappings = [
        Mapping(
            fixmedins_code=f"H{i % 2000:011d}",
            medins_list_codg=f"C{i:08d}",
            fixmedins_hilist_name="",
            list_type="101",
            med_list_codg=codes[i % len(codes)],
            begndate=begin,
            enddate=end,
        )
        for i in range(500_000)
    ]

    def build() -> Snapshot:
        return Snapshot.build(
            version=2,
            institutions=REF.institutions,
            catalog=REF.catalog,
            mappings=mappings,
            ratios=REF.ratios,
            caps=REF.caps,
            policies=REF.policies,
            class_b_default_bp=REF.class_b_default_bp,
        )

    snap = benchmark.pedantic(build, rounds=3, iterations=1)
    assert snap.mapping("H00000000007", "C00000007", DAY) is not None


# The emergency plan on the request path: a region under a parallel run with a dozen
# institution rules, without and with scopes narrowed to a medical category.
_NOW = dt.datetime(2026, 3, 1, 10, 0)
_RULES = (
    Rule("region:441800", TxClass.SETTLEMENT, Action.SHADOW, "run", "duty", _NOW),
    *(
        Rule(f"institution:H4418000001{i}", TxClass.SETTLEMENT, Action.DEFER, "x", "duty", _NOW)
        for i in range(12)
    ),
)
_CATEGORY_RULE = Rule(
    "institution:H44180000001:inpatient", TxClass.SETTLEMENT, Action.ROUTE_LEGACY, "x", "t", _NOW
)
_INPATIENT = Request(
    "2304", "M1", "H44180000001", "441800", "441800", "o", "o", "1", "d", "",
    b'{"data":{"psn_no":"441800000000000001","mdtrt_id":"1","medfee_sumamt":"150.00",'
    b'"mid_setl_flag":"0","acct_used_flag":"0","insutype":"310"}}',
)  # fmt: skip
_OUTPATIENT = msgspec.structs.replace(
    _INPATIENT, infno="2207", input=b'{"data":{"med_type":"11","mdtrt_id":"1","chrg_bchno":"B1"}}'
)


def test_plan_decide_plain(benchmark: Any) -> None:
    plan = Plan(1, rules=_RULES)
    decision = benchmark(plan.decide, "H44180000001", "441800", TxClass.SETTLEMENT, _NOW)
    assert decision is not None and decision.action is Action.SHADOW


def test_plan_decide_with_a_category_rule(benchmark: Any) -> None:
    plan = Plan(2, rules=(*_RULES, _CATEGORY_RULE))

    def decide() -> object:
        inpatient = request_category(Kind.INPATIENT, _INPATIENT)
        outpatient = request_category(Kind.OUTPATIENT, _OUTPATIENT)
        a = plan.decide("H44180000001", "441800", TxClass.SETTLEMENT, _NOW, inpatient)
        b = plan.decide("H44180000001", "441800", TxClass.SETTLEMENT, _NOW, outpatient)
        return a, b

    a, b = benchmark(decide)  # type: ignore[misc]
    assert a.action is Action.ROUTE_LEGACY and b.action is Action.SHADOW
