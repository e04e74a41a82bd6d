"""The ledger checker's money invariants against a real gateway: clean after real flows (with the
gateway's core and with the independent model as the rules), and each corruption that leaves
every sum balanced is found: a cancelled settlement put back after another took the cap, a line
under a settlement lowered, a settlement's pool payment raised together with its fund row and the
accumulators.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.ledger import checker
from tests.integration.conftest import Server, running_gateway
from tests.integration.his_client import HisClient
from tests.reference.data import load
from tests.reference.ledger_model import ModelRules

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"  # level 3: residents' outpatient 50%, cap 500.00 in 2026
PHARMACY = "P44180000001"
RESIDENT = "441800000000000004"
EMPLOYEE = "441800000000000001"
_serial = itertools.count(1)
BASE = (dt.datetime.now() - dt.timedelta(hours=3)).replace(microsecond=0)
DAY = f"{BASE:%Y-%m-%d %H:%M:%S}"
FEE_TIME = f"{BASE + dt.timedelta(minutes=10):%Y-%m-%d %H:%M:%S}"
DISCHARGE = f"{BASE + dt.timedelta(hours=1):%Y-%m-%d %H:%M:%S}"


@pytest.fixture(scope="module")
async def server(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database) as srv:
        yield srv


async def _conn(server: Server) -> asyncpg.Connection:
    conn = await asyncpg.connect(server.dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def _findings(server: Server, persons: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(the sums' findings, the new invariants' with the core, the same with the model)."""
    conn = await _conn(server)
    try:
        sums = [p for p in await checker.check(conn) if any(x in p for x in persons)]
        core = await checker.line_problems(conn, persons) + await checker.replay_problems(
            conn, await checker.core_rules(conn), persons=persons
        )
        model = await checker.line_problems(conn, persons) + await checker.replay_problems(
            conn, ModelRules(load()), persons=persons
        )
    finally:
        await conn.close()
    new = set(core)
    return [p for p in sums if p not in new], core, model


async def _person(server: Server, template: str, balance_fen: int = 0) -> str:
    psn_no = f"4418008{next(_serial):011d}"
    await server.fetch(
        "INSERT INTO persons SELECT $2, psn_name, psn_cert_type, $2, gend, brdy, insuplc_admdvs,"
        " insutype, psn_type, psn_insu_stas, cvlserv_flag, maf_class, chronic_dise_codg, ''"
        " FROM persons WHERE psn_no = $1",
        template,
        psn_no,
    )
    await server.fetch("INSERT INTO accounts VALUES ($1, $2)", psn_no, balance_fen)
    return psn_no


def _line(sn: str, amount: str, code: str = "ZL0001") -> dict[str, Any]:
    return {
        "feedetl_sn": sn,
        "medins_list_codg": code,
        "pric": amount,
        "cnt": "1",
        "det_item_fee_sumamt": amount,
    }


async def _visit(
    his: HisClient, psn: str, insutype: str, amount: str, acct: str = "0", code: str = "ZL0001"
) -> tuple[str, dict[str, Any]]:
    mdtrt_id = await his.register(psn, insutype, DAY, f"MZ-CHK-{next(_serial)}")
    rows = his.fee_rows(mdtrt_id, psn, [_line("1", amount, code)], FEE_TIME, "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(psn, mdtrt_id, "11", amount, insutype, acct, chrg_bchno="B1")
    return mdtrt_id, (await his.ok("2207", data))["setlinfo"]


async def _cancel(his: HisClient, infno: str, psn: str, mdtrt_id: str, setl_id: str) -> str:
    msgid = his.msgid()
    data = {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn}}
    await his.ok(infno, data, msgid=msgid)
    return msgid


