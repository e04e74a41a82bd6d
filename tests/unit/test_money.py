"""Integer money: parsing from decimal text, the wire's text forms, and the one rounding rule."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core import money
from gateway.core.money import (
    AmountError,
    apply_bp,
    bp_text,
    ceil_div,
    cnt_text,
    fen_text,
    micro_text,
    price_times_cnt_fen,
    round_div,
    scaled,
    to_bp,
    to_cnt,
    to_fen,
    to_micro,
)


def half_up(n: int, d: int) -> int:
    """The reference: Decimal's ROUND_HALF_UP, which rounds half away from zero."""
    return int((Decimal(n) / Decimal(d)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --------------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("n", "d", "expected"),
    [
        (5, 10, 1),  # 0.5 fen -> 1 fen
        (-5, 10, -1),  # -0.5 fen -> -1 fen, not 0 (banker's or floor would differ)
        (4, 10, 0),
        (-4, 10, 0),
        (6, 10, 1),
        (-6, 10, -1),
        (15, 10, 2),  # 1.5 -> 2 (banker's rounding would also say 2)
        (25, 10, 3),  # 2.5 -> 3 (banker's rounding would say 2)
        (-25, 10, -3),
        (0, 7, 0),
        (10, 10, 1),
        (-10, 10, -1),
        (1, 3, 0),
        (2, 3, 1),
        (-2, 3, -1),
    ],
)
def test_round_div_is_half_away_from_zero(n: int, d: int, expected: int) -> None:
    assert round_div(n, d) == expected


@pytest.mark.parametrize("d", [0, -1])
def test_round_div_wants_a_positive_denominator(d: int) -> None:
    with pytest.raises(ZeroDivisionError):
        round_div(1, d)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**15), 10**15), st.integers(1, 10**9))
def test_round_div_agrees_with_decimal_half_up(n: int, d: int) -> None:
    assert round_div(n, d) == half_up(n, d)
    assert round_div(-n, d) == -round_div(n, d)  # symmetric around zero


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**12), 10**12), st.integers(0, 10_000))
def test_apply_bp_is_the_rounded_product(amount: int, bp: int) -> None:
    assert apply_bp(amount, bp) == round_div(amount * bp, 10_000) == half_up(amount * bp, 10_000)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12), st.integers(-(10**8), 10**8))
def test_price_times_cnt_is_rounded_to_fen(price_micro: int, cnt: int) -> None:
    # micro-yuan x 1/10000 units = 1e-10 yuan = 1e-8 fen
    assert price_times_cnt_fen(price_micro, cnt) == half_up(price_micro * cnt, 10**8)


def test_price_times_cnt_examples() -> None:
    assert price_times_cnt_fen(to_micro("25"), to_cnt("1")) == 2500
    assert price_times_cnt_fen(to_micro("0.333333"), to_cnt("3")) == 100  # 0.999999 -> 1.00
    assert price_times_cnt_fen(to_micro("0.005"), to_cnt("1")) == 1  # half a fen rounds up
    assert price_times_cnt_fen(to_micro("0.005"), to_cnt("-1")) == -1  # and away from zero
    assert price_times_cnt_fen(to_micro("4.52"), to_cnt("0.5")) == 226


@pytest.mark.parametrize(
    ("n", "d", "expected"), [(0, 3, 0), (1, 3, 1), (3, 3, 1), (4, 3, 2), (-4, 3, -1)]
)
def test_ceil_div(n: int, d: int, expected: int) -> None:
    assert ceil_div(n, d) == expected


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.34", 1234),
        ("12.3", 1230),
        ("12", 1200),
        ("12.500", 1250),  # trailing zeros beyond two places are still exact
        ("12.340000", 1234),
        ("0.01", 1),
        ("-0.01", -1),
        ("-12.30", -1230),
        ("0", 0),
        ("-0.00", 0),
        (" 7.50 ", 750),  # surrounding blanks from a CSV cell
        ("+3.00", 300),
        ("1E+2", 10000),  # exponent form of an exact amount
    ],
)
def test_to_fen_parses_the_decimal_text(text: str, fen: int) -> None:
    assert to_fen(text) == fen


