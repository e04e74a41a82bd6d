"""An independent model of settlement-rules.md: per-line split, the fund layers, the person's
year, settlement and exact reversal. Integer fen and basis points throughout.

Section numbers in the comments are those of settlement-rules.md; quoted text is the rule the
code follows where more than one reading was possible.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from tests.reference.data import ReferenceData
from tests.reference.money import (
    BP,
    ceil_div,
    line_total_fen,
    quotient,
    ratio,
)

# §3 "Category from med_type"
CATEGORY = {
    "11": "outpatient",
    "12": "outpatient",
    "13": "outpatient",
    "19": "outpatient",
    "14": "chronic",
    "21": "inpatient",
    "22": "inpatient",
    "23": "inpatient",
    "24": "inpatient",
    "41": "pharmacy",
}
# §3 "inpatient and chronic share `inpatient`"
GROUP = {
    "outpatient": "outpatient",
    "chronic": "inpatient",
    "inpatient": "inpatient",
    "pharmacy": "pharmacy",
}
RETIREES = frozenset({"1201", "1202", "1203"})

POOL_EMPLOYEE = "310100"
POOL_RESIDENT = "390100"
CVLSERV = "320100"
LARGE_AMOUNT = "330100"
CRITICAL_ILLNESS = "390200"
ASSISTANCE = "610100"
ACCOUNT = "310200"

# The setlinfo money fields, in the order of §3.1 of protocol.md.
AMOUNT_FIELDS = (
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


class Rejected(Exception):
    """The request is refused (infcode -1); nothing changes."""


@dataclass(frozen=True)
class FeeLine:
    """One fee line as the request carries it (amounts already exact)."""

    feedetl_sn: str
    medins_list_codg: str
    pric: Decimal
    cnt: Decimal
    amount_fen: int  # det_item_fee_sumamt, S
    fee_date: dt.date
    hosp_appr_flag: str | None = None  # None: the line carries none (pharmacy drugdetail)
    med_list_codg: str = ""
    init_feedetl_sn: str = ""
    # A refund line's charge's fee date: the refund is resolved on it (DISAGREEMENTS.md, "A
    # refund line is priced as its charge").
    charged_on: dt.date | None = None


@dataclass(frozen=True)
class LineSplit:
    """§2: S = fulamt + overlmt + preselfpay + inscp."""

    feedetl_sn: str
    amount: int
    chrgitm_lv: str
    selfpay_bp: int
    fulamt: int
    overlmt: int
    preselfpay: int
    inscp: int
    national_code: str
    memo: str = ""


@dataclass(frozen=True)
class FundRow:
    code: str
    amount: int
    limit_left: int  # crt_payb_lmt_amt: the fund's remaining annual limit after, 0 where none
    inscp: int


@dataclass
class Year:
    """One person's accumulators for one calendar year and group (§3, §4, §5)."""

    pool: int = 0
    large_amount: int = 0
    critical_illness: int = 0
    qualified_burden: int = 0
    cvlserv: int = 0
    assistance: int = 0


@dataclass(frozen=True)
class Effects:
    """Exactly what one settlement applied; a cancellation subtracts it (§7)."""

    psn_no: str
    year: int
    group: str
    category: str
    mdtrt_id: str
    deductible: int
    pool: int
    large_amount: int
    critical_illness: int
    qualified_burden: int
    cvlserv: int
    assistance: int
    account: int


@dataclass(frozen=True)
class Settlement:
    """A computed settlement (pre-settlement or settlement)."""

    amounts: dict[str, int]
    pool_bp: int
    funds: tuple[FundRow, ...]
    lines: tuple[LineSplit, ...]
    effects: Effects
    admission_deductible: int | None  # inpatient: the admission's (fixed) deductible
    # Which rules this settlement exercised (for the differential run's coverage figures).
    features: frozenset[str] = frozenset()
    # Each capped fund's annual cap (None: none) and the Year field it is counted in: what a
    # cancellation's remaining limits are read against.
    caps: tuple[tuple[str, int | None, str], ...] = ()

    def negated(self, balc: int, year_after: Year | None = None) -> Settlement:
        """The cancellation answer: the same fields negated, `balc` the balance after. The
        ratio (pool_prop_selfpay) is not an amount and is repeated; a fund's remaining limit
        (§6 "the fund's remaining annual limit after") is the cap less the year as the
        cancellation leaves it (`year_after`)."""
        amounts = {k: -v for k, v in self.amounts.items()}
        amounts["balc"] = balc
        left = (
            {
                code: 0 if cap is None else cap - getattr(year_after, counted)
                for code, cap, counted in self.caps
            }
            if year_after is not None
            else {}
        )
        funds = tuple(
            replace(f, amount=-f.amount, inscp=-f.inscp, limit_left=left.get(f.code, f.limit_left))
            for f in self.funds
        )
        return replace(self, amounts=amounts, funds=funds)


