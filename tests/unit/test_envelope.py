"""Envelope decoding: lenient where real clients differ, strict where the gateway needs it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from adapters.his.uploads import _upload_of
from adapters.national import envelope, wire
from adapters.national.envelope import (
    decode_input,
    decode_request,
    encode_response,
    ref_msgid,
    text,
)
from adapters.national.wire import In2206, day, fen, micro, quantity, when
from adapters.pos.pharmacy import In2101, purchase_of
from gateway.core.money import AmountError, scaled
from gateway.core.timestamps import as_local
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Kind


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
        # The whole body a number too large to hold: told in Chinese, not msgspec's English.
        (b"1e400", "公共输入参数格式错误：数值超出范围"),
    ],
)
def test_bad_envelopes(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as err:
        req = decode_request(body)
        decode_input(req, In2206)
    assert fragment in err.value.err_msg


def test_blanks_around_a_msgid_are_not_part_of_it() -> None:
    """docs/protocol.md: a code or id is read without the blanks around it (a fixed-width field
    padded with spaces), so the padded and the bare msgid are one message's; the journal keys
    and fingerprints them alike."""
    bare = decode_request(_env())
    padded = decode_request(_env(msgid=" H44180000001202601010000000001 "))
    assert padded.msgid == bare.msgid == "H44180000001202601010000000001"
    assert envelope.fingerprint(padded) == envelope.fingerprint(bare)


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
        Decimal("0.3000001"),  # more decimals, not a double's noise (that is read: below)
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


def test_a_boolean_price_or_quantity_is_told_as_one_not_as_missing() -> None:
    """Found from outside: `"cnt": true` was told the field was missing, where it was sent."""
    for read in (micro, quantity):
        with pytest.raises(BadRequest, match="字段cnt应为数字，实际为布尔值"):
            read(True, "cnt")
        with pytest.raises(BadRequest, match="缺少必填字段cnt"):
            read(None, "cnt")


def _one_by_one(value: str, name: str, places: int, signed: bool, label: str) -> int | str:
    """An amount read as it was before the wire and the digits shared one match: the grammar's
    checks, then the money rule's reading of the text; the value or the clerk's message."""
    try:
        literal = wire._decimal_text(value, name, places, signed, label)
        return scaled(literal, places, f"{label}{name}")
    except (BadRequest, AmountError) as exc:
        return str(exc)


@given(
    st.one_of(
        st.from_regex(r"-?[0-9]{1,34}(\.[0-9]{0,9})?", fullmatch=True),
        st.text(alphabet="-0123456789.e+ ０", max_size=12),
    ),
    st.sampled_from([(fen, 2, "金额字段"), (micro, 6, "字段"), (quantity, 4, "字段")]),
    st.booleans(),
)
@example("99999999999999.99", (fen, 2, "金额字段"), False)  # the largest 16,2 amount
@example("100000000000000", (fen, 2, "金额字段"), False)  # one fen past it
@example("0" * 40 + "12.30", (fen, 2, "金额字段"), False)  # past 30 digits, by Decimal
@example("0000010000000000000000000000000.001", (fen, 2, "金额字段"), False)
@example("12.3400000", (micro, 6, "字段"), False)
@example("-2.5", (quantity, 4, "字段"), True)
@example("-2.5", (quantity, 4, "字段"), False)
@example("-0", (fen, 2, "金额字段"), False)
@example("12.", (fen, 2, "金额字段"), False)
def test_an_amount_read_in_one_match_is_the_checks_one_by_one(
    text: str, kind: tuple[object, int, str], signed: bool
) -> None:
    """The wire reads a text's parts from the grammar's one match; the value, or the refusal
    with its words, is what the grammar's checks and the money rule give one after another."""
    read, places, label = kind

    def outcome() -> int | str:
        try:
            if read is fen:
                got = fen(text, "x", signed=signed)
                assert got is not None
                return got
            if read is quantity:
                return quantity(text, "x", signed=signed)
            return micro(text, "x")
        except BadRequest as exc:
            return str(exc)

    if text == "":
        return  # a missing field, refused before any number is read
    assert outcome() == _one_by_one(text, "x", places, signed and read is not micro, label)


