"""Envelope decode + validate, and answer encoding: the per-request cost outside the core."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from adapters.his.settling import declared_of
from adapters.national.envelope import (
    decode_input,
    decode_request,
    encode_response,
    fingerprint,
)
from adapters.national.wire import In2206, SettleData, fen_required, flag, required
from adapters.pos.pharmacy import In2101, purchase_of
from gateway.ledger import idempotency
from gateway.pipeline.recent_answers import RecentAnswers
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.benchmark

ENVELOPE_2207 = msgspec.json.encode(
    {
        "infno": "2207",
        "msgid": "H44180000001202603010830000001",
        "mdtrtarea_admvs": "441800",
        "insuplc_admdvs": "441800",
        "recer_sys_code": "YBXT",
        "dev_no": "DEV-01",
        "dev_safe_info": "",
        "cainfo": "",
        "signtype": "",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "OP001",
        "opter_name": "收费员",
        "inf_time": "2026-03-01 08:30:00",
        "fixmedins_code": "H44180000001",
        "fixmedins_name": "清远演示三级医院",
        "sign_no": "",
        "input": {
            "data": {
                "psn_no": "441800000000000001",
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": "441802199001011234",
                "med_type": "11",
                "medfee_sumamt": "140.00",
                "psn_setlway": "01",
                "mdtrt_id": "4418002026030100000000000001",
                "chrg_bchno": "B1",
                "acct_used_flag": "1",
                "insutype": "310",
                "invono": "",
                "fulamt_ownpay_amt": 35.00,
                "overlmt_selfpay": 0,
                "preselfpay_amt": "8.00",
                "inscp_scp_amt": 97.00,
            }
        },
    }
)


def decode_2207(body: bytes) -> tuple[Any, ...]:
    """What the gateway does with a 2207 before touching the ledger."""
    req = decode_request(body)
    data = decode_input(req, In2206).data
    assert isinstance(data, SettleData)
    return (
        required(data.psn_no, "psn_no"),
        required(data.mdtrt_id, "mdtrt_id"),
        required(data.med_type, "med_type"),
        flag(data.acct_used_flag, "acct_used_flag"),
        declared_of(data),
    )


def test_decode_and_validate_2207(benchmark: Any) -> None:
    result = benchmark(decode_2207, ENVELOPE_2207)
    assert result[4].medfee_sumamt == 14000


def five_drug_lines(first: int = 0) -> list[dict[str, str]]:
    """A pharmacy sale's five lines of 20.00 (2 × 10.00), item codes YP<first>… on."""
    return [
        {
            "feedetl_sn": f"F{i}",
            "medins_list_codg": f"YP{first + i:04d}",
            "det_item_fee_sumamt": "20.00",
            "cnt": "2",
            "pric": "10.00",
        }
        for i in range(5)
    ]


ENVELOPE_2102 = msgspec.json.encode(
    {
        **{k: v for k, v in msgspec.json.decode(ENVELOPE_2207).items() if k != "input"},
        "infno": "2102",
        "input": HisClient.drug_input(
            "441800000000000001", "2026-03-01 08:30:00", "100.00", five_drug_lines()
        ),
    }
)


def test_decode_and_check_2102(benchmark: Any) -> None:
    """A pharmacy sale of five lines decoded, every text within its field's length."""
    node = benchmark(lambda: decode_input(decode_request(ENVELOPE_2102), In2101))
    assert len(node.drugdetail) == 5 and node.druginfo is not None


def test_read_a_pharmacy_sale(benchmark: Any) -> None:
    """The same sale as the settlement build reads it: decoded, lengths checked, its sixteen
    amounts, prices and quantities read from their texts, its times parsed."""
    ask = benchmark(lambda: purchase_of(decode_request(ENVELOPE_2102)))
    assert ask.declared.medfee_sumamt == 10000 and len(ask.lines) == 5


def test_read_one_amount(benchmark: Any) -> None:
    assert benchmark(fen_required, "18.50", "drugdetail[1].det_item_fee_sumamt") == 1850


def test_encode_answer(benchmark: Any) -> None:
    now = dt.datetime(2026, 3, 1, 8, 30)
    output = {
        "setlinfo": {f"field_{i}": msgspec.Raw(b"12.30") for i in range(40)},
        "setldetail": [],
    }
    body = benchmark(encode_response, region="441800", received=now, output=output, now=now)
    assert b'"infcode":0' in body


def test_idempotency_check(benchmark: Any) -> None:
    """A retried msgid: the body's fingerprint compared with the stored one, the answer handed
    back (the ledger look-up is one indexed read, measured by the HTTP harness)."""
    answer = encode_response(
        region="441800", received=dt.datetime(2026, 3, 1, 8, 30), output={"setlinfo": {}}
    )
    req = decode_request(ENVELOPE_2207)
    stored = idempotency.Stored(fingerprint(req), answer)

    def check() -> bytes:
        return idempotency.replay(stored, fingerprint(req), "M1")

    assert benchmark(check) == answer


def test_repeated_key_check_of_a_sale(benchmark: Any) -> None:
    """The refusal of a key sent twice, on the same five-line sale (part of decode_request)."""
    from adapters.national.repeated_keys import refuse_repeated_keys

    benchmark(refuse_repeated_keys, ENVELOPE_2102)


def test_remembering_an_answer_at_capacity(benchmark: Any) -> None:
    """What each committed answer costs the process that keeps it for retries during an outage
    (gateway.pipeline.recent_answers), at its bound: the oldest evicted each time. A plain dict's
    eviction cost 4.2 µs here (it walks the slots earlier evictions emptied); 0.6 µs ordered."""
    recent = RecentAnswers(20_000)
    answer, digest = b"x" * 1300, b"d" * 32
    serial = iter(range(10**9))
    for _ in range(30_000):
        recent.remember("P44180000001", f"P44180000001{next(serial):018d}", digest, answer)

    def remember() -> None:
        recent.remember("P44180000001", f"P44180000001{next(serial):018d}", digest, answer)

    benchmark(remember)
    assert len(recent) == 20_000
