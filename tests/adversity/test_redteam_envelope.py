"""What an independent tester, given only the README, the spec and a running gateway, found in
the envelope and replayed here over real loopback HTTP against the real ledger:

- a body with two `msgid` keys was journaled under the second, so a later send under the first
  settled the same sale again (two `input` nodes and two `psn_no` were taken too, last winning);
- a code sent as a JSON number skipped its length: a 1,000-digit feedetl_sn settled and came back
  in the answer, and a refusal quoting such a value ran past 4,000 characters;
- a sale refused for its input kept its msgid, and the corrected sale sent under it was told to
  look the first one up (5203), as if it had settled;
- a body its Content-Encoding did not decode was answered as an internal failure to retry (that
  refusal is tested against `gateway serve` itself, in test_http_edge).
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from tests.integration.conftest import Server, server
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL
from tests.integration.his_client import CALL_SERVICE, HisClient, decode

__all__ = ["server"]

pytestmark = pytest.mark.integration

PHARMACY = "P44180000001"
WORKER = "441800000000000001"
TODAY = (dt.date.today() - dt.timedelta(days=1)).isoformat()


def _sale(client: HisClient, psn_no: str = WORKER, **line: Any) -> dict[str, Any]:
    lines = [{**DRUG_LINES[0], **line}, *DRUG_LINES[1:]]
    return client.drug_input(psn_no, f"{TODAY} 10:00:00", DRUG_TOTAL, lines)


async def _written(server: Server, msgid: str) -> tuple[int, int]:
    """Settlements and journal entries under `msgid`."""
    settled = await server.fetchval(
        "SELECT count(*) FROM settlements WHERE medins_setl_id = $1", msgid
    )
    journaled = await server.fetchval("SELECT count(*) FROM idempotency WHERE msgid = $1", msgid)
    return int(settled), int(journaled)


async def _post(client: HisClient, body: bytes) -> dict[str, Any]:
    status, raw = await client.post_raw(body)
    assert status == 200, raw
    answer = decode(raw)
    assert len(answer["err_msg"] or "") <= 200, answer["err_msg"]
    return answer


async def test_two_msgids_in_one_body_are_refused_and_nothing_is_written(server: Server) -> None:
    pos = server.client(PHARMACY)
    first, second = pos.msgid(), pos.msgid()
    body = msgspec.json.encode(pos.envelope("2102", _sale(pos), msgid=first))
    twice = body[:-1] + f',"msgid":"{second}"}}'.encode()
    before = await server.ledger_fingerprint()
    answer = await _post(pos, twice)
    assert answer["infcode"] == -1
    assert answer["err_msg"] == "报文中字段msgid在同一节点内出现了两次，请只发送一次后重新发送"
    assert await server.ledger_fingerprint() == before
    assert await _written(server, second) == (0, 0)
    # Sent as it should have been, under either msgid, it settles once.
    _, settled = await pos.post_raw(body)
    assert decode(settled)["infcode"] == 0, decode(settled)["err_msg"]
    assert await _written(server, first) == (1, 1)
    _, again = await pos.post_raw(body)
    assert again == settled
    assert await _written(server, first) == (1, 1)


@pytest.mark.parametrize(
    "repeat",
    [
        lambda body: body[:-1] + b',"input":{"druginfo":{},"drugdetail":[]}}',
        lambda body: body.replace(b'"psn_no":', b'"psn_no":"441800000000000002","psn_no":', 1),
        lambda body: body.replace(b'"cnt":', b'"cnt":"1","cnt":', 1),
    ],
    ids=["input", "psn_no", "cnt"],
)
async def test_a_repeated_key_inside_a_sale_is_refused(
    server: Server, repeat: Callable[[bytes], bytes]
) -> None:
    pos = server.client(PHARMACY)
    msgid = pos.msgid()
    body = repeat(msgspec.json.encode(pos.envelope("2102", _sale(pos), msgid=msgid)))
    before = await server.ledger_fingerprint()
    answer = await _post(pos, body)
    assert answer["infcode"] == -1 and "出现了两次" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before


@pytest.mark.parametrize(
    ("digits", "words"),
    [(1000, "以数字发送超出范围"), (5000, "以数字发送超出范围"), (25, "以数字发送超出范围")],
)
async def test_a_code_sent_as_a_long_number_is_refused_not_settled(
    server: Server, digits: int, words: str
) -> None:
    pos = server.client(PHARMACY)
    msgid = pos.msgid()
    body = msgspec.json.encode(pos.envelope("2102", _sale(pos, feedetl_sn=7), msgid=msgid))
    body = body.replace(b'"feedetl_sn":7', b'"feedetl_sn":1' + b"0" * digits, 1)
    before = await server.ledger_fingerprint()
    answer = await _post(pos, body)
    assert answer["infcode"] == -1
    assert answer["err_msg"].startswith("字段drugdetail第1条.feedetl_sn" + words)
    assert await server.ledger_fingerprint() == before


async def test_a_refusal_quoting_a_value_fits_err_msg(server: Server) -> None:
    """A person number of thirty digits, sent as text within its length, is quoted whole; one of
    any length is never quoted past err_msg's 200 characters."""
    pos = server.client(PHARMACY)
    answer = await _post(pos, msgspec.json.encode(pos.envelope("2102", _sale(pos, "9" * 30))))
    assert answer["infcode"] == -1 and "9" * 30 in answer["err_msg"]


