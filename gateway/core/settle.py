"""The settlement rules (settlement-rules.md): pure functions over integers, no I/O, no clock.

This module is the only place the fund split is computed; pre-settlement, settlement, deferred
replay and catalog corrections all call `settle`, and cancellation only subtracts its `delta`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from msgspec.structs import replace

from gateway.core import dictionaries, eligibility
from gateway.core.catalog import Snapshot
from gateway.core.eligibility import CATEGORY_OF, category_of
from gateway.core.model import (
    Accumulators,
    Category,
    FeeLine,
    FundRow,
    Institution,
    LineSplit,
    MiSegment,
    Person,
    PersonState,
    Policy,
    Settlement,
    SidePolicy,
    Visit,
)
from gateway.core.money import (
    BP,
    apply_bp,
    ceil_div,
    cnt_text,
    fen_text,
    micro_text,
    price_times_cnt_fen,
    round_div,
)
from gateway.protocol.errors import LineRejected, RuleRejected

# Module constants: each Category.X lookup costs about 0.1 µs on Python 3.11, and a
# settlement makes a dozen.
OUTPATIENT, INPATIENT, CHRONIC, PHARMACY = (
    Category.OUTPATIENT,
    Category.INPATIENT,
    Category.CHRONIC,
    Category.PHARMACY,
)
RETIREE_PSN_TYPES = frozenset({"1201", "1202", "1203"})
EMPLOYEE, RESIDENT = "310", "390"
AMOUNT_TOLERANCE_FEN = 1  # |round(pric x cnt) - S| allowed, for prices with six decimals

# fund_pay_type codes (protocol §3.2), in the order setldetail lists them
EMPLOYEE_POOL, RESIDENT_POOL = "310100", "390100"
CVLSERV, LARGE_AMOUNT, CRITICAL_ILLNESS, ASSISTANCE, ACCOUNT = (
    "320100",
    "330100",
    "390200",
    "610100",
    "310200",
)
FUND_NAMES = {
    code: dictionaries.label_of("fund_pay_type", code)
    for code in (
        EMPLOYEE_POOL,
        RESIDENT_POOL,
        CVLSERV,
        LARGE_AMOUNT,
        CRITICAL_ILLNESS,
        ASSISTANCE,
        ACCOUNT,
    )
}


# --------------------------------------------------------------------------- §1–2: lines


def split_line(snapshot: Snapshot, fixmedins_code: str, ln: FeeLine) -> LineSplit:
    """One line's split (rules §1–2), with the catalog of the institution's region."""
    s, cnt, pric = ln.det_item_fee_sumamt, ln.cnt, ln.pric_micro
    if abs(price_times_cnt_fen(pric, cnt) - s) > AMOUNT_TOLERANCE_FEN:
        raise LineRejected(
            ln.feedetl_sn,
            f"单价×数量与明细金额不符（{micro_text(pric)}×{cnt_text(cnt)}，明细金额{fen_text(s)}）",
        )
    rule = snapshot.item(fixmedins_code, ln.medins_list_codg, ln.fee_date)
    sent = ln.med_list_codg
    if sent and sent != rule.med_list_codg and rule.med_list_codg:
        raise LineRejected(
            ln.feedetl_sn,
            f"目录对照不一致：上传医保目录编码{sent}，本机构对照为{rule.med_list_codg}",
        )
    appr = ln.hosp_appr_flag  # None (not sent, as on pharmacy lines) counts as not approved
    if rule.never_covered or appr == "2" or (rule.restricted and appr != "1"):
        return replace(
            rule.selfpay,
            feedetl_sn=ln.feedetl_sn,
            det_item_fee_sumamt=s,
            cnt=cnt,
            pric_micro=pric,
            fulamt_ownpay_amt=s,
            medins_list_codg=ln.medins_list_codg,  # the unmapped rule is shared by all codes
        )
    over = 0
    cap = rule.cap_micro
    if cap is not None:
        # Compared by magnitude so that a refund line (negative S and cnt) mirrors its charge.
        over = abs(s) - abs(price_times_cnt_fen(cap, cnt))
        if over <= 0:
            over = 0
        elif s < 0:
            over = -over
    base = s - over
    tpl = rule.split
    bp = tpl.selfpay_bp
    pre = apply_bp(base, bp) if bp else 0  # class A: nothing to round
    # Templates are copied with a few fields: building a 17-field record from keywords
    # costs several times more, and this runs once per fee line.
    return replace(
        tpl,
        feedetl_sn=ln.feedetl_sn,
        det_item_fee_sumamt=s,
        cnt=cnt,
        pric_micro=pric,
        overlmt_amt=over,
        preselfpay_amt=pre,
        inscp_scp_amt=base - pre,
    )


def _institution(snapshot: Snapshot, code: str) -> Institution:
    inst = snapshot.institution(code)
    if inst is None:
        raise RuleRejected(f"定点医药机构{code}未登记")
    return inst


def split_lines(
    snapshot: Snapshot, visit: Visit, lines: Sequence[FeeLine]
) -> tuple[LineSplit, ...]:
    """Every line's split, with the treatment region's catalog, ratios and caps."""
    code = _institution(snapshot, visit.fixmedins_code).fixmedins_code
    return tuple([split_line(snapshot, code, ln) for ln in lines])


# --------------------------------------------------------------------------- §3–6: settlement


def mi_burden_value(q: int, threshold: int, segments: tuple[MiSegment, ...]) -> int:
    """T(Q): the burden above the threshold weighted by its segments' ratios (fen x bp, unrounded)."""
    above = q - threshold
    if above <= 0:
        return 0
    total = 0
    lower = 0
    for seg in segments:
        upper = seg.upto_fen
        if upper <= 0 or above <= upper:  # upto 0: no upper bound
            return total + (above - lower) * seg.ratio_bp
        if upper > lower:
            total += (upper - lower) * seg.ratio_bp
            lower = upper
    return total  # above the last bounded segment nothing more is paid


