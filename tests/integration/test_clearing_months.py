"""A month's clearing counts what was in force at its end; a settlement cancelled in a later
month is taken back in that month (found from outside: a November settlement cancelled in
December dropped out of November's report after November's amount was recorded as owed to the
hospital, and December's never took it back: the fund paid for a bill it had refunded)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from gateway.core.money import fen_text, to_fen
from gateway.jobs import clearing
from gateway.services import payouts
from tests.integration.agency_helpers import ledger_on
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import BIG_LINES, BIG_TOTAL, cli
from tests.integration.his_client import HisClient

HOSPITAL = "H44180000001"


async def _outpatient_visit(
    his: HisClient, psn_no: str, day: dt.date, ipt_otp_no: str
) -> tuple[str, dict[str, Any]]:
    """A visit of BIG_LINES on `day` at the hospital, settled (2207): its mdtrt_id and setlinfo."""
    mdtrt_id = await his.register(psn_no, "310", f"{day} 08:30:00", ipt_otp_no)
    await his.visit_info(mdtrt_id, psn_no, "11", f"{day} 08:30:00")
    rows = his.fee_rows(mdtrt_id, psn_no, BIG_LINES, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(psn_no, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    return mdtrt_id, (await his.ok("2207", data))["setlinfo"]


def _fen(setlinfo: dict[str, Any], name: str) -> int:
    """An answer's amount (a JSON number with two decimals) in fen, read by its text."""
    return to_fen(str(setlinfo[name]))


