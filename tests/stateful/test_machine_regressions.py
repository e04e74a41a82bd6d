"""Sequences the money machine (test_money_machine.py) found, each pinned by name."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient
from tests.stateful.test_checker_ledger import (
    HOSPITAL,
    RESIDENT,
    _cancel,
    _person,
    _visit,
    server,
)

__all__ = ["server"]


async def test_a_settlement_made_again_at_the_counter_can_be_reversed(server: Server) -> None:
    # 2207, 2208, 2207 again of the same visit and batch (it names the refunded one it replaces),
    # then 2601 of that second 2207: it was refused as 未找到原报文, since the reversal skipped every
    # settlement that replaces another, meaning to skip only bulk corrections' re-settlements
    # (those carry the original's msgid).
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, first = await _visit(his, psn, "390", "100.00")
    await _cancel(his, "2208", psn, mdtrt_id, first["setl_id"])
    msgid = his.msgid()
    data = his.settle_data(psn, mdtrt_id, "11", "100.00", "390", "0", chrg_bchno="B1")
    again = (await his.ok("2207", data, msgid=msgid))["setlinfo"]
    assert again["hifp_pay"] == Decimal("50.00")
    await his.ok("2601", {"data": {"psn_no": psn, "omsgid": msgid, "oinfno": "2207"}})
    status = await server.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1", again["setl_id"]
    )
    assert status == "cancelled"
    assert await server.check_ledger() == []


async def _map(his: HisClient, item: str, national: str, begndate: dt.date) -> None:
    await his.ok(
        "3301",
        {
            "data": [
                {
                    "fixmedins_hilist_id": item,
                    "fixmedins_hilist_name": "对照测试",
                    "list_type": "201",
                    "med_list_codg": national,
                    "begndate": str(begndate),
                    "enddate": "2099-12-31",
                }
            ]
        },
    )


async def test_a_mapping_uploaded_later_with_an_earlier_begndate_supersedes(
    server: Server,
) -> None:
    # README (3301): "a new row supersedes from its begndate". ZL0012 mapped to CT (class 02,
    # first self-pay) from today, then, in a later upload, to a blood count (class 01) from ten
    # days ago: today the later upload is in force, so nothing is first self-paid.
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    today = dt.date.today()
    await _map(his, "ZL0012", "002704000010000", today)
    await _map(his, "ZL0012", "002501000010000", today - dt.timedelta(days=10))
    _, settled = await _visit(his, psn, "390", "100.00", code="ZL0012")
    assert settled["preselfpay_amt"] == Decimal("0.00")
