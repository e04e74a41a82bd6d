"""The worked examples through the pure core, in order, with an in-memory ledger state."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Accumulators, FeeLine, PersonState, Settlement, Visit
from gateway.core.settle import apply, settle
from gateway.money import bp_text, fen_text, to_cnt, to_fen, to_micro
from gateway.reference import load_reference, snapshot_of

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
        self.inpatient: dict[tuple[str, int], set[str]] = {}

    def run(self, req: dict[str, Any]) -> Settlement:
        day = dt.date.fromisoformat(req["service_date"])
        psn = req["psn_no"]
        adm = self.admissions.get(req["mdtrt_id"])
        in_force = self.inpatient.get((psn, day.year), set())
        state = PersonState(
            person=self.persons[psn],
            balance_fen=self.balances[psn],
            year=self.years.get((psn, day.year), Accumulators()),
            admission_dedc_fen=adm[0] if adm else None,
            admission_dedc_used_fen=adm[1] if adm else 0,
            other_inpatient_in_force=bool(in_force - {req["mdtrt_id"]}),
        )
        visit = Visit(
            fixmedins_code=req["fixmedins_code"],
            mdtrt_id=req["mdtrt_id"],
            med_type=req["med_type"],
            service_date=day,
            acct_used_flag=req["acct_used_flag"] == "1",
        )
        lines = [
            FeeLine(
                feedetl_sn=ln["feedetl_sn"],
                medins_list_codg=ln["medins_list_codg"],
                med_list_codg=None,
                pric_micro=to_micro(ln["pric"]),
                cnt=to_cnt(ln["cnt"]),
                det_item_fee_sumamt=to_fen(ln["det_item_fee_sumamt"]),
                fee_date=day,
                hosp_appr_flag=None if req["med_type"] == "41" else ln["hosp_appr_flag"],
            )
            for ln in req["lines"]
        ]
        s = settle(self.snapshot, visit, state, lines)
        self.balances[psn] = s.balc
        self.years[(psn, day.year)] = apply(state.year, s.delta)
        if s.admission_dedc_fen is not None:
            self.admissions[req["mdtrt_id"]] = (
                s.admission_dedc_fen,
                state.admission_dedc_used_fen + s.act_pay_dedc,
            )
            self.inpatient.setdefault((psn, day.year), set()).add(req["mdtrt_id"])
        return s


@pytest.fixture(scope="module")
def results() -> list[Settlement]:
    ledger = MemoryLedger()
    return [ledger.run(ex["request"]) for ex in EXAMPLES]


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e["title"] for e in EXAMPLES])
def test_example(results: list[Settlement], index: int) -> None:
    ex, s = EXAMPLES[index], results[index]
    for field, value in ex["setlinfo"].items():
        got = (
            bp_text(s.pool_prop_selfpay_bp)
            if field == "pool_prop_selfpay"
            else fen_text(getattr(s, field))
        )
        assert got == value, field
    by_sn = {ln.feedetl_sn: ln for ln in s.lines}
    for line in ex["lines"]:
        got_line = by_sn[line["feedetl_sn"]]
        assert got_line.chrgitm_lv == line["chrgitm_lv"]
        assert bp_text(got_line.selfpay_bp) == line["selfpay_prop"]
        assert fen_text(got_line.fulamt_ownpay_amt) == line["fulamt_ownpay_amt"]
        assert fen_text(got_line.overlmt_amt) == line["overlmt_amt"]
        assert fen_text(got_line.preselfpay_amt) == line["preselfpay_amt"]
        assert fen_text(got_line.inscp_scp_amt) == line["inscp_scp_amt"]