async def test_a_settlement_cancelled_after_its_month_is_taken_back_in_the_month_of_cancelling(
    new_database: Callable[..., Any],
) -> None:
    this_month = dt.date.today().strftime("%Y-%m")
    last_month = (dt.date.today().replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    served = dt.date.today() - dt.timedelta(days=1)
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        visits: list[tuple[str, str, dict[str, Any]]] = []
        for n, psn_no in enumerate(("441800000000000001", "441800000000000002")):
            mdtrt_id, info = await _outpatient_visit(his, psn_no, served, f"MZ-M-{n}")
            visits.append((psn_no, mdtrt_id, info))
        db = ("--database-url", srv.dsn)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            # Both settled last month (their time moved back, as the clock moving on would
            # leave them); the month's amount recorded as owed to the hospital.
            await conn.execute("UPDATE settlements SET setl_time = setl_time - interval '1 month'")
            before = await clearing.monthly(conn, last_month, HOSPITAL)
            [hospital] = before.institutions
            owed = hospital.total.declared
            expected = sum(
                _fen(info, "fund_pay_sumamt") + _fen(info, "acct_pay") for *_, info in visits
            )
            assert owed == expected and hospital.total.visits == 2
            recorded = json.loads(cli("payouts", "gather-clearing", "--month", last_month, "--json", *db).stdout)  # fmt: skip
            assert recorded["amounts"] == {HOSPITAL: fen_text(owed)}
            again = cli("payouts", "gather-clearing", "--month", last_month, *db).stdout
            # Run again, nothing is recorded, and the amounts are said to be the month's.
            assert "本次登记0家（已登记的不再登记）；本月申报金额" in again
            assert f"{HOSPITAL} {fen_text(owed)}" in again
            # A month with nothing declared says so (found from outside: the sentence stopped
            # at its colon).
            nothing = cli("payouts", "gather-clearing", "--month", "2020-01", *db).stdout
            assert nothing.strip().endswith("本月申报金额：\n无"), nothing

            # This month the hospital refunds the first patient (2208).
            psn_no, mdtrt_id, info = visits[0]
            keys = {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn_no}
            await his.ok("2208", {"data": keys})
            refunded = _fen(info, "fund_pay_sumamt") + _fen(info, "acct_pay")

            # Last month's report is what was recorded: it has ended.
            [again] = (await clearing.monthly(conn, last_month, HOSPITAL)).institutions
            assert (again.total.declared, again.total.visits) == (owed, 2)
            # This month's takes the refunded settlement back, in a line of its own.
            [now] = (await clearing.monthly(conn, this_month, HOSPITAL)).institutions
            [line] = now.lines
            assert "冲减" in line.name and line.med_type == "11"
            assert (line.visits, line.declared) == (-1, -refunded)
            assert line.medfee_sumamt == -_fen(info, "medfee_sumamt")
            assert now.total.declared == -refunded
            text = cli("clearing", "monthly", "--month", this_month, *db).stdout
            assert "冲减" in text and f"-{fen_text(refunded)}" in text

            # A settlement made and cancelled within one month is in no month's clearing.
            psn_no, mdtrt_id, info = visits[1]
            await conn.execute(
                "UPDATE settlements SET setl_time = now()::timestamp WHERE setl_id = $1",
                info["setl_id"],
            )
            keys = {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn_no}
            await his.ok("2208", {"data": keys})
            [now] = (await clearing.monthly(conn, this_month, HOSPITAL)).institutions
            assert [ln.visits for ln in now.lines] == [-1]
            assert now.total.declared == -refunded


async def test_a_cancellation_undone_in_a_later_month_is_put_back_in_that_month(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: an August settlement cancelled in September (taken back in
    September's clearing, which was paid net of it) and the cancellation undone by a 2601 in
    November: September's ended report changed (the take-back gone) and November's never paid
    the settlement again, so the hospital was short its fund share for good. Every month's
    report stays as it ended, and the month of the 2601 puts the settlement back."""
    this_month = dt.date.today().strftime("%Y-%m")
    served = dt.date.today() - dt.timedelta(days=1)
    psn_no = "441800000000000001"
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        mdtrt_id = await his.register(psn_no, "310", f"{served} 08:30:00", "MZ-U-1")
        await his.visit_info(mdtrt_id, psn_no, "11", f"{served} 08:30:00")
        rows = his.fee_rows(mdtrt_id, psn_no, BIG_LINES, f"{served} 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(psn_no, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
        info = (await his.ok("2207", data))["setlinfo"]
        declared = _fen(info, "fund_pay_sumamt") + _fen(info, "acct_pay")
        keys = {"setl_id": info["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn_no}
        cancelling = his.msgid()
        await his.ok("2208", {"data": keys}, msgid=cancelling)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            # Settled two months ago, cancelled last month: as the clock moving on leaves them.
            await conn.execute(
                "UPDATE settlements SET setl_time = setl_time - interval '2 months',"
                " cancel_setl_time = cancel_setl_time - interval '1 month'"
            )
            await conn.execute(
                "UPDATE settlement_events SET at = at - interval '1 month' WHERE kind = 'cancelled'"
            )
            row = await conn.fetchrow("SELECT setl_time, cancel_setl_time FROM settlements")
            settled_in, cancelled_in = (
                f"{row[n]:%Y-%m}" for n in ("setl_time", "cancel_setl_time")
            )

            async def reports() -> dict[str, Any]:
                return {
                    m: clearing.to_json(await clearing.monthly(conn, m, HOSPITAL))
                    for m in (settled_in, cancelled_in, this_month)
                }

            before = await reports()
            [first] = (await clearing.monthly(conn, settled_in, HOSPITAL)).institutions
            assert (first.total.visits, first.total.declared) == (1, declared)
            [taken] = (await clearing.monthly(conn, cancelled_in, HOSPITAL)).institutions
            assert [(ln.visits, ln.declared) for ln in taken.lines] == [(-1, -declared)]
            assert (await clearing.monthly(conn, this_month, HOSPITAL)).institutions == []

            # This month the cancellation is undone: the settlement is in force again.
            undo = {"psn_no": psn_no, "omsgid": cancelling, "oinfno": "2208"}
            await his.ok("2601", {"data": undo})
            after = await reports()
            assert after[settled_in] == before[settled_in]  # ended months are as they ended
            assert after[cancelled_in] == before[cancelled_in]
            [now] = (await clearing.monthly(conn, this_month, HOSPITAL)).institutions
            [line] = now.lines
            assert "补记" in line.name and line.med_type == "11"
            assert (line.visits, line.declared) == (1, declared)
            assert line.medfee_sumamt == _fen(info, "medfee_sumamt")
            db = ("--database-url", srv.dsn)
            text = cli("clearing", "monthly", "--month", this_month, *db).stdout
            assert "前月撤销本月恢复，补记" in text and fen_text(declared) in text

            # Cancelled again within the same month: in force at neither end, no line at all.
            await his.ok("2208", {"data": keys})
            assert (await clearing.monthly(conn, this_month, HOSPITAL)).institutions == []
            final = await reports()
            assert (final[settled_in], final[cancelled_in]) == (
                before[settled_in],
                before[cancelled_in],
            )


async def test_a_batch_made_early_on_the_first_is_the_new_months(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the report's payouts compared PostgreSQL's moments as the server's
    session time zone (UTC as installed) with the month's bounds in Beijing time, so a batch
    made at 02:00 on 1 December (18:00 UTC on 30 November) was November's."""
    async with running_gateway(new_database) as srv:
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO payout_batches (batch_no, status, line_count, total_fen, created_by,"
                " created_at) VALUES ('ZF20261201000001', 'pending', 1, 12345, 'test',"
                " '2026-11-30 18:00:00+00')"
            )
        db = ("--database-url", srv.dsn)

        def batched(month: str) -> Any:
            shown = cli("clearing", "monthly", "--month", month, "--json", *db, tz="Asia/Shanghai")
            return json.loads(shown.stdout)["payouts"]["batched"]["amount"]

        assert (batched("2026-11"), batched("2026-12")) == ("0.00", "123.45")


async def test_what_an_institution_owes_back_is_kept_back_from_its_next_months(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a month whose take-backs outweighed its settlements said what the
    institution owed back and recorded nothing, and its next month was paid in full, so the
    fund paid the refunded bills for good unless someone recovered them by hand. The owed-back
    amount is recorded and kept back from the institution's next months, oldest first, once."""
    other = "H44180000002"
    async with running_gateway(new_database) as srv:
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:

            async def gather(month: str, amounts: list[tuple[str, int]]) -> Any:
                return await payouts.gather_clearing(conn, month, amounts, "agency-test")

            async def owed() -> dict[str, int]:
                rows = await conn.fetch(
                    "SELECT source_ref, amount_fen FROM owed_lines WHERE source = 'clearing'"
                )
                return {r["source_ref"]: r["amount_fen"] for r in rows}

            july = await gather("2026-07", [(HOSPITAL, -10_000)])
            assert (july.recorded, july.netted, july.owed_back) == (0, {}, {HOSPITAL: 10_000})
            august = await gather("2026-08", [(HOSPITAL, 3_000), (other, 4_000)])
            assert (august.recorded, august.netted) == (1, {HOSPITAL: 3_000})
            assert august.owed_back == {HOSPITAL: 7_000}
            september = await gather("2026-09", [(HOSPITAL, 20_000)])
            assert (september.netted, september.owed_back) == ({HOSPITAL: 7_000}, {})
            # Run again, nothing is recorded or kept back twice.
            again = await gather("2026-09", [(HOSPITAL, 20_000)])
            assert (again.recorded, again.netted, again.owed_back) == (0, {}, {})
            await gather("2026-10", [(HOSPITAL, 5_000)])
            assert await owed() == {
                f"{other}:2026-08": 4_000,
                f"{HOSPITAL}:2026-09": 13_000,
                f"{HOSPITAL}:2026-10": 5_000,
            }
            # What is still owed back is said by the command, with what it keeps back.
            await gather("2026-11", [(other, -2_500)])
        shown = cli("payouts", "gather-clearing", "--month", "2026-06", "--json",
                    "--database-url", srv.dsn)  # fmt: skip
        assert json.loads(shown.stdout)["owed_back"] == {other: "25.00"}
        text = cli("payouts", "gather-clearing", "--month", "2026-06", "--database-url", srv.dsn)
        assert f"{other} 尚应退回25.00元，将从其以后月份的月结算拨付中抵扣" in text.stdout
        # A mistyped institution is refused, not answered "recorded 0" (found from outside).
        unknown = cli("payouts", "gather-clearing", "--month", "2026-06", "--institution", "X123",
                      "--database-url", srv.dsn, check=False)  # fmt: skip
        assert unknown.returncode == 2 and "定点医药机构X123不存在" in unknown.stderr, unknown
        # So is the month's report for one (found from outside: it printed an empty month).
        report = cli("clearing", "monthly", "--month", "2026-06", "--institution", "X123",
                     "--database-url", srv.dsn, check=False)  # fmt: skip
        assert report.returncode == 2 and "定点医药机构X123不存在" in report.stderr, report
        assert not report.stdout


async def test_a_hospitals_patients_of_another_region_are_a_line_of_their_own(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a 清远 hospital's 毕节 patients were summed into its 普通门诊 line
    under 清算统筹区 441800, which no 3201 could match (3201 keeps them apart, under 520500).
    Each 医疗类别 has a line per insured region, the institution's own first; the total is all."""
    # Settled now (the clearing month is the settlement time's); served yesterday, at hours
    # that are never in the future.
    month = dt.date.today().strftime("%Y-%m")
    served = dt.date.today() - dt.timedelta(days=1)
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        answers: dict[str, dict[str, Any]] = {}
        for n, psn_no in enumerate(("441800000000000001", "520500000000000001")):
            _, answers[psn_no[:6]] = await _outpatient_visit(his, psn_no, served, f"MZ-YD-{n}")
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            [hospital] = (await clearing.monthly(conn, month, HOSPITAL)).institutions
        assert hospital.admdvs == "441800"
        assert [(ln.name, ln.clr_optins, ln.visits) for ln in hospital.lines] == [
            ("普通门诊", "441800", 1),
            ("普通门诊（异地就医，参保地520500）", "520500", 1),
        ]
        for line, region in zip(hospital.lines, ("441800", "520500"), strict=True):
            info = answers[region]
            assert info["clr_optins"] == region
            assert line.declared == _fen(info, "fund_pay_sumamt") + _fen(info, "acct_pay")
            assert line.medfee_sumamt == _fen(info, "medfee_sumamt")
        assert hospital.total.declared == sum(ln.declared for ln in hospital.lines)
        table = cli("clearing", "monthly", "--month", month, "--csv", "/dev/stdout",
                    "--institution", HOSPITAL, "--database-url", srv.dsn).stdout  # fmt: skip
        rows = [r.split(",") for r in table.splitlines()]
        assert rows[0][3:6] == ["清算统筹区", "参保地区划", "医疗类别"]
        assert [r[3:6] for r in rows[1:4]] == [
            ["441800", "441800", "普通门诊"],
            ["441800", "520500", "普通门诊（异地就医，参保地520500）"],
            ["441800", "", "合计"],
        ]
