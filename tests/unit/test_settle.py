"""The settlement rules case by case: what is refused, and figures worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from msgspec.structs import replace

from gateway.app.reference import load_reference, snapshot_of
from gateway.core.catalog import Snapshot
from gateway.core.eligibility import category_of
from gateway.core.model import (
    Accumulators,
    Category,
    FeeLine,
    MiSegment,
    PersonState,
    Settlement,
    Visit,
)
from gateway.core.money import apply_bp, price_times_cnt_fen, to_cnt, to_fen, to_micro
from gateway.core.settle import apply, mi_burden_value, settle, split_lines
from gateway.protocol.errors import LineRejected, RuleRejected

ROOT = Path(__file__).resolve().parents[2]
REF = load_reference(ROOT / "config" / "demo")
SNAPSHOT = snapshot_of(REF)
PERSONS = {p.psn_no: p for p in REF.persons}
DAY = dt.date(2025, 6, 1)

EMPLOYEE = "441800000000000001"
RETIREE = "441800000000000002"  # chronic registration M07800
CIVIL_SERVANT = "441800000000000003"
RESIDENT = "441800000000000004"
DIBAO = "441800000000000005"
TEKUN = "441800000000000006"
BIJIE_EMPLOYEE = "520500000000000001"
WENZHOU_RETIREE = "330300000000000001"
LEVEL3, LEVEL2, LEVEL1 = "H44180000001", "H44180000002", "H44180000003"
PHARMACY = "P44180000001"


def line(
    code: str,
    pric: str,
    cnt: str = "1",
    amount: str | None = None,
    *,
    sn: str = "1",
    appr: str | None = "1",
    sent: str | None = None,
) -> FeeLine:
    p, c = to_micro(pric), to_cnt(cnt)
    return FeeLine(
        feedetl_sn=sn,
        medins_list_codg=code,
        med_list_codg=sent,
        pric_micro=p,
        cnt=c,
        det_item_fee_sumamt=to_fen(amount) if amount else price_times_cnt_fen(p, c),
        fee_date=DAY,
        hosp_appr_flag=appr,
    )


def visit(
    inst: str = LEVEL3,
    med_type: str = "11",
    *,
    acct: bool = True,
    dise: str = "",
    day: dt.date = DAY,
) -> Visit:
    return Visit(
        fixmedins_code=inst,
        mdtrt_id="M1",
        med_type=med_type,
        service_date=day,
        acct_used_flag=acct,
        dise_codg=dise,
    )


def state(psn: str = EMPLOYEE, *, balance: int = 1_000_000, **kw: object) -> PersonState:
    kw.setdefault("year", Accumulators())
    return PersonState(person=PERSONS[psn], balance_fen=balance, **kw)  # type: ignore[arg-type]


def run(
    lines: list[FeeLine],
    v: Visit | None = None,
    st: PersonState | None = None,
    snap: Snapshot = SNAPSHOT,
    **kw: bool,
) -> Settlement:
    return settle(snap, v or visit(), st or state(), lines, **kw)


# --------------------------------------------------------------------------- refusals


def test_categories() -> None:
    assert {t: category_of(t) for t in ("11", "12", "13", "19")} == dict.fromkeys(
        ("11", "12", "13", "19"), Category.OUTPATIENT
    )
    assert {category_of(t) for t in ("21", "22", "23", "24")} == {Category.INPATIENT}
    assert category_of("14") is Category.CHRONIC and category_of("41") is Category.PHARMACY
    for bad in ("99", "", "51", "1"):
        with pytest.raises(RuleRejected, match="不支持的医疗类别"):
            category_of(bad)
    with pytest.raises(RuleRejected, match="不支持的医疗类别"):
        run([line("ZL0001", "25")], visit(med_type="52"))


def test_amount_must_match_price_times_quantity_within_one_fen() -> None:
    assert run([line("ZL0001", "25", "1", "25.01")]).medfee_sumamt == 2501
    assert run([line("ZL0001", "0.333333", "3", "1.00")]).medfee_sumamt == 100  # 0.999999
    with pytest.raises(LineRejected, match="单价×数量与明细金额不符") as err:
        run(
            [line("ZL0001", "25", "1", "25.00", sn="1"), line("ZL0001", "25", "1", "25.02", sn="7")]
        )
    assert err.value.feedetl_sn == "7" and "7" in err.value.err_msg
    with pytest.raises(LineRejected):
        run([line("ZL0001", "25", "1", "24.98")])
    with pytest.raises(LineRejected):
        run([line("ZL0001", "25", "-1", "-24.98")])


def test_a_sent_national_code_must_match_the_mapping() -> None:
    assert run([line("ZL0001", "25", sent="001102000010000")]).inscp_scp_amt == 2500
    with pytest.raises(LineRejected, match="目录对照不一致"):
        run([line("ZL0001", "25", sent="XA02BCA011A001010100001")])
    # An unmapped code has nothing to disagree with: it is self-pay.
    assert run([line("NOPE01", "25", sent="XA02BCA011A001010100001")]).fulamt_ownpay_amt == 2500


def test_refusals_of_the_visit() -> None:
    lines = [line("ZL0001", "25")]
    with pytest.raises(RuleRejected, match="未登记"):
        run(lines, visit("H99999999999"))
    with pytest.raises(RuleRejected, match="未登记"):
        split_lines(SNAPSHOT, visit("H99999999999"), lines)
    with pytest.raises(RuleRejected, match="没有有效的医保待遇政策"):
        run(lines, visit(day=dt.date(2019, 6, 1)))
    with pytest.raises(RuleRejected, match="险种类型320"):
        run(lines, st=replace(state(), person=replace(PERSONS[EMPLOYEE], insutype="320")))
    with pytest.raises(RuleRejected, match="门诊慢特病备案"):
        run(lines, visit(med_type="14", dise="M07800"), state(EMPLOYEE))  # not registered
    with pytest.raises(RuleRejected, match="门诊慢特病备案"):
        run(lines, visit(med_type="14", dise="I10"), state(RETIREE))  # another disease


def test_refunds_beyond_the_charges_are_refused() -> None:
    mri, refund = line("ZL0007", "600", sn="1"), line("ZL0007", "600", "-1", "-600.00", sn="2")
    with pytest.raises(RuleRejected, match="负数"):
        run([line("ZL0001", "25"), refund])
    zero = run([mri, refund])
    assert zero.medfee_sumamt == zero.psn_part_amt == zero.acct_pay == 0 and zero.funds == ()
    partly = run(
        [line("ZL0001", "100", "2", sn="1"), line("ZL0001", "100", "-1", "-100.00", sn="2")]
    )
    assert partly.medfee_sumamt == partly.inscp_scp_amt == 10_000


# --------------------------------------------------------------------------- lines


def test_unmapped_and_class_c_lines_are_self_pay() -> None:
    (unmapped, class_c) = run([line("NOPE01", "12.34", sn="1"), line("YP0010", "35", sn="2")]).lines
    assert unmapped.fulamt_ownpay_amt == 1234 and unmapped.inscp_scp_amt == 0
    assert (unmapped.chrgitm_lv, unmapped.memo, unmapped.selfpay_bp) == ("03", "未对照", 10_000)
    assert unmapped.medins_list_codg == "NOPE01" and unmapped.med_list_codg == ""
    assert class_c.fulamt_ownpay_amt == 3500 and class_c.chrgitm_lv == "03"
    assert class_c.med_list_codg == "XS01XAA990A001010100010" and class_c.memo == ""


@pytest.mark.parametrize(
    ("code", "appr", "whole"),
    [
        ("YP0006", "1", False),  # restricted, approved: covered (class B 20%)
        ("YP0006", "0", True),  # restricted, not approved
        ("YP0006", None, True),  # no flag sent (pharmacy lines) counts as not approved
        ("YP0006", "2", True),
        ("ZL0001", "2", True),  # the hospital marks even a class A line self-pay
        ("ZL0001", None, False),  # class A, not restricted: the flag does not matter
        ("ZL0001", "0", False),
    ],
)
def test_approval(code: str, appr: str | None, whole: bool) -> None:
    (ln,) = split_lines(SNAPSHOT, visit(), [line(code, "100", appr=appr)])
    assert (ln.fulamt_ownpay_amt == 10_000) is whole
    assert ln.selfpay_bp == (10_000 if whole else 2000 if code == "YP0006" else 0)
    assert ln.det_item_fee_sumamt == (
        ln.fulamt_ownpay_amt + ln.overlmt_amt + ln.preselfpay_amt + ln.inscp_scp_amt
    )


def test_price_cap_and_class_b_with_refund_mirroring_the_charge() -> None:
    charge, half, refund = split_lines(
        SNAPSHOT,
        visit(),
        [
            line("ZL0007", "600", sn="1"),  # MRI capped at 520.00 in 441800, class B 15%
            line("ZL0007", "600", "0.5", sn="2"),
            line("ZL0007", "600", "-1", "-600.00", sn="3"),
        ],
    )
    assert (charge.overlmt_amt, charge.preselfpay_amt, charge.inscp_scp_amt) == (8000, 7800, 44_200)
    assert charge.pric_uplmt_micro == 520_000_000 and charge.selfpay_bp == 1500
    assert (half.overlmt_amt, half.preselfpay_amt, half.inscp_scp_amt) == (4000, 3900, 22_100)
    assert (refund.overlmt_amt, refund.preselfpay_amt, refund.inscp_scp_amt) == (
        -8000,
        -7800,
        -44_200,
    )


def test_class_b_rounds_half_away_from_zero() -> None:
    # 4.52 x 5% = 0.226 -> 0.23 (the protocol's own worked example), and mirrored on a refund
    (charge, refund) = split_lines(
        SNAPSHOT,
        visit(),
        [line("YP0005", "4.52", sn="1"), line("YP0005", "4.52", "-1", "-4.52", sn="2")],
    )
    assert (charge.preselfpay_amt, charge.inscp_scp_amt) == (23, 429)
    assert (refund.preselfpay_amt, refund.inscp_scp_amt) == (-23, -429)


def test_split_lines_is_what_settle_uses() -> None:
    lines = [
        line("ZL0001", "25", sn="1"),
        line("YP0003", "40", "2", sn="2"),
        line("X", "1", sn="3"),
    ]
    assert run(lines).lines == split_lines(SNAPSHOT, visit(), lines)


# --------------------------------------------------------------------------- deductible, pool, cap


def test_annual_cap_reached_inside_a_settlement() -> None:
    # Level 3, 60%; 0.10 left under the 3,000.00 outpatient cap.
    s = run(
        [line("ZL0001", "100")],
        st=state(year=Accumulators(dedc_outpatient=30_000, pool_outpatient=299_990)),
    )
    assert (s.act_pay_dedc, s.hifp_pay) == (0, 10)
    # within = ceil(0.10 / 60%) = 0.17: pool co-pay 0.07, the rest is over the cap
    assert s.delta.pool_outpatient == 10 and s.psn_part_amt == 9990
    assert [(f.fund_pay_type, f.fund_payamt, f.crt_payb_lmt_amt) for f in s.funds] == [
        ("310100", 10, 0),
        ("310200", 9990, 0),
    ]
    spent = run([line("ZL0001", "100")], st=state(year=Accumulators(pool_outpatient=400_000)))
    assert spent.hifp_pay == 0 and spent.act_pay_dedc == 10_000  # the deductible still counts


def test_inpatient_deductible_per_admission() -> None:
    lines = [line("ZL0009", "3000")]  # class A, 3,000.00
    v = visit(med_type="21")
    first = run(lines, v, state(RETIREE))
    assert first.admission_dedc_fen == first.act_pay_dedc == 90_000  # level 3
    assert first.pool_prop_selfpay_bp == 9000  # 85% + 5% retiree bonus
    assert first.hifp_pay == 189_000 and first.delta.pool_inpatient == 189_000
    assert first.delta.dedc_outpatient == first.delta.dedc_chronic == 0
    again = run(lines, v, state(RETIREE, other_inpatient_in_force=True))
    assert again.admission_dedc_fen == again.act_pay_dedc == 45_000  # halved
    fixed = run(lines, v, state(RETIREE, admission_dedc_fen=90_000, admission_dedc_used_fen=60_000))
    assert fixed.admission_dedc_fen == 90_000 and fixed.act_pay_dedc == 30_000
    midway = run(
        lines, v, state(RETIREE, admission_dedc_fen=90_000, admission_dedc_used_fen=90_000)
    )
    assert midway.act_pay_dedc == 0


def test_chronic_uses_its_ratio_and_the_inpatient_group() -> None:
    s = run([line("YP0004", "50")], visit(LEVEL2, "14", dise="M07800"), state(RETIREE))
    assert s.category is Category.CHRONIC and s.act_pay_dedc == 0
    assert s.pool_prop_selfpay_bp == 9000 and s.hifp_pay == 4500  # 85% + 5%
    assert s.delta.pool_inpatient == 4500 and s.delta.pool_outpatient == 0
    assert s.admission_dedc_fen is None


def test_retiree_bonus_stops_at_100_percent() -> None:
    (policy,) = [p for p in REF.policies if p.admdvs == "441800" and p.begndate.year == 2020]
    generous = replace(policy, employee=replace(policy.employee, retiree_bonus_bp=900))
    snap = Snapshot.build(
        version=2,
        institutions=REF.institutions,
        catalog=REF.catalog,
        mappings=REF.mappings,
        ratios=REF.ratios,
        caps=REF.caps,
        policies=[generous, *(p for p in REF.policies if p is not policy)],
        class_b_default_bp=REF.class_b_default_bp,
    )
    s = run([line("ZL0009", "3000")], visit(LEVEL1, "21"), state(RETIREE), snap)
    assert s.pool_prop_selfpay_bp == 10_000  # 95% + 9% capped
    assert s.hifp_pay == s.inscp_scp_amt - s.act_pay_dedc


def test_pharmacy_pool_ratio_zero_pays_nothing() -> None:
    s = run([line("YP0003", "40", "2", appr=None)], visit(PHARMACY, "41"))
    assert s.pool_prop_selfpay_bp == 0 and s.hifp_pay == 0 and s.act_pay_dedc == 0
    assert s.preselfpay_amt == 800 and s.acct_pay == 8000
    (restricted,) = run([line("YP0006", "100", appr=None)], visit(PHARMACY, "41")).lines
    assert restricted.fulamt_ownpay_amt == 10_000


# --------------------------------------------------------------------------- layers, account


def test_layers_in_order_with_fund_rows() -> None:
    # Civil servant inpatient with 10.00 left under the inpatient cap.
    s = run(
        [line("ZL0009", "3000")],
        visit(med_type="21"),
        state(CIVIL_SERVANT, balance=300_000, year=Accumulators(pool_inpatient=30_000_000 - 1000)),
    )
    assert (s.act_pay_dedc, s.hifp_pay) == (90_000, 1000)
    # within = ceil(10.00 / 85%) = 11.77: pool co-pay 1.77, over the cap 2,088.23
    assert s.hifob_pay == 187_941  # round(2088.23 x 90%)
    assert s.cvlserv_pay == 106  # round(1.77 x 60%)
    assert s.fund_pay_sumamt == 1000 + 106 + 187_941
    assert s.acct_pay == s.psn_part_amt == 300_000 - s.fund_pay_sumamt
    assert [(f.fund_pay_type, f.fund_payamt, f.crt_payb_lmt_amt) for f in s.funds] == [
        ("310100", 1000, 0),
        ("320100", 106, 0),
        ("330100", 187_941, 40_000_000 - 187_941),
        ("310200", s.acct_pay, 0),
    ]
    assert [f.fund_pay_type_name for f in s.funds] == [
        "城镇职工基本医疗保险统筹基金",
        "公务员医疗补助基金",
        "大额医疗费用补助基金",
        "城镇职工基本医疗保险个人账户基金",
    ]
    assert s.delta == Accumulators(pool_inpatient=1000, hifob=187_941, cvlserv=106)


def test_assistance_for_inpatients_only() -> None:
    lines = [line("ZL0009", "3000")]
    outpatient = run(lines, visit(LEVEL1), state(DIBAO))
    assert outpatient.maf_pay == 0
    s = run(lines, visit(LEVEL1, "21"), state(DIBAO))
    # level 1: 200.00 deductible, 90% pool; burden = 200.00 + 280.00 co-pay, dibao 70%
    assert (s.act_pay_dedc, s.hifp_pay, s.maf_pay) == (20_000, 252_000, 33_600)
    assert s.delta.mi_qualified == 48_000 and s.delta.maf == 33_600
    assert [f.fund_pay_type for f in s.funds] == ["390100", "610100"]
    capped = run(lines, visit(LEVEL1, "21"), state(DIBAO, year=Accumulators(maf=5_000_000 - 100)))
    assert capped.maf_pay == 100


def test_assistance_after_critical_illness() -> None:
    # 特困 resident already at the critical-illness threshold: 大病 pays 60% of the burden
    # first, and assistance 90% of what is left.
    s = run(
        [line("ZL0009", "3000")],
        visit(LEVEL1, "21"),
        state(TEKUN, year=Accumulators(mi_qualified=1_500_000)),
    )
    assert s.delta.mi_qualified == 48_000
    assert (s.hifmi_pay, s.maf_pay) == (28_800, 17_280)
    assert [f.fund_pay_type for f in s.funds] == ["390100", "390200", "610100"]


def test_critical_illness_segments() -> None:
    segs = REF.policies[0].resident.mi_segments  # 60% up to 100,000.00 above, then 70%
    assert mi_burden_value(1_500_000, 1_500_000, segs) == 0
    assert mi_burden_value(1_500_100, 1_500_000, segs) == 100 * 6000
    assert mi_burden_value(1_500_001, 1_500_000, segs) == 6000  # fen x bp: not rounded yet
    assert mi_burden_value(11_500_050, 1_500_000, segs) == 10_000_000 * 6000 + 50 * 7000
    assert mi_burden_value(11_500_001, 1_500_000, segs) == 10_000_000 * 6000 + 7000
    bounded = (MiSegment(upto_fen=100, ratio_bp=5000),)
    assert mi_burden_value(1000, 0, bounded) == 100 * 5000  # nothing above the last bound
    assert mi_burden_value(1000, 0, ()) == 0
    # Across the threshold inside one settlement: only the part above it counts, rounded once.
    s = run(
        [line("ZL0009", "3000")],
        visit(med_type="21"),
        state(RESIDENT, year=Accumulators(mi_qualified=1_500_000 - 50_000)),
    )
    q = s.delta.mi_qualified
    assert q == s.act_pay_dedc + (s.inscp_scp_amt - s.act_pay_dedc - s.hifp_pay)
    assert s.hifmi_pay == apply_bp(q - 50_000, 6000)


def test_account() -> None:
    lines = [line("ZL0001", "500")]
    full = run(lines)  # 300.00 deductible, 60% of the other 200.00 from the pool
    assert full.acct_pay == full.psn_part_amt == 38_000 and full.balc == 1_000_000 - 38_000
    assert run(lines, visit(acct=False)).acct_pay == 0
    assert run(lines, use_account=False).acct_pay == 0
    low = run(lines, st=state(balance=1234))
    assert (low.acct_pay, low.balc, low.psn_cash_pay) == (1234, 0, low.psn_part_amt - 1234)
    assert run(lines, st=state(RESIDENT)).acct_pay == 0  # residents have no account
    # Cross-region: the insured region decides whether its account may pay remotely.
    assert run(lines, st=state(BIJIE_EMPLOYEE)).acct_pay == 0  # 520500: not remotely
    assert run(lines, st=state(WENZHOU_RETIREE)).acct_pay > 0  # 330300: remotely too


def test_apply_adds_and_reverses() -> None:
    acc = Accumulators(dedc_outpatient=1, pool_inpatient=5, mi_qualified=7)
    delta = Accumulators(dedc_outpatient=2, pool_inpatient=3, hifob=4, mi_qualified=1)
    assert apply(acc, delta) == Accumulators(
        dedc_outpatient=3, pool_inpatient=8, hifob=4, mi_qualified=8
    )
    assert apply(apply(acc, delta), delta, -1) == acc
    with pytest.raises(ValueError):
        apply(acc, delta, 2)
