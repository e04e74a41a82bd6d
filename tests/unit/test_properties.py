"""Property tests: the identities of settlement-rules §6 hold for any basket, person and state."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.model import Accumulators, Category, FeeLine, PersonState, Visit
from gateway.core.settle import apply, settle
from gateway.errors import RuleRejected
from gateway.money import price_times_cnt_fen
from gateway.reference import load_reference, snapshot_of

ROOT = Path(__file__).resolve().parents[2]
REF = load_reference(ROOT / "config" / "demo")
SNAPSHOT = snapshot_of(REF)
PERSONS = [p for p in REF.persons if p.psn_insu_stas == "1"]
INSTITUTIONS = list(REF.institutions)
ITEM_CODES = [*sorted({m.medins_list_codg for m in REF.mappings}), "UNMAPPED1", "UNMAPPED2"]
MED_TYPES = {"1": ["11", "13", "14", "21", "22"], "2": ["41"]}


@st.composite
def fee_lines(draw: st.DrawFn, day: dt.date) -> list[FeeLine]:
    n = draw(st.integers(1, 12))
    lines = []
    for i in range(n):
        price = draw(st.integers(1, 2_000_000_000))  # micro-yuan: up to 2,000.00
        cnt = draw(st.integers(1, 500_000))  # up to 50 units, four decimals
        amount = price_times_cnt_fen(price, cnt)
        lines.append(
            FeeLine(
                feedetl_sn=str(i + 1),
                medins_list_codg=draw(st.sampled_from(ITEM_CODES)),
                med_list_codg=None,
                pric_micro=price,
                cnt=cnt,
                det_item_fee_sumamt=amount + draw(st.integers(-1, 1)) if amount > 1 else amount,
                fee_date=day,
                hosp_appr_flag=draw(st.sampled_from([None, "0", "1", "2"])),
            )
        )
    return lines


accumulators = st.builds(
    Accumulators,
    dedc_outpatient=st.integers(0, 100_000),
    dedc_chronic=st.integers(0, 10_000),
    pool_outpatient=st.integers(0, 600_000),
    pool_inpatient=st.integers(0, 31_000_000),
    pool_pharmacy=st.just(0),
    hifob=st.integers(0, 50_000_000),
    hifmi=st.integers(0, 41_000_000),
    mi_qualified=st.integers(0, 30_000_000),
    maf=st.integers(0, 6_000_000),
    cvlserv=st.integers(0, 1_000_000),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Visit, PersonState, list[FeeLine]]:
    inst = draw(st.sampled_from(INSTITUTIONS))
    person = draw(st.sampled_from(PERSONS))
    med_type = draw(st.sampled_from(MED_TYPES[inst.fixmedins_type]))
    day = draw(st.dates(dt.date(2024, 1, 1), dt.date(2027, 12, 31)))
    dise = draw(st.sampled_from([*person.chronic_dise_codg, "M07800"])) if med_type == "14" else ""
    visit = Visit(
        fixmedins_code=inst.fixmedins_code,
        mdtrt_id="M1",
        med_type=med_type,
        service_date=day,
        acct_used_flag=draw(st.booleans()),
        dise_codg=dise,
    )
    adm = draw(st.one_of(st.none(), st.integers(0, 100_000)))
    state = PersonState(
        person=person,
        balance_fen=draw(st.integers(0, 2_000_000)),
        year=draw(accumulators),
        admission_dedc_fen=adm,
        admission_dedc_used_fen=draw(st.integers(0, adm)) if adm else 0,
        other_inpatient_in_force=draw(st.booleans()),
    )
    return visit, state, draw(fee_lines(day))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_identities_hold(case: tuple[Visit, PersonState, list[FeeLine]]) -> None:
    visit, state, lines = case
    try:
        s = settle(SNAPSHOT, visit, state, lines)
    except RuleRejected:
        return  # a refused basket (e.g. chronic without registration) changes nothing
    for ln in s.lines:
        assert ln.det_item_fee_sumamt == (
            ln.fulamt_ownpay_amt + ln.overlmt_amt + ln.preselfpay_amt + ln.inscp_scp_amt
        )
    assert s.medfee_sumamt == sum(ln.det_item_fee_sumamt for ln in s.lines)
    assert (
        s.medfee_sumamt
        == s.fulamt_ownpay_amt + s.overlmt_selfpay + s.preselfpay_amt + s.inscp_scp_amt
    )
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt + s.hosp_part_amt
    assert s.psn_part_amt == s.acct_pay + s.psn_cash_pay
    assert s.fund_pay_sumamt == (
        s.hifp_pay + s.cvlserv_pay + s.hifes_pay + s.hifmi_pay + s.hifob_pay + s.maf_pay + s.oth_pay
    )
    amounts = [getattr(s, f) for f in SETTLEMENT_AMOUNTS]
    assert min(amounts) >= 0, dict(zip(SETTLEMENT_AMOUNTS, amounts, strict=True))
    assert s.acct_pay <= state.balance_fen
    assert s.balc == state.balance_fen - s.acct_pay
    assert sum(f.fund_payamt for f in s.funds) == s.fund_pay_sumamt + s.acct_pay
    assert s.act_pay_dedc <= max(s.inscp_scp_amt, 0)
    if visit.med_type == "41" or state.person.insutype != "310":
        assert s.cvlserv_pay == 0 and s.hifob_pay == 0
    if s.category is Category.PHARMACY:
        assert s.act_pay_dedc == 0
    # A cancellation subtracts exactly the delta: the accumulators come back unchanged.
    assert apply(apply(state.year, s.delta), s.delta, -1) == state.year


SETTLEMENT_AMOUNTS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "balc",
)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_pool_respects_the_annual_cap(case: tuple[Visit, PersonState, list[FeeLine]]) -> None:
    visit, state, lines = case
    try:
        s = settle(SNAPSHOT, visit, state, lines)
    except RuleRejected:
        return
    policy = SNAPSHOT.policy(state.person.insuplc_admdvs, visit.service_date)
    assert policy is not None
    side = policy.employee if state.person.insutype == "310" else policy.resident
    if s.category is Category.OUTPATIENT and side.outpatient.cap_fen is not None:
        assert s.hifp_pay <= max(0, side.outpatient.cap_fen - state.year.pool_outpatient)
    if s.category in (Category.INPATIENT, Category.CHRONIC) and side.inpatient.cap_fen is not None:
        assert s.hifp_pay <= max(0, side.inpatient.cap_fen - state.year.pool_inpatient)
    if s.hifmi_pay:
        assert s.hifmi_pay <= max(0, side.mi_cap_fen - state.year.hifmi)
