"""A settlement, a cancellation and a reversal of one admission at the same moment.

Each takes the visit's lock and the person's; taken in different orders, two of them wait for
each other until PostgreSQL's deadlock detector (1 s) kills one, which the counter sees as an
internal error. With one order for every path (gateway/ledger/settlements.py) they only queue.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.integration.conftest import running_gateway
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
PERSON = "441800000000000002"  # employee, retired
ROUNDS = 30
# Behind the gateway's clock, within the late-billing bound.
DAY = (dt.datetime.now() - dt.timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S")


def _line(sn: str) -> dict[str, Any]:
    return {
        "feedetl_sn": sn,
        "medins_list_codg": "ZL0003",
        "pric": "100.00",
        "cnt": "1",
        "det_item_fee_sumamt": "100.00",
    }


async def _upload(his: HisClient, stay: str, sn: str) -> None:
    rows = his.fee_rows(stay, PERSON, [_line(sn)], DAY, "")
    await his.ok("2301", {"feedetail": rows})


def _midway(his: HisClient, stay: str) -> dict[str, Any]:
    return his.settle_data(PERSON, stay, "21", "100.00", "310", "0", mid_setl_flag="1")


async def _round(his: HisClient, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Two mid-way settlements in force and a third line waiting; then at once: settle the
    waiting line (2304), cancel the second settlement (2305), reverse the first (2601)."""
    admitted = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": PERSON,
                "insutype": "310",
                "begntime": DAY,
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": PERSON,
                "med_type": "21",
                "ipt_no": f"ZY-LOCK-{n}",
            },
            "diseinfo": [],
        },
    )
    stay = admitted["result"]["mdtrt_id"]
    first_msgid = his.msgid()
    await _upload(his, stay, "1")
    await his.ok("2304", _midway(his, stay), msgid=first_msgid)
    await _upload(his, stay, "2")
    second = await his.ok("2304", _midway(his, stay))
    await _upload(his, stay, "3")
    calls: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "2304": lambda: his.call("2304", _midway(his, stay)),
        "2305": lambda: his.call(
            "2305",
            {
                "data": {
                    "setl_id": second["setlinfo"]["setl_id"],
                    "mdtrt_id": stay,
                    "psn_no": PERSON,
                }
            },
        ),
        "2601": lambda: his.call(
            "2601", {"data": {"psn_no": PERSON, "omsgid": first_msgid, "oinfno": "2304"}}
        ),
    }
    answers = await asyncio.gather(*(call() for call in calls.values()))
    return list(zip(calls, answers, strict=True))


async def test_settle_cancel_and_reverse_together_only_queue(new_database: Any) -> None:
    async with running_gateway(new_database) as server:
        his = server.client(HOSPITAL)
        answered: list[tuple[str, dict[str, Any]]] = []
        for n in range(ROUNDS):
            answered += await _round(his, n)
        for infno, answer in answered:
            if infno == "2304" and answer["infcode"] == -1:
                # It came after a cancellation released lines: the total it declared is short.
                assert "不一致" in answer["err_msg"], answer["err_msg"]
            else:
                assert answer["infcode"] == 0, (infno, answer["err_msg"])
        settled = sum(1 for infno, a in answered if infno == "2304" and a["infcode"] == 0)
        assert settled > 0
        assert await server.check_ledger() == []
