"""The checker's history walk, without a database: what the rules allow is clean, what they do
not is found, with the gateway's core and with the independent model as the rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.app.reference import load_reference, snapshot_of
from gateway.core.model import LineSplit
from gateway.ledger.checker import (
    CoreRules,
    PersonFacts,
    Rules,
    SettlementFacts,
    Stored,
    walk,
)
from tests.reference.data import load
from tests.reference.ledger_model import ModelRules

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo"
RESIDENT = PersonFacts(
    psn_no="441800000000000004",
    insutype="390",
    insuplc_admdvs="441800",
    psn_type="1501",
    cvlserv_flag="0",
    maf_class="",
    chronic_dise_codg=(),
)
DAY = dt.date(2026, 3, 2)  # residents' outpatient at level 3: 50%, cap 500.00


def _rules() -> list[Rules]:
    return [CoreRules(snapshot_of(load_reference(DEMO))), ModelRules(load())]


def _visit(setl_id: str, amount: int, **amounts: int) -> Stored:
    line = LineSplit(
        feedetl_sn="1",
        det_item_fee_sumamt=amount,
        cnt=10000,
        pric_micro=amount * 10000,
        pric_uplmt_micro=None,
        selfpay_bp=0,
        fulamt_ownpay_amt=0,
        overlmt_amt=0,
        preselfpay_amt=0,
        inscp_scp_amt=amount,
        chrgitm_lv="01",
        med_chrgitm_type="02",
        lmt_used_flag="0",
        list_type="201",
        medins_list_codg="ZL0001",
        med_list_codg="001102000010000",
    )
    facts = SettlementFacts(
        setl_id=setl_id,
        person=RESIDENT,
        mdtrt_id=f"M{setl_id}",
        fixmedins_code="H44180000001",
        med_type="11",
        category="outpatient",
        service_date=DAY,
        acct_used_flag=False,
        dise_codg="",
        lines=(line,),
    )
    hifp = amounts.get("hifp_pay", 0)
    full = {
        "medfee_sumamt": amount,
        "fulamt_ownpay_amt": 0,
        "overlmt_selfpay": 0,
        "preselfpay_amt": 0,
        "inscp_scp_amt": amount,
        "act_pay_dedc": 0,
        "hifp_pay": hifp,
        "cvlserv_pay": 0,
        "hifes_pay": 0,
        "hifmi_pay": 0,
        "hifob_pay": 0,
        "maf_pay": 0,
        "oth_pay": 0,
        "fund_pay_sumamt": hifp,
        "psn_part_amt": amount - hifp,
        "acct_pay": 0,
        "psn_cash_pay": amount - hifp,
        "hosp_part_amt": 0,
        "balc": 0,
    }
    return Stored(facts, "settled", full, {"390100": hifp} if hifp else {})


def _year(pool: int) -> dict[int, dict[str, int]]:
    fields = ("dedc_outpatient", "dedc_chronic", "pool_outpatient", "pool_inpatient")
    acc = dict.fromkeys(fields, 0)
    acc.update(pool_pharmacy=0, hifob=0, hifmi=0, mi_qualified=0, maf=0, cvlserv=0)
    acc["pool_outpatient"] = pool
    return {2026: acc} if pool else {}


@pytest.mark.parametrize("rules", _rules(), ids=["core", "model"])
def test_a_later_settlement_keeps_what_it_was_computed_with(rules: Rules) -> None:
    first, second = _visit("S1", 60000, hifp_pay=30000), _visit("S2", 60000, hifp_pay=20000)
    first.status = "cancelled"
    history = [(1.0, "S1", "in_force"), (2.0, "S2", "in_force"), (3.0, "S1", "cancelled")]
    stored = {"S1": first, "S2": second}
    assert walk(rules, RESIDENT.psn_no, 0, history, stored, _year(20000), 0) == []
    # Paid as if alone, it would be more than the rules gave it when it was made.
    stored["S2"] = _visit("S2", 60000, hifp_pay=30000)
    found = walk(rules, RESIDENT.psn_no, 0, history, stored, _year(30000), 0)
    assert found == [
        "settlement S2: hifp_pay 30000 (rules: 20000), fund_pay_sumamt 30000 (rules: 20000), psn_part_amt 30000 (rules: 40000), psn_cash_pay 30000 (rules: 40000)",
        "person 441800000000000004 2026: accumulators pool_outpatient 30000 (rules: 20000)",
    ]


@pytest.mark.parametrize("rules", _rules(), ids=["core", "model"])
def test_a_settlement_made_in_a_gap_is_judged_against_the_gap(rules: Rules) -> None:
    # S1 took the cap, was cancelled; S2 took it in the gap and was cancelled; S1 was put back
    # and cancelled again; S2 was put back. S2 in force alone was computed without S1: right.
    first = _visit("S1", 100000, hifp_pay=50000)
    second = _visit("S2", 100000, hifp_pay=50000)
    first.status = "cancelled"
    history = [
        (1.0, "S1", "in_force"),
        (2.0, "S1", "cancelled"),
        (3.0, "S2", "in_force"),
        (4.0, "S2", "cancelled"),
        (5.0, "S1", "in_force"),
        (6.0, "S1", "cancelled"),
        (7.0, "S2", "in_force"),
    ]
    stored = {"S1": first, "S2": second}
    assert walk(rules, RESIDENT.psn_no, 0, history, stored, _year(50000), 0) == []


@pytest.mark.parametrize("rules", _rules(), ids=["core", "model"])
def test_putting_back_a_settlement_after_a_later_one_took_the_cap_is_found(rules: Rules) -> None:
    first = _visit("S1", 100000, hifp_pay=50000)
    second = _visit("S2", 100000, hifp_pay=50000)
    history = [
        (1.0, "S1", "in_force"),
        (2.0, "S1", "cancelled"),
        (3.0, "S2", "in_force"),
        (4.0, "S1", "in_force"),
    ]
    found = walk(rules, RESIDENT.psn_no, 0, history, {"S1": first, "S2": second}, _year(100000), 0)
    assert found == [
        "settlement S1: reinstated after S2 came into force in its year's accumulator group"
    ]
