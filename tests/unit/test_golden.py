"""The worked examples of settlement-examples.json through the pure core, in order.

The examples run against the demo data as first loaded and each changes the state the next
one sees, so one module-scoped fixture settles them all with an in-memory ledger and each
example's test compares its own answer, field by field, as the wire text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app.reference import load_reference, snapshot_of
from gateway.core.model import Accumulators, FeeLine, LineSplit, PersonState, Settlement, Visit
from gateway.core.money import bp_text, fen_text, to_cnt, to_fen, to_micro
from gateway.core.settle import apply, limits_after, settle

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES: list[dict[str, Any]] = json.loads(
    (ROOT / "tests" / "contract" / "settlement-examples.json").read_text(encoding="utf-8")
)


class MemoryLedger:
    """Just enough ledger to carry state from one example to the next."""

    def __init__(self) -> None:
        self.ref = load_reference(ROOT / "config" / "demo")
        self.snapshot = snapshot_of(self.ref)
        self.persons = {p.psn_no: p for p in self.ref.persons}
        self.balances = dict(self.ref.balances)
        self.years: dict[tuple[str, int], Accumulators] = {}
        self.admissions: dict[str, tuple[int, int]] = {}  # mdtrt_id -> (deductible, used)
        self.in_force: dict[tuple[str, int], set[str]] = {}  # inpatient mdtrt_ids settled
        self.limits: list[dict[str, int]] = []  # each example's limits_after, in order

    def run(self, req: dict[str, Any]) -> Settlement:
        day = dt.date.fromisoformat(req["service_date"])
        psn, mdtrt_id = req["psn_no"], req["mdtrt_id"]
        adm = self.admissions.get(mdtrt_id)
        state = PersonState(
            person=self.persons[psn],
            balance_fen=self.balances[psn],
            year=self.years.get((psn, day.year), Accumulators()),
            admission_dedc_fen=adm[0] if adm else None,
            admission_dedc_used_fen=adm[1] if adm else 0,
            other_inpatient_in_force=bool(self.in_force.get((psn, day.year), set()) - {mdtrt_id}),
        )
        visit = Visit(
            fixmedins_code=req["fixmedins_code"],
            mdtrt_id=mdtrt_id,
            med_type=req["med_type"],
            service_date=day,
            acct_used_flag=req["acct_used_flag"] == "1",
            dise_codg=req.get("dise_codg", ""),
        )
        lines = [
            FeeLine(
                feedetl_sn=ln["feedetl_sn"],
                medins_list_codg=ln["medins_list_codg"],
                med_list_codg=ln.get("med_list_codg"),
                pric_micro=to_micro(ln["pric"]),
                cnt=to_cnt(ln["cnt"]),
                det_item_fee_sumamt=to_fen(ln["det_item_fee_sumamt"]),
                fee_date=day,
                # a pharmacy's drugdetail carries no approval flag, whatever the example lists
                hosp_appr_flag=None if req["med_type"] == "41" else ln.get("hosp_appr_flag"),
            )
            for ln in req["lines"]
        ]
        s = settle(self.snapshot, visit, state, lines)
        self.balances[psn] = s.balc
        self.years[(psn, day.year)] = apply(state.year, s.delta)
        # What a cancellation's answer would compute over the same accumulators (see
        # test_a_funds_limit_is_what_a_cancellation_reads).
        self.limits.append(
            limits_after(
                self.snapshot, state.person, day, req["med_type"], self.years[(psn, day.year)]
            )
        )
        if s.admission_dedc_fen is not None:
            self.admissions[mdtrt_id] = (
                s.admission_dedc_fen,
                state.admission_dedc_used_fen + s.act_pay_dedc,
            )
            self.in_force.setdefault((psn, day.year), set()).add(mdtrt_id)
        return s


@pytest.fixture(scope="module")
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture(scope="module")
def results(ledger: MemoryLedger) -> list[Settlement]:
    return [ledger.run(ex["request"]) for ex in EXAMPLES]


def test_a_funds_limit_is_what_a_cancellation_reads(
    ledger: MemoryLedger, results: list[Settlement]
) -> None:
    """Every capped fund row of every example (pool, large-amount, critical illness,
    assistance) carries the limit `limits_after` computes over the year after it: the one
    computation a cancellation's answer uses."""
    seen = set()
    for s, limits in zip(results, ledger.limits, strict=True):
        for f in s.funds:
            if f.fund_pay_type in limits:
                seen.add(f.fund_pay_type)
                assert f.crt_payb_lmt_amt == limits[f.fund_pay_type], (f, limits)
    assert len(seen) >= 3, seen  # the examples reach beyond the pool


def setlinfo_text(s: Settlement, field: str) -> str:
    """A setlinfo field as the wire carries it."""
    if field == "pool_prop_selfpay":
        return bp_text(s.pool_prop_selfpay_bp)
    value = getattr(s, field)
    assert isinstance(value, int), field
    return fen_text(value)


# Line fields of the examples and how each reads off a LineSplit on the wire.
LINE_TEXT: dict[str, Callable[[LineSplit], str]] = {
    "feedetl_sn": lambda ln: ln.feedetl_sn,
    "chrgitm_lv": lambda ln: ln.chrgitm_lv,
    "selfpay_prop": lambda ln: bp_text(ln.selfpay_bp),
    "fulamt_ownpay_amt": lambda ln: fen_text(ln.fulamt_ownpay_amt),
    "overlmt_amt": lambda ln: fen_text(ln.overlmt_amt),
    "preselfpay_amt": lambda ln: fen_text(ln.preselfpay_amt),
    "inscp_scp_amt": lambda ln: fen_text(ln.inscp_scp_amt),
    "det_item_fee_sumamt": lambda ln: fen_text(ln.det_item_fee_sumamt),
}


def line_text(ln: LineSplit, field: str) -> str:
    return LINE_TEXT[field](ln)


def test_examples_are_there() -> None:
    assert len(EXAMPLES) >= 11
    assert all(ex["setlinfo"] and ex["lines"] for ex in EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e["title"] for e in EXAMPLES])
def test_example(results: list[Settlement], index: int) -> None:
    ex, s = EXAMPLES[index], results[index]
    got_info = {field: setlinfo_text(s, field) for field in ex["setlinfo"]}
    assert got_info == ex["setlinfo"]

    assert [ln.feedetl_sn for ln in s.lines] == [ln["feedetl_sn"] for ln in ex["request"]["lines"]]
    by_sn = {ln.feedetl_sn: ln for ln in s.lines}
    for expected in ex["lines"]:
        got = by_sn[expected["feedetl_sn"]]
        assert {f: line_text(got, f) for f in expected} == expected

    # The fund rows are not in the examples; they must still add up to the answer.
    assert sum(f.fund_payamt for f in s.funds) == s.fund_pay_sumamt + s.acct_pay
    assert all(f.fund_payamt > 0 and f.inscp_scp_amt == s.inscp_scp_amt for f in s.funds)
