"""Two systems' answers to one settlement, compared field by field and the difference diagnosed.

A parallel run (docs/emergency.md "Parallel run") prices every settlement twice: the answer the
counter got and the shadow's pre-settlement of the same request. This module says whether they
differ in money, which lines differ, and by which rule: catalog class, self-pay ratio, price
cap, deductible, pool ratio, annual cap, personal account. Pure: decoded answers in, a
`Diagnosis` out; amounts are compared as exact decimals (never floats), shown as the wire's text.

What is compared is the money of this settlement: `setlinfo` amounts and the pool ratio,
`setldetail` funds, and each line's split and class. What each system remembers about the person
is not: the account balance and a fund's remaining cap (`balc`, `crt_payb_lmt_amt`) differ as soon
as only one of the two writes, without this settlement's money differing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


class Cause(enum.StrEnum):
    """The rule a difference is attributed to, in the order a settlement's first cause is named
    (a line's class explains its amounts, which explain the totals)."""

    CATALOG_CLASS = "catalog_class"  # 目录匹配/收费项目等级 (chrgitm_lv, or covered vs not)
    SELFPAY_RATIO = "selfpay_ratio"  # 先行自付比例 (selfpay_prop)
    PRICE_CAP = "price_cap"  # 限价 (pric_uplmt_amt, overlmt_amt)
    DEDUCTIBLE = "deductible"  # 起付线 (act_pay_dedc)
    POOL_RATIO = "pool_ratio"  # 统筹支付比例 (pool_prop_selfpay)
    CAP_REACHED = "cap_reached"  # 年度封顶线 (the pool paid less than its ratio would)
    ACCOUNT = "account"  # 个人账户 (acct_pay with the same fund total)
    REFUSAL = "refusal"  # one system settled, the other refused
    OTHER = "other"  # a money difference none of the rules above explains


CAUSES = tuple(Cause)
CAUSE_NAMES = {
    Cause.CATALOG_CLASS: "目录匹配/收费项目等级不一致",
    Cause.SELFPAY_RATIO: "先行自付比例不一致",
    Cause.PRICE_CAP: "限价不一致",
    Cause.DEDUCTIBLE: "起付线不一致",
    Cause.POOL_RATIO: "统筹支付比例不一致",
    Cause.CAP_REACHED: "封顶线/基金支付限额不一致",
    Cause.ACCOUNT: "个人账户支付不一致",
    Cause.REFUSAL: "一方结算成功、另一方拒绝",
    Cause.OTHER: "其他金额差异",
}

# setlinfo's money (national names), in answer order; the pool ratio is compared on its own.
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
    "psn_pay",
    "acct_pay",
    "psn_cash_pay",
    "hosp_part_amt",
)
POOL_RATIO_FIELD = "pool_prop_selfpay"
LINE_AMOUNTS = ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
# A line's class: the national answer spells it chrgitm_lv; some centres chrg_item_lv.
LINE_CLASS_FIELDS = ("chrgitm_lv", "chrg_item_lv")
LINE_NODES = ("detlcutinfo", "result")  # 2101/2102 lines; 2204/2301-style results
REQUEST_LINE_NODES = ("drugdetail", "feedetail")
# The line splits that add up to the settlement's, and the rule each follows from.
_TOTAL_OF_LINES = {
    "fulamt_ownpay_amt": Cause.CATALOG_CLASS,
    "preselfpay_amt": Cause.SELFPAY_RATIO,
    "overlmt_selfpay": Cause.PRICE_CAP,
    "inscp_scp_amt": Cause.OTHER,
}
# What a fund one side did not list paid, written as the wire writes an amount (found from
# outside: stored as "0" beside the other side's "0.00").
_NOTHING = Decimal("0.00")