@pytest.mark.parametrize(
    ("read", "largest", "past"),
    [
        (fen, "99999999999999.99", "100000000000000.00"),  # 16,2
        (micro, "9999999999.999999", "10000000000"),  # 16,6
        (quantity, "999999999999.9999", "1000000000000"),  # 16,4
    ],
)
def test_numbers_past_the_interfaces_sixteen_digits_are_refused(
    read: Any, largest: str, past: str
) -> None:
    """decimal(16, p): sixteen digits at most. 999999999999000.01 (fifteen before the point) was
    taken as an amount, and a client reading doubles loses its last fen of it."""
    assert read(largest, "x") == 10**16 - 1
    for too_large in (past, int(past.split(".")[0]), Decimal(past)):
        with pytest.raises(BadRequest, match="超出范围"):
            read(too_large, "x")


def test_a_json_number_is_judged_by_its_text() -> None:
    """A JSON number is read as the Decimal of its text; its verdict is the text's, whatever
    form the Decimal prints in (0.0000000 prints as 0E-7, which reads as an exponent)."""
    zero = envelope.json_number("0.0000000")
    assert str(zero) == "0E-7"  # the form that was refused as scientific notation
    assert fen(zero, "x") == fen("0.0000000", "x") == 0
    with pytest.raises(BadRequest, match="最多6位小数"):
        micro(envelope.json_number("0.0000001"), "pric")


def test_a_number_msgspec_cannot_hold_is_refused_in_the_clerks_words() -> None:
    body = _env(infno="2101", input={"druginfo": {}})
    req = decode_request(
        body.replace(b'"druginfo":{}', b'"druginfo":{"medfee_sumamt":' + b"9" * 5000 + b"}")
    )
    with pytest.raises(BadRequest) as refused:
        decode_input(req, In2101)
    message = str(refused.value)
    assert "druginfo.medfee_sumamt" in message and "超出范围" in message
    assert not any("a" <= ch.lower() <= "z" for ch in message.replace("druginfo.medfee_sumamt", ""))


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


@pytest.mark.parametrize("length", [1, 180, 189, 190, 191, 4000])
def test_err_msg_is_held_to_its_length_keeping_both_ends(length: int) -> None:
    """protocol.md gives err_msg 200 characters. Found from outside: a refusal quoting a
    1,000-digit value ran past 4,000; cut in the middle, the head still names the field and the
    tail still says what to do."""
    words = "人员编号" + "9" * length + "不存在，请核对"
    answer = msgspec.json.decode(
        encode_response(region="441800", received=dt.datetime.now(), output=None, err_msg=words)
    )
    shown = answer["err_msg"]
    assert answer["infcode"] == -1 and len(shown) == min(len(words), 200)
    assert shown.startswith("人员编号9") and shown.endswith("9不存在，请核对")
    assert shown == words or "…" in shown


def _err_msg(words: str) -> str:
    answer = encode_response(
        region="441800", received=dt.datetime.now(), output=None, err_msg=words
    )
    shown: str = msgspec.json.decode(answer)["err_msg"]
    return shown