@dataclass
class Admission:
    deductible: int | None = None  # fixed at the first settlement (§4.1)
    forgotten: int | None = None  # the one fixed before all its settlements were cancelled
    in_force: set[str] = field(default_factory=set)


@dataclass
class Visit:
    mdtrt_id: str
    psn_no: str
    fixmedins_code: str
    service_date: dt.date  # 2201/2401/2101 begntime date (§3 "service date")
    med_type: str = ""
    dise_codg: str = ""


class Model:
    """The gateway's ledger as the rules define it, in memory."""

    def __init__(self, data: ReferenceData) -> None:
        self.data = data
        self.balances = {p.psn_no: p.balance_fen for p in data.persons.values()}
        self.years: dict[tuple[str, int, str], Year] = {}
        self.deductible_used: dict[tuple[str, int, str], int] = {}
        self.admissions: dict[str, Admission] = {}
        self.settlements: dict[str, Settlement] = {}
        self.cancelled: set[str] = set()

    # ---------------------------------------------------------------- §1-2 one line

    def split_line(self, fixmedins_code: str, line: FeeLine, *, upload: bool = True) -> LineSplit:
        inst = self.data.institutions[fixmedins_code]
        s = line.amount_fen
        # §1.1 "Check |round(pric × cnt) − S| ≤ 1 fen; otherwise the line is rejected"
        if abs(line_total_fen(line.pric, line.cnt) - s) > 1:
            raise Rejected(f"明细{line.feedetl_sn}金额与单价数量不符")
        on = line.charged_on or line.fee_date
        mapping = self.data.mapping(fixmedins_code, line.medins_list_codg, on)
        # "If the request also sends med_list_codg and it differs from the registered mapping,
        # reject the line": the line's own med_list_codg against the mapping registered when it
        # is resolved, at its upload and again at its settlement (a 3301 in between makes the
        # counter re-upload it). `upload=False` only for the test's look-ahead.
        if (
            upload
            and line.med_list_codg
            and mapping
            and line.med_list_codg != mapping.national_code
        ):
            raise Rejected(f"明细{line.feedetl_sn}目录对照不一致")
        item = self.data.item(mapping.national_code, on) if mapping else None
        if mapping is None or item is None:
            # §1.2 "No mapping → the whole line is self-pay (fulamt_ownpay_amt = S, class 03,
            # memo 未对照)". A mapping to a code with no catalog entry on the date is read the
            # same way: there is nothing to classify the line by.
            return LineSplit(line.feedetl_sn, s, "03", BP, s, 0, 0, 0, "", "未对照")
        # §2 "A line that carries no hosp_appr_flag ... counts as not approved."
        flag = line.hosp_appr_flag
        if item.level == "03" or flag == "2" or (item.restricted and flag != "1"):
            # Example 4 line 4: a class-02 line made self-pay answers selfpay_prop 1.0000.
            return LineSplit(line.feedetl_sn, s, item.level, BP, s, 0, 0, 0, item.code, "")
        cap = self.data.cap_text(item.code, inst.region, on)
        overlmt = 0
        if cap is not None:
            allowed = abs(line_total_fen(Decimal(cap), line.cnt))
            sign = -1 if s < 0 else 1
            overlmt = sign * max(0, abs(s) - allowed)
        base = s - overlmt
        if item.level == "01":
            bp = 0
        else:
            found = self.data.selfpay_bp(item.code, inst.region, on)
            bp = self.data.default_class_b_bp if found is None else found
        pre = ratio(base, bp)
        return LineSplit(line.feedetl_sn, s, item.level, bp, 0, overlmt, pre, base - pre, item.code)

    def split_lines(
        self, fixmedins_code: str, lines: list[FeeLine], *, upload: bool = True
    ) -> list[LineSplit]:
        """The lines resolved against the reference data as it is now. A settlement resolves
        its lines again when it computes (§7 "Settlement ... computes"; §1 "mapping rows (3301
        uploads ...) valid on the fee date"): a 3301 row uploaded after the lines, valid on
        their fee date, applies to them, and a re-settlement after a cancellation sees it."""
        return [self.split_line(fixmedins_code, ln, upload=upload) for ln in lines]

    # ---------------------------------------------------------------- §3-6 a settlement

    def _year(self, psn_no: str, year: int, group: str) -> Year:
        return self.years.get((psn_no, year, group)) or Year()

    def _inpatient_in_force_elsewhere(self, psn_no: str, year: int, mdtrt_id: str) -> bool:
        return any(
            s.effects.psn_no == psn_no
            and s.effects.category == "inpatient"
            and s.effects.year == year
            and s.effects.mdtrt_id != mdtrt_id
            for key, s in self.settlements.items()
            if key not in self.cancelled
        )

    def compute(
        self,
        visit: Visit,
        med_type: str,
        lines: list[LineSplit],
        acct_used_flag: str,
        *,
        deferred: bool = False,
    ) -> Settlement:
        """Pre-settlement: the answer against the current state, nothing changed (§7)."""
        data = self.data
        person = data.persons.get(visit.psn_no)
        if person is None or not person.insured:
            raise Rejected("人员不存在或未正常参保")
        inst = data.institutions[visit.fixmedins_code]
        category = CATEGORY.get(med_type)
        if category is None:
            raise Rejected(f"不支持的医疗类别{med_type}")
        if category == "chronic" and visit.dise_codg not in person.chronic:
            raise Rejected("未办理门诊慢特病登记")
        group = GROUP[category]
        # §3 policy of the insured region on the service date; accumulators by its year.
        policy = data.policy(person.region, visit.service_date)
        side: dict[str, Any] = policy["employee" if person.employee else "resident"]
        level = 1 if inst.is_pharmacy else inst.level
        year = visit.service_date.year
        acc = self._year(person.psn_no, year, group)

        medfee = sum(ln.amount for ln in lines)
        fulamt = sum(ln.fulamt for ln in lines)
        overlmt = sum(ln.overlmt for ln in lines)
        preself = sum(ln.preselfpay for ln in lines)
        inscp = sum(ln.inscp for ln in lines)
        # Nothing to settle is no settlement: the rules define none of a zero total (a new line
        # and the refund of another cancelling out), and the gateway refuses it.
        if not lines or medfee == 0:
            raise Rejected("医疗费总额为0，没有需要结算的费用")
        # §6 "all components ≥ 0 on a settlement": refund lines may not take a settlement's
        # totals below zero (the gateway refuses such a batch rather than answer negatives).
        if min(medfee, fulamt, overlmt, preself, inscp) < 0:
            raise Rejected("退费明细金额超过本次结算的收费金额")

        features: set[str] = set()
        # §4.1 deductible
        admission_deductible: int | None = None
        if category in ("outpatient", "chronic"):
            used = self.deductible_used.get((person.psn_no, year, category), 0)
            left = side[category]["dedc_fen"] - used
        elif category == "inpatient":
            adm = self.admissions.get(visit.mdtrt_id)
            if adm is not None and adm.deductible is not None:
                admission_deductible = adm.deductible
            else:
                inpatient = side["inpatient"]
                admission_deductible = inpatient["dedc_by_level_fen"][level - 1]
                # "multiplied by repeat_dedc_bp (rounded) when the person already has an
                # inpatient settlement in force (not cancelled) in the same year on another
                # mdtrt_id" (example 5).
                if self._inpatient_in_force_elsewhere(person.psn_no, year, visit.mdtrt_id):
                    admission_deductible = ratio(admission_deductible, inpatient["repeat_dedc_bp"])
                    features.add("repeat deductible")
            if adm is not None and adm.forgotten not in (None, admission_deductible):
                features.add("admission deductible fixed anew, differently")
            # "mid-way settlements ... of one admission share that admission's deductible"
            used = sum(
                self.settlements[k].effects.deductible for k in (adm.in_force if adm else ())
            )
            left = admission_deductible - used
        else:
            left = 0
        dedc = min(max(inscp, 0), left)

        # §4.2 ratio
        base = inscp - dedc
        if category == "pharmacy":
            pool_bp = side["pharmacy"]["ratio_bp"]
        else:
            pool_bp = side[category]["ratio_by_level_bp"][level - 1]
            if person.employee and person.psn_type in RETIREES:
                pool_bp += side["retiree_bonus_bp"]
            pool_bp = min(pool_bp, BP)
        raw = ratio(base, pool_bp)

        # §4.3 annual cap of the group; "chronic uses the inpatient cap"
        cap: int | None = {
            "outpatient": side["outpatient"].get("cap_fen"),
            "inpatient": side["inpatient"].get("cap_fen"),
            "pharmacy": side["pharmacy"].get("cap_fen"),
        }[group]
        if cap is None:
            hifp, within = raw, base
        else:
            cap_left = cap - acc.pool
            if raw > cap_left:
                features.add(f"{group} pool cap reached")
            if raw <= cap_left:
                hifp, within = raw, base
            else:
                hifp = cap_left
                within = min(base, ceil_div(cap_left * BP, pool_bp))
        pool_co = within - hifp
        over_cap = base - within

        # §5 further layers, in this order
        hifob = 0
        if person.insutype == "310" and group == "inpatient":
            hifob = min(ratio(over_cap, side["ob_ratio_bp"]), side["ob_cap_fen"] - acc.large_amount)
        hifmi = 0
        q = gain = burden = 0
        if person.insutype == "390" and group == "inpatient":
            q = dedc + pool_co + over_cap
            q0 = acc.qualified_burden
            gain = _critical_t(side, q0 + q) - _critical_t(side, q0)
            hifmi = min(quotient(gain, BP), side["mi_cap_fen"] - acc.critical_illness)
        cvlserv = 0
        if person.insutype == "310" and person.cvlserv and category != "pharmacy":
            cvlserv = ratio(pool_co, side["cvlserv_ratio_bp"])
        maf = 0
        assistance = policy.get("assistance", {})
        if person.maf_class and group == "inpatient":
            burden = max(0, dedc + pool_co + over_cap - hifob - hifmi - cvlserv)
            maf = min(
                ratio(burden, assistance[f"{person.maf_class}_bp"]),
                assistance["cap_fen"] - acc.assistance,
            )
        hifes = oth = hosp_part = 0

        # §6 totals, account, cash
        fund = hifp + cvlserv + hifes + hifmi + hifob + maf + oth
        psn_part = medfee - fund - hosp_part
        balance = self.balances[person.psn_no]
        cross_region = inst.region != person.region
        account_usable = (
            person.insutype == "310"
            and acct_used_flag == "1"
            and (not cross_region or bool(policy["acct_usable_remote"]))
            and not deferred
        )
        acct = min(psn_part, balance) if account_usable else 0
        acct = max(acct, 0)
        if account_usable and 0 < balance < psn_part:
            features.add("account runs dry")
        if cross_region:
            features.add("cross-region")
        for name, value in (
            ("large-amount fund", hifob),
            ("critical illness", hifmi),
            ("civil-servant subsidy", cvlserv),
            ("medical assistance", maf),
            ("over price cap", overlmt),
        ):
            if value:
                features.add(name)
        if (
            person.insutype == "310"
            and group == "inpatient"
            and hifob < ratio(over_cap, side["ob_ratio_bp"])
        ):
            features.add("large-amount cap reached")
        if quotient(gain, BP) > hifmi:
            features.add("critical illness cap reached")
        if person.maf_class and ratio(burden, assistance[f"{person.maf_class}_bp"]) > maf:
            features.add("assistance cap reached")
        if any(ln.amount < 0 for ln in lines):
            features.add("refund lines")
        if any(ln.memo for ln in lines):
            features.add("unmapped lines")
        amounts = {
            "medfee_sumamt": medfee,
            "fulamt_ownpay_amt": fulamt,
            "overlmt_selfpay": overlmt,
            "preselfpay_amt": preself,
            "inscp_scp_amt": inscp,
            "act_pay_dedc": dedc,
            "hifp_pay": hifp,
            "cvlserv_pay": cvlserv,
            "hifes_pay": hifes,
            "hifmi_pay": hifmi,
            "hifob_pay": hifob,
            "maf_pay": maf,
            "oth_pay": oth,
            "fund_pay_sumamt": fund,
            "psn_part_amt": psn_part,
            "acct_pay": acct,
            "psn_cash_pay": psn_part - acct,
            "hosp_part_amt": hosp_part,
            "balc": balance - acct,
        }

        # §6 setldetail: one row per non-zero fund, in this order.
        def left_after(limit: int | None, paid_before: int, paid_now: int) -> int:
            return 0 if limit is None else limit - paid_before - paid_now

        rows: list[FundRow] = []
        candidates = (
            (
                POOL_EMPLOYEE if person.employee else POOL_RESIDENT,
                hifp,
                left_after(cap, acc.pool, hifp),
            ),
            (CVLSERV, cvlserv, 0),
            (LARGE_AMOUNT, hifob, left_after(side.get("ob_cap_fen"), acc.large_amount, hifob)),
            (
                CRITICAL_ILLNESS,
                hifmi,
                left_after(side.get("mi_cap_fen"), acc.critical_illness, hifmi),
            ),
            (ASSISTANCE, maf, left_after(assistance.get("cap_fen"), acc.assistance, maf)),
            (ACCOUNT, acct, 0),
        )
        for code, amount, limit_left in candidates:
            if amount != 0:
                rows.append(FundRow(code, amount, limit_left, inscp))

        effects = Effects(
            psn_no=person.psn_no,
            year=year,
            group=group,
            category=category,
            mdtrt_id=visit.mdtrt_id,
            deductible=dedc,
            pool=hifp,
            large_amount=hifob,
            critical_illness=hifmi,
            qualified_burden=q,
            cvlserv=cvlserv,
            assistance=maf,
            account=acct,
        )
        return Settlement(
            amounts,
            pool_bp,
            tuple(rows),
            tuple(lines),
            effects,
            admission_deductible,
            frozenset(features),
            (
                (POOL_EMPLOYEE if person.employee else POOL_RESIDENT, cap, "pool"),
                (LARGE_AMOUNT, side.get("ob_cap_fen"), "large_amount"),
                (CRITICAL_ILLNESS, side.get("mi_cap_fen"), "critical_illness"),
                (ASSISTANCE, assistance.get("cap_fen"), "assistance"),
            ),
        )

    # ---------------------------------------------------------------- §7 apply, cancel

    def apply(self, key: str, s: Settlement) -> None:
        """Settlement: everything the computation decided, at once."""
        e = s.effects
        if e.category in ("outpatient", "chronic"):
            k = (e.psn_no, e.year, e.category)
            self.deductible_used[k] = self.deductible_used.get(k, 0) + e.deductible
        if e.category == "inpatient":
            adm = self.admissions.setdefault(e.mdtrt_id, Admission())
            if adm.deductible is None:
                adm.deductible = s.admission_deductible
            adm.in_force.add(key)
        self._add(e, 1)
        self.settlements[key] = s

    def cancel(self, key: str) -> Settlement:
        """Reverse exactly what the settlement applied; answer its fields negated."""
        if key not in self.settlements or key in self.cancelled:
            raise Rejected("结算不存在或已撤销")
        s = self.settlements[key]
        e = s.effects
        if e.category in ("outpatient", "chronic"):
            k = (e.psn_no, e.year, e.category)
            self.deductible_used[k] -= e.deductible
        if e.category == "inpatient":
            adm = self.admissions[e.mdtrt_id]
            adm.in_force.discard(key)
            # "the admission's deductible is ... forgotten when all its settlements are
            # cancelled"
            if not adm.in_force:
                adm.forgotten, adm.deductible = adm.deductible, None
        self._add(e, -1)
        self.cancelled.add(key)
        return s.negated(self.balances[e.psn_no], self.years[(e.psn_no, e.year, e.group)])

    def _add(self, e: Effects, sign: int) -> None:
        y = self.years.setdefault((e.psn_no, e.year, e.group), Year())
        y.pool += sign * e.pool
        y.large_amount += sign * e.large_amount
        y.critical_illness += sign * e.critical_illness
        # "Add q to the year's qualified burden even when the cap is reached."
        y.qualified_burden += sign * e.qualified_burden
        y.cvlserv += sign * e.cvlserv
        y.assistance += sign * e.assistance
        self.balances[e.psn_no] -= sign * e.account

    # ---------------------------------------------------------------- catalog (3301)

    def map_item(
        self,
        fixmedins_code: str,
        medins_list_codg: str,
        med_list_codg: str,
        begndate: dt.date,
        enddate: dt.date,
    ) -> None:
        """A 3301 row: from its begndate the new national code applies to later fee lines."""
        self.data.add_mapping(fixmedins_code, medins_list_codg, med_list_codg, begndate, enddate)


def _critical_t(side: dict[str, Any], burden: int) -> int:
    """§5 T(Q): Σ segments (part of Q above the threshold in the segment) × ratio_bp, unrounded
    (fen·bp). Segment bounds are amounts above the threshold; upto_fen 0 = no upper bound."""
    above = max(0, burden - side["mi_threshold_fen"])
    total = 0
    lower = 0
    for seg in side["mi_segments"]:
        upper = seg["upto_fen"] or None
        top = above if upper is None else min(above, upper)
        if top > lower:
            total += (top - lower) * seg["ratio_bp"]
        if upper is None:
            break
        lower = upper
    return total