# Funds past the pool: each follows from what the pool left, under its own rules.
_LATER_FUNDS = ("cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay")
# What the patient pays and the totals: consequences of everything above.
_CONSEQUENCES = (
    "fund_pay_sumamt",
    "psn_part_amt",
    "psn_pay",
    "psn_cash_pay",
    "medfee_sumamt",
    "hosp_part_amt",
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One field that differs: where (`setlinfo`, `setldetail:<fund_pay_type>`,
    `line:<feedetl_sn>`), its national name, the two values as the answers wrote them, and the
    rule it is attributed to."""

    place: str
    field: str
    answered: str | None
    shadowed: str | None
    cause: Cause
    item: str = ""  # a line's medins_list_codg, from the request


@dataclass(frozen=True, slots=True)
class Diagnosis:
    differences: tuple[Difference, ...] = ()

    @property
    def differs(self) -> bool:
        return bool(self.differences)

    @property
    def causes(self) -> tuple[Cause, ...]:
        """Every cause found, in `Cause` order."""
        found = {d.cause for d in self.differences}
        return tuple(c for c in CAUSES if c in found)

    @property
    def cause(self) -> Cause | None:
        causes = self.causes
        return causes[0] if causes else None

    @property
    def lines(self) -> tuple[str, ...]:
        """The lines (feedetl_sn) that differ, in answer order."""
        seen: dict[str, None] = {}
        for d in self.differences:
            if d.place.startswith("line:"):
                seen.setdefault(d.place[5:])
        return tuple(seen)

    @property
    def item(self) -> str | None:
        """The first differing line's item, for the headline ("item Y")."""
        first = self.cause
        for d in self.differences:
            if d.item and d.cause is first:
                return d.item
        return next((d.item for d in self.differences if d.item), None)

    def summary(self) -> str:
        """The diagnosis as a team reads it, one clause per cause."""
        parts = []
        for cause in self.causes:
            ds = [d for d in self.differences if d.cause is cause]
            items = sorted({d.item for d in ds if d.item})
            where = f"（项目{'、'.join(items)}）" if items else ""
            first = ds[0]
            parts.append(
                f"{CAUSE_NAMES[cause]}{where}：{first.field} 结算方{first.answered}，"
                f"影子方{first.shadowed}"
            )
        return "；".join(parts)

    def to_builtins(self) -> dict[str, Any]:
        return {
            "differs": self.differs,
            "cause": self.cause,
            "causes": list(self.causes),
            "lines": list(self.lines),
            "summary": self.summary(),
            "differences": [
                {
                    "place": d.place,
                    "field": d.field,
                    "answered": d.answered,
                    "shadowed": d.shadowed,
                    "cause": d.cause,
                    "item": d.item,
                }
                for d in self.differences
            ],
        }


def _decimal(value: Any) -> Decimal | None:
    """An answered number (a Decimal from the decoder, text, or an integer) exactly; None when
    absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | str):
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _same_number(a: Any, b: Any) -> bool:
    """Equal as numbers; a field one side leaves out is not a difference (centres' answers name
    optional fields differently), but one side's number against the other's garbage is."""
    if a is None or b is None:
        return True
    da, db = _decimal(a), _decimal(b)
    if da is None or db is None:
        return _text(a) == _text(b)
    return da == db


# A price cap at or above this is "no cap" (this gateway answers 999999.000000, as Hebei's centre
# does); 0 or nothing is "no cap" too (found from outside: an old system answering "0" for an
# uncapped item made every comparison differ, blamed on price_cap, which the protective action
# counts).
_NO_CAP_FROM = 999999


def _same_cap(a: Any, b: Any) -> bool:
    """Price caps equal, every spelling of "no cap" alike."""
    if a is None or b is None:
        return True

    def cap(value: Any) -> Any:
        d = _decimal(value)
        if d is None:
            shown = _text(value) or ""
            return None if not shown.strip() else shown
        return None if d <= 0 or d >= _NO_CAP_FROM else d

    return bool(cap(a) == cap(b))


def refused(envelope: Mapping[str, Any]) -> bool:
    """An answer that settled nothing: infcode other than 0, or no output, or an output without
    its settlement (found from outside: an old system's `"output": {}` was scored as one fund's
    small difference, every total it left out taken as agreeing)."""
    code = _decimal(envelope.get("infcode"))
    output = envelope.get("output")
    return (
        code != 0
        or not isinstance(output, Mapping)
        or not isinstance(output.get("setlinfo"), Mapping)
    )


def items_of(request_input: Any) -> dict[str, str]:
    """feedetl_sn -> medins_list_codg of the request's lines (2101/2102 drugdetail, 2204-style
    feedetail): the answers name lines by number only."""
    out: dict[str, str] = {}
    if not isinstance(request_input, Mapping):
        return out
    for node in REQUEST_LINE_NODES:
        rows = request_input.get(node)
        if isinstance(rows, list):
            for row in rows:
                if isinstance(row, Mapping) and row.get("feedetl_sn") is not None:
                    out[str(row["feedetl_sn"])] = str(row.get("medins_list_codg") or "")
    return out


def _lines(output: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    for node in LINE_NODES:
        rows = output.get(node)
        if isinstance(rows, list):
            return {
                str(r.get("feedetl_sn")): r
                for r in rows
                if isinstance(r, Mapping) and r.get("feedetl_sn") is not None
            }
    return {}


def _funds(output: Mapping[str, Any]) -> dict[str, Any]:
    rows = output.get("setldetail")
    if not isinstance(rows, list):
        return {}
    out: dict[str, Any] = {}
    for r in rows:
        if isinstance(r, Mapping) and r.get("fund_pay_type"):
            out[str(r["fund_pay_type"])] = r.get("fund_payamt")
    return out


def _line_class(row: Mapping[str, Any]) -> str | None:
    for name in LINE_CLASS_FIELDS:
        if row.get(name) is not None:
            return str(row[name])
    return None


def _compare_line(
    sn: str, item: str, a: Mapping[str, Any], b: Mapping[str, Any]
) -> list[Difference]:
    """One line's differences, all attributed to the first rule that explains them."""
    place = f"line:{sn}"
    fields: list[tuple[str, Any, Any]] = []
    lv_a, lv_b = _line_class(a), _line_class(b)
    if lv_a is not None and lv_b is not None and lv_a != lv_b:
        fields.append(("chrgitm_lv", lv_a, lv_b))
    if not _same_cap(a.get("pric_uplmt_amt"), b.get("pric_uplmt_amt")):
        fields.append(("pric_uplmt_amt", a.get("pric_uplmt_amt"), b.get("pric_uplmt_amt")))
    for name in ("selfpay_prop", *LINE_AMOUNTS):
        if not _same_number(a.get(name), b.get(name)):
            fields.append((name, a.get(name), b.get(name)))
    if not fields:
        return []
    named = {f[0] for f in fields}
    if "chrgitm_lv" in named or "fulamt_ownpay_amt" in named:
        cause = Cause.CATALOG_CLASS  # the item is classed, or covered at all, differently
    elif "selfpay_prop" in named:
        cause = Cause.SELFPAY_RATIO
    elif "pric_uplmt_amt" in named or "overlmt_amt" in named:
        cause = Cause.PRICE_CAP
    elif "preselfpay_amt" in named:
        cause = Cause.SELFPAY_RATIO  # the same ratio applied to a different base
    else:
        cause = Cause.OTHER
    return [Difference(place, n, _text(x), _text(y), cause, item) for n, x, y in fields]


