"""Property tests: the identities of settlement-rules §6 hold for any basket, person and state."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.app.reference import load_reference, snapshot_of
from gateway.core.eligibility import category_of
from gateway.core.model import (
    Accumulators,
    Category,
    FeeLine,
    PersonState,
    Settlement,
    SidePolicy,
    Visit,
)
from gateway.core.money import price_times_cnt_fen
from gateway.core.settle import apply, limits_after, settle, split_lines
from gateway.protocol.errors import RuleRejected

ROOT = Path(__file__).resolve().parents[2]
REF = load_reference(ROOT / "config" / "demo")
SNAPSHOT = snapshot_of(REF)
PERSONS = list(REF.persons)
CHRONIC_PERSONS = [p for p in PERSONS if p.chronic_dise_codg]
INSTITUTIONS = list(REF.institutions)
# Every mapped code of any institution (so some are unmapped at a given one), plus strangers.
ITEM_CODES = [*sorted({m.medins_list_codg for m in REF.mappings}), "UNMAPPED1", "UNMAPPED2"]
# Hospitals: outpatient, chronic and inpatient types drawn about equally often.
MED_TYPES = {
    "1": [["11", "12", "13", "19"], ["14"], ["21", "22", "23", "24"]],
    "2": [["41"]],
}
FUND_ORDER = ["310100", "390100", "320100", "330100", "390200", "610100", "310200"]
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


REFUND = st.sampled_from([False] * 15 + [True])  # one line in sixteen, about


@st.composite
def fee_lines(draw: st.DrawFn, day: dt.date) -> list[FeeLine]:
    n = draw(st.integers(1, 12))
    lines = []
    for i in range(n):
        # micro-yuan: whole yuan up to 8,000 (around the demo caps), or any six-decimal price
        price = draw(
            st.one_of(st.integers(1, 8_000).map(lambda y: y * 1_000_000), st.integers(1, 9 * 10**9))
        )
        # 1/10000 units: whole packs mostly, any four-decimal quantity sometimes
        cnt = draw(
            st.one_of(st.sampled_from([10_000, 20_000, 30_000, 5_000]), st.integers(1, 500_000))
        )
        if draw(REFUND):
            cnt = -cnt  # a refund line (2301 with negative cnt)
        amount = price_times_cnt_fen(price, cnt)
        if abs(amount) > 1:  # the client's own rounding, within the 1 fen tolerance
            amount += draw(st.integers(-1, 1))
        lines.append(
            FeeLine(
                feedetl_sn=str(i + 1),
                medins_list_codg=draw(st.sampled_from(ITEM_CODES)),
                med_list_codg=None,
                pric_micro=price,
                cnt=cnt,
                det_item_fee_sumamt=amount,
                fee_date=day,
                hosp_appr_flag=draw(st.sampled_from([None, "0", "1", "2"])),
            )
        )
    return lines


def near(limit: int | None) -> st.SearchStrategy[int]:
    """Nothing yet, some, or close to (and past) a yearly limit, so caps bind often enough."""
    if limit is None:
        return st.integers(0, 1_000_000)
    return st.one_of(
        st.just(0), st.integers(0, limit), st.integers(max(0, limit - 300_000), limit + 100)
    )


Case = tuple[Visit, PersonState, list[FeeLine]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    inst = draw(st.sampled_from(INSTITUTIONS))
    med_type = draw(st.sampled_from(draw(st.sampled_from(MED_TYPES[inst.fixmedins_type]))))
    chronic = med_type == "14"
    # A chronic visit mostly comes from someone registered for it; sometimes not (refused).
    person = draw(st.sampled_from(CHRONIC_PERSONS if chronic and draw(st.booleans()) else PERSONS))
    day = draw(st.dates(dt.date(2024, 1, 1), dt.date(2027, 12, 31)))
    dise = draw(st.sampled_from([*person.chronic_dise_codg, "M03900", ""])) if chronic else ""
    visit = Visit(
        fixmedins_code=inst.fixmedins_code,
        mdtrt_id="M1",
        med_type=med_type,
        service_date=day,
        acct_used_flag=draw(st.booleans()),
        dise_codg=dise,
    )
    policy = SNAPSHOT.policy(person.insuplc_admdvs, day)
    assert policy is not None
    side = policy.employee if person.insutype == "310" else policy.resident
    year = draw(
        st.one_of(
            st.just(Accumulators()),  # a fresh year
            st.builds(
                Accumulators,
                dedc_outpatient=near(side.outpatient.dedc_fen),
                dedc_chronic=near(side.chronic.dedc_fen),
                pool_outpatient=near(side.outpatient.cap_fen),
                pool_inpatient=near(side.inpatient.cap_fen),
                pool_pharmacy=near(side.pharmacy.cap_fen),
                hifob=near(side.ob_cap_fen),
                hifmi=near(side.mi_cap_fen),
                mi_qualified=near(side.mi_threshold_fen),
                maf=near(policy.assistance.cap_fen),
                cvlserv=near(None),
            ),
        )
    )
    adm = draw(st.one_of(st.none(), st.integers(0, 100_000)))
    state = PersonState(
        person=person,
        balance_fen=draw(st.integers(0, 2_000_000)),
        year=year,
        admission_dedc_fen=adm,
        admission_dedc_used_fen=draw(st.integers(0, adm + 100)) if adm is not None else 0,
        other_inpatient_in_force=draw(st.booleans()),
    )
    return visit, state, draw(fee_lines(day))


def refusal(visit: Visit, state: PersonState, lines: list[FeeLine]) -> bool:
    """Whether the rules must refuse this case (and only then may settle raise)."""
    person = state.person
    if (
        category_of(visit.med_type) is Category.CHRONIC
        and visit.dise_codg not in person.chronic_dise_codg
    ):
        return True
    splits = split_lines(SNAPSHOT, visit, lines)
    sums: list[int] = [
        sum(getattr(ln, f) for ln in splits)
        for f in ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
    ]
    return min(sums) < 0  # refunds beyond the charges


def settled(case: Case) -> Settlement | None:
    visit, state, lines = case
    if refusal(visit, state, lines):
        try:
            settle(SNAPSHOT, visit, state, lines)
        except RuleRejected:
            return None
        raise AssertionError("a case the rules refuse was settled")
    return settle(SNAPSHOT, visit, state, lines)


def side_of(visit: Visit, state: PersonState) -> SidePolicy:
    policy = SNAPSHOT.policy(state.person.insuplc_admdvs, visit.service_date)
    assert policy is not None
    return policy.employee if state.person.insutype == "310" else policy.resident


SETTLEMENT_AMOUNTS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "hosp_part_amt",
    "balc",
)


@PROPS
@given(cases())
def test_identities_hold(case: Case) -> None:
    lines = case[2]
    s = settled(case)
    if s is None:
        event("refused")
        return
    event(s.category.value)
    for what, happened in [
        ("pool paid", s.hifp_pay),
        ("pool cap reached", s.hifp_pay and any(f.crt_payb_lmt_amt == 0 for f in s.funds[:1])),
        ("over a price cap", s.overlmt_selfpay),
        ("account paid", s.acct_pay),
        ("large-amount fund", s.hifob_pay),
        ("critical illness", s.hifmi_pay),
        ("civil servant", s.cvlserv_pay),
        ("assistance", s.maf_pay),
    ]:
        if happened:
            event(what)
    assert [ln.feedetl_sn for ln in s.lines] == [ln.feedetl_sn for ln in lines]
    for ln in s.lines:
        assert ln.det_item_fee_sumamt == (
            ln.fulamt_ownpay_amt + ln.overlmt_amt + ln.preselfpay_amt + ln.inscp_scp_amt
        )
    assert s.medfee_sumamt == sum(ln.det_item_fee_sumamt for ln in lines)
    assert (
        s.medfee_sumamt
        == s.fulamt_ownpay_amt + s.overlmt_selfpay + s.preselfpay_amt + s.inscp_scp_amt
    )
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt + s.hosp_part_amt
    assert s.psn_part_amt == s.acct_pay + s.psn_cash_pay
    assert s.fund_pay_sumamt == (
        s.hifp_pay + s.cvlserv_pay + s.hifes_pay + s.hifmi_pay + s.hifob_pay + s.maf_pay + s.oth_pay
    )
    amounts = {f: getattr(s, f) for f in SETTLEMENT_AMOUNTS}
    assert min(amounts.values()) >= 0, amounts
    assert s.act_pay_dedc <= s.inscp_scp_amt


@PROPS
@given(cases())
def test_account_and_fund_rows(case: Case) -> None:
    visit, state, lines = case
    s = settled(case)
    if s is None:
        return
    assert s.acct_pay <= state.balance_fen
    assert s.balc == state.balance_fen - s.acct_pay
    if state.person.insutype != "310" or not visit.acct_used_flag:
        assert s.acct_pay == 0
    assert sum(f.fund_payamt for f in s.funds) == s.fund_pay_sumamt + s.acct_pay
    codes = [f.fund_pay_type for f in s.funds]
    assert codes == sorted(codes, key=FUND_ORDER.index)
    assert len(set(codes)) == len(codes)
    assert all(f.fund_payamt > 0 and f.crt_payb_lmt_amt >= 0 for f in s.funds)
    assert all(f.inscp_scp_amt == s.inscp_scp_amt for f in s.funds)
    # Without the account the answer is the same but for the account's share.
    no_account = settle(SNAPSHOT, visit, state, lines, use_account=False)
    assert no_account.acct_pay == 0
    assert no_account.fund_pay_sumamt == s.fund_pay_sumamt
    assert no_account.psn_cash_pay == s.psn_part_amt


@PROPS
@given(cases())
def test_pool_and_layers_respect_their_caps(case: Case) -> None:
    visit, state, _ = case
    s = settled(case)
    if s is None:
        return
    side, acc = side_of(visit, state), state.year
    if s.category is Category.OUTPATIENT:
        cap, paid = side.outpatient.cap_fen, acc.pool_outpatient
    elif s.category is Category.PHARMACY:
        cap, paid = side.pharmacy.cap_fen, acc.pool_pharmacy
    else:  # inpatient and chronic share the inpatient cap
        cap, paid = side.inpatient.cap_fen, acc.pool_inpatient
    if cap is not None:
        assert s.hifp_pay <= max(0, cap - paid)
        pool_rows = [f for f in s.funds if f.fund_pay_type in ("310100", "390100")]
        assert all(f.crt_payb_lmt_amt == max(0, cap - paid) - s.hifp_pay for f in pool_rows)
    assert s.hifob_pay <= max(0, side.ob_cap_fen - acc.hifob)
    assert s.hifmi_pay <= max(0, side.mi_cap_fen - acc.hifmi)
    policy = SNAPSHOT.policy(state.person.insuplc_admdvs, visit.service_date)
    assert policy is not None
    assert s.maf_pay <= max(0, policy.assistance.cap_fen - acc.maf)
    if s.category is Category.PHARMACY:
        assert s.act_pay_dedc == 0 and s.cvlserv_pay == 0 and s.maf_pay == 0
        assert s.pool_prop_selfpay_bp == side.pharmacy.ratio_bp
    if state.person.insutype != "310":
        assert s.cvlserv_pay == 0 and s.hifob_pay == 0
    else:
        assert s.hifmi_pay == 0
    if s.category not in (Category.INPATIENT, Category.CHRONIC):
        assert s.hifob_pay == s.hifmi_pay == s.maf_pay == 0
    assert 0 <= s.pool_prop_selfpay_bp <= 10_000


@PROPS
@given(cases())
def test_delta_records_what_was_paid_and_cancels_exactly(case: Case) -> None:
    visit, state, lines = case
    s = settled(case)
    if s is None:
        return
    d = s.delta
    assert d.hifob == s.hifob_pay and d.hifmi == s.hifmi_pay
    assert d.maf == s.maf_pay and d.cvlserv == s.cvlserv_pay
    assert d.pool_outpatient + d.pool_inpatient + d.pool_pharmacy == s.hifp_pay
    assert d.dedc_outpatient + d.dedc_chronic <= s.act_pay_dedc
    if s.category is Category.INPATIENT:
        assert s.admission_dedc_fen is not None
        assert s.act_pay_dedc <= max(0, s.admission_dedc_fen - state.admission_dedc_used_fen)
    else:
        assert s.admission_dedc_fen is None
    assert s.year == visit.service_date.year
    # Settling changes nothing by itself (pre-settlement) ...
    assert settle(SNAPSHOT, visit, state, lines) == s
    # ... and a cancellation subtracts exactly the delta: the accumulators come back unchanged.
    after = apply(state.year, d)
    assert apply(after, d, -1) == state.year


@PROPS
@given(cases())
def test_each_funds_limit_is_its_cap_less_the_year_after_the_settlement(case: Case) -> None:
    """The limits a cancellation's answer gives (`limits_after`, over the accumulators after
    it) are computed as `settle` computes its fund rows' crt_payb_lmt_amt: over the
    accumulators after a settlement, the same figures."""
    visit, state, _ = case
    s = settled(case)
    if s is None:
        return
    limits = limits_after(SNAPSHOT, state.person, visit.service_date, visit.med_type,
                          apply(state.year, s.delta))  # fmt: skip
    for f in s.funds:
        if f.fund_pay_type in limits:
            assert f.crt_payb_lmt_amt == limits[f.fund_pay_type], (f, limits)