def test_a_control_character_quoted_in_err_msg_is_written_out() -> None:
    """Found from outside: U+202E and an emoji sent in infno came back raw in err_msg, and the
    clerk's screen showed the words reversed. Written out, as a NUL already was."""
    body = '{"infno": "21\u202e😀", "msgid": "M1", "input": {}}'.encode()
    infno = msgspec.json.decode(body)["infno"]
    assert _err_msg(f"交易编号{infno}格式错误") == "交易编号21\\u202e😀格式错误"
    for invisible in ("\u200b", "\u2066", "\ufeff", "\x1b"):
        shown = _err_msg(f"人员编号{invisible}1不存在")
        assert shown == f"人员编号\\u{ord(invisible):04x}1不存在", shown


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "公共输入参数格式错误：报文应为对象，实际为数组"),
        (b'"2101"', "公共输入参数格式错误：报文应为对象，实际为字符串"),
        (b'{"infno":[]}', "公共输入参数格式错误：字段infno应为整数或字符串，实际为数组"),
    ],
)
def test_a_body_of_the_wrong_type_is_refused_in_the_clerks_words(body: bytes, words: str) -> None:
    """Found from outside: a body `[]` was answered in msgspec's English."""
    with pytest.raises(BadRequest) as refused:
        decode_request(body)
    assert refused.value.args[0] == words


@pytest.mark.parametrize(("infno", "node"), [("2101", "drugdetail"), ("2204", "feedetail")])
def test_a_line_without_its_serial_is_named_by_its_place(infno: str, node: str) -> None:
    """Found from outside: the refusal named neither the line's serial (it has none) nor its
    place."""
    line = {
        "feedetl_sn": "1",
        "cnt": "1",
        "pric": "1",
        "det_item_fee_sumamt": "1",
        "medins_list_codg": "YP0001",
        "mdtrt_id": "M",
        "psn_no": "P",
        "fee_ocur_time": "2026-01-01 10:00:00",
        "chrg_bchno": "B1",
    }
    lines = [line, {k: v for k, v in line.items() if k != "feedetl_sn"}]
    body = msgspec.json.encode(
        {"infno": infno, "msgid": "M1", "fixmedins_code": "H1", "input": {node: lines,
         "druginfo": {"psn_no": "P", "mdtrt_cert_type": "02", "mdtrt_cert_no": "1",
                      "begntime": "2026-01-01 10:00:00"}}}
    )  # fmt: skip
    request = decode_request(body)
    with pytest.raises(BadRequest, match=f"缺少必填字段{node}第2条.feedetl_sn"):
        purchase_of(request) if infno == "2101" else _upload_of(request, Kind.OUTPATIENT)


def test_a_control_character_in_a_key_is_written_out_in_the_refusal() -> None:
    """Found from outside: a NUL in a key's name went back raw in err_msg, and a till that reads
    it as a C string showed the clerk only "字段app"."""
    with pytest.raises(BadRequest) as refused:
        decode_request(b'{"infno":"2101","msgid":"M1","app\\u0000id":1,"x\\u001fy":"\\u0001"}')
    words = str(refused.value.args[0])
    assert words == "字段app\\u0000id含有不可见的控制字符（如NUL），请删除后重新发送"
    assert not any(ord(ch) < 32 for ch in words)


@pytest.mark.parametrize(
    ("path", "body", "refused"),
    [("2102A", "2102", False), ("2102", "2102A", False), ("2207A", "2207", False),
     ("2102A", "2101", True), ("2101", "2102", True)],
)  # fmt: skip
def test_a_revision_and_its_base_are_one_transaction_in_path_and_body(
    path: str, body: str, refused: bool
) -> None:
    raw = msgspec.json.encode({"infno": body, "msgid": "M1", "fixmedins_code": "P1"})
    if refused:
        with pytest.raises(BadRequest, match="交易编号不一致"):
            decode_request(raw, path)
    else:
        assert decode_request(raw, path).infno == envelope.base_infno(path)


@pytest.mark.parametrize(
    "sent",
    ["\ufeffYP0001", "YP0001\ufeff", " \ufeff YP0001\u200b ", "\u2060YP0001", "\u3000YP0001\t"],
    ids=["BOM first", "BOM last", "mixed", "word joiner", "blanks"],
)
def test_invisible_characters_around_a_code_are_dropped(sent: str) -> None:
    # Found from outside: a code from the first cell of a CSV written with a byte-order mark
    # kept it, matched no mapping, and the line was priced all self-pay.
    assert text(sent) == "YP0001"


