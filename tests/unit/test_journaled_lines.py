"""A provisional visit's lines before its waiting calls are applied: what replay will leave.

The integration test (tests/integration/test_replay_claim_lines.py) holds an outpatient visit's
2206 and 2207 to them; here a stay's uploads (2301, refund lines included) and withdrawals
(2302, one line, or "0000" for all) in the order replay applies them.
"""

from __future__ import annotations

from typing import Any

import msgspec

import adapters.his.transactions  # noqa: F401 - registers the hospital's transactions
from adapters.national import deferral
from adapters.national.envelope import decode_request
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import line

HOSPITAL = "H44180000001"
PSN = "441800000000000002"
STAY = "PV441800H44180000001X"
HIS = HisClient(None, "", HOSPITAL)  # type: ignore[arg-type]


def _stored(infno: str, input_: Any) -> bytes:
    return deferral.stored_request(decode_request(msgspec.json.encode(HIS.envelope(infno, input_))))


def _upload(*lines: dict[str, Any]) -> bytes:
    rows = HisClient.fee_rows(STAY, PSN, list(lines), "2026-05-08 09:00:00", "")
    return _stored("2301", {"feedetail": rows})


def _withdrawal(*serials: str) -> bytes:
    return _stored(
        "2302", {"data": [{"feedetl_sn": s, "mdtrt_id": STAY, "psn_no": PSN} for s in serials]}
    )


def _serials(bodies: list[bytes]) -> list[str]:
    return [ln.feedetl_sn for ln in deferral.journaled_lines(bodies)]


def test_uploads_add_and_withdrawals_take_away_in_replays_order() -> None:
    first = _upload(line("1", "ZL0003", "60", 2), line("2", "ZL0008", "20", 3))
    refund = _upload(line("3", "ZL0008", "20", -1, init_feedetl_sn="2"))
    assert _serials([first, refund]) == ["1", "2", "3"]
    assert _serials([first, _withdrawal("1"), refund]) == ["2", "3"]
    # A withdrawal applies to what came before it, not to a later upload of the same serial.
    assert _serials([first, _withdrawal("1"), _upload(line("1", "ZL0004", "30", 1))]) == ["2", "1"]
    assert _serials([first, refund, _withdrawal("0000")]) == []


def test_an_upload_that_cannot_be_read_adds_nothing() -> None:
    # Applied, it is refused (its line names no item): the visit keeps the lines it had.
    good = _upload(line("2", "ZL0008", "20", 3))
    unreadable = _stored("2301", {"feedetail": [{"feedetl_sn": "1"}]})
    assert _serials([good, unreadable]) == ["2"]