_ACC_FIELDS = Accumulators.__struct_fields__


def apply(acc: Accumulators, delta: Accumulators, sign: int = 1) -> Accumulators:
    """Accumulators plus (or, with sign -1, minus) a settlement's delta."""
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    return Accumulators(**{f: getattr(acc, f) + sign * getattr(delta, f) for f in _ACC_FIELDS})


def policy_on(snapshot: Snapshot, admdvs: str, on: dt.date) -> Policy:
    """The insured region's policy in force on a day; refused where there is none."""
    policy = snapshot.policy(admdvs, on)
    if policy is None:
        raise RuleRejected(f"参保地{admdvs}在{on.isoformat()}没有有效的医保待遇政策")
    return policy


def side_of(policy: Policy, insutype: str) -> SidePolicy:
    """The policy's side of an insutype (310 employee, 390 resident); others are refused."""
    if insutype == EMPLOYEE:
        return policy.employee
    if insutype == RESIDENT:
        return policy.resident
    raise RuleRejected(f"险种类型{insutype}不在本网关支持的结算范围（310职工、390居民）")


def limits_after(
    snapshot: Snapshot, person: Person, service_date: dt.date, med_type: str, acc: Accumulators
) -> dict[str, int]:
    """Each capped fund's remaining annual limit (crt_payb_lmt_amt) for a settlement of this
    med_type, given the year's accumulators as they stand after it: what `settle` writes on its
    fund rows (held to it by tests/unit/test_properties.py), for an answer that changes the
    accumulators without settling, a cancellation's (found from outside: a 2208 repeated the
    original's limit, as if the refund had left the fund's year as it was)."""
    policy = policy_on(snapshot, person.insuplc_admdvs, service_date)
    employee = person.insutype == EMPLOYEE
    side = policy.employee if employee else side_of(policy, person.insutype)
    category = category_of(med_type)
    if category is OUTPATIENT:
        cap, paid = side.outpatient.cap_fen, acc.pool_outpatient
    elif category is CHRONIC or category is INPATIENT:
        cap, paid = side.inpatient.cap_fen, acc.pool_inpatient
    else:
        cap, paid = side.pharmacy.cap_fen, acc.pool_pharmacy
    return {
        EMPLOYEE_POOL if employee else RESIDENT_POOL: 0 if cap is None else max(0, cap - paid),
        LARGE_AMOUNT: max(0, side.ob_cap_fen - acc.hifob),
        CRITICAL_ILLNESS: max(0, side.mi_cap_fen - acc.hifmi),
        ASSISTANCE: max(0, policy.assistance.cap_fen - acc.maf),
    }