def test_a_code_that_is_only_invisible_is_empty() -> None:
    assert text("\ufeff\u200b") == ""


@pytest.mark.parametrize(
    "sent",
    [
        "２０２６-12-01 10:00:00",
        "٢٠٢٦-12-01 10:00:00",
        "2026-12-01  10:00:00",
        "2026-12-01\t10:00:00",
    ],
    ids=["full-width digits", "arabic-indic digits", "two spaces", "tab"],
)
def test_a_time_in_other_digits_or_blanks_is_refused(sent: str) -> None:
    # Found from outside: strptime took any Unicode digit and any run of blanks, so visits were
    # opened on such times, where amounts in the same digits are refused.
    with pytest.raises(BadRequest, match="时间格式错误"):
        when(sent, "begntime")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-12-05T23:49:23.1083330+08:00", dt.datetime(2026, 12, 5, 23, 49, 23)),
        ("2026-12-05T23:50:00+08:00", dt.datetime(2026, 12, 5, 23, 50, 0)),
        ("2026-12-05T23:50:00.123", dt.datetime(2026, 12, 5, 23, 50, 0)),
        ("2026-12-05T15:50:00Z", dt.datetime(2026, 12, 5, 23, 50, 0)),
        ("2026-12-05T23:50:00.999999999+0800", dt.datetime(2026, 12, 5, 23, 50, 0)),
        ("2026-12-05T10:50:00-05:00", dt.datetime(2026, 12, 5, 23, 50, 0)),
        ("2026-12-05 23:49:23.108", dt.datetime(2026, 12, 5, 23, 49, 23)),
        ("2026-12-05T23:49:23.108+08", dt.datetime(2026, 12, 5, 23, 49, 23)),
        ("2026-12-05 23:49:23.5+08:00", dt.datetime(2026, 12, 5, 23, 49, 23)),
    ],
    ids=[
        ".NET DateTime.Now",
        "offset",
        "fraction",
        "UTC",
        "nanoseconds",
        "another zone",
        "Java Timestamp.toString",
        "hours-only offset",
        "space, fraction and offset",
    ],
)
def test_a_serialized_time_is_read_as_the_same_moment_in_beijing_time(
    sent: str, expected: dt.datetime
) -> None:
    # Found from outside: a HIS serializing DateTime.Now (binzhe's 1101 begntime) was refused.
    # The fraction is dropped, never rounded up; an offset is the same moment in local time
    # (the gateway runs in Beijing time; the expectation is converted as the gateway does).
    beijing = dt.timezone(dt.timedelta(hours=8))
    zoned = sent.endswith("Z") or any(sent[-n] in "+-" for n in (3, 5, 6))
    # A time without a zone is the gateway's local time as it stands.
    assert when(sent, "begntime") == (
        as_local(expected.replace(tzinfo=beijing)) if zoned else expected
    )


@pytest.mark.parametrize(
    "sent",
    ["2026-12-05T23:50:00+25:00", "2026-12-05T23:50:00.+08:00", "2026-12-05T23:50:00 +08:00"],
)
def test_a_serialized_time_with_an_impossible_zone_is_refused(sent: str) -> None:
    with pytest.raises(BadRequest, match="时间格式错误"):
        when(sent, "begntime")


