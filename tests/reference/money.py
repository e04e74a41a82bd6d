"""Fen, basis points and the one rounding rule of settlement-rules.md ("Units and rounding")."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal

# "a product or quotient is rounded to whole fen half away from zero (... Python's
# decimal.ROUND_HALF_UP)". A wide context so that no intermediate product is ever rounded.
_EXACT = Context(prec=80, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)
BP = 10_000


def round_fen(value: Decimal) -> int:
    """Whole fen, half away from zero."""
    return int(value.quantize(_ONE, rounding=ROUND_HALF_UP, context=_EXACT))


def ratio(amount_fen: int, bp: int) -> int:
    """`round(amount × bp / 10000)`: the only way a ratio is applied to money."""
    return round_fen(_EXACT.divide(Decimal(amount_fen) * bp, Decimal(BP)))


def quotient(numerator: int, denominator: int) -> int:
    """`round(numerator / denominator)`, e.g. T(Q) differences in fen·bp back to fen."""
    return round_fen(_EXACT.divide(Decimal(numerator), Decimal(denominator)))


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def yuan_to_fen(text: str | Decimal) -> int:
    """Two-decimal yuan text (or an exact Decimal) to fen; more decimals is an error, not rounding."""
    value = Decimal(text) if isinstance(text, str) else text
    fen = value * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{text!r} has more than two decimals")
    return int(fen)


def fen_text(fen: int) -> str:
    """Fen as the wire's two-decimal yuan text."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def bp_text(bp: int) -> str:
    """Basis points as a four-decimal ratio (1000 → "0.1000")."""
    return f"{bp // BP}.{bp % BP:04d}"


def prop_to_bp(text: str) -> int:
    """A ratio text like "0.15" to basis points (exact)."""
    value = Decimal(text) * BP
    if value != value.to_integral_value():
        raise ValueError(f"ratio {text!r} is finer than a basis point")
    return int(value)


def line_total_fen(pric: Decimal, cnt: Decimal) -> int:
    """`round(pric × cnt)` in fen (check 1 of section 1)."""
    return round_fen(_EXACT.multiply(_EXACT.multiply(pric, cnt), Decimal(100)))
