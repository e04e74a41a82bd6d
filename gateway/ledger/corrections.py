"""Bulk catalog corrections' rows: the settlements an item's mapping was used by, and the
record of each settlement corrected (its refund and recovery)."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec


class Use(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A settled line of the item, with the national code its settlement resolved it to."""

    setl_id: str
    psn_no: str
    mdtrt_id: str
    setl_time: dt.datetime
    fee_ocur_time: dt.datetime
    used: str | None  # None when the line was unmapped


async def uses(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    item: str,
    begn: dt.date | None,
    end: dt.date | None,
) -> list[Use]:
    """Reads the institution's settlements in force with a line of the item, in settlement order."""
    rows = await conn.fetch(
        "SELECT s.setl_id, s.psn_no, s.mdtrt_id, s.setl_time, fl.fee_ocur_time, NULLIF(ln->>'med_list_codg', '') AS used"
        " FROM settlements s JOIN fee_lines fl ON fl.mdtrt_id = s.mdtrt_id AND fl.setl_id = s.setl_id"
        " AND fl.medins_list_codg = $2"
        " CROSS JOIN LATERAL jsonb_array_elements(s.lines) ln"
        " WHERE s.fixmedins_code = $1 AND s.status = 'settled' AND ln->>'feedetl_sn' = fl.feedetl_sn"
        " AND ($3::date IS NULL OR s.setl_time >= $3::date) AND ($4::date IS NULL OR s.setl_time < $4::date + 1)"
        " ORDER BY s.setl_time, s.setl_id",
        fixmedins_code,
        item,
        begn,
        end,
    )
    return [
        Use(
            setl_id=r["setl_id"],
            psn_no=r["psn_no"],
            mdtrt_id=r["mdtrt_id"],
            setl_time=r["setl_time"],
            fee_ocur_time=r["fee_ocur_time"],
            used=r["used"],
        )
        for r in rows
    ]


class Original(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What a correction's re-settlement takes over from the settlement it replaces."""

    fixmedins_code: str
    mdtrt_id: str
    psn_no: str
    infno: str
    medins_setl_id: str
    chrg_bchno: str
    mid_setl_flag: str
    med_type: str
    acct_used_flag: bool
    dev_no: str
    opter: str
    mdtrtarea_admvs: str
    category: str
    mdtrt_cert_type: str


async def original(conn: asyncpg.Connection, setl_id: str) -> Original:
    """Reads the settlement a correction re-settles."""
    row = await conn.fetchrow(
        "SELECT fixmedins_code, mdtrt_id, psn_no, infno, medins_setl_id, chrg_bchno, mid_setl_flag, med_type,"
        " acct_used_flag, dev_no, opter, mdtrtarea_admvs, category, mdtrt_cert_type"
        " FROM settlements WHERE setl_id = $1",
        setl_id,
    )
    return Original(**{f: row[f] for f in Original.__struct_fields__})


async def codes_used(conn: asyncpg.Connection, setl_id: str) -> dict[str, str]:
    """Reads the national code each line of a settlement was settled with ("" when unmapped)."""
    rows = await conn.fetch(
        "SELECT ln->>'feedetl_sn' AS sn, ln->>'med_list_codg' AS used"
        " FROM settlements s CROSS JOIN LATERAL jsonb_array_elements(s.lines) ln WHERE s.setl_id = $1",
        setl_id,
    )
    return {r["sn"]: r["used"] or "" for r in rows}


async def hold(conn: asyncpg.Connection, setl_id: str) -> None:
    """Lock the settlement for this transaction: another run re-settling it now is waited for,
    and what it did is then seen (found from outside: two runs at once, the second checked
    before the first committed and reported each settlement as failed, "cancel the new one")."""
    # An advisory lock that only correction runs take, first: the settlement's own row is locked
    # after its visit and person (settlements.cancel's order), and taking it before them here
    # could deadlock with a counter cancelling the same visit.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('correction:' || $1))", setl_id)


async def corrected_by(conn: asyncpg.Connection, old_setl_id: str) -> str | None:
    """Reads the settlement that replaced a corrected one; None when it was not corrected."""
    new_setl_id: str | None = await conn.fetchval(
        "SELECT new_setl_id FROM correction_items WHERE old_setl_id = $1", old_setl_id
    )
    return new_setl_id


async def record(
    conn: asyncpg.Connection,
    *,
    old_setl_id: str,
    new_setl_id: str,
    run_id: str,
    fixmedins_code: str,
    medins_list_codg: str,
    psn_no: str,
    mdtrt_id: str,
    applied_at: dt.datetime,
    patient_cash_delta: int,
    acct_delta: int,
    fund_delta: int,
    fund_deltas: dict[str, int],
    old_setlinfo: dict[str, int],
    new_setlinfo: dict[str, int],
) -> None:
    """Writes the record of one corrected settlement: the money it moves, old and new."""
    await conn.execute(
        "INSERT INTO correction_items (old_setl_id, new_setl_id, run_id, fixmedins_code, medins_list_codg, psn_no,"
        " mdtrt_id, applied_at, patient_cash_delta, acct_delta, fund_delta, fund_deltas, old_setlinfo, new_setlinfo)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
        old_setl_id,
        new_setl_id,
        run_id,
        fixmedins_code,
        medins_list_codg,
        psn_no,
        mdtrt_id,
        applied_at,
        patient_cash_delta,
        acct_delta,
        fund_delta,
        fund_deltas,
        old_setlinfo,
        new_setlinfo,
    )
