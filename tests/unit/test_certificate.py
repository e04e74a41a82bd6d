"""就诊凭证 and text lengths at the edge: which certificate identifies whom, what is too long."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from adapters.national import lengths
from adapters.national.envelope import Request, decode_input, decode_request
from adapters.national.wire import In2201, certificate, certificate_if_sent
from gateway.app.reference import load_reference
from gateway.ledger.persons import Certificate, identifies, require_certificate
from gateway.protocol.errors import BadRequest, IdentityRejected

PERSONS = {
    p.psn_no: p
    for p in load_reference(Path(__file__).resolve().parents[2] / "config" / "demo").persons
}
JIA = PERSONS["441800000000000001"]
YI = PERSONS["441800000000000002"]


def test_each_certificate_type_identifies_its_own_person_only() -> None:
    for person in PERSONS.values():
        own = [
            Certificate("01", person.psn_no),
            Certificate("01", person.certno),
            Certificate("02", person.certno),
            Certificate("03", person.mdtrt_cert_no_card),
        ]
        for cert in own:
            assert identifies(person, cert), (person.psn_no, cert)
            require_certificate(person, cert)
            for other in PERSONS.values():
                if other.psn_no != person.psn_no:
                    assert not identifies(other, cert), (other.psn_no, cert)


@pytest.mark.parametrize(
    "cert",
    [
        Certificate("02", JIA.certno),
        Certificate("03", JIA.mdtrt_cert_no_card),
        Certificate("02", YI.mdtrt_cert_no_card),  # the right number under the wrong type
        Certificate("03", YI.certno),
        Certificate("02", YI.psn_no),  # a psn_no is an e-voucher token (01), not an ID number
        Certificate("02", "000000000000000000"),
    ],
)
def test_a_certificate_of_anyone_else_is_an_identity_failure(cert: Certificate) -> None:
    with pytest.raises(IdentityRejected) as refused:
        require_certificate(YI, cert)
    message = refused.value.err_msg
    assert "就诊凭证与参保人员不符" in message and YI.psn_no in message
    # The number presented is masked as a receipt prints it (the psn_no is named in full).
    assert cert.cert_no not in message.replace(f"人员编号{YI.psn_no}", "")


def test_no_certificate_number_where_the_interface_makes_it_optional() -> None:
    assert certificate_if_sent("03", "", "data") is None
    assert certificate_if_sent(None, None, "data") is None
    require_certificate(YI, None)
    assert certificate_if_sent("02", YI.certno, "data") == Certificate("02", YI.certno)
    with pytest.raises(BadRequest, match="就诊凭证类型99无效"):
        certificate_if_sent("99", YI.certno, "data")
    with pytest.raises(BadRequest, match=r"缺少必填字段data\.mdtrt_cert_no"):
        certificate("02", "", "data")
    with pytest.raises(BadRequest, match=r"缺少必填字段mdtrtinfo\.mdtrt_cert_type"):
        certificate(None, YI.certno, "mdtrtinfo")


def _request(input_: object, **envelope: str) -> Request:
    body = {"infno": "2201", "msgid": "M1", "fixmedins_code": "H44180000001", "input": input_}
    return decode_request(msgspec.json.encode(body | envelope))


def test_a_field_at_its_length_passes_and_one_character_more_is_refused() -> None:
    data = {"psn_no": "1" * 30, "ipt_otp_no": "门" * 30, "dept_name": "科" * 100}
    decode_input(_request({"data": data}), In2201)
    for name, limit in [("psn_no", 30), ("ipt_otp_no", 30), ("dept_name", 100)]:
        long = {**data, name: "x" * (limit + 1)}
        with pytest.raises(
            BadRequest, match=f"字段data.{name}过长（{limit + 1}个字符）.*最多{limit}"
        ):
            decode_input(_request({"data": long}), In2201)


def test_text_the_interface_gives_no_length_is_capped_too() -> None:
    data = {"caty": "A03", "exp_unknown": "x" * 5000, "begntime": "2" * lengths.OTHER}
    decode_input(_request({"data": data}), In2201)  # unknown fields are ignored, not stored
    data["begntime"] += "2"
    with pytest.raises(BadRequest, match=r"字段data\.begntime过长"):
        decode_input(_request({"data": data}), In2201)


def test_envelope_fields_have_their_lengths() -> None:
    _request({}, opter="O" * 30, dev_safe_info="d" * 2000)
    with pytest.raises(BadRequest, match="字段opter过长"):
        _request({}, opter="O" * 31)
    with pytest.raises(BadRequest, match="字段fixmedins_name过长"):
        _request({}, fixmedins_name="院" * 201)


def test_the_9101_file_content_is_bounded_by_its_own_reader() -> None:
    from adapters.his.reconciliation import In9101

    req = _request({"fsUploadIn": {"in": "A" * 100_000, "filename": "f.zip"}})
    node = decode_input(req, In9101)
    assert node.fsUploadIn is not None
