"""The ledger's invariants, checked in SQL: what must hold after any run, faults included.

- every settlement's identities hold (also CHECK constraints, so this guards against their removal);
- fund rows sum to fund_pay_sumamt + acct_pay;
- each person's yearly accumulators equal the sum of the deltas of their settlements in force;
- no balance below zero, and each balance equals the opening balance minus the account payments
  in force (when the opening balances are known);
- each admission's used deductible equals its settlements' act_pay_dedc in force;
- every msgid answered with success for a settlement has exactly one settlement (bulk
  corrections' re-settlements keep the original's medins_setl_id and are not counted again).
"""

from __future__ import annotations

import asyncpg

from gateway.ledger.persons import ACCUMULATOR_FIELDS

_SUMS = ", ".join(f"sum((delta->>'{f}')::bigint) AS {f}" for f in ACCUMULATOR_FIELDS)
_MISMATCH = " OR ".join(f"coalesce(a.{f}, 0) <> coalesce(s.{f}, 0)" for f in ACCUMULATOR_FIELDS)


async def check(
    conn: asyncpg.Connection, opening_balances: dict[str, int] | None = None
) -> list[str]:
    """Every violation found, in words; an empty list means the ledger balances."""
    problems: list[str] = []
    for row in await conn.fetch(
        "SELECT setl_id FROM settlements WHERE"
        " medfee_sumamt <> fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt"
        " OR medfee_sumamt <> fund_pay_sumamt + psn_part_amt + hosp_part_amt"
        " OR psn_part_amt <> acct_pay + psn_cash_pay"
        " OR least(medfee_sumamt, fulamt_ownpay_amt, overlmt_selfpay, preselfpay_amt, inscp_scp_amt,"
        "  act_pay_dedc, hifp_pay, fund_pay_sumamt, psn_part_amt, acct_pay, psn_cash_pay) < 0"
    ):
        problems.append(f"settlement {row['setl_id']}: identities do not hold")
    for row in await conn.fetch(
        "SELECT s.setl_id FROM settlements s LEFT JOIN ("
        " SELECT setl_id, sum(fund_payamt) AS total FROM settlement_funds GROUP BY setl_id) f"
        " USING (setl_id) WHERE coalesce(f.total, 0) <> s.fund_pay_sumamt + s.acct_pay"
    ):
        problems.append(f"settlement {row['setl_id']}: fund rows do not sum to the totals")
    for row in await conn.fetch(
        f"WITH s AS (SELECT psn_no, year, {_SUMS} FROM settlements WHERE status = 'settled'"
        " GROUP BY psn_no, year)"
        " SELECT coalesce(a.psn_no, s.psn_no) AS psn_no, coalesce(a.year, s.year) AS year"
        " FROM accumulators a FULL JOIN s ON a.psn_no = s.psn_no AND a.year = s.year"
        f" WHERE {_MISMATCH}"
    ):
        problems.append(
            f"person {row['psn_no']} {row['year']}: accumulators differ from settlements in force"
        )
    for row in await conn.fetch("SELECT psn_no FROM accounts WHERE balance_fen < 0"):
        problems.append(f"person {row['psn_no']}: balance below zero")
    if opening_balances is not None:
        rows = await conn.fetch(
            "SELECT a.psn_no, a.balance_fen, coalesce(sum(s.acct_pay) FILTER (WHERE s.status = 'settled'), 0)"
            " AS paid FROM accounts a LEFT JOIN settlements s USING (psn_no) GROUP BY a.psn_no, a.balance_fen"
        )
        for row in rows:
            opening = opening_balances.get(row["psn_no"])
            if opening is not None and row["balance_fen"] != opening - row["paid"]:
                problems.append(
                    f"person {row['psn_no']}: balance is not opening minus account payments"
                )
    for row in await conn.fetch(
        "SELECT e.mdtrt_id FROM encounters e LEFT JOIN ("
        " SELECT mdtrt_id, sum(act_pay_dedc) AS used FROM settlements WHERE status = 'settled'"
        " GROUP BY mdtrt_id) s USING (mdtrt_id)"
        " WHERE e.kind = 'inpatient' AND e.adm_dedc_used_fen <> coalesce(s.used, 0)"
    ):
        problems.append(
            f"admission {row['mdtrt_id']}: used deductible differs from its settlements"
        )
    # An acknowledged settlement exists exactly once; an acknowledged deferred claim exists once
    # as a claim, and once as a settlement after it was replayed (none while pending/withdrawn).
    for row in await conn.fetch(
        "SELECT i.fixmedins_code, i.msgid, count(s.setl_id) AS n, d.status AS claim FROM idempotency i"
        " LEFT JOIN settlements s ON s.fixmedins_code = i.fixmedins_code AND s.medins_setl_id = i.msgid"
        " AND NOT EXISTS (SELECT 1 FROM correction_items c WHERE c.new_setl_id = s.setl_id)"
        " LEFT JOIN deferred d ON d.fixmedins_code = i.fixmedins_code AND d.msgid = i.msgid"
        " AND d.kind = 'claim'"
        " WHERE i.infcode = 0 AND i.infno IN ('2207', '2304', '2102')"
        " GROUP BY i.fixmedins_code, i.msgid, d.status"
        " HAVING count(s.setl_id) <> CASE WHEN d.status IS NULL OR d.status = 'settled' THEN 1 ELSE 0 END"
    ):
        what = "settlement" if row["claim"] is None else f"{row['claim']} claim's settlement"
        problems.append(f"msgid {row['msgid']}: acknowledged {what} found {row['n']} times")
    for row in await conn.fetch(
        "SELECT d.claim_id FROM deferred d LEFT JOIN settlements s ON s.setl_id = d.setl_id"
        " WHERE d.kind = 'claim' AND d.status = 'settled'"
        " AND (s.setl_id IS NULL OR s.status <> 'settled' AND s.cancel_msgid IS NULL)"
    ):
        problems.append(f"claim {row['claim_id']}: settled but its settlement is missing")
    return problems
