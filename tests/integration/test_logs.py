"""Log lines are JSON with the request's labels, and carry no ID numbers, names or card numbers."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.ops.logs import JsonFormatter, mask
from tests.integration.conftest import Server

CERTNO = "441802199001011234"
NAME = "演示职工甲"
CARD = "QY0000000001"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_request_logs_are_json_and_masked(server: Server, captured: io.StringIO) -> None:
    his = server.client("H44180000001")
    await his.ok(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": CERTNO, "psn_name": NAME}}
    )
    await his.ok(
        "1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD, "card_sn": "S1"}}
    )
    bad = await his.call(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": CERTNO, "psn_name": "别人"}}
    )
    assert bad["infcode"] == -1
    # Something that logs the raw data on purpose still comes out masked.
    logging.getLogger("gateway.test").warning(
        "raw %s",
        json.dumps({"certno": CERTNO, "psn_name": NAME, "mdtrt_cert_no": CARD}, ensure_ascii=False),
        extra={"certno": CERTNO, "payload": {"psn_name": NAME, "note": f"id {CERTNO}"}},
    )
    # Access lines are written a batch at a time (gateway.ops.access_log): within its delay.
    for _ in range(100):
        if captured.getvalue().count('"msg":"answered"') >= 3:
            break
        await asyncio.sleep(0.02)
    text = captured.getvalue()
    assert CERTNO not in text and NAME not in text and CARD not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    answered = [entry for entry in lines if entry["msg"] == "answered"]
    assert len(answered) == 3
    for entry in answered:
        assert entry["infno"] == "1101" and entry["fixmedins_code"] == "H44180000001"
        assert (
            entry["msgid"]
            and len(entry["request_id"]) == 16
            and entry["outcome"] in {"ok", "rejected"}
        )


@pytest.mark.parametrize(
    ("raw", "hidden"),
    [
        (f"person {CERTNO} failed", CERTNO),
        (f'{{"certno": "{CERTNO}"}}', CERTNO),
        (f'{{"psn_name": "{NAME}"}}', NAME),
        (f'{{"mdtrt_cert_no": "{CARD}", "card_sn": "X9"}}', CARD),
        ("id 44180219900101123X.", "44180219900101123X"),
    ],
)
def test_mask(raw: str, hidden: str) -> None:
    assert hidden not in mask(raw)


def test_mask_keeps_what_is_not_personal() -> None:
    text = "msgid H44180000001202611221300000001 psn_no 441800000000000001 setl 12345"
    assert mask(text) == text


async def test_a_refused_request_is_logged_under_its_signer(
    server: Server, captured: io.StringIO
) -> None:
    """Found from outside: a request signed by one institution naming another was logged under
    the one it named, and a body refused before its envelope was read under none."""
    signer = server.client("H44180000001")
    impostor = signer.envelope("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": CERTNO}})
    impostor["fixmedins_code"] = "H44180000002"
    for body in (json.dumps(impostor).encode(), b"{not json"):
        status, raw = await signer.post_raw(body)
        assert status == 200 and json.loads(raw)["infcode"] == -1
    for _ in range(100):
        if captured.getvalue().count('"msg":"answered"') >= 2:
            break
        await asyncio.sleep(0.02)
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    answered = [entry for entry in lines if entry["msg"] == "answered"]
    assert [entry["fixmedins_code"] for entry in answered] == ["H44180000001"] * 2, answered
