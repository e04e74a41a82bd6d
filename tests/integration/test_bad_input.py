"""Bad input: HTTP 200, a well-formed envelope, infcode -1, a clear err_msg, nothing written."""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, decode

HOSPITAL = "H44180000001"
OTHER = "H44180000002"
EMPLOYEE = "441800000000000001"
UNINSURED = "441800000000000007"
CJK = re.compile(r"[\u4e00-\u9fff]")
ENVELOPE_KEYS = {"infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output"}


@pytest.fixture(scope="module")
async def visit(server: Server) -> dict[str, str]:
    """An open visit with one uploaded batch, and one settled batch."""
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(EMPLOYEE, "310", "2026-03-01 09:00:00", "MZ-BAD-1")
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0001",
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        }
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, lines, "2026-03-01 09:10:00", "B1")}
    )
    settled = await his.ok(
        "2207", his.settle_data(EMPLOYEE, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
    )
    await his.ok(
        "2208",
        {
            "data": {
                "setl_id": settled["setlinfo"]["setl_id"],
                "mdtrt_id": mdtrt_id,
                "psn_no": EMPLOYEE,
            }
        },
    )
    await his.ok(
        "2207", his.settle_data(EMPLOYEE, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
    )
    lines2 = [
        {
            "feedetl_sn": "2",
            "medins_list_codg": "ZL0004",
            "pric": "30",
            "cnt": "1",
            "det_item_fee_sumamt": "30.00",
        }
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, lines2, "2026-03-01 09:20:00", "B2")}
    )
    return {"mdtrt_id": mdtrt_id, "cancelled_setl_id": settled["setlinfo"]["setl_id"]}


def _settle(
    his: HisClient, mdtrt_id: str, medfee: Any = "30.00", batch: str = "B2", **extra: Any
) -> dict[str, Any]:
    return his.settle_data(EMPLOYEE, mdtrt_id, "11", medfee, "310", "1", chrg_bchno=batch, **extra)


def _as(his: HisClient, code: str) -> HisClient:
    return HisClient(his.session, his.base_url, code)


def _one_line(his: HisClient, mdtrt_id: str, sn: str) -> list[dict[str, Any]]:
    line = {
        "feedetl_sn": sn,
        "medins_list_codg": "ZL0001",
        "pric": "25",
        "cnt": "1",
        "det_item_fee_sumamt": "25.00",
    }
    return his.fee_rows(mdtrt_id, EMPLOYEE, [line], "2026-03-01 10:00:00", "B3")


Case = Callable[[HisClient, dict[str, str]], Awaitable[tuple[int, bytes]]]


async def _send(his: HisClient, env: dict[str, Any]) -> tuple[int, bytes]:
    return await his.post_raw(msgspec.json.encode(env))


