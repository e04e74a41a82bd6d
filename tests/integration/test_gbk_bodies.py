"""GBK bodies, as Windows .NET Framework clients write them: found from outside,
newtouch-cloud/openhis (`ClassHelper.YBHttpRequest`) and daxiaochengzi/YiBinActive
(`Form3.PostWebRequest`) encode their envelopes with `Encoding.Default`, which is GBK on a
Chinese Windows, and every such request was refused at its first Chinese character. A GBK body
is read as the text it encodes, stored and answered as that text (the answer in UTF-8, as both
clients read it); anything that is neither UTF-8 nor GBK is refused, writing nothing."""

from __future__ import annotations

import msgspec
import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, certificate, decode

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
EMPLOYEE = "441800000000000001"
# 俓's second GBK byte is 0x5c, a backslash: read byte by byte as JSON it would escape the quote.
DEPT = "中医内科门诊部俓"


def _registration(his: HisClient, ipt_otp_no: str) -> dict[str, object]:
    data = {
        "psn_no": EMPLOYEE, "insutype": "310", "begntime": "2026-06-12 09:00:00",
        **certificate(EMPLOYEE), "ipt_otp_no": ipt_otp_no, "atddr_no": "D001",
        "dr_name": "张医生", "dept_code": "K01", "dept_name": DEPT, "caty": "A03",
    }  # fmt: skip
    return his.envelope("2201", {"data": data}, opter_name="收费员张三")


async def test_a_gbk_envelope_is_read_as_its_text_and_retried_as_itself(server: Server) -> None:
    his = server.client(HOSPITAL)
    envelope = _registration(his, "GBK-1")
    text = msgspec.json.encode(envelope).decode()
    gbk = text.encode("gbk")
    assert b"\x5c\x22" in gbk  # the backslash byte before a quote, inside the department's name
    status, first = await his.post_raw(gbk)
    answer = decode(first)
    assert status == 200 and answer["infcode"] == 0, answer
    mdtrt_id = answer["output"]["data"]["mdtrt_id"]
    dept = await server.fetchval(
        "SELECT detail->'registration'->>'dept_name' FROM encounters WHERE mdtrt_id = $1",
        mdtrt_id,
    )
    assert dept == DEPT
    # The same bytes again, and the same message in UTF-8: one request, its stored answer.
    assert await his.post_raw(gbk) == (200, first)
    assert await his.post_raw(text.encode()) == (200, first)
    count = "SELECT count(*) FROM encounters WHERE ipt_otp_no = 'GBK-1'"
    assert await server.fetchval(count) == 1


async def test_a_body_neither_utf8_nor_gbk_is_refused_writing_nothing(server: Server) -> None:
    his = server.client(HOSPITAL)
    text = msgspec.json.encode(_registration(his, "GBK-2")).decode()
    before = await server.ledger_fingerprint()
    for body in (
        text.encode("utf-16"),
        text.encode("utf-16-le"),
        text.encode().replace(DEPT.encode(), b"\x81\x7f"),  # a GBK lead byte, no trail
    ):
        status, raw = await his.post_raw(body)
        answer = decode(raw)
        assert status == 200 and answer["infcode"] == -1, answer
        assert "UTF-8" in answer["err_msg"] and "GBK" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before


async def test_a_body_declared_gbk_is_read_as_gbk_where_utf8_would_read_too(
    server: Server,
) -> None:
    """Found from outside: 鏂囦腑 in GBK is also valid UTF-8 (文中); sent with
    `charset=GBK` it was read as UTF-8 and stored as the other text."""
    his = server.client(HOSPITAL)
    name = "鏂囦腑"
    assert name.encode("gbk").decode("utf-8") == "文中"
    for ipt, charset, stored in (("GBK-3", "GBK", name), ("GBK-4", None, "文中")):
        envelope = _registration(his, ipt)
        # Every other text ASCII: the body's only non-ASCII bytes are the name's, valid both ways.
        envelope.update(opter_name="op", fixmedins_name="H1")
        data = envelope["input"]["data"]  # type: ignore[index]
        data.update(dept_name=name, dr_name="dr")
        body = msgspec.json.encode(envelope).decode().encode("gbk")
        headers = his.headers()
        if charset:
            headers["Content-Type"] = f"application/json; charset={charset}"
        async with server.session.post(
            server.url + "/fsi/api/rsfComIfsService/callService", data=body, headers=headers
        ) as r:
            answer = decode(await r.read())
        assert answer["infcode"] == 0, answer
        dept = await server.fetchval(
            "SELECT detail->'registration'->>'dept_name' FROM encounters WHERE mdtrt_id = $1",
            answer["output"]["data"]["mdtrt_id"],
        )
        # Undeclared, the bytes are UTF-8 and read as such: no reading can tell the two apart.
        assert dept == stored, (charset, dept)
