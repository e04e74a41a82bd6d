"""A manual claim's lines as a clerk types them (console form, API, CLI file): amounts in the
plain grammar only, as the README says of every amount. Found from outside: "60_0" was read as
600.00 (a typing slip made a tenfold bill), and full-width digits, exponents, a sign, blanks and
a trailing point were taken."""

from __future__ import annotations

import pytest

from gateway.protocol.errors import BadRequest, GatewayError
from gateway.services.manual_claims import lines_from_rows, lines_from_text


def _row(amount: object, pric: object = "60", cnt: object = "1") -> dict[str, object]:
    return {
        "feedetl_sn": "1",
        "medins_list_codg": "ZL0001",
        "pric": pric,
        "cnt": cnt,
        "det_item_fee_sumamt": amount,
        "fee_ocur_time": "2026-06-01 09:00:00",
    }


@pytest.mark.parametrize(
    "typed", ["60_0", "６０", "6e1", ".6e2", " 60", "+60", "60.", "60 ", "0x3C"]
)
def test_an_amount_outside_the_plain_grammar_is_refused_naming_the_field(typed: str) -> None:
    for row in (_row(typed), _row("60", pric=typed), _row("60", cnt=typed)):
        with pytest.raises(BadRequest, match=r"格式错误.*应为半角阿拉伯数字"):
            lines_from_rows([row])


def test_plain_amounts_and_whole_numbers_are_read_exactly() -> None:
    (line,) = lines_from_rows([_row("60.00", pric="12.000000", cnt=5)])
    assert (line.amount_fen, line.pric_micro, line.cnt) == (6000, 12_000_000, 50_000)
    (typed,) = lines_from_text("1|ZL0001|60|1|60.5|2026-06-01 09:00:00")
    assert typed.amount_fen == 6050


def test_a_missing_amount_says_so() -> None:
    with pytest.raises(BadRequest, match="金额det_item_fee_sumamt未填写"):
        lines_from_rows([_row("")])


def test_a_serial_and_an_approval_flag_are_held_as_an_uploads_are() -> None:
    """Found from outside: a 200-character serial and hosp_appr_flag "9" were taken."""
    with pytest.raises(BadRequest, match="最长30位"):
        lines_from_rows([{**_row("60"), "feedetl_sn": "F" * 31}])
    with pytest.raises(GatewayError, match="hosp_appr_flag只能为0、1或2"):
        lines_from_rows([{**_row("60"), "hosp_appr_flag": "9"}])
    (line,) = lines_from_rows([{**_row("60"), "feedetl_sn": "F" * 30, "hosp_appr_flag": "1"}])
    assert line.hosp_appr_flag == "1"
