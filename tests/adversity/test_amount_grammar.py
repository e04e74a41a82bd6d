"""One amount grammar at the edge (an attacker's findings): an amount is ASCII digits with at most
its scale of decimals, a minus sign only where the field may be negative, and no exponent — as a
JSON string or as a JSON number, judged by the number's literal text. Everything else, a zero
settlement and a control character in a text field are refused with a clear message, HTTP 200,
infcode -1, and nothing written."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.integration.conftest import Server, server
from tests.integration.his_client import HisClient, decode

__all__ = ["server"]
pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
HOSPITAL = "H44180000003"
EMPLOYEE = "441800000000000001"
RETIREE = "441800000000000002"
SLOT = "__literal__"


def _purchase(
    his: HisClient, medfee: Any, det: Any = "20.00", cnt: Any = "2", pric: Any = "10"
) -> Any:
    return his.drug_input(
        EMPLOYEE,
        "2026-06-01 10:00:00",
        medfee,
        [
            {
                "feedetl_sn": "1",
                "medins_list_codg": "YP0007",
                "pric": pric,
                "cnt": cnt,
                "det_item_fee_sumamt": det,
            }
        ],
    )


async def _send(
    his: HisClient, infno: str, input_: Any, literal: str | None = None
) -> dict[str, Any]:
    """Post the envelope; `literal` replaces the quoted SLOT, so a JSON number keeps its text."""
    body = msgspec.json.encode(his.envelope(infno, input_))
    if literal is not None:
        assert body.count(f'"{SLOT}"'.encode()) == 1
        body = body.replace(f'"{SLOT}"'.encode(), literal.encode())
    status, raw = await his.post_raw(body)
    assert status == 200, raw
    return decode(raw)


async def _refused(
    server: Server, his: HisClient, infno: str, input_: Any, literal: str | None = None
) -> str:
    before = await server.ledger_fingerprint()
    answer = await _send(his, infno, input_, literal)
    assert answer["infcode"] == -1, answer
    assert await server.ledger_fingerprint() == before
    message = answer["err_msg"]
    assert isinstance(message, str) and "内部错误" not in message
    return message


async def test_the_well_formed_purchase_settles(server: Server) -> None:
    """The baseline the refusals below differ from by one literal."""
    his = server.client(PHARMACY)
    answer = await _send(his, "2101", _purchase(his, SLOT), "20.00")
    assert answer["infcode"] == 0, answer["err_msg"]


@pytest.mark.parametrize("literal", ["2e1", "2E1", "2.0e1", "20e0", "2000e-2"])
async def test_an_exponent_in_a_json_number_is_refused(server: Server, literal: str) -> None:
    his = server.client(PHARMACY)
    message = await _refused(server, his, "2102", _purchase(his, SLOT), literal)
    assert "medfee_sumamt" in message and "科学计数法" in message


@pytest.mark.parametrize(
    "text", ["2e1", "２０.００", " 20.00", "20.00 ", "+20.00", "20.", ".5", "0x14", "20,00", "二十"]
)
async def test_an_amount_text_outside_the_grammar_is_refused(server: Server, text: str) -> None:
    his = server.client(PHARMACY)
    message = await _refused(server, his, "2102", _purchase(his, text))
    assert "druginfo.medfee_sumamt" in message and "格式错误" in message


async def test_full_width_digits_in_a_line_are_refused(server: Server) -> None:
    his = server.client(PHARMACY)
    message = await _refused(server, his, "2102", _purchase(his, "20.00", det="２０.００"))
    assert "det_item_fee_sumamt" in message


@pytest.mark.parametrize(
    ("literal", "text"), [("-0", None), ("-0.00", None), (None, "-0"), (None, "-0.00")]
)
async def test_negative_zero_is_refused(
    server: Server, literal: str | None, text: str | None
) -> None:
    """-0 wrote a 0.00 settlement: as text the sign is refused; as a JSON integer it reads 0, and
    a settlement of nothing is refused."""
    his = server.client(PHARMACY)
    input_ = _purchase(his, SLOT if literal else text, det="0", pric="0")
    message = await _refused(server, his, "2102", input_, literal)
    assert "medfee_sumamt" in message


async def test_a_zero_purchase_is_refused(server: Server) -> None:
    his = server.client(PHARMACY)
    message = await _refused(server, his, "2102", _purchase(his, "0.00", det="0.00", pric="0"))
    assert "为0" in message


async def test_a_negative_amount_is_refused_where_the_field_allows_no_sign(server: Server) -> None:
    his = server.client(PHARMACY)
    message = await _refused(server, his, "2102", _purchase(his, "20.00", cnt="-2", det="-20.00"))
    assert "不能为负数" in message


@pytest.mark.parametrize(
    ("field", "value", "scale"),
    [("pric", "10.0000001", "6"), ("cnt", "2.00001", "4"), ("det_item_fee_sumamt", "20.001", "2")],
)
async def test_more_decimals_than_the_scale_are_refused(
    server: Server, field: str, value: str, scale: str
) -> None:
    his = server.client(PHARMACY)
    input_ = _purchase(his, "20.00")
    input_["drugdetail"][0][field] = value
    message = await _refused(server, his, "2102", input_)
    assert field in message and f"最多{scale}位小数" in message


async def test_refund_lines_of_2301_may_be_negative_and_2204_lines_may_not(server: Server) -> None:
    his = server.client(HOSPITAL)
    admitted = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": RETIREE, "insutype": "310", "begntime": "2026-06-02 08:00:00",
                "mdtrt_cert_type": "01", "mdtrt_cert_no": RETIREE, "med_type": "21",
                "ipt_no": "ZY-GRAMMAR-1", "atddr_no": "D1", "chfpdr_name": "医生",
                "adm_diag_dscr": "肺炎", "adm_dept_codg": "K1", "adm_dept_name": "内科",
                "adm_bed": "1", "dscg_maindiag_code": "J18", "dscg_maindiag_name": "肺炎",
            },
            "diseinfo": [],
        },
    )  # fmt: skip
    mdtrt_id = admitted["result"]["mdtrt_id"]
    charge = {
        "feedetl_sn": "1",
        "medins_list_codg": "ZL0008",
        "pric": "20",
        "cnt": "2",
        "det_item_fee_sumamt": "40.00",
    }
    refund = {
        "feedetl_sn": "2",
        "init_feedetl_sn": "1",
        "medins_list_codg": "ZL0008",
        "pric": "20",
        "cnt": "-1",
        "det_item_fee_sumamt": "-20.00",
    }
    rows = his.fee_rows(mdtrt_id, RETIREE, [charge, refund], "2026-06-02 09:00:00", "")
    out = await his.ok("2301", {"feedetail": rows})
    assert [r["det_item_fee_sumamt"] for r in out["result"]] == [40, -20]
    # A negative price is never a refund: the quantity carries the sign.
    bad = his.fee_rows(
        mdtrt_id,
        RETIREE,
        [{**refund, "feedetl_sn": "3", "pric": "-20", "cnt": "1"}],
        "2026-06-02 09:00:00",
        "",
    )
    message = await _refused(server, his, "2301", {"feedetail": bad})
    assert "pric" in message and "不能为负数" in message

    visit = await his.register(EMPLOYEE, "310", "2026-06-02 10:00:00", "MZ-GRAMMAR-1")
    rows = his.fee_rows(
        visit,
        EMPLOYEE,
        [{**charge, "cnt": "-2", "det_item_fee_sumamt": "-40.00"}],
        "2026-06-02 10:10:00",
        "B1",
    )
    message = await _refused(server, his, "2204", {"feedetail": rows})
    assert "不能为负数" in message


@pytest.mark.parametrize("char", ["\u0000", "\u0001", "\u001b", "\u007f", "\u0085", "\b"])
async def test_a_control_character_in_a_text_field_is_refused_naming_it(
    server: Server, char: str
) -> None:
    his = server.client(HOSPITAL)
    data = {
        "psn_no": EMPLOYEE, "insutype": "310", "begntime": "2026-06-03 08:00:00",
        "mdtrt_cert_type": "01", "mdtrt_cert_no": EMPLOYEE, "ipt_otp_no": "MZ-NUL-1",
        "atddr_no": "D001", "dr_name": f"医生{char}", "dept_code": "K01", "dept_name": "内科",
        "caty": "A03",
    }  # fmt: skip
    message = await _refused(server, his, "2201", {"data": data})
    assert "data.dr_name" in message and "控制字符" in message


async def test_a_control_character_inside_input_sent_as_a_string_is_refused(server: Server) -> None:
    his = server.client(HOSPITAL)
    inner = {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802199001011234\u0000"}}
    message = await _refused(server, his, "1101", msgspec.json.encode(inner).decode())
    assert "mdtrt_cert_no" in message and "控制字符" in message


async def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(server: Server) -> None:
    his = server.client(HOSPITAL)
    data = {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802199001011234", "memo": "\\u0000"}
    answer = await _send(his, "1101", {"data": data})
    assert answer["infcode"] == 0, answer["err_msg"]
