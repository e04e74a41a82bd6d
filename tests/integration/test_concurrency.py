"""One person's settlements never interleave: no overdraft, no lost update."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from gateway.core.model import Accumulators
from tests.integration.conftest import Server

PERSON = "441800000000000001"  # employee, 2000.00 in the account
HOSPITAL = "H44180000002"
N = 50


def chain_breaks(start_fen: int, steps: Sequence[tuple[int, int]]) -> list[str]:
    """Where answered balances fail to form one chain from the starting balance.

    `steps` are (acct_pay, balc) of each settlement in fen, in any order. Serialized settlements
    leave balances that only fall, so ordering by balance (a paying step before a non-paying
    one that leaves the same balance) recovers the commit order; each balance must then be the
    previous one less its own account payment. Two settlements that read the same balance (a
    lost update) cannot both satisfy that.
    """
    ordered = sorted(steps, key=lambda s: (-s[1], -s[0]))
    breaks = []
    balance = start_fen
    for i, (paid, balc) in enumerate(ordered):
        if balc != balance - paid:
            breaks.append(f"step {i}: {balance} - {paid} != {balc}")
        balance = balc
    return breaks


def test_an_intact_chain_has_no_breaks() -> None:
    # 100.00 paid 30 + 30 + 30 + 10, then two settlements with nothing left to pay.
    steps = [(3000, 4000), (1000, 0), (3000, 7000), (0, 0), (3000, 1000), (0, 0)]
    assert chain_breaks(10000, steps) == []


def test_a_lost_update_breaks_the_chain() -> None:
    # Two settlements both read 70.00 and both answered 40.00; the last one still ends at 0.
    steps = [(3000, 7000), (3000, 4000), (3000, 4000), (4000, 0)]
    assert chain_breaks(10000, steps) == ["step 2: 4000 - 3000 != 4000"]


def test_a_balance_off_by_a_fen_breaks_the_chain() -> None:
    steps = [(3000, 7000), (3000, 4001), (4000, 0)]
    assert chain_breaks(10000, steps) == ["step 1: 7000 - 3000 != 4001", "step 2: 4001 - 4000 != 0"]


def test_a_chain_from_the_wrong_start_breaks() -> None:
    assert chain_breaks(10000, [(3000, 6000)]) == ["step 0: 10000 - 3000 != 6000"]


async def test_fifty_concurrent_settlements_of_one_person(server: Server) -> None:
    his = server.client(HOSPITAL)
    start_balance = await server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", PERSON
    )
    # Visits are dated a little behind now: a service date ahead of the gateway's clock is refused.
    begun = (dt.datetime.now() - dt.timedelta(minutes=30)).replace(microsecond=0)
    today = begun.date()
    fee_time = f"{begun + dt.timedelta(minutes=10)}"
    visits = []
    for i in range(N):
        mdtrt_id = await his.register(PERSON, "310", f"{begun}", f"MZ-CONC-{i}")
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
            {"feedetail": his.fee_rows(mdtrt_id, PERSON, lines, fee_time, "B1")},
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
    steps = [(_fen(i["acct_pay"]), _fen(i["balc"])) for i in infos]  # type: ignore[index]
    assert chain_breaks(start_balance, steps) == []
    assert min(balc for _, balc in steps) == end_balance
    assert sum(1 for paid, _ in steps if paid) >= 2  # the chain has links to check
    # Exactly 300.00 of deductible was taken in the year, not 300.00 per concurrent request.
    dedc = sum(Decimal(i["act_pay_dedc"]) for i in infos)  # type: ignore[index]
    assert dedc == Decimal("300.00")
    # Accumulators equal the sum of the settlements in force.
    rows = await server.fetch(
        "SELECT delta FROM settlements WHERE psn_no = $1 AND year = $2 AND status = 'settled'",
        PERSON,
        today.year,
    )
    assert len(rows) == N
    total = Accumulators()
    from gateway.core.settle import apply

    for r in rows:
        total = apply(total, Accumulators(**r["delta"]))
    acc = (
        await server.fetch(
            "SELECT * FROM accumulators WHERE psn_no = $1 AND year = $2", PERSON, today.year
        )
    )[0]
    for field in Accumulators.__struct_fields__:
        assert acc[field] == getattr(total, field), field
    pool = sum(Decimal(i["hifp_pay"]) for i in infos)  # type: ignore[index]
    assert acc["pool_outpatient"] == int(pool * 100)
    assert await server.check_ledger() == []


def _fen(amount: object) -> int:
    fen = Decimal(str(amount)) * 100
    assert fen == fen.to_integral_value(), amount
    return int(fen)