async def test_real_flows_leave_nothing_to_find(server: Server) -> None:
    his = server.client(HOSPITAL)
    resident = await _person(server, RESIDENT)
    employee = await _person(server, EMPLOYEE, balance_fen=30000)
    # A cap taken, the settlement cancelled, the cap taken again by a later one: the later one
    # keeps what it was computed with, and the earlier one stays cancelled.
    first_visit, first = await _visit(his, resident, "390", "600.00")
    _, second = await _visit(his, resident, "390", "600.00")
    assert second["hifp_pay"] == Decimal("200.00")  # 500.00 cap, 300.00 taken
    await _cancel(his, "2208", resident, first_visit, first["setl_id"])
    _, third = await _visit(his, resident, "390", "600.00")
    assert third["hifp_pay"] == Decimal("300.00")
    # Undone and redone with nothing in between in its group: reinstated exactly.
    visit, settled = await _visit(his, employee, "310", "250.00", acct="1")
    cancel = await _cancel(his, "2208", employee, visit, settled["setl_id"])
    pos = server.client(PHARMACY)
    await pos.ok("2102", pos.drug_input(employee, DAY, "19.80", [_line("1", "19.80", "YP0007")]))
    await his.ok("2601", {"data": {"psn_no": employee, "omsgid": cancel, "oinfno": "2208"}})
    # A stay with a mid-way settlement, a refund line and the closing one.
    out = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": resident,
                "insutype": "390",
                "begntime": DAY,
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": resident,
                "med_type": "21",
                "ipt_no": f"ZY-CHK-{next(_serial)}",
            },
            "diseinfo": [],
        },
    )
    stay = out["result"]["mdtrt_id"]
    # 30 × 100.00, so that one unit can be refunded at its own price.
    charge = {**_line("1", "3000.00", "ZL0003"), "pric": "100.00", "cnt": "30"}
    rows = his.fee_rows(stay, resident, [charge], FEE_TIME, "")
    await his.ok("2301", {"feedetail": rows})
    mid = his.settle_data(resident, stay, "21", "3000.00", "390", "0", mid_setl_flag="1")
    await his.ok("2304", mid)
    refund = {**_line("3", "-100.00", "ZL0003"), "pric": "100.00", "cnt": "-1"}
    rows = his.fee_rows(
        stay,
        resident,
        [_line("2", "800.00", "ZL0003"), {**refund, "init_feedetl_sn": "1"}],
        FEE_TIME,
        "",
    )
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": resident, "endtime": DISCHARGE}})
    final = his.settle_data(resident, stay, "21", "700.00", "390", "0", mid_setl_flag="0")
    await his.ok("2304", final)

    sums, core, model = await _findings(server, [resident, employee])
    assert (sums, core, model) == ([], [], [])
    assert await server.check_ledger() == []


async def _revive(server: Server, setl_id: str) -> None:
    """What the 2601 of a cancellation did before it checked for later settlements: the row, its
    lines and its delta back, every sum balanced."""
    row = await server.fetchrow(
        "SELECT psn_no, year, delta, acct_pay FROM settlements WHERE setl_id = $1", setl_id
    )
    assert row is not None
    sets = ", ".join(f"{f} = {f} + {int(v)}" for f, v in row["delta"].items())
    await server.fetch(
        f"UPDATE accumulators SET {sets} WHERE psn_no = $1 AND year = $2",
        row["psn_no"],
        row["year"],
    )
    await server.fetch(
        "UPDATE accounts SET balance_fen = balance_fen - $2 WHERE psn_no = $1",
        row["psn_no"],
        row["acct_pay"],
    )
    await server.fetch(
        "UPDATE fee_lines SET setl_id = $1 WHERE released_from = $1 AND setl_id IS NULL", setl_id
    )
    await server.fetch(
        "UPDATE settlements SET status = 'settled', cancel_msgid = NULL, cancel_setl_time = NULL,"
        " cancel_seq = NULL, in_force_seq = nextval('settlement_event_seq') WHERE setl_id = $1",
        setl_id,
    )


