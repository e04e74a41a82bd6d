"""Sequences the money machine (test_money_machine.py) found, each pinned by name."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import asyncpg

from gateway.app.reference import load_reference
from gateway.app.server import DEFAULT_REFERENCE
from gateway.jobs import corrections
from gateway.ledger import reference_store
from tests.integration.conftest import Server
from tests.integration.his_client import HisClient
from tests.stateful.test_checker_ledger import (
    DAY,
    FEE_TIME,
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


async def _conn(server: Server) -> asyncpg.Connection:
    conn = await asyncpg.connect(server.dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def test_a_correction_plan_lists_what_apply_refuses(server: Server) -> None:
    # README: `corrections plan` is the correction done in a transaction rolled back, "exactly
    # what apply will do". A stay settled mid-way for a consultation (ZL0001, class A), then its
    # refund with a bed day; ZL0001 re-mapped to a class-B code: the first settlement re-settles,
    # the second would have a negative first self-pay (§6 "all components ≥ 0"), so apply leaves
    # it in force and lists it as failed. The plan raised the refusal and showed nothing.
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay = (
        await his.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": psn,
                    "insutype": "390",
                    "begntime": DAY,
                    "mdtrt_cert_type": "01",
                    "mdtrt_cert_no": psn,
                    "med_type": "21",
                    "ipt_no": f"ZY-PLAN-{psn}",
                },
                "diseinfo": [],
            },
        )
    )["result"]["mdtrt_id"]
    charge = {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "30.00", "cnt": "1",
              "det_item_fee_sumamt": "30.00"}  # fmt: skip
    await his.ok("2301", {"feedetail": his.fee_rows(stay, psn, [charge], FEE_TIME, "")})
    mid = his.settle_data(psn, stay, "21", "30.00", "390", "0", mid_setl_flag="1")
    first = (await his.ok("2304", mid))["setlinfo"]
    refund = {**charge, "feedetl_sn": "2", "cnt": "-1", "det_item_fee_sumamt": "-30.00",
              "init_feedetl_sn": "1"}  # fmt: skip
    bed = {"feedetl_sn": "3", "medins_list_codg": "ZL0003", "pric": "80.00", "cnt": "1",
           "det_item_fee_sumamt": "80.00"}  # fmt: skip
    await his.ok("2301", {"feedetail": his.fee_rows(stay, psn, [refund, bed], FEE_TIME, "")})
    mid = his.settle_data(psn, stay, "21", "50.00", "390", "0", mid_setl_flag="1")
    second = (await his.ok("2304", mid))["setlinfo"]
    await _map(his, "ZL0001", "002704000010000", dt.date.today() - dt.timedelta(days=400))

    conn = await _conn(server)
    try:
        snapshot = await reference_store.read_snapshot(conn, load_reference(DEFAULT_REFERENCE))
        found = [
            t
            for t in await corrections.targets(conn, snapshot, HOSPITAL, "ZL0001")
            if t.psn_no == psn
        ]
        assert [t.setl_id for t in found] == [first["setl_id"], second["setl_id"]]
        planned, plan_failed = await corrections.plan(
            conn, snapshot, found, "ZL0001", dt.datetime.now()
        )
        summary, failed = await corrections.apply(conn, snapshot, found, "ZL0001", "REG1")
    finally:
        await conn.close()
    assert [it.old_setl_id for it in planned.items] == [first["setl_id"]]
    assert [it.old_setl_id for it in summary.items] == [first["setl_id"]]
    assert [it.new for it in planned.items] == [it.new for it in summary.items]
    assert [s for s, _ in plan_failed] == [s for s, _ in failed] == [second["setl_id"]]
    assert "先行自付" in failed[0][1] or "退费" in failed[0][1], failed
    status = await server.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1", second["setl_id"]
    )
    assert status == "settled"
    assert await server.check_ledger() == []
