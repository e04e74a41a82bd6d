"""What a client lineage sends and reads, as data; the flows in test_flows.py are generic.

A lineage is one public client code base. Its Shape says how it fills the envelope, how it
writes amounts (JSON numbers or strings), which regional extras it adds to which node, which
revision codes it calls, and which answer fields it reads with the type it parses them into.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# How a client parses an answer field: C# `string` takes a string or null (Newtonsoft also
# turns a number into its text); `decimal` needs a number; `decimal?` a number or null.
TEXT = "string"
DEC = "decimal"
DEC_NULL = "decimal?"
# Java clients reading a fastjson/Jackson map: `(int)` casts need a JSON integer; a BigDecimal
# field needs a number written with a decimal point (fastjson reads 520 as an Integer, which
# the cast to BigDecimal refuses); dates parsed with yyyy-MM-dd HH:mm:ss need that text.
INT = "int"
BIGDEC = "BigDecimal"
DATETIME = "yyyy-MM-dd HH:mm:ss"
# Go clients reading a `map[string]any`: `v.(string)` takes only a JSON string (null or a
# number reads as "", silently); `v.(float64)` only a JSON number (the DEC kind).
GO_STRING = "Go string"


def number(text: str) -> Decimal:
    """An amount sent as a JSON number (C# decimal, Java BigDecimal)."""
    return Decimal(text)


def decimal_ordinal(n: int) -> Decimal:
    """A whole number a C# `decimal` property holds, as Newtonsoft writes it: 1 as 1.0."""
    return Decimal(n).quantize(Decimal("0.0"))


def string(text: str) -> str:
    """An amount sent as a JSON string (C# string properties, Java String)."""
    return text


@dataclass(frozen=True)
class Shape:
    name: str
    sources: tuple[str, ...]  # repository and file of every shape below
    hospital: str
    pharmacy: str | None
    region: str
    psn_no: str
    certno: str
    insutype: str
    envelope: Mapping[str, Any]  # envelope fields as the client fills them, extras included
    amount: Callable[[str], Any]  # how totals are written
    line_amount: Callable[[str], Any]  # how fee-line amounts are written
    split_amount: Callable[[str], Any] | None  # 2207/2304 split fields; None: not sent
    extras: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # node -> extras
    codes: Mapping[str, str] = field(default_factory=dict)  # base infno -> the code it calls
    input_as_string: bool = False
    reads: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    flows: frozenset[str] = frozenset()
    path_per_infno: bool = False  # posts to /hsa/hgs/{infno} (Guangdong's x-tif gateway)
    card_no: str = ""  # the person's social-security card number (1101 with certificate 03)
    page: Callable[[int], Any] = int  # how 13xx page_num / page_size are written
    # How a diagnosis's diag_srt_no is written: C# clients that model it as `decimal` send 1m
    # as 1.0 (TeaHZ/185 Plat/Models/ZYDJ/T2402.cs, T2403.cs with Newtonsoft).
    ordinal: Callable[[int], Any] = int
    page_size: int = 2
    query_filters: Mapping[str, Any] = field(default_factory=dict)  # 13xx filters sent empty
    upload_3301: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    revoke_3302: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None

    def code(self, infno: str) -> str:
        return self.codes.get(infno, infno)

    def extra(self, node: str) -> dict[str, Any]:
        return dict(self.extras.get(node, {}))


SETLINFO_AMOUNTS = (
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
)


def setlinfo_reads(kind: str, *extra: str) -> dict[str, str]:
    """The setlinfo a C# client of the spec's table parses (T2207/T2304 style)."""
    reads = {
        "mdtrt_id": TEXT,
        "setl_id": TEXT,
        "psn_no": TEXT,
        "psn_name": TEXT,
        "insutype": TEXT,
        "psn_type": TEXT,
        "setl_time": TEXT,
        "med_type": TEXT,
        "medins_setl_id": TEXT,
        "clr_optins": TEXT,
        "clr_way": TEXT,
        "clr_type": TEXT,
        "pool_prop_selfpay": kind,
        "balc": kind,
        "acct_mulaid_pay": kind,
        "hosp_part_amt": kind,
        **dict.fromkeys(SETLINFO_AMOUNTS, kind),
    }
    for name in extra:
        reads[name] = kind
    return reads


SETLDETAIL_READS = {
    "fund_pay_type": TEXT,
    "inscp_scp_amt": DEC_NULL,
    "crt_payb_lmt_amt": DEC_NULL,
    "fund_payamt": DEC_NULL,
    "fund_pay_type_name": TEXT,
    "setl_proc_info": TEXT,
}
LINE_READS = {
    "feedetl_sn": TEXT,
    "det_item_fee_sumamt": DEC_NULL,
    "cnt": DEC_NULL,
    "pric": DEC_NULL,
    "pric_uplmt_amt": DEC_NULL,
    "selfpay_prop": DEC_NULL,
    "fulamt_ownpay_amt": DEC_NULL,
    "overlmt_amt": DEC_NULL,
    "preselfpay_amt": DEC_NULL,
    "inscp_scp_amt": DEC_NULL,
    "chrgitm_lv": TEXT,
    "med_chrgitm_type": TEXT,
}