def compare(
    answered: Mapping[str, Any],
    shadowed: Mapping[str, Any],
    items: Mapping[str, str] | None = None,
) -> Diagnosis:
    """The counter's answer and the shadow's, both decoded envelopes (numbers as Decimal or
    text). Two refusals agree (neither settled anything); one refusal is a `refusal`."""
    items = items or {}
    a_refused, b_refused = refused(answered), refused(shadowed)
    if a_refused and b_refused:
        return Diagnosis()
    if a_refused or b_refused:
        return Diagnosis(
            (
                Difference(
                    "envelope",
                    "infcode",
                    _refusal_text(answered),
                    _refusal_text(shadowed),
                    Cause.REFUSAL,
                ),
            )
        )
    out_a: Mapping[str, Any] = answered["output"]
    out_b: Mapping[str, Any] = shadowed["output"]
    info_a = out_a.get("setlinfo") if isinstance(out_a.get("setlinfo"), Mapping) else {}
    info_b = out_b.get("setlinfo") if isinstance(out_b.get("setlinfo"), Mapping) else {}
    assert isinstance(info_a, Mapping) and isinstance(info_b, Mapping)

    # Lines first: a line's class or ratio explains the totals it adds up to.
    found: list[Difference] = []
    lines_a, lines_b = _lines(out_a), _lines(out_b)
    for sn in sorted(set(lines_a) | set(lines_b), key=_line_order(lines_a, lines_b)):
        item = items.get(sn, "")
        if sn not in lines_a or sn not in lines_b:
            found.append(
                Difference(
                    f"line:{sn}",
                    "feedetl_sn",
                    sn if sn in lines_a else None,
                    sn if sn in lines_b else None,
                    Cause.OTHER,
                    item,
                )
            )
            continue
        found += _compare_line(sn, item, lines_a[sn], lines_b[sn])
    line_causes = {d.cause for d in found}
    line_data = bool(lines_a and lines_b)

    differing = {
        name: (info_a.get(name), info_b.get(name))
        for name in (*SETTLEMENT_AMOUNTS, POOL_RATIO_FIELD)
        if not _same_number(info_a.get(name), info_b.get(name))
    }
    explained: set[Cause] = set(line_causes)

    def note(name: str, cause: Cause) -> None:
        a, b = differing[name]
        found.append(Difference("setlinfo", name, _text(a), _text(b), cause))
        explained.add(cause)

    # The line sums: explained by the lines when both sides list them, else by their own rule.
    for name, cause in _TOTAL_OF_LINES.items():
        if name in differing:
            if line_data and line_causes:
                note(name, next(c for c in CAUSES if c in line_causes))
            elif cause is not Cause.OTHER or not explained:
                note(name, cause)
            else:
                note(name, next(c for c in CAUSES if c in explained))
    if "act_pay_dedc" in differing:
        note("act_pay_dedc", Cause.DEDUCTIBLE)
    if POOL_RATIO_FIELD in differing:
        note(POOL_RATIO_FIELD, Cause.POOL_RATIO)
    if "hifp_pay" in differing:
        # The pool pays its ratio of what is left past the deductible, up to the cap left: with
        # the base, the deductible and the ratio the same, only the cap can make it differ.
        upstream = explained & {
            Cause.CATALOG_CLASS,
            Cause.SELFPAY_RATIO,
            Cause.PRICE_CAP,
            Cause.DEDUCTIBLE,
            Cause.POOL_RATIO,
            Cause.OTHER,
        }
        note("hifp_pay", _first(upstream) or Cause.CAP_REACHED)
    for name in _LATER_FUNDS:
        if name in differing:
            note(name, _first(explained) or Cause.OTHER)
    if "acct_pay" in differing:
        same_funds = "fund_pay_sumamt" not in differing
        note("acct_pay", (None if same_funds else _first(explained)) or Cause.ACCOUNT)
    for name in _CONSEQUENCES:
        if name in differing:
            note(name, _first(explained) or Cause.OTHER)

    funds_a, funds_b = _funds(out_a), _funds(out_b)
    for code in sorted(set(funds_a) | set(funds_b)):
        # A fund one side did not list paid nothing there.
        a, b = funds_a.get(code, _NOTHING), funds_b.get(code, _NOTHING)
        if not _same_number(a, b):
            found.append(
                Difference(
                    f"setldetail:{code}",
                    "fund_payamt",
                    _text(a),
                    _text(b),
                    _first(explained) or Cause.OTHER,
                )
            )
    return Diagnosis(tuple(found))


def _first(causes: set[Cause]) -> Cause | None:
    return next((c for c in CAUSES if c in causes), None)


def _line_order(a: Mapping[str, Any], b: Mapping[str, Any]) -> Any:
    order = {sn: i for i, sn in enumerate([*a, *(sn for sn in b if sn not in a)])}
    return order.__getitem__


def _refusal_text(envelope: Mapping[str, Any]) -> str:
    if not refused(envelope):
        return "0"
    if _decimal(envelope.get("infcode")) == 0:
        return "0 无结算信息(setlinfo)"
    message = envelope.get("err_msg")
    return f"{_text(envelope.get('infcode'))} {message or ''}".strip()
