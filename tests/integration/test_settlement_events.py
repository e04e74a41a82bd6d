"""The settlement events recorded per statement (migration 021) are exactly those the row
trigger of 009 recorded: the same statements run on a ledger migrated up to 020 and on one
migrated to the end leave the same `settlement_events`, row for row, sequence numbers included.

The statements are the shapes the ledger issues (a group commit's many-row INSERT, a single
INSERT, a cancellation and a 2601 reinstatement, one row or many at once, a cancellation of a
reinstated settlement) and some it does not (an UPDATE of other columns, an UPDATE matching no
row, a row inserted already cancelled), so that the difference in how the two are fired cannot
hide behind today's callers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from gateway.ledger import db

# Every NOT NULL column without a default, with zero amounts (the table's sums hold).
_AMOUNTS = (
    "medfee_sumamt, fulamt_ownpay_amt, overlmt_selfpay, preselfpay_amt, inscp_scp_amt,"
    " act_pay_dedc, hifp_pay, cvlserv_pay, hifes_pay, hifmi_pay, hifob_pay, maf_pay, oth_pay,"
    " fund_pay_sumamt, psn_part_amt, acct_pay, psn_cash_pay, hosp_part_amt, balc"
)
_INSERT = (
    "INSERT INTO settlements (setl_id, fixmedins_code, mdtrt_id, psn_no, infno, medins_setl_id,"
    " med_type, insutype, category, clr_type, clr_optins, mdtrtarea_admvs, service_date, year,"
    f" setl_time, status, cancel_seq, snapshot_version, {_AMOUNTS}, pool_prop_bp, delta, lines)"
    " SELECT 'S' || i, 'H1', 'M' || i, 'P' || i, '2207', 'msg' || i, '11', '310', 'outpatient',"
    " '11', '441800', '441800', DATE '2026-07-01', 2026, TIMESTAMP '2026-07-01 10:00',"
    " $3, CASE WHEN $3 = 'cancelled' THEN nextval('settlement_event_seq') END, 1,"
    f" {', '.join('0' for _ in _AMOUNTS.split(','))}, 0, '{{}}', '[]'"
    " FROM generate_series($1::int, $2::int) AS i"
)
_CANCEL = (
    "UPDATE settlements SET status = 'cancelled', cancel_setl_time = TIMESTAMP '2026-07-02 09:00',"
    " cancel_msgid = 'c', cancel_seq = nextval('settlement_event_seq')"
    " WHERE setl_id = ANY($1::text[])"
)
_REINSTATE = (
    "UPDATE settlements SET status = 'settled', cancel_setl_time = NULL, cancel_msgid = NULL,"
    " cancel_seq = NULL, in_force_seq = nextval('settlement_event_seq')"
    " WHERE setl_id = ANY($1::text[])"
)

# (statement, arguments), in order.
_SCRIPT: list[tuple[str, tuple[object, ...]]] = [
    (_INSERT, (1, 12, "settled")),  # a group commit's batch
    (_INSERT, (13, 13, "settled")),  # the single path
    (_INSERT, (14, 15, "cancelled")),  # not a shape the ledger writes: no in-force event
    (_CANCEL, (["S3"],)),
    (_CANCEL, (["S1", "S5", "S7", "S13"],)),
    (_REINSTATE, (["S5"],)),
    (_REINSTATE, (["S1", "S7", "S14"],)),
    (_CANCEL, (["S5", "S7"],)),  # a reinstated settlement cancelled again
    ("UPDATE settlements SET dev_no = 'pos-9' WHERE setl_id = ANY($1::text[])", (["S2", "S5"],)),
    (_CANCEL, (["no-such"],)),
    # A status written without a new sequence number records nothing under either trigger.
    ("UPDATE settlements SET status = 'settled' WHERE setl_id = ANY($1::text[])", (["S3"],)),
]


async def _ledger(new_database: Callable[..., Any], up_to: int | None) -> asyncpg.Connection:
    conn = await asyncpg.connect(await new_database(f"events{up_to or 'all'}"))
    if up_to is None:
        await db.migrate(conn)
    else:
        for _version, _name, sql in (m for m in db._migrations() if m[0] <= up_to):
            await conn.execute(sql)
    # The events alone are compared: the visits and persons the rows name are left out (from
    # migration 026 on the ledger does not check them on each row either).
    for name in ("settlements_mdtrt_id_fkey", "settlements_psn_no_fkey"):
        await conn.execute(f"ALTER TABLE settlements DROP CONSTRAINT IF EXISTS {name}")
    return conn


async def _events(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    for sql, args in _SCRIPT:
        async with conn.transaction():
            await conn.execute(sql, *args)
    rows = await conn.fetch("SELECT seq, setl_id, kind FROM settlement_events ORDER BY seq")
    return [tuple(r) for r in rows]


async def test_events_per_statement_are_the_row_triggers(
    new_database: Callable[..., Any],
) -> None:
    before = await _ledger(new_database, up_to=20)
    after = await _ledger(new_database, up_to=None)
    try:
        assert (
            await after.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'settlements'::regclass"
                " AND NOT tgisinternal AND tgtype & 1 = 0"  # statement-level (no ROW bit)
            )
            == 2
        )
        old, new = await _events(before), await _events(after)
    finally:
        await before.close()
        await after.close()
    assert new == old
    kinds = [kind for _seq, _setl, kind in new]
    # The script's own count, so that two empty tables cannot pass: 13 settled at insert,
    # 1 + 4 cancellations, 1 + 3 reinstatements (S14 was inserted cancelled, which records
    # nothing), 2 cancelled again.
    assert kinds.count("in_force") == 13 + 1 + 3
    assert kinds.count("cancelled") == 1 + 4 + 2


@pytest.mark.parametrize("statement", ["insert", "update"])
async def test_a_failed_statement_records_nothing(
    new_database: Callable[..., Any], statement: str
) -> None:
    conn = await _ledger(new_database, up_to=None)
    try:
        await conn.execute(_INSERT, 1, 2, "settled")
        with pytest.raises(asyncpg.PostgresError):
            async with conn.transaction():
                if statement == "insert":
                    await conn.execute(_INSERT, 2, 3, "settled")  # S2 exists: the batch fails
                else:
                    await conn.execute(_CANCEL, ["S1", "S2"])
                    await conn.execute("SELECT 1 / 0")
        rows = await conn.fetch("SELECT setl_id, kind FROM settlement_events ORDER BY seq")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("S1", "in_force"), ("S2", "in_force")]
