"""A settlement stands only over the visit it was made for: its med_type and 病种, and its batch's
lines. Found from outside (a tester with a model of the rules and psql, no code):

- a 2203 made a chronic (14, M07800) visit ordinary (11, J45.900) while its chronic settlement
  stood at 90%, and the ledger checker then called that settlement one the rules refuse;
- 2208, that 2203, then 2601 of the 2208 put the chronic settlement back in force;
- 2208, a new line into the batch, then 2601 of the 2208: the batch held a settlement in force
  and an unsettled line, which a second 2207 then settled ("a charge batch is settled once").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import line

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
RETIREE = "441800000000000002"  # filed for the chronic disease M07800
EMPLOYEE = "441800000000000001"
DAY = "2026-06-09"


def _line(sn: str) -> dict[str, Any]:
    return line(sn, "YP0003", "45.5", 1)


async def _settled_visit(
    his: HisClient, psn_no: str, ipt: str, med_type: str, dise: str
) -> dict[str, Any]:
    mdtrt_id = await his.register(psn_no, "310", f"{DAY} 09:00:00", ipt)
    await his.visit_info(mdtrt_id, psn_no, med_type, f"{DAY} 09:00:00", dise)
    rows = his.fee_rows(mdtrt_id, psn_no, [_line("1"), _line("2")], f"{DAY} 09:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(psn_no, mdtrt_id, med_type, "91.00", "310", "0", chrg_bchno="B1")
    info: dict[str, Any] = (await his.ok("2207", data))["setlinfo"]
    return info


async def _cancel(his: HisClient, info: dict[str, Any], psn_no: str) -> str:
    msgid = his.msgid()
    keys = {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": psn_no}
    await his.ok("2208", {"data": keys}, msgid=msgid)
    return msgid


def _reverse(psn_no: str, omsgid: str) -> dict[str, Any]:
    return {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": "2208"}}


async def test_a_visits_med_type_and_disease_stand_while_a_settlement_of_it_does(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    chronic = await _settled_visit(his, RETIREE, "VS-1", "14", "M07800")
    mdtrt_id = chronic["mdtrt_id"]
    visit = "SELECT med_type, dise_codg FROM encounters WHERE mdtrt_id = $1"
    # Sent again as it was (a HIS resending its visit), it is taken.
    await his.visit_info(mdtrt_id, RETIREE, "14", f"{DAY} 09:00:00", "M07800")
    ordinary = his.visit_info_input(mdtrt_id, RETIREE, "11", f"{DAY} 09:00:00", "J45.900")
    refused = await his.call("2203", ordinary)
    assert refused["infcode"] == -1, refused
    words = str(refused["err_msg"])
    assert "已有结算" in words and "B1" in words and "2208" in words, words
    assert tuple(await server.fetchrow(visit, mdtrt_id)) == ("14", "M07800")

    # Cancelled, the visit may be corrected; the chronic settlement then stays cancelled.
    cancelled = await _cancel(his, chronic, RETIREE)
    assert (await his.call("2203", ordinary))["infcode"] == 0
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(RETIREE, cancelled))
    assert answer["infcode"] == -1, answer
    assert "医疗类别14" in answer["err_msg"] and "M07800" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before
    # The checker judges the cancelled settlement by the disease it was made under.
    assert await server.check_ledger() == []


async def test_an_ordinary_visits_diagnosis_code_may_be_corrected_after_it_settled(
    server: Server,
) -> None:
    """An ordinary visit's dise_codg prices nothing; HIS fill it from the main ICD diagnosis,
    which a doctor may correct after the bill is settled (found from outside: refused)."""
    his = server.client(HOSPITAL)
    info = await _settled_visit(his, EMPLOYEE, "VS-3", "11", "J06.900")
    mdtrt_id = info["mdtrt_id"]
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{DAY} 09:00:00", "J20.900")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{DAY} 09:00:00", "")
    chronic = his.visit_info_input(mdtrt_id, EMPLOYEE, "14", f"{DAY} 09:00:00", "M07800")
    assert (await his.call("2203", chronic))["infcode"] == -1  # its med_type stands
    # Cancelled and put back: the diagnosis code it was settled under is not asked for.
    cancelled = await _cancel(his, info, EMPLOYEE)
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{DAY} 09:00:00", "J20.900")
    await his.ok("2601", _reverse(EMPLOYEE, cancelled))
    assert await server.check_ledger() == []


async def test_a_batch_given_lines_since_its_cancellation_is_not_put_back(server: Server) -> None:
    his = server.client(HOSPITAL)
    info = await _settled_visit(his, EMPLOYEE, "VS-2", "11", "")
    mdtrt_id = info["mdtrt_id"]
    cancelled = await _cancel(his, info, EMPLOYEE)
    late = his.fee_rows(mdtrt_id, EMPLOYEE, [_line("3")], f"{DAY} 09:20:00", "B1")
    await his.ok("2204", {"feedetail": late})
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(EMPLOYEE, cancelled))
    assert answer["infcode"] == -1, answer
    assert "收费批次B1" in answer["err_msg"] and "流水号3" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before
    # Settled again whole, once.
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "136.50", "310", "0", chrg_bchno="B1")
    again = (await his.ok("2207", data))["setlinfo"]
    assert Decimal(str(again["medfee_sumamt"])) == Decimal("136.50")
    assert await server.check_ledger() == []
