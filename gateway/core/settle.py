"""The settlement rules (settlement-rules.md): pure functions over integers, no I/O, no clock.

This module is the only place the fund split is computed; pre-settlement, settlement, deferred
replay and catalog corrections all call `settle`, and cancellation only subtracts its `delta`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gateway.core.catalog import Snapshot
from gateway.core.model import (
    Accumulators,
    Category,
    FeeLine,
    FundRow,
    Institution,
    LineSplit,
    MiSegment,
    PersonState,
    Policy,
    Settlement,
    SidePolicy,
    Visit,
)
from gateway.errors import LineRejected, RuleRejected
from gateway.money import BP, apply_bp, ceil_div, price_times_cnt_fen, round_div

CATEGORY_OF = {
    "11": Category.OUTPATIENT,
    "12": Category.OUTPATIENT,
    "13": Category.OUTPATIENT,
    "19": Category.OUTPATIENT,
    "21": Category.INPATIENT,
    "22": Category.INPATIENT,
    "23": Category.INPATIENT,
    "24": Category.INPATIENT,
    "14": Category.CHRONIC,
    "41": Category.PHARMACY,
}
RETIREE_PSN_TYPES = frozenset({"1201", "1202", "1203"})
EMPLOYEE, RESIDENT = "310", "390"
AMOUNT_TOLERANCE_FEN = 1  # |round(pric x cnt) - S| allowed, for prices with six decimals

FUND_NAMES = {
    "310100": "城镇职工基本医疗保险统筹基金",
    "390100": "城乡居民基本医疗保险基金",
    "320100": "公务员医疗补助基金",
    "330100": "大额医疗费用补助基金",
    "390200": "城乡居民大病医疗保险基金",
    "610100": "医疗救助基金",
    "310200": "城镇职工基本医疗保险个人账户基金",
}


def category_of(med_type: str) -> Category:
    """Policy category of a med_type; others are unsupported (rules §3)."""
    category = CATEGORY_OF.get(med_type)
    if category is None:
        raise RuleRejected(
            f"不支持的医疗类别{med_type}（支持11、12、13、14、19、21、22、23、24、41）"
        )
    return category


# --------------------------------------------------------------------------- §1–2: lines


def _whole_selfpay(
    ln: FeeLine, lv: str, ctype: str, lmt: str, lst: str, codg: str, memo: str
) -> LineSplit:
    return LineSplit(
        feedetl_sn=ln.feedetl_sn,
        det_item_fee_sumamt=ln.det_item_fee_sumamt,
        cnt=ln.cnt,
        pric_micro=ln.pric_micro,
        pric_uplmt_micro=None,
        selfpay_bp=BP,
        fulamt_ownpay_amt=ln.det_item_fee_sumamt,
        overlmt_amt=0,
        preselfpay_amt=0,
        inscp_scp_amt=0,
        chrgitm_lv=lv,
        med_chrgitm_type=ctype,
        lmt_used_flag=lmt,
        list_type=lst,
        medins_list_codg=ln.medins_list_codg,
        med_list_codg=codg,
        memo=memo,
    )


def split_line(snapshot: Snapshot, fixmedins_code: str, region: str, ln: FeeLine) -> LineSplit:
    """One line's split (rules §1–2); `region` is the treatment region (the institution's)."""
    s = ln.det_item_fee_sumamt
    if abs(price_times_cnt_fen(ln.pric_micro, ln.cnt) - s) > AMOUNT_TOLERANCE_FEN:
        raise LineRejected(ln.feedetl_sn, "单价×数量与明细项目费用总额不符")
    mapping = snapshot.mapping(fixmedins_code, ln.medins_list_codg, ln.fee_date)
    if mapping is None:
        return _whole_selfpay(ln, "03", "14", "0", "", "", "未对照")
    codg = mapping.med_list_codg
    if ln.med_list_codg and ln.med_list_codg != codg:
        raise LineRejected(
            ln.feedetl_sn, f"目录对照不一致：上传医保目录编码{ln.med_list_codg}，本机构对照为{codg}"
        )
    entry = snapshot.entry(codg, ln.fee_date)
    if entry is None:
        return _whole_selfpay(ln, "03", "14", "0", mapping.list_type, codg, "医保目录无效")
    lv, lmt, appr = entry.chrgitm_lv, entry.lmt_used_flag, ln.hosp_appr_flag
    if lv == "03" or appr == "2" or (lmt == "1" and appr != "1"):
        return _whole_selfpay(ln, lv, entry.med_chrgitm_type, lmt, entry.list_type, codg, "")
    cap = snapshot.cap_micro(codg, region, ln.fee_date)
    over = 0
    if cap is not None:
        allowed = abs(price_times_cnt_fen(cap, ln.cnt))
        over = max(0, abs(s) - allowed)
        over = over if s >= 0 else -over
    base = s - over
    bp = 0
    if lv == "02":
        ratio = snapshot.selfpay_bp(codg, region, ln.fee_date)
        bp = snapshot.class_b_default_bp if ratio is None else ratio
    pre = apply_bp(base, bp)
    return LineSplit(
        feedetl_sn=ln.feedetl_sn,
        det_item_fee_sumamt=s,
        cnt=ln.cnt,
        pric_micro=ln.pric_micro,
        pric_uplmt_micro=cap,
        selfpay_bp=bp,
        fulamt_ownpay_amt=0,
        overlmt_amt=over,
        preselfpay_amt=pre,
        inscp_scp_amt=base - pre,
        chrgitm_lv=lv,
        med_chrgitm_type=entry.med_chrgitm_type,
        lmt_used_flag=lmt,
        list_type=entry.list_type,
        medins_list_codg=ln.medins_list_codg,
        med_list_codg=codg,
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
    inst = _institution(snapshot, visit.fixmedins_code)
    return tuple(split_line(snapshot, inst.fixmedins_code, inst.admdvs, ln) for ln in lines)


# --------------------------------------------------------------------------- §3–6: settlement


def mi_burden_value(q: int, threshold: int, segments: tuple[MiSegment, ...]) -> int:
    """T(Q): the qualified burden above the threshold weighted by its segments' ratios (unrounded)."""
    above = q - threshold
    if above <= 0:
        return 0
    total = 0
    lower = 0
    for seg in segments:
        upper = seg.upto_fen if seg.upto_fen > 0 else None
        top = above if upper is None else min(above, upper)
        if top > lower:
            total += (top - lower) * seg.ratio_bp
        if upper is None or above <= upper:
            break
        lower = upper
    return total


