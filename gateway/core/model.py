"""Canonical records of the settlement core: reference data, inputs and results.

All money is integer fen, ratios basis points, prices micro-yuan, quantities 1/10000 units
(see gateway.core.money). Records are frozen and untracked by the GC: they are built once per
snapshot or per request and never mutated.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from enum import StrEnum

import msgspec


class Record(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Base of the core's immutable records."""


# --------------------------------------------------------------------------- reference data


PHARMACY_TYPE = "2"  # fixmedins_type of a retail pharmacy (定点零售药店)


def same_operator(a: str | None, b: str | None) -> bool:
    """Whether two operator names are one person's, for the rules that want different people
    at each step: " clerk1", "Clerk1", "ｃｌｅｒｋ１" and "clerk1" are one (found from outside:
    case and spaces, and then full-width letters, let one person approve a payout batch at
    two or three levels)."""
    if a is None or b is None:
        return False
    return _person(a) == _person(b)


def _person(name: str) -> str:
    """A name as a person is told apart: compatibility forms folded (full-width, ligatures),
    case folded, blanks around it and inside it dropped."""
    return "".join(unicodedata.normalize("NFKC", name).casefold().split())


class Institution(Record, frozen=True, gc=False, kw_only=True):
    fixmedins_code: str
    fixmedins_name: str
    fixmedins_type: str  # 1 hospital, 2 pharmacy
    hosp_lv: int  # 1..3; pharmacies use 1
    admdvs: str  # treatment region


class CatalogEntry(Record, frozen=True, gc=False, kw_only=True):
    med_list_codg: str
    med_list_name: str
    list_type: str
    med_chrgitm_type: str
    chrgitm_lv: str  # 01 甲, 02 乙, 03 丙
    lmt_used_flag: str  # "1" restricted
    begndate: dt.date
    enddate: dt.date


class Mapping(Record, frozen=True, gc=False, kw_only=True):
    """An institution's item code mapped to a national code for a date range (3301 / mappings)."""

    fixmedins_code: str
    medins_list_codg: str
    fixmedins_hilist_name: str
    list_type: str
    med_list_codg: str
    begndate: dt.date
    enddate: dt.date


class SelfpayRatio(Record, frozen=True, gc=False, kw_only=True):
    med_list_codg: str
    insu_admdvs: str
    selfpay_bp: int
    begndate: dt.date
    enddate: dt.date


class PriceCap(Record, frozen=True, gc=False, kw_only=True):
    med_list_codg: str
    insu_admdvs: str
    cap_micro: int  # hilist_pric_uplmt_amt in micro-yuan
    begndate: dt.date
    enddate: dt.date


class OutpatientPolicy(Record, frozen=True, gc=False, kw_only=True):
    dedc_fen: int
    ratio_by_level_bp: tuple[int, int, int]
    cap_fen: int | None = None  # None: no annual cap


class InpatientPolicy(Record, frozen=True, gc=False, kw_only=True):
    dedc_by_level_fen: tuple[int, int, int]
    repeat_dedc_bp: int
    ratio_by_level_bp: tuple[int, int, int]
    cap_fen: int | None = None


class PharmacyPolicy(Record, frozen=True, gc=False, kw_only=True):
    ratio_bp: int
    cap_fen: int | None = None


class MiSegment(Record, frozen=True, gc=False, kw_only=True):
    upto_fen: int  # bound on the amount above the threshold; 0 = no upper bound
    ratio_bp: int


class SidePolicy(Record, frozen=True, gc=False, kw_only=True):
    """One side (employee or resident) of a region's policy version."""

    outpatient: OutpatientPolicy
    inpatient: InpatientPolicy
    chronic: OutpatientPolicy
    pharmacy: PharmacyPolicy
    retiree_bonus_bp: int = 0
    cvlserv_ratio_bp: int = 0
    ob_ratio_bp: int = 0
    ob_cap_fen: int = 0
    mi_threshold_fen: int = 0
    mi_segments: tuple[MiSegment, ...] = ()
    mi_cap_fen: int = 0


class AssistancePolicy(Record, frozen=True, gc=False, kw_only=True):
    dibao_bp: int
    tekun_bp: int
    cap_fen: int


class Policy(Record, frozen=True, gc=False, kw_only=True):
    """A region's policy version, in force for service dates in [begndate, enddate]."""

    admdvs: str
    name: str
    begndate: dt.date
    enddate: dt.date
    acct_usable_remote: bool
    employee: SidePolicy
    resident: SidePolicy
    assistance: AssistancePolicy