@pytest.mark.parametrize(
    "text",
    [
        "12.345",  # more than two decimals is a bad request, never rounded
        "0.001",
        "-0.005",
        "12.3450",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        "abc",
        "1,000.00",
        "12.34.5",
        "1e18",  # beyond the BIGINT range in fen
    ],
)
def test_to_fen_refuses(text: str) -> None:
    with pytest.raises(AmountError):
        to_fen(text)


def test_numbers_and_strings_parse_alike() -> None:
    assert to_fen(12) == to_fen("12") == to_fen(Decimal("12.00")) == 1200
    assert to_fen(Decimal("12.5")) == to_fen("12.50") == 1250
    assert to_micro(5500) == to_micro("5500.000000") == 5_500_000_000
    with pytest.raises(AmountError):
        to_fen(Decimal("0.125"))
    with pytest.raises(AmountError):
        to_fen(Decimal("NaN"))
    with pytest.raises(AmountError):
        to_fen(True)  # a JSON true is not an amount


def test_other_scales() -> None:
    assert to_micro("0.000001") == 1
    assert to_micro("25") == 25_000_000
    with pytest.raises(AmountError):
        to_micro("0.0000001")
    assert to_cnt("1.5") == 15_000
    assert to_cnt("-2") == -20_000
    assert to_cnt("0.0001") == 1
    with pytest.raises(AmountError):
        to_cnt("0.00001")
    assert to_bp("0.10") == 1000
    assert to_bp("1") == 10_000
    assert to_bp("0.0500") == 500
    with pytest.raises(AmountError):
        to_bp("0.00005")


def test_error_names_the_field() -> None:
    with pytest.raises(AmountError, match="det_item_fee_sumamt"):
        to_fen("1.234", "det_item_fee_sumamt")


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (-1, "-0.01"),
        (100, "1.00"),
        (-1230, "-12.30"),
        (123456, "1234.56"),
    ],
)
def test_fen_text(fen: int, text: str) -> None:
    assert fen_text(fen) == text


def test_other_texts() -> None:
    assert bp_text(9000) == "0.9000"
    assert bp_text(10_000) == "1.0000"
    assert bp_text(0) == "0.0000"
    assert bp_text(-500) == "-0.0500"
    assert micro_text(5_500_000_000) == "5500.000000"
    assert micro_text(-1) == "-0.000001"
    assert cnt_text(15_000) == "1.5000"
    assert cnt_text(-1) == "-0.0001"


@given(st.integers(-(10**16) + 1, 10**16 - 1))  # every amount the interface's 16,2 carries
def test_fen_text_round_trips(fen: int) -> None:
    assert to_fen(fen_text(fen)) == fen


@given(st.integers(-(10**12), 10**12))
def test_micro_and_cnt_texts_round_trip(n: int) -> None:
    assert to_micro(micro_text(n)) == n
    assert to_cnt(cnt_text(n)) == n
    assert to_bp(bp_text(n)) == n


@given(
    st.from_regex(r"-?[0-9]{1,32}(\.[0-9]{0,12})?", fullmatch=True),
    st.sampled_from([2, 4, 6]),
)
@example("99999999999999.99", 2)  # the largest 16,2 amount
@example("100000000000000", 2)  # one fen past it
@example("-100000000000000.00", 2)
@example("99999999999999.9999", 4)
@example("007.5000000", 2)
@example("-0.000", 2)
@example("12.", 2)
@example("12.345", 2)
@example("10000000000000000000000000.001", 2)  # past 28 digits: no rounding first
def test_plain_text_reads_as_its_decimal(text: str, places: int) -> None:
    """The digits route for plain texts gives what the Decimal route gives: the value, or the
    same refusal (too many decimals, out of range)."""

    def outcome(value: str | Decimal) -> int | str:
        try:
            return money.scaled(value, places, "金额")
        except AmountError as exc:
            return str(exc)

    assert outcome(text) == outcome(Decimal(text))


@pytest.mark.parametrize(
    ("value", "places", "whole"),
    [("99999999999999999999.00", 2, 14), ("100000000000000", 2, 14), (10**11, 6, 10)],
)
def test_a_number_past_sixteen_digits_is_told_how_many_it_may_have(
    value: str | int, places: int, whole: int
) -> None:
    """Found from outside: "…pric超出范围" alone, and the clerk could not tell what to correct."""
    with pytest.raises(
        AmountError,
        match=f"超出范围：接口的数值最多16位数字，其中{places}位小数，整数部分最多{whole}位",
    ):
        scaled(value, places, "pric")
