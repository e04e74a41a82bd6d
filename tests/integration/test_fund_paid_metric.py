"""What each fund paid, counted on /metrics as settlements are made, is exact to the fen: a
sample is a float, and the count was of yuan, which added up fractions a float cannot hold
(found from outside: 2892.0000000000005 where the account had paid exactly 2892.00). It counts
whole fen now, exact as the ledger."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

from prometheus_client import REGISTRY

from tests.integration.conftest import Server

PHARMACY = "P44180000001"
PERSON = "441800000000000001"


def _paid(fund_pay_type: str) -> float:
    return (
        REGISTRY.get_sample_value("sgw_fund_paid_fen_total", {"fund_pay_type": fund_pay_type})
        or 0.0
    )


def _every_fund() -> dict[str, float]:
    return {
        sample.labels["fund_pay_type"]: sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "sgw_fund_paid_fen_total"
    }


async def test_each_funds_count_is_the_sum_of_its_payments_to_the_fen(server: Server) -> None:
    pos = server.client(PHARMACY)
    today = f"{dt.datetime.now() - dt.timedelta(minutes=1):%Y-%m-%d %H:%M:%S}"
    paid: Counter[str] = Counter()
    before = _every_fund()
    # Small sales whose funds' shares are fractions of a yuan: 0.1 + 0.2 is not 0.3 in floats.
    for pric, cnt in ([("0.1", "1"), ("0.2", "1"), ("0.7", "3"), ("1.3", "1")]) * 3:
        total = Decimal(pric) * int(cnt)
        lines = [{"feedetl_sn": "1", "medins_list_codg": "YP0010", "pric": pric, "cnt": cnt,
                  "det_item_fee_sumamt": f"{total:.2f}"}]  # fmt: skip
        answer = await pos.ok("2102", pos.drug_input(PERSON, today, f"{total:.2f}", lines))
        for fund in answer["setldetail"]:
            paid[fund["fund_pay_type"]] += int(Decimal(fund["fund_payamt"]) * 100)
    assert paid, "no fund paid anything: the sales test nothing"
    for kind, fen in paid.items():
        assert _paid(kind) - before.get(kind, 0.0) == fen
        assert _paid(kind) == int(_paid(kind))  # a whole number of fen, never 0.30000000000000004
