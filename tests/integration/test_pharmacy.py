"""Pharmacy counters: 2101 changes nothing, 2103 restores exactly, terminals are limited apart."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from gateway.app.config import GatewayConfig
from gateway.pipeline.ratelimit import Limits
from tests.integration.conftest import Server, running_gateway
from tests.integration.his_client import HisClient

PHARMACY = "P44180000001"
EMPLOYEE = "441800000000000003"
LINES = [
    {
        "feedetl_sn": "1",
        "medins_list_codg": "YP0003",
        "pric": "40",
        "cnt": "2",
        "det_item_fee_sumamt": "80.00",
    },
    {
        "feedetl_sn": "2",
        "medins_list_codg": "YP0010",
        "pric": "35",
        "cnt": "1",
        "det_item_fee_sumamt": "35.00",
    },
    {
        "feedetl_sn": "3",
        "medins_list_codg": "YP0007",
        "pric": "9.9",
        "cnt": "3",
        "det_item_fee_sumamt": "29.70",
    },
]


async def _person_state(server: Server, psn_no: str) -> tuple[Any, ...]:
    balance = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", psn_no)
    rows = await server.fetch(
        "SELECT year, dedc_outpatient, dedc_chronic, pool_outpatient, pool_inpatient, pool_pharmacy,"
        " hifob, hifmi, mi_qualified, maf, cvlserv FROM accumulators WHERE psn_no = $1 ORDER BY year",
        psn_no,
    )
    acc = tuple(tuple(r.values()) for r in rows)
    return balance, tuple(tuple(v for v in row[1:]) for row in acc if any(row[1:]))


async def test_presettlement_changes_nothing_and_equals_the_settlement(server: Server) -> None:
    pos = server.client(PHARMACY)
    drug = pos.drug_input(EMPLOYEE, "2026-06-01 10:00:00", "144.70", LINES)
    before = await server.ledger_fingerprint()
    pre = await pos.ok("2101", drug)
    assert await server.ledger_fingerprint() == before
    out = await pos.ok("2102", drug)
    for field, value in pre["setlinfo"].items():
        if field not in {
            "setl_id",
            "setl_time",
            "mdtrt_id",
            "medins_setl_id",
            "clr_optins",
            "clr_way",
            "clr_type",
        }:
            assert out["setlinfo"][field] == value, field
    assert pre["detlcutinfo"] == out["detlcutinfo"]
    assert pre["setldetail"] == out["setldetail"]
    # The terminal and operator are recorded on the settlement.
    row = (
        await server.fetch(
            "SELECT dev_no, opter FROM settlements WHERE setl_id = $1", out["setlinfo"]["setl_id"]
        )
    )[0]
    assert (row["dev_no"], row["opter"]) == ("DEV-01", "OP001")


async def test_cancellation_restores_account_and_accumulators_exactly(server: Server) -> None:
    pos = server.client(PHARMACY)
    before = await _person_state(server, EMPLOYEE)
    out = await pos.ok("2102", pos.drug_input(EMPLOYEE, "2026-06-02 10:00:00", "144.70", LINES))
    info = out["setlinfo"]
    assert Decimal(info["acct_pay"]) > 0
    assert await _person_state(server, EMPLOYEE) != before
    cancel = {
        "data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": EMPLOYEE}
    }
    envelope = pos.envelope("2103", cancel)
    reversed_ = (await pos.ok("2103", cancel, msgid=envelope["msgid"]))["setlinfo"]
    # The cancellation's own msgid, not the sale's (found from outside).
    assert reversed_["medins_setl_id"] == envelope["msgid"] != info["medins_setl_id"]
    # The certificate the sale was made with, in 5203 (found from outside: "").
    assert info["mdtrt_cert_type"]
    query = await pos.ok("5203", {"data": {"setl_id": info["setl_id"], "psn_no": EMPLOYEE}})
    assert query["setlinfo"]["mdtrt_cert_type"] == info["mdtrt_cert_type"]
    assert Decimal(reversed_["psn_pay"]) == -Decimal(info["psn_part_amt"])
    assert Decimal(reversed_["cash_payamt"]) == -Decimal(info["psn_cash_pay"])
    assert Decimal(reversed_["balc"]) == Decimal(info["balc"]) + Decimal(info["acct_pay"])
    assert await _person_state(server, EMPLOYEE) == before
    again = await pos.call("2103", cancel)
    assert again["infcode"] == -1 and "已撤销" in again["err_msg"]
    assert await _person_state(server, EMPLOYEE) == before
    assert await server.check_ledger() == []


async def test_unknown_certificate_counts_against_the_terminal(server: Server) -> None:
    pos = server.client(PHARMACY)
    for _ in range(3):
        answer = await pos.call(
            "1101",
            {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "NO-SUCH-CARD", "card_sn": "S"}},
        )
        assert answer["infcode"] == -1
    async with server.session.get(server.url + "/metrics") as r:
        text = await r.text()
    line = re.search(
        r'sgw_terminal_identity_failures_total\{fixmedins_code="P44180000001",terminal="DEV-01"\} (\S+)',
        text,
    )
    assert line is not None and float(line.group(1)) >= 3


@pytest.fixture(scope="module")
async def tight(new_database: Callable[..., Any]) -> Any:
    """A gateway whose terminals may send 5 requests a second, bursts of 10."""
    config = GatewayConfig(
        rate_limit=Limits(
            terminal_rate=5, terminal_burst=10, institution_rate=1000, institution_burst=1000
        )
    )
    async with running_gateway(new_database, config) as srv:
        yield srv


def _terminal(server: Server, dev_no: str) -> HisClient:
    client = server.client(PHARMACY)
    original = client.envelope

    def envelope(infno: str, input_: Any, **kw: Any) -> dict[str, Any]:
        env = original(infno, input_, **kw)
        env["dev_no"] = dev_no
        return env

    client.envelope = envelope  # type: ignore[method-assign]
    return client


async def test_a_retry_storm_is_throttled_while_other_terminals_settle(tight: Server) -> None:
    storm = _terminal(tight, "POS-STORM")
    calm = _terminal(tight, "POS-CALM")
    drug_storm = storm.drug_input(
        "441800000000000004", "2026-06-03 10:00:00", "144.70", LINES, insutype="390"
    )

    async def one(client: HisClient) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        answer = await client.call("2101", drug_storm)
        return answer, time.perf_counter() - started

    storm_answers = await asyncio.gather(*(one(storm) for _ in range(60)))
    admitted = [a for a, _ in storm_answers if a["infcode"] == 0]
    busy = [a for a, _ in storm_answers if a["infcode"] == -1]
    # Retried under the same msgid (found from outside: the words said only "retry", and a
    # clerk may send it again as a new message, leaving the first msgid's fate to look up).
    assert all("稍候几秒后使用相同报文ID重试" in a["err_msg"] for a in busy), {
        a["err_msg"] for a in busy
    }
    assert 10 <= len(admitted) <= 20, len(
        admitted
    )  # the burst of 10 (plus refill), the rest refused
    # The other terminal is unaffected: every one of its settlements goes through.
    for i in range(5):
        drug = calm.drug_input("441800000000000001", "2026-06-03 11:00:00", "144.70", LINES)
        answer = await calm.call("2102", drug)
        assert answer["infcode"] == 0, (i, answer["err_msg"])


async def test_a_2103_of_a_reversed_sale_says_it_was_reversed(server: Server) -> None:
    """Found from outside: a 2103 of a sale a 2601 had reversed was told "已撤销，不能重复撤销",
    and the clerk looked for a 2103 nobody had sent. It says the sale was reversed (冲正) and
    names its message; a 2103 of a sale a 2103 cancelled keeps its words."""
    pos = server.client(PHARMACY)
    msgid = pos.msgid()
    drug = pos.drug_input(EMPLOYEE, "2026-06-02 10:00:00", "144.70", LINES)
    sold = (await pos.ok("2102", drug, msgid=msgid))["setlinfo"]
    await pos.ok("2601", {"data": {"psn_no": EMPLOYEE, "omsgid": msgid, "oinfno": "2102"}})
    cancel = {
        "data": {"setl_id": sold["setl_id"], "mdtrt_id": sold["mdtrt_id"], "psn_no": EMPLOYEE}
    }
    refused = await pos.call("2103", cancel)
    assert refused["infcode"] == -1, refused
    assert f"已冲正（2601，原报文{msgid}）" in refused["err_msg"], refused["err_msg"]
    other = await pos.ok("2102", pos.drug_input(EMPLOYEE, "2026-06-02 11:00:00", "144.70", LINES))
    keys = {"setl_id": other["setlinfo"]["setl_id"], "mdtrt_id": other["setlinfo"]["mdtrt_id"]}
    await pos.ok("2103", {"data": {**keys, "psn_no": EMPLOYEE}})
    twice = await pos.call("2103", {"data": {**keys, "psn_no": EMPLOYEE}})
    assert "已撤销，不能重复撤销" in twice["err_msg"] and "冲正" not in twice["err_msg"], twice
