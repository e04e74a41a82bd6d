"""One person's settlements never interleave: no overdraft, no lost update."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from gateway.core.model import Accumulators
from tests.integration.conftest import Server

PERSON = "441800000000000001"  # employee, 2000.00 in the account
HOSPITAL = "H44180000002"
N = 50


async def test_fifty_concurrent_settlements_of_one_person(server: Server) -> None:
    his = server.client(HOSPITAL)
    start_balance = await server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", PERSON
    )
    visits = []
    for i in range(N):
        mdtrt_id = await his.register(PERSON, "310", "2027-01-10 09:00:00", f"MZ-CONC-{i}")
        # 60.00 a visit: class A, so past the deductible the pool pays and the account the rest.
        lines = [
            {
                "feedetl_sn": "1",
                "medins_list_codg": "ZL0004",
                "pric": "30",
                "cnt": "2",
                "det_item_fee_sumamt": "60.00",
            }
        ]
        await his.ok(
            "2204",
            {"feedetail": his.fee_rows(mdtrt_id, PERSON, lines, "2027-01-10 09:10:00", "B1")},
        )
        visits.append(mdtrt_id)

    async def settle(mdtrt_id: str) -> dict[str, object]:
        return await his.ok(
            "2207", his.settle_data(PERSON, mdtrt_id, "11", "60.00", "310", "1", chrg_bchno="B1")
        )

    answers = await asyncio.gather(*(settle(m) for m in visits))
    infos = [a["setlinfo"] for a in answers]
    assert isinstance(infos[0], dict)
    acct_total = sum(Decimal(i["acct_pay"]) for i in infos)  # type: ignore[index]
    end_balance = await server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", PERSON
    )
    assert end_balance >= 0
    assert end_balance == start_balance - int(acct_total * 100)
    # Balances answered form one chain: each settlement saw the previous one's result.
    balcs = sorted((Decimal(i["balc"]) for i in infos), reverse=True)  # type: ignore[index]
    assert len(set(balcs)) == len(balcs) or balcs[-1] == 0
    # Exactly 300.00 of deductible was taken in the year, not 300.00 per concurrent request.
    dedc = sum(Decimal(i["act_pay_dedc"]) for i in infos)  # type: ignore[index]
    assert dedc == Decimal("300.00")
    # Accumulators equal the sum of the settlements in force.
    rows = await server.fetch(
        "SELECT delta FROM settlements WHERE psn_no = $1 AND year = 2027 AND status = 'settled'",
        PERSON,
    )
    assert len(rows) == N
    total = Accumulators()
    from gateway.core.settle import apply

    for r in rows:
        total = apply(total, Accumulators(**r["delta"]))
    acc = (
        await server.fetch("SELECT * FROM accumulators WHERE psn_no = $1 AND year = 2027", PERSON)
    )[0]
    for field in Accumulators.__struct_fields__:
        assert acc[field] == getattr(total, field), field
    pool = sum(Decimal(i["hifp_pay"]) for i in infos)  # type: ignore[index]
    assert acc["pool_outpatient"] == int(pool * 100)
    assert await server.check_ledger() == []