class Person(Record, frozen=True, gc=False, kw_only=True):
    psn_no: str
    psn_name: str
    psn_cert_type: str
    certno: str
    gend: str
    brdy: dt.date
    insuplc_admdvs: str
    insutype: str  # 310 employee, 390 resident
    psn_type: str
    psn_insu_stas: str  # "1" insured
    cvlserv_flag: str
    maf_class: str  # "", "dibao", "tekun"
    chronic_dise_codg: tuple[str, ...] = ()
    mdtrt_cert_no_card: str = ""


# --------------------------------------------------------------------------- settlement input


class Category(StrEnum):
    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    CHRONIC = "chronic"
    PHARMACY = "pharmacy"


class FeeLine(Record, frozen=True, gc=False, kw_only=True):
    """One uploaded fee line, already parsed from the wire into integers."""

    feedetl_sn: str
    medins_list_codg: str
    med_list_codg: str | None  # as sent by the client, checked against the mapping
    pric_micro: int
    cnt: int  # 1/10000 units, negative on a 2301 refund line
    det_item_fee_sumamt: int  # fen (the line amount S)
    fee_date: dt.date
    hosp_appr_flag: str | None  # None: not sent (pharmacy lines)


class Visit(Record, frozen=True, gc=False, kw_only=True):
    """What a settlement needs to know about the visit and the institution."""

    fixmedins_code: str
    mdtrt_id: str
    med_type: str
    service_date: dt.date  # visit begntime date: picks the policy version and the year
    acct_used_flag: bool
    dise_codg: str = ""


class Accumulators(Record, frozen=True, gc=False, kw_only=True):
    """A person's running totals for one calendar year (fen). Also used for deltas."""

    dedc_outpatient: int = 0
    dedc_chronic: int = 0
    pool_outpatient: int = 0
    pool_inpatient: int = 0  # inpatient and chronic share the inpatient group
    pool_pharmacy: int = 0
    hifob: int = 0
    hifmi: int = 0
    mi_qualified: int = 0  # qualified burden toward the critical-illness threshold
    maf: int = 0
    cvlserv: int = 0


class PersonState(Record, frozen=True, gc=False, kw_only=True):
    """The locked state a settlement is computed against."""

    person: Person
    balance_fen: int  # personal account balance
    year: Accumulators  # accumulators of the service date's calendar year
    admission_dedc_fen: int | None = None  # inpatient: fixed at the admission's first settlement
    admission_dedc_used_fen: int = 0  # deductible already consumed by this admission
    other_inpatient_in_force: bool = False  # another admission settled (not cancelled) this year


# --------------------------------------------------------------------------- results


class LineSplit(Record, frozen=True, gc=False, kw_only=True):
    """Per-line result (2204/2301 result[], 2101/2102 detlcutinfo[])."""

    feedetl_sn: str
    det_item_fee_sumamt: int
    cnt: int
    pric_micro: int
    pric_uplmt_micro: int | None  # the region's cap for the item, None when uncapped
    selfpay_bp: int  # 10000 for whole-line self-pay
    fulamt_ownpay_amt: int
    overlmt_amt: int
    preselfpay_amt: int
    inscp_scp_amt: int
    chrgitm_lv: str
    med_chrgitm_type: str
    lmt_used_flag: str
    list_type: str
    medins_list_codg: str
    med_list_codg: str  # resolved national code, "" when unmapped
    memo: str = ""


class FundRow(Record, frozen=True, gc=False, kw_only=True):
    """One setldetail row."""

    fund_pay_type: str
    fund_pay_type_name: str
    fund_payamt: int
    inscp_scp_amt: int
    crt_payb_lmt_amt: int


class Settlement(Record, frozen=True, gc=False, kw_only=True):
    """The fund split of one settlement, and what it changes."""

    category: Category
    year: int
    lines: tuple[LineSplit, ...]
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    cvlserv_pay: int
    hifes_pay: int
    hifmi_pay: int
    hifob_pay: int
    maf_pay: int
    oth_pay: int
    fund_pay_sumamt: int
    psn_part_amt: int
    acct_pay: int
    psn_cash_pay: int
    hosp_part_amt: int
    balc: int  # account balance after this settlement
    pool_prop_selfpay_bp: int  # the applied pool ratio
    funds: tuple[FundRow, ...]
    delta: Accumulators  # what the settlement adds to the year's accumulators
    admission_dedc_fen: int | None  # inpatient: the admission's deductible (fixed now if new)
