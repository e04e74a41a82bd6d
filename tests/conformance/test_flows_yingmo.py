"""The Go pharmacy ERP's sale (shapes_yingmo.py) replayed over HTTP against a real gateway:
sign-in, the person, 2101 and 2102 with its own druginfo/drugdetail, then the full refund's
2103. Every answer is checked for the fields the client reads, with the Go type assertions it
reads them with, and the settlement for the identities of settlement-rules §6."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from adapters.national.envelope import decode_request
from gateway.protocol.errors import BadRequest
from tests.conformance import shapes_yingmo
from tests.conformance.shapes import SETLINFO_AMOUNTS, Shape
from tests.conformance.test_flows import Client, dec, identities, line_identity
from tests.integration.conftest import Server
from tests.integration.his_client import decode

pytestmark = pytest.mark.integration

SHAPE = shapes_yingmo.SHAPE
_encode = msgspec.json.Encoder(decimal_format="number").encode

# The pharmacy's items as its drug table holds them: national code, own code, price, count.
ITEMS = [
    ("XN02BEA010A001010100007", "YP0007", "9.9", 2),
    ("XC10AAA140A001010100003", "YP0003", "40", 1),
]


class GoGatewayClient(Client):
    """The ERP's medicare gateway: its envelope (`MedicareEnvelope`), its msgid, the sign-in's
    sign_no on every later call, the business node under `Input`."""

    def __init__(self, server: Server, shape: Shape) -> None:
        super().__init__(server, shape, shape.pharmacy)
        self.sign_no = ""

    async def call(self, infno: str, input_: Any) -> dict[str, Any]:
        env = self.his.envelope(infno, input_, msgid=shapes_yingmo.msgid(infno))
        env.update(self.shape.envelope)
        for name in shapes_yingmo.DROPPED:
            env.pop(name)
        env.pop("sign_no")
        if self.sign_no:
            env["sign_no"] = self.sign_no
        env[shapes_yingmo.INPUT_KEY] = env.pop("input")
        self.last_msgid = env["msgid"]
        status, raw = await self.his.post_raw(_encode(env), f"/hsa/hgs/{infno}")
        assert status == 200, raw
        return decode(raw)


def _now() -> str:
    return f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}"


def _sale(s: Shape, begntime: str, *, presettle: bool) -> dict[str, Any]:
    """`doMedicareSettle`'s input: 2101 carries the trace-code counts, 2102 does not."""
    detail = []
    total = Decimal(0)
    for i, (national, own, pric, cnt) in enumerate(ITEMS, start=1):
        subtotal = Decimal(pric) * cnt
        total += subtotal
        detail.append(
            {
                "feedetl_sn": f"FEE{i:04d}",
                "rxno": f"HIRX{i:04d}",
                "rx_circ_flag": "1",
                "fee_ocur_time": begntime,
                "med_list_codg": national,
                "medins_list_codg": own,
                "det_item_fee_sumamt": s.line_amount(f"{subtotal:.2f}"),
                "cnt": cnt,
                "pric": s.line_amount(pric),
            }
        )
    info: dict[str, Any] = {
        "mdtrt_cert_type": "02",
        "mdtrt_cert_no": s.certno,
        "psn_no": s.psn_no,
        "med_type": "41",
        "insutype": s.insutype,
        "acct_used_flag": "1",
        "medfee_sumamt": s.amount(f"{total:.2f}"),
        "begntime": begntime,
    }
    if presettle:
        info["minpacunt_drug_trac_cnt"] = 0
        info["mcs_trac_cnt"] = 0
    return {"druginfo": info, "drugdetail": detail}


async def _signed_in(c: GoGatewayClient) -> None:
    """`SignIn` then `PersonInfo`, as the gateway does before its first business call."""
    sign_in = {
        "signIn": {
            "opter_no": "OP001",
            "opter_name": "收费员",
            "mac": "00-00-00-00-00-00",
            "ip": "127.0.0.1",
        }
    }
    c.sign_no = (await c.ok("9001", sign_in))["signinoutb"]["sign_no"]
    person = {
        "data": {
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": c.shape.certno,
            "card_sn": "",
            "begntime": _now(),
            "psn_cert_type": "01",
            "certno": c.shape.certno,
            "psn_name": "",
        }
    }
    assert (await c.ok("1101", person))["baseinfo"]["psn_no"] == c.shape.psn_no


def test_go_float_writes_the_shortest_text() -> None:
    assert _encode([shapes_yingmo.go_float(t) for t in ("19.80", "40.00", "0.10", "9.9")]) == (
        b"[19.8,40,0.1,9.9]"
    )


async def test_sale_settled_then_refunded_in_full(server: Server) -> None:
    c = GoGatewayClient(server, SHAPE)
    await _signed_in(c)
    begntime = _now()
    pre = await c.ok("2101", _sale(SHAPE, begntime, presettle=True))
    identities(pre["setlinfo"])
    for row in pre["detlcutinfo"]:
        line_identity(row)
    settled = (await c.ok("2102", _sale(SHAPE, begntime, presettle=False)))["setlinfo"]
    identities(settled)
    assert dec(settled["medfee_sumamt"]) == Decimal("59.80")
    for name in SETLINFO_AMOUNTS:
        assert dec(settled[name]) == dec(pre["setlinfo"][name]), name
    assert settled["psn_no"] == SHAPE.psn_no
    # The order's split as the ERP computes it: medicare = fund + account, personal = the rest,
    # which must be the cash the clerk collects.
    personal = dec(settled["medfee_sumamt"]) - dec(settled["fund_pay_sumamt"])
    assert personal - dec(settled["acct_pay"]) == dec(settled["psn_cash_pay"])
    refund = {
        "data": {
            "setl_id": settled["setl_id"],
            "mdtrt_id": settled["mdtrt_id"],
            "psn_no": SHAPE.psn_no,
        }
    }
    cancel = (await c.ok("2103", refund))["setlinfo"]
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "inscp_scp_amt", "hifp_pay"):
        assert dec(cancel[name]) == -dec(settled[name]), name
    assert dec(cancel["cash_payamt"]) == -dec(settled["psn_cash_pay"])
    status = await server.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1", settled["setl_id"]
    )
    assert status != "settled"


def _envelope(**nodes: Any) -> bytes:
    return _encode(
        {
            "infno": "2103",
            "msgid": shapes_yingmo.msgid("2103"),
            "fixmedins_code": SHAPE.pharmacy,
            "infver": "1.0.0",
            **nodes,
        }
    )


def test_the_input_node_spelt_input_capitalised_is_the_input_node() -> None:
    data = {"data": {"setl_id": "S1", "mdtrt_id": "M1", "psn_no": SHAPE.psn_no}}
    as_go_writes_it = decode_request(_envelope(Input=data))
    assert decode_request(_envelope(input=data)).input == as_go_writes_it.input
    assert decode_request(_envelope(input=data, Input=None)).input == as_go_writes_it.input


def test_two_different_input_nodes_are_refused() -> None:
    data = {"data": {"setl_id": "S1", "mdtrt_id": "M1", "psn_no": SHAPE.psn_no}}
    other = {"data": {"setl_id": "S2", "mdtrt_id": "M1", "psn_no": SHAPE.psn_no}}
    with pytest.raises(BadRequest) as err:
        decode_request(_envelope(input=data, Input=other))
    assert "Input" in err.value.err_msg