def _fund(code: str, amount: int, inscp: int, limit_left: int) -> FundRow:
    return FundRow(
        fund_pay_type=code,
        fund_pay_type_name=FUND_NAMES[code],
        fund_payamt=amount,
        inscp_scp_amt=inscp,
        crt_payb_lmt_amt=limit_left if limit_left > 0 else 0,
    )


def settle(
    snapshot: Snapshot,
    visit: Visit,
    state: PersonState,
    lines: Sequence[FeeLine],
    *,
    use_account: bool = True,
) -> Settlement:
    """The fund split of one settlement against the person's state (rules §3–6)."""
    return _settle(snapshot, visit, state, lines, None, use_account)


def settle_splits(
    snapshot: Snapshot,
    visit: Visit,
    state: PersonState,
    splits: Sequence[LineSplit],
    *,
    use_account: bool = True,
) -> Settlement:
    """The fund split over lines split already (rules §3–6 only).

    The ledger checker replays stored settlements with it: a settlement keeps the per-line split
    of the catalog of its day, which a later 3301 may have changed (only a correction re-splits).
    """
    return _settle(snapshot, visit, state, (), splits, use_account)


def _negative_component(fulamt: int, overlmt: int, pre: int, inscp: int) -> RuleRejected:
    """Rules §6: every component of a settlement is at least 0. A refund line mirrors the split
    of the line it refunds (§2), so refunding a line settled earlier (a mid-way settlement) nets
    only against charges of the same kind in this settlement: the refund of a self-pay item
    cannot be taken out of covered items, even when the total stays positive."""
    name, value = next(
        (n, v)
        for n, v in (
            ("全自费金额fulamt_ownpay_amt", fulamt),
            ("超限价自费金额overlmt_selfpay", overlmt),
            ("先行自付金额preselfpay_amt", pre),
            ("符合政策范围金额inscp_scp_amt", inscp),
        )
        if v < 0
    )
    return RuleRejected(
        f"退费明细冲减后本次结算的{name}为{fen_text(value)}，结算各项金额不能为负数："
        "退费明细只能与本次结算中同类费用相抵（已结算费用的退费超过了本次同类收费）。"
        "请撤销原结算（2305）后与退费明细一并重新结算，或撤销该退费明细（2302）"
    )


