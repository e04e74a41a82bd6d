"""Monthly clearing's sums: settlements in force by institution and 医疗类别, corrections applied
and deferred claims replayed, over [since, until)."""

from __future__ import annotations

import datetime as dt
import enum

import asyncpg
import msgspec

# Each institution's (fixmedins_name, admdvs), read from the main database: the sums are read
# from every ledger database (a ledger split by region), which holds no reference data.
Names = dict[str, tuple[str, str]]


async def institution_names(conn: asyncpg.Connection) -> Names:
    """(fixmedins_name, admdvs) of every institution (the main database's reference data)."""
    rows = await conn.fetch("SELECT fixmedins_code, fixmedins_name, admdvs FROM institutions")
    return {r["fixmedins_code"]: (r["fixmedins_name"], r["admdvs"]) for r in rows}


class Settled(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The sums of an institution's settlements in force of one med_type."""

    fixmedins_code: str
    fixmedins_name: str
    admdvs: str
    med_type: str
    clr_optins: str  # the insured's region (3201's setl_optins): 异地 patients' apart
    visits: int
    medfee_sumamt: int
    hifp_pay: int
    hifob_pay: int
    hifmi_pay: int
    cvlserv_pay: int
    maf_pay: int
    acct_pay: int
    psn_cash_pay: int
    inscp_scp_amt: int
    fund_pay_sumamt: int


class Change(enum.Enum):
    """Which of a month's settlements a clearing line sums."""

    SETTLED = "settled"  # made in the month, in force at its end
    TAKEN_BACK = "taken_back"  # made before it, in force at its start, not at its end
    PUT_BACK = "put_back"  # made before it, not in force at its start, in force at its end


# Whether a settlement was in force just before a moment: its last change of standing before it
# (settlement_events, each dated by the gateway when it happened, its first coming into force
# by its setl_time; migration 034).
_IN_FORCE_BEFORE = (
    "coalesce((SELECT e.kind = 'in_force' FROM settlement_events e"
    " WHERE e.setl_id = s.setl_id AND coalesce(e.at, s.setl_time) < {moment}"
    " ORDER BY e.seq DESC LIMIT 1), false)"
)


async def settled(
    conn: asyncpg.Connection,
    since: dt.datetime,
    until: dt.datetime,
    institution: str | None,
    names: Names,
    *,
    change: Change = Change.SETTLED,
) -> list[Settled]:
    """Reads per institution and med_type the sums of the settlements of [since, until) in force
    at its end; of earlier months' settlements whose standing the month changed: those it took
    out of force (`TAKEN_BACK`), those it put back in force (`PUT_BACK`, a 2601 of a
    cancellation).

    A month's clearing counts what was in force when the month ended, and a later change of
    standing is cleared in the month it happens: found from outside, a November settlement
    cancelled in December dropped out of November's report after November's amount was recorded
    as owed to the institution, and December's never took it back (the fund paid the institution
    for a bill it had refunded); and a cancellation reversed in a later month rewrote the ended
    month that had taken it back, and no month paid it again. Standing is read from every change
    with its moment, not from the row (which keeps only the last), so a month's figures no
    longer change once it has ended, whenever the report is run."""
    args: list[object] = [since, until]
    at_start = _IN_FORCE_BEFORE.format(moment="$1")
    at_end = _IN_FORCE_BEFORE.format(moment="$2")
    if change is Change.SETTLED:
        where = f"s.setl_time >= $1 AND s.setl_time < $2 AND {at_end}"
    else:
        # Changed since the month began: the row's last change (a cancellation, or the 2601
        # that reinstated it) is at or after its start; the events say whether within it.
        where = "s.setl_time < $1 AND greatest(s.cancel_setl_time, s.reinstated_at) >= $1"
        if change is Change.TAKEN_BACK:
            where += f" AND {at_start} AND NOT {at_end}"
        else:
            where += f" AND NOT {at_start} AND {at_end}"
    # A manual claim's settlement (零星报销), and a deferred claim's settled by replay (主动报:
    # the patient paid the institution in full), are paid to the patient, not cleared to the
    # institution: cleared as well, the fund would pay their share twice.
    where += " AND NOT EXISTS (SELECT 1 FROM manual_claims c WHERE c.setl_id = s.setl_id)"
    where += " AND NOT EXISTS (SELECT 1 FROM deferred d WHERE d.kind = 'claim' AND d.setl_id = s.setl_id)"
    if institution:
        args.append(institution)
        where += " AND s.fixmedins_code = $3"
    rows = await conn.fetch(
        "SELECT s.fixmedins_code, s.med_type, s.clr_optins, count(*) AS visits,"
        " sum(medfee_sumamt) AS medfee_sumamt, sum(hifp_pay) AS hifp_pay, sum(hifob_pay) AS hifob_pay,"
        " sum(hifmi_pay) AS hifmi_pay, sum(cvlserv_pay) AS cvlserv_pay, sum(maf_pay) AS maf_pay,"
        " sum(acct_pay) AS acct_pay, sum(psn_cash_pay) AS psn_cash_pay, sum(inscp_scp_amt) AS inscp_scp_amt,"
        " sum(fund_pay_sumamt) AS fund_pay_sumamt"
        f" FROM settlements s WHERE {where}"
        " GROUP BY s.fixmedins_code, s.med_type, s.clr_optins"
        " ORDER BY s.fixmedins_code, s.med_type, s.clr_optins",
        *args,
    )
    return [
        Settled(
            fixmedins_code=r["fixmedins_code"],
            fixmedins_name=names.get(r["fixmedins_code"], ("", ""))[0],
            admdvs=names.get(r["fixmedins_code"], ("", ""))[1],
            med_type=r["med_type"],
            clr_optins=r["clr_optins"],
            visits=int(r["visits"]),
            medfee_sumamt=int(r["medfee_sumamt"]),
            hifp_pay=int(r["hifp_pay"]),
            hifob_pay=int(r["hifob_pay"]),
            hifmi_pay=int(r["hifmi_pay"]),
            cvlserv_pay=int(r["cvlserv_pay"]),
            maf_pay=int(r["maf_pay"]),
            acct_pay=int(r["acct_pay"]),
            psn_cash_pay=int(r["psn_cash_pay"]),
            inscp_scp_amt=int(r["inscp_scp_amt"]),
            fund_pay_sumamt=int(r["fund_pay_sumamt"]),
        )
        for r in rows
    ]


class Corrected(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The corrections applied to an institution's settlements, and the money they moved."""

    fixmedins_code: str
    fixmedins_name: str
    admdvs: str
    settlements: int
    fund_delta: int
    acct_delta: int
    patient_cash_delta: int


async def corrected(
    conn: asyncpg.Connection,
    since: dt.datetime,
    until: dt.datetime,
    institution: str | None,
    names: Names,
) -> list[Corrected]:
    """Reads per institution the corrections applied in [since, until) and the money moved."""
    corr_args: list[object] = [since, until] + ([institution] if institution else [])
    rows = await conn.fetch(
        "SELECT c.fixmedins_code, count(*) AS n, sum(fund_delta) AS fund,"
        " sum(acct_delta) AS acct, sum(patient_cash_delta) AS cash FROM correction_items c"
        " WHERE applied_at >= $1 AND applied_at < $2"
        + (" AND c.fixmedins_code = $3" if institution else "")
        + " GROUP BY c.fixmedins_code",
        *corr_args,
    )
    return [
        Corrected(
            fixmedins_code=r["fixmedins_code"],
            fixmedins_name=names.get(r["fixmedins_code"], ("", ""))[0],
            admdvs=names.get(r["fixmedins_code"], ("", ""))[1],
            settlements=int(r["n"]),
            fund_delta=int(r["fund"]),
            acct_delta=int(r["acct"]),
            patient_cash_delta=int(r["cash"]),
        )
        for r in rows
    ]


class Reimbursed(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Claims of patients treated at an institution that the funds pay back to the patients
    (deferred claims replayed, `reimbursed`; manual claims settled, `claimed`), and how much."""

    fixmedins_code: str
    fixmedins_name: str
    admdvs: str
    claims: int
    medfee_sumamt: int
    to_patients: int


async def reimbursed(
    conn: asyncpg.Connection,
    since: dt.datetime,
    until: dt.datetime,
    institution: str | None,
    names: Names,
) -> list[Reimbursed]:
    """Reads per institution the deferred claims whose replayed settlement was made in [since,
    until) and is in force, and what they owe: found from outside, a replayed settlement
    cancelled since (its owed reimbursement withdrawn) was still counted, as a manual claim's is
    not (`claimed`). The month is the settlement's time, as every other figure of the report's
    (found from outside: the replay's row stamped by the database's clock put a claim replayed
    after midnight on New Year's Day into the month before, once the two clocks differed)."""
    corr_args: list[object] = [since, until] + ([institution] if institution else [])
    rows = await conn.fetch(
        "SELECT d.fixmedins_code, count(*) AS n,"
        " sum(d.medfee_sumamt) AS medfee, sum(d.reimbursement_fen) AS owed FROM deferred d"
        " JOIN settlements s ON s.setl_id = d.setl_id"
        " WHERE d.kind = 'claim' AND s.status = 'settled'"
        " AND d.status = 'settled' AND s.setl_time >= $1 AND s.setl_time < $2"
        + (" AND d.fixmedins_code = $3" if institution else "")
        + " GROUP BY d.fixmedins_code",
        *corr_args,
    )
    return [
        Reimbursed(
            fixmedins_code=r["fixmedins_code"],
            fixmedins_name=names.get(r["fixmedins_code"], ("", ""))[0],
            admdvs=names.get(r["fixmedins_code"], ("", ""))[1],
            claims=int(r["n"]),
            medfee_sumamt=int(r["medfee"]),
            to_patients=int(r["owed"]),
        )
        for r in rows
    ]


async def claimed(
    conn: asyncpg.Connection,
    since: dt.datetime,
    until: dt.datetime,
    institution: str | None,
    names: Names,
) -> list[Reimbursed]:
    """Reads per institution the manual claims whose settlement of [since, until) is in force."""
    args: list[object] = [since, until] + ([institution] if institution else [])
    rows = await conn.fetch(
        "SELECT c.fixmedins_code, count(*) AS n,"
        " sum(c.medfee_sumamt) AS medfee, sum(c.reimbursement_fen) AS owed FROM manual_claims c"
        " JOIN settlements s ON s.setl_id = c.setl_id"
        " WHERE s.status = 'settled' AND s.setl_time >= $1 AND s.setl_time < $2"
        + (" AND c.fixmedins_code = $3" if institution else "")
        + " GROUP BY c.fixmedins_code",
        *args,
    )
    return [
        Reimbursed(
            fixmedins_code=r["fixmedins_code"],
            fixmedins_name=names.get(r["fixmedins_code"], ("", ""))[0],
            admdvs=names.get(r["fixmedins_code"], ("", ""))[1],
            claims=int(r["n"]),
            medfee_sumamt=int(r["medfee"]),
            to_patients=int(r["owed"]),
        )
        for r in rows
    ]


class PaidOut(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The month's payouts: batches made (not rejected), and payments the bank's return files
    imported in the month answered paid or failed."""

    batches: int
    batched_lines: int
    batched_fen: int
    paid_lines: int
    paid_fen: int
    failed_lines: int
    failed_fen: int


async def paid_out(conn: asyncpg.Connection, since: dt.datetime, until: dt.datetime) -> PaidOut:
    """Reads the payouts of [since, until) (local time, as settlement times are).

    A batch's and a return's moments are PostgreSQL's (timestamptz), compared as moments with
    the month's bounds in the gateway's local time: read as the server's session time zone
    (UTC on a server left as installed), a batch made between 00:00 and 08:00 Beijing time on
    the first of a month was counted in the month before (found from outside)."""
    since, until = since.astimezone(), until.astimezone()
    made = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(line_count), 0) AS lines,"
        " coalesce(sum(total_fen), 0) AS fen FROM payout_batches"
        " WHERE status <> 'rejected' AND created_at >= $1 AND created_at < $2",
        since,
        until,
    )
    answered = {
        r["status"]: (int(r["n"]), int(r["fen"]))
        for r in await conn.fetch(
            "SELECT i.status, count(*) AS n, sum(i.amount_fen) AS fen FROM payout_items i"
            " JOIN payout_returns r USING (batch_no) WHERE i.status IN ('paid', 'failed')"
            " AND r.imported_at >= $1 AND r.imported_at < $2"
            " GROUP BY i.status",
            since,
            until,
        )
    }
    paid, failed = answered.get("paid", (0, 0)), answered.get("failed", (0, 0))
    return PaidOut(
        batches=int(made["n"]),
        batched_lines=int(made["lines"]),
        batched_fen=int(made["fen"]),
        paid_lines=paid[0],
        paid_fen=paid[1],
        failed_lines=failed[0],
        failed_fen=failed[1],
    )
