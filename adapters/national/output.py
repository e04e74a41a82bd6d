"""Output nodes: integers back to the wire's decimal text, field names verbatim.

Amounts go out as JSON numbers written with exactly two decimals (the baseline `16,2`), via
pre-encoded fragments so no float ever touches them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from gateway.core.model import FundRow, LineSplit, Person
from gateway.core.money import bp_text, cnt_text, fen_text, micro_text
from gateway.core.timestamps import wire_moment
from gateway.ledger.settlements import AMOUNT_FIELDS, Record

NO_CAP = msgspec.Raw(b"999999.000000")  # "no cap", as Hebei's centre answers


# Most of an answer's forty-odd amounts are nothing (no supplementary fund, no account payment):
# one shared fragment for them instead of a text and a fragment each.
_NO_AMOUNT = msgspec.Raw(fen_text(0))


def amount(fen: int) -> msgspec.Raw:
    """Fen -> a JSON number with two decimals."""
    return msgspec.Raw(fen_text(fen)) if fen else _NO_AMOUNT


def ratio(bp: int) -> msgspec.Raw:
    """Basis points -> a JSON number with four decimals (5,4)."""
    return msgspec.Raw(bp_text(bp))


def moment(value: dt.datetime | None) -> str | None:
    """yyyy-MM-dd HH:mm:ss."""
    return None if value is None else wire_moment(value)


def age_on(brdy: dt.date, on: dt.date) -> msgspec.Raw:
    """Age in full years (4,1)."""
    years = on.year - brdy.year - ((on.month, on.day) < (brdy.month, brdy.day))
    return msgspec.Raw(f"{years}.0".encode())


def person_fields(p: Person, on: dt.date) -> dict[str, Any]:
    """The person block shared by 1101 baseinfo and setlinfo."""
    return {
        "psn_no": p.psn_no,
        "psn_name": p.psn_name,
        "psn_cert_type": p.psn_cert_type,
        "certno": p.certno,
        "gend": p.gend,
        "naty": "01",
        "brdy": p.brdy.isoformat(),
        "age": age_on(p.brdy, on),
    }


def line_result(ln: LineSplit, *, with_lmt_flag: bool = True) -> dict[str, Any]:
    """2204/2301 result[] row, or (without lmt_used_flag) a 2101/2102 detlcutinfo[] row."""
    row: dict[str, Any] = {
        "feedetl_sn": ln.feedetl_sn,
        "det_item_fee_sumamt": amount(ln.det_item_fee_sumamt),
        "cnt": msgspec.Raw(cnt_text(ln.cnt)),
        "pric": msgspec.Raw(micro_text(ln.pric_micro)),
        "pric_uplmt_amt": NO_CAP
        if ln.pric_uplmt_micro is None
        else msgspec.Raw(micro_text(ln.pric_uplmt_micro)),
        "selfpay_prop": ratio(ln.selfpay_bp),
        "fulamt_ownpay_amt": amount(ln.fulamt_ownpay_amt),
        "overlmt_amt": amount(ln.overlmt_amt),
        "preselfpay_amt": amount(ln.preselfpay_amt),
        "inscp_scp_amt": amount(ln.inscp_scp_amt),
        "chrgitm_lv": ln.chrgitm_lv,
        "med_chrgitm_type": ln.med_chrgitm_type,
        "bas_medn_flag": "0",
        "hi_nego_drug_flag": "0",
        "chld_medc_flag": "0",
        "list_sp_item_flag": "0",
        "drt_reim_flag": "0",
        "memo": ln.memo,
    }
    if with_lmt_flag:
        row["lmt_used_flag"] = ln.lmt_used_flag
    return row


def setldetail(
    funds: tuple[FundRow, ...], sign: int = 1, limits: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """结算基金分项信息 rows (negated for a cancellation, whose `limits` are each capped fund's
    remaining limit after the refund; a limit is never negated)."""
    left = limits or {}
    return [
        {
            "fund_pay_type": f.fund_pay_type,
            "fund_pay_type_name": f.fund_pay_type_name,
            "inscp_scp_amt": amount(sign * f.inscp_scp_amt),
            "crt_payb_lmt_amt": amount(left.get(f.fund_pay_type, f.crt_payb_lmt_amt)),
            "fund_payamt": amount(sign * f.fund_payamt),
            "setl_proc_info": "",
        }
        for f in funds
    ]


def setlinfo(
    rec: Record,
    *,
    service_date: dt.date | None = None,
    mdtrt_cert_type: str = "",
    sign: int = 1,
    balc: int | None = None,
) -> dict[str, Any]:
    """结算信息 of 2206/2207/2303/2304/5203, or negated for 2208/2305."""
    p = rec.person
    a = rec.amounts
    out: dict[str, Any] = {
        "mdtrt_id": rec.mdtrt_id,
        "setl_id": rec.setl_id,
        **person_fields(p, service_date or rec.service_date or dt.date.today()),
        "insutype": p.insutype,
        "psn_type": p.psn_type,
        "cvlserv_flag": p.cvlserv_flag,
        "setl_time": moment(rec.setl_time),
        "mdtrt_cert_type": mdtrt_cert_type or rec.mdtrt_cert_type,
        "med_type": rec.med_type,
    }
    for name in AMOUNT_FIELDS:
        if name != "balc":
            out[name] = amount(sign * a[name])
        if name == "hifp_pay":
            out["pool_prop_selfpay"] = ratio(
                rec.pool_prop_bp
            )  # the spec's position, after hifp_pay
    out["balc"] = amount(a["balc"] if balc is None else balc)
    out["acct_mulaid_pay"] = amount(0)
    # Later revisions' disabled-veterans fund (TeaHZ/185 T2304 reads it): none in these rules.
    out["hifdm_pay"] = amount(0)
    out["medins_setl_id"] = rec.medins_setl_id
    # None where nothing is cleared with the institution (a replayed claim's settlement as the
    # counter took it, gateway.services.cancellation.as_paid_at_counter), as in a claim's answer.
    cleared = bool(rec.setl_id and rec.clr_optins)
    out["clr_optins"] = rec.clr_optins if cleared else None
    out["clr_way"] = "1" if cleared else None
    # Known before settling (protocol.md §2.3 names only setl_id, setl_time, clr_optins and
    # clr_way null in a pre-settlement; found from outside: a HIS filing its trial result by
    # clr_type, as Hebei's 2206 answers it, read null).
    out["clr_type"] = rec.clr_type or None
    if sign < 0:
        # The spec table spells it pdn_cash_pay for 2208; real centres answer psn_cash_pay.
        out["pdn_cash_pay"] = out["psn_cash_pay"]
        out["setl_type"] = "2"
    return out