def apply(acc: Accumulators, delta: Accumulators, sign: int = 1) -> Accumulators:
    """Accumulators plus (or, with sign -1, minus) a settlement's delta."""
    return Accumulators(
        **{f: getattr(acc, f) + sign * getattr(delta, f) for f in Accumulators.__struct_fields__}
    )


def _policy(snapshot: Snapshot, admdvs: str, on: dt.date) -> Policy:
    policy = snapshot.policy(admdvs, on)
    if policy is None:
        raise RuleRejected(f"参保地{admdvs}在{on.isoformat()}没有有效的医保待遇政策")
    return policy


def _side(policy: Policy, insutype: str) -> SidePolicy:
    if insutype == EMPLOYEE:
        return policy.employee
    if insutype == RESIDENT:
        return policy.resident
    raise RuleRejected(f"险种类型{insutype}不在本网关支持的结算范围（310职工、390居民）")


def settle(
    snapshot: Snapshot,
    visit: Visit,
    state: PersonState,
    lines: Sequence[FeeLine],
    *,
    use_account: bool = True,
) -> Settlement:
    """The fund split of one settlement against the person's state (rules §3–6)."""
    category = category_of(visit.med_type)
    inst = _institution(snapshot, visit.fixmedins_code)
    person = state.person
    policy = _policy(snapshot, person.insuplc_admdvs, visit.service_date)
    side = _side(policy, person.insutype)
    employee = person.insutype == EMPLOYEE
    if category is Category.CHRONIC and visit.dise_codg not in person.chronic_dise_codg:
        raise RuleRejected(
            f"参保人未办理病种{visit.dise_codg or '（未填写）'}的门诊慢特病备案，不能按门慢门特结算"
        )

    splits = tuple(split_line(snapshot, inst.fixmedins_code, inst.admdvs, ln) for ln in lines)
    medfee = fulamt = overlmt = pre = inscp = 0
    for sp in splits:
        medfee += sp.det_item_fee_sumamt
        fulamt += sp.fulamt_ownpay_amt
        overlmt += sp.overlmt_amt
        pre += sp.preselfpay_amt
        inscp += sp.inscp_scp_amt
    if min(medfee, fulamt, overlmt, pre, inscp) < 0:
        raise RuleRejected("退费明细金额超过原费用，结算金额为负数，请核对费用明细")

    acc = state.year
    idx = min(max(inst.hosp_lv, 1), 3) - 1
    inpatient_group = category in (Category.INPATIENT, Category.CHRONIC)
    admission_dedc: int | None = None
    if category is Category.OUTPATIENT:
        op = side.outpatient
        dedc_left = op.dedc_fen - acc.dedc_outpatient
        ratio, cap, pool_paid = op.ratio_by_level_bp[idx], op.cap_fen, acc.pool_outpatient
    elif category is Category.CHRONIC:
        ch = side.chronic
        dedc_left = ch.dedc_fen - acc.dedc_chronic
        ratio, cap, pool_paid = (
            ch.ratio_by_level_bp[idx],
            side.inpatient.cap_fen,
            acc.pool_inpatient,
        )
    elif category is Category.INPATIENT:
        ip = side.inpatient
        admission_dedc = state.admission_dedc_fen
        if admission_dedc is None:
            admission_dedc = ip.dedc_by_level_fen[idx]
            if state.other_inpatient_in_force:
                admission_dedc = apply_bp(admission_dedc, ip.repeat_dedc_bp)
        dedc_left = admission_dedc - state.admission_dedc_used_fen
        ratio, cap, pool_paid = ip.ratio_by_level_bp[idx], ip.cap_fen, acc.pool_inpatient
    else:
        dedc_left = 0
        ratio, cap, pool_paid = side.pharmacy.ratio_bp, side.pharmacy.cap_fen, acc.pool_pharmacy
    if employee and category is not Category.PHARMACY and person.psn_type in RETIREE_PSN_TYPES:
        ratio = min(BP, ratio + side.retiree_bonus_bp)

    # §4 deductible, pool, annual cap
    act_pay_dedc = min(max(inscp, 0), max(dedc_left, 0))
    base = inscp - act_pay_dedc
    raw = apply_bp(base, ratio)
    if cap is None:
        hifp, within = raw, base
        cap_after = 0
    else:
        cap_left = max(0, cap - pool_paid)
        if raw <= cap_left:
            hifp, within = raw, base
        else:
            hifp = cap_left
            within = min(base, ceil_div(cap_left * BP, ratio)) if ratio > 0 else base
        cap_after = cap_left - hifp
    pool_co = within - hifp
    over_cap = base - within

    # §5 further layers
    hifob = hifmi = cvlserv = maf = q = 0
    if employee and inpatient_group:
        hifob = min(apply_bp(over_cap, side.ob_ratio_bp), max(0, side.ob_cap_fen - acc.hifob))
    if not employee and inpatient_group:
        q = act_pay_dedc + pool_co + over_cap
        q0 = acc.mi_qualified
        gain = mi_burden_value(q0 + q, side.mi_threshold_fen, side.mi_segments) - mi_burden_value(
            q0, side.mi_threshold_fen, side.mi_segments
        )
        hifmi = min(round_div(gain, BP), max(0, side.mi_cap_fen - acc.hifmi))
    if employee and person.cvlserv_flag == "1" and category is not Category.PHARMACY:
        cvlserv = apply_bp(pool_co, side.cvlserv_ratio_bp)
    assistance = policy.assistance
    maf_bp = {"dibao": assistance.dibao_bp, "tekun": assistance.tekun_bp}.get(person.maf_class)
    if maf_bp is not None and inpatient_group:
        burden = max(0, act_pay_dedc + pool_co + over_cap - hifob - hifmi - cvlserv)
        maf = min(apply_bp(burden, maf_bp), max(0, assistance.cap_fen - acc.maf))

    # §6 totals, account, cash
    hifes = oth = hosp_part = 0
    fund = hifp + cvlserv + hifes + hifmi + hifob + maf + oth
    psn_part = medfee - fund - hosp_part
    cross_region = inst.admdvs != person.insuplc_admdvs
    account_usable = (
        employee
        and visit.acct_used_flag
        and use_account
        and (not cross_region or policy.acct_usable_remote)
    )
    acct = min(psn_part, state.balance_fen) if account_usable else 0
    acct = max(acct, 0)
    cash = psn_part - acct

    funds: list[FundRow] = []

    def fund_row(code: str, amount: int, limit_left: int) -> None:
        if amount:
            funds.append(
                FundRow(
                    fund_pay_type=code,
                    fund_pay_type_name=FUND_NAMES[code],
                    fund_payamt=amount,
                    inscp_scp_amt=inscp,
                    crt_payb_lmt_amt=max(0, limit_left),
                )
            )

    fund_row("310100" if employee else "390100", hifp, cap_after)
    fund_row("320100", cvlserv, 0)
    fund_row("330100", hifob, side.ob_cap_fen - acc.hifob - hifob)
    fund_row("390200", hifmi, side.mi_cap_fen - acc.hifmi - hifmi)
    fund_row("610100", maf, assistance.cap_fen - acc.maf - maf)
    fund_row("310200", acct, 0)

    delta = Accumulators(
        dedc_outpatient=act_pay_dedc if category is Category.OUTPATIENT else 0,
        dedc_chronic=act_pay_dedc if category is Category.CHRONIC else 0,
        pool_outpatient=hifp if category is Category.OUTPATIENT else 0,
        pool_inpatient=hifp if inpatient_group else 0,
        pool_pharmacy=hifp if category is Category.PHARMACY else 0,
        hifob=hifob,
        hifmi=hifmi,
        mi_qualified=q,
        maf=maf,
        cvlserv=cvlserv,
    )
    return Settlement(
        category=category,
        year=visit.service_date.year,
        lines=splits,
        medfee_sumamt=medfee,
        fulamt_ownpay_amt=fulamt,
        overlmt_selfpay=overlmt,
        preselfpay_amt=pre,
        inscp_scp_amt=inscp,
        act_pay_dedc=act_pay_dedc,
        hifp_pay=hifp,
        cvlserv_pay=cvlserv,
        hifes_pay=hifes,
        hifmi_pay=hifmi,
        hifob_pay=hifob,
        maf_pay=maf,
        oth_pay=oth,
        fund_pay_sumamt=fund,
        psn_part_amt=psn_part,
        acct_pay=acct,
        psn_cash_pay=cash,
        hosp_part_amt=hosp_part,
        balc=state.balance_fen - acct,
        pool_prop_selfpay_bp=ratio,
        funds=tuple(funds),
        delta=delta,
        admission_dedc_fen=admission_dedc,
    )