CASES: dict[str, tuple[Case, str]] = {
    "malformed JSON": (lambda his, v: his.post_raw(b'{"infno": "2207", "input": {'), "JSON"),
    "empty body": (lambda his, v: his.post_raw(b""), "为空"),
    "JSON array": (lambda his, v: his.post_raw(b"[1, 2]"), "格式"),
    "unknown infno": (lambda his, v: _send(his, his.envelope("9999", {})), "不支持"),
    "missing msgid": (
        lambda his, v: _send(
            his, {**his.envelope("2207", _settle(his, v["mdtrt_id"])), "msgid": ""}
        ),
        "msgid",
    ),
    "unknown institution": (
        lambda his, v: _send(
            his,
            {**his.envelope("2207", _settle(his, v["mdtrt_id"])), "fixmedins_code": "H99999999999"},
        ),
        "机构",
    ),
    "input not an object": (lambda his, v: _send(his, his.envelope("2207", [1, 2])), "input"),
    "missing data node": (lambda his, v: _send(his, his.envelope("2207", {})), "data"),
    "missing psn_no": (
        lambda his, v: _send(
            his,
            his.envelope("2207", {"data": {**_settle(his, v["mdtrt_id"])["data"], "psn_no": None}}),
        ),
        "psn_no",
    ),
    "mistyped field": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2207", {"data": {**_settle(his, v["mdtrt_id"])["data"], "mdtrt_id": [1]}}
            ),
        ),
        "mdtrt_id",
    ),
    "amount with three decimals": (
        lambda his, v: _send(his, his.envelope("2207", _settle(his, v["mdtrt_id"], "30.001"))),
        "小数",
    ),
    "amount not a number": (
        lambda his, v: _send(his, his.envelope("2207", _settle(his, v["mdtrt_id"], "三十"))),
        "数字",
    ),
    "amount as boolean": (
        lambda his, v: _send(his, his.envelope("2207", _settle(his, v["mdtrt_id"], True))),
        "数字",
    ),
    "totals do not match the lines": (
        lambda his, v: _send(his, his.envelope("2207", _settle(his, v["mdtrt_id"], "31.00"))),
        "不一致",
    ),
    "settling a settled batch": (
        lambda his, v: _send(his, his.envelope("2207", _settle(his, v["mdtrt_id"], "25.00", "B1"))),
        "已结算",
    ),
    "cancelling twice": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2208",
                {
                    "data": {
                        "setl_id": v["cancelled_setl_id"],
                        "mdtrt_id": v["mdtrt_id"],
                        "psn_no": EMPLOYEE,
                    }
                },
            ),
        ),
        "已撤销",
    ),
    "another institution's mdtrt_id": (
        lambda his, v: _send(
            HisClient(his.session, his.base_url, OTHER),
            HisClient(his.session, his.base_url, OTHER).envelope(
                "2207", _settle(his, v["mdtrt_id"])
            ),
        ),
        "不属于本机构",
    ),
    "another institution uploads to the visit": (
        lambda his, v: _send(
            _as(his, OTHER),
            _as(his, OTHER).envelope("2204", {"feedetail": _one_line(his, v["mdtrt_id"], "9")}),
        ),
        "不属于本机构",
    ),
    "envelope names another institution than its signer": (
        lambda his, v: _send(
            his,
            {
                **his.envelope("2204", {"feedetail": _one_line(his, v["mdtrt_id"], "10")}),
                "fixmedins_code": OTHER,
            },
        ),
        "认证身份",
    ),
    "unknown person": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2201",
                {
                    "data": {
                        "psn_no": "441800999999999999",
                        "insutype": "310",
                        "begntime": "2026-03-01 09:00:00",
                        "mdtrt_cert_type": "01",
                        "mdtrt_cert_no": "441800999999999999",
                        "ipt_otp_no": "MZ-BAD-X",
                    }
                },
            ),
        ),
        "不存在",
    ),
    "uninsured person": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2201",
                {
                    "data": {
                        "psn_no": UNINSURED,
                        "insutype": "310",
                        "begntime": "2026-03-01 09:00:00",
                        "mdtrt_cert_type": "01",
                        "mdtrt_cert_no": UNINSURED,
                        "ipt_otp_no": "MZ-BAD-Y",
                    }
                },
            ),
        ),
        "参保状态",
    ),
    "unknown certificate": (
        lambda his, v: _send(
            his,
            his.envelope(
                "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "000000000000000000"}}
            ),
        ),
        "参保人",
    ),
    "line amount does not match price x quantity": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2204",
                {
                    "feedetail": his.fee_rows(
                        v["mdtrt_id"],
                        EMPLOYEE,
                        [
                            {
                                "feedetl_sn": "7",
                                "medins_list_codg": "ZL0001",
                                "pric": "25",
                                "cnt": "2",
                                "det_item_fee_sumamt": "25.00",
                            }
                        ],
                        "2026-03-01 10:00:00",
                        "B4",
                    )
                },
            ),
        ),
        "费用明细流水号7",
    ),
    "mapping mismatch": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2204",
                {
                    "feedetail": [
                        {
                            **his.fee_rows(
                                v["mdtrt_id"],
                                EMPLOYEE,
                                [
                                    {
                                        "feedetl_sn": "8",
                                        "medins_list_codg": "ZL0001",
                                        "pric": "25",
                                        "cnt": "1",
                                        "det_item_fee_sumamt": "25.00",
                                    }
                                ],
                                "2026-03-01 10:00:00",
                                "B4",
                            )[0],
                            "med_list_codg": "XA02BCA011A001010100001",
                        }
                    ]
                },
            ),
        ),
        "目录对照",
    ),
    "unsupported med_type": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2207", {"data": {**_settle(his, v["mdtrt_id"])["data"], "med_type": "99"}}
            ),
        ),
        "医疗类别",
    ),
    # Found from outside: "99" settled like any other, where every code field is held to its list.
    "unknown psn_setlway": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2207", {"data": {**_settle(his, v["mdtrt_id"])["data"], "psn_setlway": "99"}}
            ),
        ),
        "个人结算方式psn_setlway为“99”",
    ),
    "an amount past decimal(16,2)": (
        lambda his, v: _send(
            his,
            his.envelope(
                "2207",
                {
                    "data": {
                        **_settle(his, v["mdtrt_id"])["data"],
                        "medfee_sumamt": "999999999999000.01",
                    }
                },
            ),
        ),
        "超出范围",
    ),
    "bad infver": (
        lambda his, v: _send(his, {**his.envelope("1101", {}), "infver": "V9.9"}),
        "版本",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_is_refused_cleanly(
    server: Server, visit: dict[str, str], name: str
) -> None:
    his = server.client(HOSPITAL)
    send, fragment = CASES[name]
    before = await server.ledger_fingerprint()
    status, body = await send(his, visit)
    assert status == 200
    answer = decode(body)
    assert set(answer) >= ENVELOPE_KEYS
    assert answer["infcode"] == -1
    assert isinstance(answer["err_msg"], str) and CJK.search(answer["err_msg"]), answer["err_msg"]
    assert fragment in answer["err_msg"], answer["err_msg"]
    assert answer["output"] == {}
    assert await server.ledger_fingerprint() == before


async def test_oversized_body_is_an_envelope(server: Server) -> None:
    big = io.BytesIO(b'{"infno": "2204", "pad": "' + b"x" * (9 * 1024 * 1024) + b'"}')
    async with server.session.post(
        server.url + "/fsi/api/rsfComIfsService/callService",
        data=big,
        headers={"Content-Type": "application/json"},
    ) as resp:
        status, body = resp.status, await resp.read()
    assert status == 200
    assert decode(body)["infcode"] == -1