def test_the_time_shapes_clients_send_are_read() -> None:
    expected = dt.datetime(2026, 12, 1, 10, 0, 0)
    for sent in (
        "2026-12-01 10:00:00",
        "20261201100000",
        "2026-12-01T10:00:00",
        "2026-12-1 10:0:0",
    ):
        assert when(sent, "t") == expected
    assert when("2026-12-01", "t") == dt.datetime(2026, 12, 1)
    # nhis-web's registration-fee line (NationalInsuranceService.insuBillUpload: fee_ocur_time
    # is its yyyyMMddHHmmss cut to 8 digits). Found from outside: refused.
    assert when("20261201", "t") == dt.datetime(2026, 12, 1)
    with pytest.raises(BadRequest, match="时间格式错误"):
        when("20261301", "t")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-12-01", dt.date(2026, 12, 1)),
        ("20261201", dt.date(2026, 12, 1)),
        ("2026-12-01 23:59:59", dt.date(2026, 12, 1)),
        ("2026-11-30T16:00:00.000+0000", dt.date(2026, 12, 1)),
        ("2026-11-30T16:00:00Z", dt.date(2026, 12, 1)),
        ("2026-11-30 23:00:00-01:00", dt.date(2026, 12, 1)),
        ("2026-12-01T23:59:59+08:00", dt.date(2026, 12, 1)),
        ("2099-12-31T15:59:59.000+0000", dt.date(2099, 12, 31)),
    ],
    ids=["date", "compact", "time", "Java UTC", "Z", "another zone", "Beijing", "open end"],
)
def test_a_date_field_is_the_day_of_the_moment_sent_in_beijing_time(
    beijing: None, sent: str, expected: dt.date
) -> None:
    # Found from outside: a date was its first ten characters, so "2026-11-30T16:00:00.000+0000"
    # (a Java client's UTC midnight of 1 December) was 30 November as a 3301 begndate or a
    # 3201 stmt_begndate, and 1 December as a begntime.
    assert day(sent, "begndate") == expected
    assert day(sent, "begndate") == when(sent, "begntime").date()  # type: ignore[union-attr]


@pytest.mark.parametrize("sent", ["2026-11-30xyz", "2026-13-01", "2026/12/01", "", "2026-12-01T"])
def test_a_date_field_in_no_shape_a_client_sends_is_refused(sent: str) -> None:
    with pytest.raises(BadRequest, match="begndate"):
        day(sent, "begndate")


# A Go till sums its lines' prices as float64 and sends the sum's shortest text (found from
# outside: YingmoY/Pharmacy-ERP, 19.8 + 9.9 sent as 29.700000000000003).
@pytest.mark.parametrize(
    ("sent", "fen_value"),
    [
        ("29.700000000000003", 2970),
        ("29.699999999999996", 2970),
        ("0.30000000000000004", 30),
        (Decimal("29.700000000000003"), 2970),  # a JSON number arrives as its Decimal
        ("1234567.8900000001", 123456789),
        # A double's exact value written out: Java's new BigDecimal(19.8), C's "%.20f".
        ("19.800000000000000710542735760100185871124267578125", 1980),
        ("19.80000000000000071054", 1980),
    ],
)
def test_a_doubles_rounding_noise_is_read_as_the_amount_it_stands_for(
    sent: str | Decimal, fen_value: int
) -> None:
    assert fen(sent, "druginfo.medfee_sumamt") == fen_value


@pytest.mark.parametrize(
    "sent",
    [
        "29.701",
        "29.7000001",
        "29.705",
        "0.001",
        "12.3456789012",
        # Found from outside: more digits than any double's text, not a double's exact value.
        "19.80000000000000000000000000000000000001",
        Decimal("19.80000000000000000000000000000000000001"),
        "19.80000000000000071055",
    ],
)
def test_more_decimals_that_are_not_a_doubles_noise_stay_refused(sent: str | Decimal) -> None:
    with pytest.raises(BadRequest, match="最多2位小数"):
        fen(sent, "druginfo.medfee_sumamt")


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=1, max_value=10**9))
def test_every_doubles_sum_of_two_amounts_is_read_as_their_decimal_sum(a: int, b: int) -> None:
    """Whatever two amounts a till sums as doubles, the sum's shortest text reads as the exact
    sum when it is close to it, or is refused; never as another amount."""
    total = a / 100 + b / 100
    try:
        read = fen(repr(total), "druginfo.medfee_sumamt")
    except BadRequest:
        return
    assert read == a + b
