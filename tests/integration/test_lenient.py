"""What real clients send is accepted: numbers or strings, input as a string, regional extras."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import decode

HOSPITAL = "H52050000001"
PERSON = "520500000000000002"  # Bijie resident


@pytest.mark.parametrize("infver", ["V1.0", "1.0", "1", 1, 1.0])
async def test_infver_variants(server: Server, infver: object) -> None:
    his = server.client(HOSPITAL, "520500")
    env = his.envelope(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "520502200102022222"}}
    )
    env["infver"] = infver
    _, body = await his.post_raw(msgspec.json.encode(env))
    assert decode(body)["infcode"] == 0


async def test_numbers_strings_null_string_input_and_extra_fields(server: Server) -> None:
    his = server.client(HOSPITAL, "520500")
    mdtrt_id = await his.register(PERSON, "390", "2026-05-01 09:00:00", "MZ-LENIENT-1")
    rows = his.fee_rows(
        mdtrt_id,
        PERSON,
        [
            {
                "feedetl_sn": "1",
                "medins_list_codg": "YP0001",
                "pric": 12.5,
                "cnt": 2,
                "det_item_fee_sumamt": 25.0,
            },
            {
                "feedetl_sn": "2",
                "medins_list_codg": "ZL0004",
                "pric": "30.00",
                "cnt": "1.0000",
                "det_item_fee_sumamt": "30",
            },
        ],
        "2026-05-01 09:10:00",
        "B1",
    )
    rows[0]["regional_extra_field"] = {"anything": [1, 2]}
    # input as a JSON string, as some older DLLs send it; feedetail as one object per call also works
    env = his.envelope(
        "2204", msgspec.json.encode({"feedetail": rows}).decode(), fixmedins_soft_fcty="某厂商"
    )
    _, body = await his.post_raw(msgspec.json.encode(env))
    answer = decode(body)
    assert answer["infcode"] == 0, answer["err_msg"]
    data = his.settle_data(
        PERSON,
        mdtrt_id,
        "11",
        55,
        "390",
        "0",
        chrg_bchno="B1",
        fulamt_ownpay_amt=None,
        overlmt_selfpay="",
        preselfpay_amt=None,
        inscp_scp_amt=None,
    )
    data["data"]["opter_extra"] = "x"
    settled = await his.ok("2207", data)
    assert Decimal(settled["setlinfo"]["medfee_sumamt"]) == Decimal("55.00")
    # Answers carry amounts as JSON numbers with two decimals.
    raw = (
        await his.post_raw(
            msgspec.json.encode(his.envelope("5203", {"data": {"mdtrt_id": mdtrt_id}}))
        )
    )[1]
    assert b'"medfee_sumamt":55.00' in raw


async def test_single_object_feedetail(server: Server) -> None:
    his = server.client(HOSPITAL, "520500")
    mdtrt_id = await his.register(PERSON, "390", "2026-05-02 09:00:00", "MZ-LENIENT-2")
    row = his.fee_rows(
        mdtrt_id,
        PERSON,
        [
            {
                "feedetl_sn": "1",
                "medins_list_codg": "YP0001",
                "pric": "5",
                "cnt": "1",
                "det_item_fee_sumamt": "5.00",
            }
        ],
        "2026-05-02 09:10:00",
        "B1",
    )[0]
    out = await his.ok("2204", {"feedetail": row})
    assert len(out["result"]) == 1


@pytest.mark.parametrize("cert_type", [2, "02"])
async def test_a_certificate_type_sent_as_a_number_is_its_code(
    server: Server, cert_type: object
) -> None:
    """Found from outside: `"mdtrt_cert_type": 2` was refused as an invalid type; a code sent as
    a number lost its leading zero, and codes may be numbers (README)."""
    his = server.client(HOSPITAL, "520500")
    out = await his.ok(
        "1101", {"data": {"mdtrt_cert_type": cert_type, "mdtrt_cert_no": "520502200102022222"}}
    )
    assert out["baseinfo"]["psn_no"] == PERSON


async def test_a_string_input_that_is_not_json_keeps_nothing(server: Server) -> None:
    """Found from outside: `input` sent as a string holding broken JSON was refused inside the
    transaction and its refusal kept the msgid, where the same fault in an object keeps
    nothing; corrected, the message under the same msgid is answered."""
    his = server.client(HOSPITAL, "520500")
    good = {"data": {"psn_no": PERSON, "insutype": "390", "begntime": "2026-05-03 09:00:00",
                     "mdtrt_cert_type": "02", "mdtrt_cert_no": "520502200102022222",
                     "ipt_otp_no": "MZ-LENIENT-STR", "atddr_no": "D001", "dr_name": "医生",
                     "dept_code": "K01", "dept_name": "内科", "caty": "A03"}}  # fmt: skip
    env = his.envelope("2201", good)  # a writing transaction: its answer is kept by msgid
    msgid = env["msgid"]
    for broken in (msgspec.json.encode(good).decode() + " xyz", '{"data": {"a": NaN}}', "{bad"):
        _, body = await his.post_raw(msgspec.json.encode({**env, "input": broken}))
        answer = decode(body)
        assert answer["infcode"] == -1 and "不是有效的JSON" in answer["err_msg"], answer
    kept = await server.fetchval("SELECT count(*) FROM idempotency WHERE msgid = $1", msgid)
    assert kept == 0
    _, body = await his.post_raw(msgspec.json.encode(env))
    assert decode(body)["infcode"] == 0