async def test_a_settlement_revived_past_the_cap_is_found(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    first_visit, first = await _visit(his, psn, "390", "1000.00")
    await _cancel(his, "2208", psn, first_visit, first["setl_id"])
    _, second = await _visit(his, psn, "390", "1000.00")
    assert first["hifp_pay"] == second["hifp_pay"] == Decimal("500.00")
    await _revive(server, first["setl_id"])

    sums, core, model = await _findings(server, [psn])
    assert sums == []  # every sum balances: 1,000.00 paid against a 500.00 cap
    for found in (core, model):
        assert any(
            first["setl_id"] in p and "reinstated after" in p and second["setl_id"] in p
            for p in found
        ), found


async def test_a_settlement_revived_on_lines_lowered_since_is_found(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, settled = await _visit(his, psn, "390", "800.00")
    # The 800.00 line in force under the settlement, lowered to 1.00 as a re-upload would have.
    await server.fetch(
        "UPDATE fee_lines SET amount_fen = 100, pric_micro = 1000000 WHERE mdtrt_id = $1",
        mdtrt_id,
    )
    sums, core, model = await _findings(server, [psn])
    assert sums == []
    for found in (core, model):
        assert any(
            settled["setl_id"] in p and "not those it was computed on (feedetl_sn 1)" in p
            for p in found
        ), found


async def test_a_raised_payment_with_its_fund_row_and_accumulators_is_found(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    _, settled = await _visit(his, psn, "390", "300.00")
    setl_id = settled["setl_id"]
    # 150.00 paid by the pool; 50.00 more moved from the patient's cash to the pool, everywhere.
    await server.fetch(
        "UPDATE settlements SET hifp_pay = hifp_pay + 5000, fund_pay_sumamt = fund_pay_sumamt + 5000,"
        " psn_part_amt = psn_part_amt - 5000, psn_cash_pay = psn_cash_pay - 5000,"
        " delta = jsonb_set(delta, '{pool_outpatient}', to_jsonb((delta->>'pool_outpatient')::bigint + 5000))"
        " WHERE setl_id = $1",
        setl_id,
    )
    await server.fetch(
        "UPDATE settlement_funds SET fund_payamt = fund_payamt + 5000 WHERE setl_id = $1"
        " AND fund_pay_type = '390100'",
        setl_id,
    )
    await server.fetch(
        "UPDATE accumulators SET pool_outpatient = pool_outpatient + 5000 WHERE psn_no = $1", psn
    )
    sums, core, model = await _findings(server, [psn])
    assert sums == []
    for found in (core, model):
        assert any(f"settlement {setl_id}: hifp_pay 20000 (rules: 15000)" in p for p in found), (
            found
        )


async def test_a_settlement_in_force_on_a_visit_dated_otherwise_is_found(server: Server) -> None:
    """Found from outside: 2601 put a cancelled 2026 settlement back on a stay 2403 had moved
    into 2025 (refused now); the checker had nothing to say of the state it left."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, settled = await _visit(his, psn, "390", "100.00")
    conn = await _conn(server)
    try:
        assert await checker.date_problems(conn) == []
        await conn.execute(
            "UPDATE encounters SET begntime = begntime - interval '1 year' WHERE mdtrt_id = $1",
            mdtrt_id,
        )
        found = await checker.date_problems(conn)
        assert len(found) == 1 and settled["setl_id"] in found[0] and mdtrt_id in found[0], found
        assert found[0] in await checker.check(conn)
    finally:
        # Dated back, for the module's later checks of the whole ledger.
        await conn.execute(
            "UPDATE encounters SET begntime = begntime + interval '1 year' WHERE mdtrt_id = $1",
            mdtrt_id,
        )
        await conn.close()


async def test_an_account_balance_changed_by_a_fen_is_found(server: Server) -> None:
    """Found from outside: a balance changed by one fen by hand was not found (the checker knew
    no opening balance: only the stateful suite's model gave it one). An account keeps the
    balance it was opened with, and the balance is held to it less the account payments of the
    settlements in force, cancellations included."""
    his = server.client(HOSPITAL)
    psn = await _person(server, EMPLOYEE, balance_fen=100000)
    mdtrt_id, settled = await _visit(his, psn, "310", "100.00", acct="1")
    assert Decimal(str(settled["acct_pay"])) > 0
    _, kept = await _visit(his, psn, "310", "60.00", acct="1")
    await _cancel(his, "2208", psn, mdtrt_id, settled["setl_id"])
    conn = await _conn(server)
    try:
        mine = [p for p in await checker.check(conn) if psn in p]
        assert mine == [], mine
        await conn.execute(
            "UPDATE accounts SET balance_fen = balance_fen + 1 WHERE psn_no = $1", psn
        )
        mine = [p for p in await checker.check(conn) if psn in p]
        assert mine == [f"person {psn}: balance is not opening minus account payments"], mine
        # An account deleted, its balance gone, is found too (rolled back after).
        gone = conn.transaction()
        await gone.start()
        await conn.execute("DELETE FROM accounts WHERE psn_no = $1", psn)
        mine = [p for p in await checker.check(conn) if psn in p]
        await gone.rollback()
        assert f"person {psn}: no account" in mine, mine
    finally:
        await conn.execute(
            "UPDATE accounts SET balance_fen = balance_fen - 1 WHERE psn_no = $1", psn
        )
        await conn.close()
    assert Decimal(str(kept["acct_pay"])) > 0