async def test_a_corrected_sale_under_a_refused_msgid_is_told_the_first_was_refused(
    server: Server,
) -> None:
    pos = server.client(PHARMACY)
    msgid = pos.msgid()
    unknown = "441899999999999999"
    refused = await _post(
        pos, msgspec.json.encode(pos.envelope("2102", _sale(pos, unknown), msgid=msgid))
    )
    assert refused["infcode"] == -1
    corrected = await _post(pos, msgspec.json.encode(pos.envelope("2102", _sale(pos), msgid=msgid)))
    assert corrected["infcode"] == -1
    message = corrected["err_msg"]
    assert message.startswith(f"报文ID{msgid}已用于一笔被拒绝的交易（")
    # Not sent to look the sale up (5203): read without the msgid, whose timestamp digits may
    # hold "5203" (found in CI: a message id sent at 20:37 on 12-05).
    words = message.replace(msgid, "")
    assert "该交易未发生" in words and "新的报文ID" in words and "5203" not in words
    assert refused["err_msg"][:20] in message
    assert (await _written(server, msgid))[0] == 0
    # Under a new msgid the corrected sale settles.
    assert (await pos.call("2102", _sale(pos)))["infcode"] == 0


async def test_a_changed_body_under_a_settled_msgid_still_points_to_the_settlement(
    server: Server,
) -> None:
    pos = server.client(PHARMACY)
    msgid = pos.msgid()
    assert (await pos.call("2102", _sale(pos), msgid=msgid))["infcode"] == 0
    again = await pos.call("2102", _sale(pos, cnt="3", det_item_fee_sumamt="120.00"), msgid=msgid)
    assert again["infcode"] == -1 and "请先查询原交易结果" in again["err_msg"]


async def test_a_gzipped_sale_settles(server: Server) -> None:
    """Compressed properly, a sale settles (what does not decode: test_http_edge)."""
    pos = server.client(PHARMACY)
    body = msgspec.json.encode(pos.envelope("2102", _sale(pos)))
    headers = {**pos.headers(), "Content-Encoding": "gzip"}
    async with pos.session.post(
        server.url + CALL_SERVICE, data=gzip.compress(body), headers=headers
    ) as resp:
        answer = decode(await resp.read())
    assert answer["infcode"] == 0, answer["err_msg"]


async def test_a_sale_cancelled_by_the_wrong_transaction_is_named_with_the_right_one(
    server: Server,
) -> None:
    """Found from outside: a pharmacy's 2208 of its own sale was told the settlement did not
    exist or was not its own; it exists, and 2103 cancels it."""
    pos = server.client(PHARMACY)
    info = (await pos.ok("2102", _sale(pos)))["setlinfo"]
    cancel = {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": WORKER}}
    before = await server.ledger_fingerprint()
    answer = await pos.call("2208", cancel)
    assert answer["infcode"] == -1
    assert (
        answer["err_msg"]
        == f"结算ID{info['setl_id']}是药店购药结算，不能用本交易撤销，请用2103撤销"
    )
    after = await server.ledger_fingerprint()
    assert {k: v for k, v in after.items() if k != "idempotency"} == {
        k: v for k, v in before.items() if k != "idempotency"
    }
    assert (await pos.call("2103", cancel))["infcode"] == 0
