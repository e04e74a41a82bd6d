"""The latency the P1 alert follows is that of the answers that did their work: a refusal or a
busy answer, however many, is counted among every answer's times and not among the settled
ones (found from outside: one till's retry storm put 21,000 sub-millisecond refusals into the
one histogram, and its p99 stayed under 25 ms whatever the settlements took)."""

from __future__ import annotations

import datetime as dt

from prometheus_client import REGISTRY

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL

PHARMACY = "P44180000001"
PERSON = "441800000000000001"


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"infno": "2102"}) or 0.0


async def test_only_settled_answers_enter_the_settlement_latency(server: Server) -> None:
    pos = server.client(PHARMACY)
    today = f"{dt.datetime.now() - dt.timedelta(minutes=1):%Y-%m-%d %H:%M:%S}"
    done, every = (
        _count("sgw_done_duration_seconds_count"),
        _count("sgw_request_duration_seconds_count"),
    )
    sale = pos.drug_input(PERSON, today, DRUG_TOTAL, DRUG_LINES)
    assert (await pos.call("2102", sale))["infcode"] == 0
    refused = pos.drug_input(PERSON, today, "115.001", DRUG_LINES)  # three decimals
    for _ in range(5):
        assert (await pos.call("2102", refused))["infcode"] == -1
    assert _count("sgw_done_duration_seconds_count") == done + 1
    assert _count("sgw_request_duration_seconds_count") == every + 6
