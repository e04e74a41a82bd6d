"""Money, ratios and quantities as integers, and the one rounding rule.

Inside the gateway money is integer fen, ratios are basis points (10000 = 100%), prices are
integer micro-yuan (the wire's 16,6) and quantities integer 1/10000 units (the wire's 16,4).
Conversion happens only at the protocol edge and always from the decimal text, never a float.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

BP = 10_000
CNT_SCALE = 10_000  # cnt carries up to four decimals
PRICE_SCALE = 1_000_000  # pric and pric_uplmt_amt carry up to six decimals (micro-yuan)
# micro-yuan x cnt units -> fen: 1e-6 yuan * 1e-4 = 1e-10 yuan = 1e-8 fen
_PRICE_CNT_TO_FEN = PRICE_SCALE * CNT_SCALE // 100
# Twice the divisors, for the inlined half-away-from-zero rounding below.
_TWO_BP = 2 * BP
_TWO_PRICE_CNT_TO_FEN = 2 * _PRICE_CNT_TO_FEN


class AmountError(ValueError):
    """A decimal on the wire that is not a valid amount of its kind."""


def round_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to an integer half away from zero (ROUND_HALF_UP)."""
    if denominator <= 0:
        raise ZeroDivisionError("denominator must be positive")
    # floor((2|n| + d) / 2d) is |n|/d rounded half up; one floor division, no divmod (hot path)
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((denominator - 2 * numerator) // (2 * denominator))


def ceil_div(numerator: int, denominator: int) -> int:
    """Ceiling of numerator / denominator for a positive denominator."""
    return -((-numerator) // denominator)


def apply_bp(amount: int, bp: int) -> int:
    """amount x bp / 10000, rounded once to whole fen."""
    # round_div(amount * bp, BP), inlined because a call costs as much as the arithmetic and
    # this runs on every class-B line; tests/unit/test_money.py holds the two equal.
    n = amount * bp
    if n >= 0:
        return (2 * n + BP) // _TWO_BP
    return -((BP - 2 * n) // _TWO_BP)


# A plain decimal text, as every amount on the wire is once its grammar has passed
# (adapters.national.wire): read by its digits, which is a tenth of the Decimal route's cost
# and gives the same value. Anything else (blanks, "+", exponents, "12.") takes that route.
_PLAIN = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
# The interface's numbers are decimal(16, p) (amounts 16,2, prices 16,6, quantities 16,4): at
# most sixteen digits, so every one of them, scaled to its integer, is below 10**16. A larger
# one is not a number the interface carries (a client reading doubles would lose its last fen).
_LIMIT = 10**16
_LONGEST_WHOLE = 30  # more digits (leading zeros, or far out of range) go the Decimal route


def _out_of_range(what: str, places: int) -> AmountError:
    """Past the interface's sixteen digits, said with the digits it allows before the point
    (found from outside: "超出范围" alone, and the clerk could not tell what to correct)."""
    return AmountError(
        f"{what}超出范围：接口的数值最多16位数字，其中{places}位小数，整数部分最多{16 - places}位"
    )


def scaled(value: Decimal | int | str, places: int, what: str) -> int:
    """A number with at most `places` decimals as an integer of that scale; more decimals or
    a value past the interface's sixteen digits is an AmountError naming `what`."""
    if isinstance(value, int) and not isinstance(value, bool):
        scale: int = 10**places
        if abs(value) * scale >= _LIMIT:
            raise _out_of_range(what, places)
        return value * scale
    plain = _PLAIN.fullmatch(value) if type(value) is str else None
    if plain is not None:
        sign, whole, fraction = plain.groups()
        return from_digits(sign, whole, fraction, places, what)
    return _by_decimal(value, places, what)


def shown(literal: str) -> str:
    """The offending text as a clerk can read it: its first 20 characters, invisible ones
    escaped."""
    cut = literal[:20]
    return cut if cut.isprintable() else ascii(cut)[1:-1]


def typed(value: int | str, places: int, what: str) -> int:
    """An amount a person typed (a clerk's line of a manual claim): a whole number, or text in
    the plain grammar only. `scaled` reads reference files, whose cells may carry blanks, a
    sign or an exponent; Decimal() beneath it also takes "６０" (full-width), "60." and "60_0"
    (as 600: found from outside, a typing slip in a manual claim's line made a tenfold amount)."""
    if isinstance(value, int):
        return scaled(value, places, what)
    if not value:
        raise AmountError(f"{what}未填写")
    plain = _PLAIN.fullmatch(value)
    if plain is None:
        raise AmountError(f"{what}格式错误（“{shown(value)}”），应为半角阿拉伯数字，如12.30")
    sign, whole, fraction = plain.groups()
    return from_digits(sign, whole, fraction, places, what)


def from_digits(sign: str, whole: str, fraction: str | None, places: int, what: str) -> int:
    """A plain decimal's parts (its sign, the digits before and after the point) scaled by
    `places` decimals: the value, or the refusal the Decimal route would give. The wire reads
    its amounts' parts with its own grammar and comes here without a second match."""
    # Trailing zeros beyond the allowed places ("12.500") are still exact.
    fraction = fraction.rstrip("0") if fraction else ""
    if len(fraction) > places:
        raise AmountError(f"{what}最多{places}位小数")
    if len(whole) > _LONGEST_WHOLE:
        return _by_decimal(f"{sign}{whole}.{fraction or 0}", places, what)
    digits: int = int(whole + fraction) * 10 ** (places - len(fraction))
    if digits >= _LIMIT:
        raise _out_of_range(what, places)
    return -digits if sign else digits


def _by_decimal(value: Decimal | int | str, places: int, what: str) -> int:
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise AmountError(f"{what}不是有效的数字") from exc
    if not d.is_finite():
        raise AmountError(f"{what}不是有效的数字")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    # Trailing zeros beyond the allowed places ("12.500") are still exact. Dropped at the
    # text's own precision: the default context's 28 digits would round a longer text first.
    if exponent < -places:
        d = d.normalize(Context(prec=max(1, len(d.as_tuple().digits))))
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -places:
        raise AmountError(f"{what}最多{places}位小数")
    result = d.scaleb(places)
    if abs(result) >= _LIMIT:
        raise _out_of_range(what, places)
    return int(result)


def to_fen(value: Decimal | int | str, what: str = "金额") -> int:
    """Yuan with at most two decimals -> fen; more decimals is a bad request, not rounded."""
    return scaled(value, 2, what)


def to_micro(value: Decimal | int | str, what: str = "单价") -> int:
    """A price with at most six decimals -> micro-yuan."""
    return scaled(value, 6, what)


def to_cnt(value: Decimal | int | str, what: str = "数量") -> int:
    """A quantity with at most four decimals -> 1/10000 units."""
    return scaled(value, 4, what)


def to_bp(value: Decimal | int | str, what: str = "比例") -> int:
    """A ratio such as 0.10 -> basis points (1000)."""
    return scaled(value, 4, what)


def price_times_cnt_fen(price_micro: int, cnt: int) -> int:
    """round(price x cnt) in fen, for the amount check and price caps."""
    # round_div(price_micro * cnt, _PRICE_CNT_TO_FEN), inlined for the same reason: it runs
    # once or twice per fee line.
    n = price_micro * cnt
    if n >= 0:
        return (2 * n + _PRICE_CNT_TO_FEN) // _TWO_PRICE_CNT_TO_FEN
    return -((_PRICE_CNT_TO_FEN - 2 * n) // _TWO_PRICE_CNT_TO_FEN)


# %-formatting over divmod: the answer of a five-line sale writes about fifty of these, and an
# f-string with a sign and a format spec costs half as much again (benchmarks/RESULTS.md).
def fen_text(fen: int) -> str:
    """Fen -> the wire's two-decimal yuan text ("-12.30")."""
    if fen >= 0:
        return "%d.%02d" % divmod(fen, 100)  # noqa: UP031 (speed, see above)
    return "-%d.%02d" % divmod(-fen, 100)  # noqa: UP031


def bp_text(bp: int) -> str:
    """Basis points -> the wire's 5,4 ratio text ("0.9000")."""
    if bp >= 0:
        return "%d.%04d" % divmod(bp, BP)  # noqa: UP031
    return "-%d.%04d" % divmod(-bp, BP)  # noqa: UP031


def micro_text(micro: int) -> str:
    """Micro-yuan -> six-decimal text."""
    if micro >= 0:
        return "%d.%06d" % divmod(micro, PRICE_SCALE)  # noqa: UP031
    return "-%d.%06d" % divmod(-micro, PRICE_SCALE)  # noqa: UP031


def cnt_text(cnt: int) -> str:
    """1/10000 units -> four-decimal text."""
    if cnt >= 0:
        return "%d.%04d" % divmod(cnt, CNT_SCALE)  # noqa: UP031
    return "-%d.%04d" % divmod(-cnt, CNT_SCALE)  # noqa: UP031
