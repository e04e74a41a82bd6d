"""Envelope decoding: lenient where real clients differ, strict where the gateway needs it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.national import envelope
from adapters.national.envelope import decode_input, decode_request, encode_response, ref_msgid
from adapters.national.wire import In2206, fen, micro, quantity, when
from gateway.protocol.errors import BadRequest


def _env(**kw: object) -> bytes:
    base: dict[str, object] = {
        "infno": "2206",
        "msgid": "H44180000001202601010000000001",
        "fixmedins_code": "H44180000001",
        "infver": "V1.0",
        "input": {"data": {"psn_no": "1"}},
    }
    base.update(kw)
    return msgspec.json.encode(base)


def test_input_as_object_or_string_decodes_the_same() -> None:
    as_object = decode_request(_env())
    as_string = decode_request(_env(input='{"data": {"psn_no": "1"}}'))
    assert decode_input(as_object, In2206).data == decode_input(as_string, In2206).data


def test_codes_may_be_numbers() -> None:
    req = decode_request(_env(infno=2206, infver=1, opter_type=1))
    assert req.infno == "2206" and req.opter_type == "1"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "为空"),
        (b"not json", "JSON"),
        (_env(infno=None), "infno"),
        (_env(infno="22O7"), "格式"),
        (_env(msgid=None), "msgid"),
        (_env(msgid="a b"), "msgid"),
        (_env(fixmedins_code=""), "fixmedins_code"),
        (_env(infver="2.0"), "版本"),
        (_env(input=[1]), "对象"),
        (_env(input=True), "对象"),
        (_env(input="not json"), "input"),
    ],
)
def test_bad_envelopes(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as err:
        req = decode_request(body)
        decode_input(req, In2206)
    assert fragment in err.value.err_msg


def test_path_infno_must_agree() -> None:
    assert decode_request(_env(infno=None), "1101").infno == "1101"
    with pytest.raises(BadRequest):
        decode_request(_env(), "1101")


def test_mistyped_field_names_the_field_in_chinese() -> None:
    req = decode_request(_env(input={"data": {"psn_no": [1]}}))
    with pytest.raises(BadRequest) as err:
        decode_input(req, In2206)
    assert "data.psn_no" in err.value.err_msg and "数组" in err.value.err_msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("12.5"), 1250),
        ("12.50", 1250),
        (12, 1200),
        ("0", 0),
    ],
)
def test_amounts_from_numbers_and_text(value: object, expected: int) -> None:
    assert fen(value, "x") == expected


def test_negative_amounts_only_where_the_field_allows_them() -> None:
    assert fen("-3.10", "x", signed=True) == -310
    with pytest.raises(BadRequest):
        fen("-3.10", "x")


@pytest.mark.parametrize(
    "value",
    [
        "1.001",
        Decimal("0.30000000000000004"),
        True,
        [1],
        "NaN",
        "Infinity",
        "1e400",
        Decimal("1E+2"),  # the exponent form is not an amount's text
    ],
)
def test_bad_amounts(value: object) -> None:
    with pytest.raises(BadRequest):
        fen(value, "x")


def test_optional_amount_null_or_empty() -> None:
    assert fen(None, "x", optional=True) is None
    assert fen("", "x", optional=True) is None
    with pytest.raises(BadRequest):
        fen(None, "x")


def test_prices_quantities_and_times() -> None:
    assert micro("12.345678", "p") == 12_345_678
    assert quantity("-2.5", "c", signed=True) == -25_000  # a 2301 refund line
    with pytest.raises(BadRequest):
        quantity("-2.5", "c")
    with pytest.raises(BadRequest):
        quantity("1.00001", "c")
    assert when("2026-01-02 03:04:05", "t") == dt.datetime(2026, 1, 2, 3, 4, 5)
    with pytest.raises(BadRequest):
        when("02/01/2026", "t")


def test_response_envelope_shape() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)
    ok = msgspec.json.decode(
        encode_response(region="441800", received=now, output={"a": 1}, now=now)
    )
    assert (
        ok["infcode"] == 0 and ok["output"] == {"a": 1} and ok["refmsg_time"] == "20260102030405678"
    )
    assert len(ok["inf_refmsgid"]) == 30 and ok["inf_refmsgid"].startswith("44180020260102030405")
    bad = msgspec.json.decode(
        encode_response(region="441800", received=now, output={"a": 1}, err_msg="错")
    )
    assert bad["infcode"] == -1 and bad["output"] == {} and bad["err_msg"] == "错"


def test_ref_msgids_are_unique() -> None:
    now = dt.datetime.now()
    assert len({ref_msgid("441800", now) for _ in range(1000)}) == 1000


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2999, 12, 31)))
def test_answer_times_are_the_wire_forms(now: dt.datetime) -> None:
    """refmsg_time/respond_time (yyyyMMddHHmmssSSS) and the receiver's msgid (region, then
    yyyyMMddHHmmss, then a 10-digit serial), as strftime writes them."""
    assert envelope.stamp(now) == now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 1000:03d}"
    ref = envelope.ref_msgid("4418", now)
    assert ref[:6] == "441800" and ref[6:20] == now.strftime("%Y%m%d%H%M%S")
    assert len(ref) == 30 and ref[20:].isdigit()