def _settle(
    snapshot: Snapshot,
    visit: Visit,
    state: PersonState,
    lines: Sequence[FeeLine],
    presplit: Sequence[LineSplit] | None,
    use_account: bool,
) -> Settlement:
    # Look-ups inlined (each `or` branch only runs to raise the refusal): this is the hot path.
    category = CATEGORY_OF.get(visit.med_type) or category_of(visit.med_type)
    inst = snapshot.institution(visit.fixmedins_code) or _institution(
        snapshot, visit.fixmedins_code
    )
    person = state.person
    insutype = person.insutype
    policy = snapshot.policy(person.insuplc_admdvs, visit.service_date) or policy_on(
        snapshot, person.insuplc_admdvs, visit.service_date
    )
    employee = insutype == EMPLOYEE
    side = policy.employee if employee else side_of(policy, insutype)
    if category is CHRONIC:
        # Found from outside: a 2207 was told to fill in dise_codg, a field 2207 does not have.
        eligibility.require_chronic_filing(person, visit.dise_codg, eligibility.FROM_THE_VISIT)

    # §1–2 lines and their sums
    code = inst.fixmedins_code
    splits = (
        [split_line(snapshot, code, ln) for ln in lines] if presplit is None else list(presplit)
    )
    medfee = fulamt = overlmt = pre = inscp = 0
    for sp in splits:
        medfee += sp.det_item_fee_sumamt
        fulamt += sp.fulamt_ownpay_amt
        overlmt += sp.overlmt_amt
        pre += sp.preselfpay_amt
        inscp += sp.inscp_scp_amt
    if fulamt < 0 or overlmt < 0 or pre < 0 or inscp < 0:
        raise _negative_component(fulamt, overlmt, pre, inscp)

    # §3 the category's parameters: deductible left, ratio, annual cap and what the pool paid
    acc = state.year
    hosp_lv = inst.hosp_lv
    level = 0 if hosp_lv <= 1 else 2 if hosp_lv >= 3 else 1  # index into the level arrays
    inpatient_group = category is INPATIENT or category is CHRONIC
    admission_dedc: int | None = None
    cap: int | None
    if category is OUTPATIENT:
        op = side.outpatient
        dedc_left = op.dedc_fen - acc.dedc_outpatient
        ratio, cap, pool_paid = op.ratio_by_level_bp[level], op.cap_fen, acc.pool_outpatient
    elif category is CHRONIC:
        ch = side.chronic
        dedc_left = ch.dedc_fen - acc.dedc_chronic
        # chronic shares the inpatient group, and with it the inpatient annual cap
        ratio, cap, pool_paid = (
            ch.ratio_by_level_bp[level],
            side.inpatient.cap_fen,
            acc.pool_inpatient,
        )
    elif category is INPATIENT:
        ip = side.inpatient
        admission_dedc = state.admission_dedc_fen
        if admission_dedc is None:  # first settlement of the admission fixes its deductible
            admission_dedc = ip.dedc_by_level_fen[level]
            if state.other_inpatient_in_force:
                admission_dedc = apply_bp(admission_dedc, ip.repeat_dedc_bp)
        dedc_left = admission_dedc - state.admission_dedc_used_fen
        ratio, cap, pool_paid = ip.ratio_by_level_bp[level], ip.cap_fen, acc.pool_inpatient
    else:
        dedc_left = 0
        ratio, cap, pool_paid = side.pharmacy.ratio_bp, side.pharmacy.cap_fen, acc.pool_pharmacy
    if employee and category is not PHARMACY and person.psn_type in RETIREE_PSN_TYPES:
        ratio = min(BP, ratio + side.retiree_bonus_bp)

    # §4 deductible, pool, annual cap
    act_pay_dedc = min(inscp, dedc_left) if dedc_left > 0 else 0
    base = inscp - act_pay_dedc
    raw = apply_bp(base, ratio)
    hifp, within, cap_after = raw, base, 0
    if cap is not None:
        cap_left = cap - pool_paid if cap > pool_paid else 0
        if raw > cap_left:  # implies ratio > 0
            hifp = cap_left
            within = min(base, ceil_div(cap_left * BP, ratio))
        cap_after = cap_left - hifp
    pool_co = within - hifp
    over_cap = base - within

    # §5 further layers, in order
    hifob = hifmi = cvlserv = maf = q = 0
    if inpatient_group:
        if employee:
            hifob = min(apply_bp(over_cap, side.ob_ratio_bp), max(0, side.ob_cap_fen - acc.hifob))
        else:
            q = act_pay_dedc + pool_co + over_cap
            q0, threshold, segs = acc.mi_qualified, side.mi_threshold_fen, side.mi_segments
            gain = mi_burden_value(q0 + q, threshold, segs) - mi_burden_value(q0, threshold, segs)
            hifmi = min(round_div(gain, BP), max(0, side.mi_cap_fen - acc.hifmi))
    if employee and person.cvlserv_flag == "1" and category is not PHARMACY:
        cvlserv = apply_bp(pool_co, side.cvlserv_ratio_bp)
    assistance = policy.assistance
    if inpatient_group and person.maf_class:
        maf_bp = (
            assistance.dibao_bp
            if person.maf_class == "dibao"
            else assistance.tekun_bp
            if person.maf_class == "tekun"
            else 0
        )
        burden = act_pay_dedc + pool_co + over_cap - hifob - hifmi - cvlserv
        if maf_bp and burden > 0:
            maf = min(apply_bp(burden, maf_bp), max(0, assistance.cap_fen - acc.maf))

    # §6 totals, account, cash
    hifes = oth = hosp_part = 0
    fund = hifp + cvlserv + hifes + hifmi + hifob + maf + oth
    psn_part = medfee - fund - hosp_part
    acct = 0
    if (
        employee
        and visit.acct_used_flag
        and use_account
        and (inst.admdvs == person.insuplc_admdvs or policy.acct_usable_remote)
    ):
        balance = state.balance_fen
        acct = psn_part if psn_part < balance else balance
        if acct < 0:
            acct = 0

    funds: list[FundRow] = []
    if hifp:
        funds.append(_fund(EMPLOYEE_POOL if employee else RESIDENT_POOL, hifp, inscp, cap_after))
    if cvlserv:
        funds.append(_fund(CVLSERV, cvlserv, inscp, 0))
    if hifob:
        funds.append(_fund(LARGE_AMOUNT, hifob, inscp, side.ob_cap_fen - acc.hifob - hifob))
    if hifmi:
        funds.append(_fund(CRITICAL_ILLNESS, hifmi, inscp, side.mi_cap_fen - acc.hifmi - hifmi))
    if maf:
        funds.append(_fund(ASSISTANCE, maf, inscp, assistance.cap_fen - acc.maf - maf))
    if acct:
        funds.append(_fund(ACCOUNT, acct, inscp, 0))

    outpatient = category is OUTPATIENT
    delta = Accumulators(
        dedc_outpatient=act_pay_dedc if outpatient else 0,
        dedc_chronic=act_pay_dedc if category is CHRONIC else 0,
        pool_outpatient=hifp if outpatient else 0,
        pool_inpatient=hifp if inpatient_group else 0,
        pool_pharmacy=hifp if category is PHARMACY else 0,
        hifob=hifob,
        hifmi=hifmi,
        mi_qualified=q,
        maf=maf,
        cvlserv=cvlserv,
    )
    # Two copies of a blank record with at most 14 keywords each: CPython passes 15 or more
    # keywords through a slow path that costs more than the whole fund split.
    s = replace(
        _BLANK,
        category=category,
        year=visit.service_date.year,
        lines=tuple(splits),
        medfee_sumamt=medfee,
        fulamt_ownpay_amt=fulamt,
        overlmt_selfpay=overlmt,
        preselfpay_amt=pre,
        inscp_scp_amt=inscp,
        act_pay_dedc=act_pay_dedc,
        hifp_pay=hifp,
        cvlserv_pay=cvlserv,
        hifmi_pay=hifmi,
        hifob_pay=hifob,
        maf_pay=maf,
    )
    return replace(
        s,
        fund_pay_sumamt=fund,
        psn_part_amt=psn_part,
        acct_pay=acct,
        psn_cash_pay=psn_part - acct,
        balc=state.balance_fen - acct,
        pool_prop_selfpay_bp=ratio,
        funds=tuple(funds),
        delta=delta,
        admission_dedc_fen=admission_dedc,
    )


# hifes_pay, oth_pay and hosp_part_amt stay 0 under these rules (rules §5).
_BLANK = Settlement(
    category=OUTPATIENT,
    year=0,
    lines=(),
    medfee_sumamt=0,
    fulamt_ownpay_amt=0,
    overlmt_selfpay=0,
    preselfpay_amt=0,
    inscp_scp_amt=0,
    act_pay_dedc=0,
    hifp_pay=0,
    cvlserv_pay=0,
    hifes_pay=0,
    hifmi_pay=0,
    hifob_pay=0,
    maf_pay=0,
    oth_pay=0,
    fund_pay_sumamt=0,
    psn_part_amt=0,
    acct_pay=0,
    psn_cash_pay=0,
    hosp_part_amt=0,
    balc=0,
    pool_prop_selfpay_bp=0,
    funds=(),
    delta=Accumulators(),
    admission_dedc_fen=None,
)
