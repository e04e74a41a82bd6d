"""Replay equals online settlement: claims deferred in any order and replayed give exactly what
settling the same visits online, in service-date order, with the account not used, gives."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from gateway.core.money import fen_text
from gateway.ledger import deferred
from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import (
    BIG_LINES,
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    cli,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient

HOSPITAL = "H44180000001"
PHARMACY = "P44180000001"
# (person, service day, kind, lines, total): several per person so the deductible and the
# accumulators carry from one to the next, and order matters.
VISITS = [
    ("441800000000000001", "2026-06-01", "outpatient", OUTPATIENT_LINES, OUTPATIENT_TOTAL),
    ("441800000000000001", "2026-06-03", "outpatient", BIG_LINES, "1625.00"),
    ("441800000000000001", "2026-06-05", "pharmacy", DRUG_LINES, DRUG_TOTAL),
    ("441800000000000001", "2026-06-08", "outpatient", BIG_LINES, "1625.00"),
    ("441800000000000002", "2026-06-02", "outpatient", BIG_LINES, "1625.00"),
    ("441800000000000002", "2026-06-04", "pharmacy", DRUG_LINES, DRUG_TOTAL),
    ("441800000000000002", "2026-06-06", "outpatient", OUTPATIENT_LINES, OUTPATIENT_TOTAL),
    ("441800000000000004", "2026-06-07", "outpatient", BIG_LINES, "1625.00"),
    ("441800000000000003", "2026-06-09", "pharmacy", DRUG_LINES, DRUG_TOTAL),
]
COMPARED = (
    "psn_no, service_date, infno, medfee_sumamt, fulamt_ownpay_amt, overlmt_selfpay,"
    " preselfpay_amt, inscp_scp_amt, act_pay_dedc, hifp_pay, cvlserv_pay, hifes_pay, hifmi_pay,"
    " hifob_pay, maf_pay, oth_pay, fund_pay_sumamt, psn_part_amt, acct_pay, psn_cash_pay, balc,"
    " pool_prop_bp"
)


async def _settle(
    his: HisClient, pos: HisClient, visit: tuple[str, str, str, Any, str], acct: str, n: int
) -> dict[str, Any]:
    psn_no, day, kind, lines, total = visit
    insutype = "390" if psn_no.endswith("4") else "310"
    if kind == "pharmacy":
        return await pos.ok(
            "2102", pos.drug_input(psn_no, f"{day} 10:00:00", total, lines, acct, insutype)
        )
    mdtrt_id = await his.register(psn_no, insutype, f"{day} 08:30:00", f"MZ-R-{n}")
    await his.visit_info(mdtrt_id, psn_no, "11", f"{day} 08:30:00")
    rows = his.fee_rows(mdtrt_id, psn_no, lines, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(psn_no, mdtrt_id, "11", total, insutype, acct, chrg_bchno="B1")
    return await his.ok("2207", data)


async def _ledger(srv: Server) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    settled = await srv.fetch(
        f"SELECT {COMPARED} FROM settlements WHERE status = 'settled' ORDER BY service_date"
    )
    acc = await srv.fetch("SELECT * FROM accumulators ORDER BY psn_no, year")
    return [tuple(r.values()) for r in settled], [tuple(r.values()) for r in acc]


async def test_replayed_claims_equal_online_settlement(new_database: Callable[..., Any]) -> None:
    async with (
        running_gateway(new_database) as deferred,
        running_gateway(new_database) as online,
    ):
        await set_rule(deferred.dsn, "region:441800", "settlement", "defer", "演练主动报")
        his, pos = deferred.client(HOSPITAL), deferred.client(PHARMACY)

        async def in_force() -> bool:
            answer = await pos.call("2101", pos.drug_input(*VISITS[2][:1], "2026-06-05 10:00:00", DRUG_TOTAL, DRUG_LINES))  # fmt: skip
            return "应急预案" in (answer["warn_msg"] or "")

        await until(in_force)
        # Deferred in reverse order, with the account asked for: replay must reorder and not use it.
        claims = {}
        for n, visit in reversed(list(enumerate(VISITS))):
            answer = await _settle(his, pos, visit, "1", n)
            assert answer["setlinfo"]["setl_id"].startswith("DF")
            claims[answer["setlinfo"]["setl_id"]] = visit
        assert await deferred.fetchval("SELECT count(*) FROM settlements") == 0
        summary = json.loads(
            cli("deferred", "replay", "--json", "--database-url", deferred.dsn).stdout
        )
        # Each reimbursement is owed to its patient as the replay ends (found from outside:
        # recorded only when a clerk next listed payouts, ops' owed gauges reading nothing).
        owed = await deferred.fetch(
            "SELECT source_ref, amount_fen FROM owed_lines WHERE source = 'deferred'"
            " AND status = 'owed' ORDER BY source_ref"
        )
        reimbursed = await deferred.fetch(
            "SELECT claim_id, reimbursement_fen FROM deferred"
            " WHERE reimbursement_fen > 0 ORDER BY claim_id"
        )
        assert [tuple(r) for r in owed] == [tuple(r) for r in reimbursed] and owed
        assert summary == {
            "total": len(VISITS),
            "settled": len(VISITS),
            "failed": [],
            "waiting": [],
            "owed": len(owed),
            "damaged_segments": [],
        }

        # The same visits settled online in service-date order, account not used.
        his2, pos2 = online.client(HOSPITAL), online.client(PHARMACY)
        for n, visit in sorted(enumerate(VISITS), key=lambda v: v[1][1]):
            await _settle(his2, pos2, visit, "0", n)

        replayed, online_rows = await _ledger(deferred), await _ledger(online)
        assert replayed[0] == online_rows[0]  # every amount of every settlement
        assert replayed[1] == online_rows[1]  # the accumulators they leave
        assert any(row[16] > 0 for row in replayed[0])  # the fund paid something to reimburse
        for row in await deferred.fetch(
            "SELECT d.reimbursement_fen, d.medfee_sumamt, s.psn_cash_pay, s.acct_pay"
            " FROM deferred d JOIN settlements s USING (setl_id)"
        ):
            assert row["acct_pay"] == 0
            assert row["reimbursement_fen"] == row["medfee_sumamt"] - row["psn_cash_pay"]
        assert await deferred.check_ledger() == []

        # The month's clearing report shows what the funds pay the patients directly.
        month = dt.date.today().strftime("%Y-%m")
        report = json.loads(cli("clearing", "monthly", "--month", month, "--json", "--database-url", deferred.dsn).stdout)  # fmt: skip
        owed = {
            r["fixmedins_code"]: int(r["owed"])
            for r in await deferred.fetch(
                "SELECT fixmedins_code, sum(reimbursement_fen) AS owed FROM deferred GROUP BY 1"
            )
        }
        shown = {r["fixmedins_code"]: r["deferred_reimbursements"] for r in report["institutions"]}
        for code, fen in owed.items():
            assert shown[code]["to_patients"] == fen_text(fen)
        assert sum(r["claims"] for r in shown.values()) == len(VISITS)
        # The patient paid the institution in full and the fund's share goes to the patient:
        # the institution is cleared for none of it (else the fund pays that share twice).
        for inst in report["institutions"]:
            assert inst["total"]["declared"] == "0.00", inst
            assert inst["lines"] == []
        # The month is the replayed settlement's time, as every figure of the report's, whatever
        # the database's clock stamped the replay's row with (found from outside: clocks apart
        # put a claim replayed just after New Year's midnight into the month before).
        await deferred.fetch("UPDATE deferred SET replayed_at = replayed_at - interval '40 days'")
        moved = json.loads(cli("clearing", "monthly", "--month", month, "--json", "--database-url", deferred.dsn).stdout)  # fmt: skip
        assert {
            r["fixmedins_code"]: r["deferred_reimbursements"] for r in moved["institutions"]
        } == shown
        # A replayed settlement cancelled since (its owed reimbursement withdrawn) is not
        # reported: found from outside, it was still counted with what it no longer owes.
        gone = await deferred.fetchrow(
            "SELECT d.setl_id, d.reimbursement_fen, s.mdtrt_id, s.psn_no FROM deferred d"
            " JOIN settlements s USING (setl_id) WHERE d.fixmedins_code = $1"
            " AND d.reimbursement_fen > 0 ORDER BY d.setl_id LIMIT 1",
            HOSPITAL,
        )
        assert gone is not None
        await clear_rule(deferred.dsn, "region:441800", "settlement")

        async def normal() -> bool:
            return not await in_force()

        await until(normal)
        cancel = {
            "setl_id": gone["setl_id"],
            "mdtrt_id": gone["mdtrt_id"],
            "psn_no": gone["psn_no"],
        }
        await his.ok("2208", {"data": cancel})
        again = json.loads(cli("clearing", "monthly", "--month", month, "--json", "--database-url", deferred.dsn).stdout)  # fmt: skip
        after = {r["fixmedins_code"]: r["deferred_reimbursements"] for r in again["institutions"]}
        assert after[HOSPITAL]["claims"] == shown[HOSPITAL]["claims"] - 1
        assert after[HOSPITAL]["to_patients"] == fen_text(
            owed[HOSPITAL] - gone["reimbursement_fen"]
        )
        assert after[PHARMACY] == shown[PHARMACY]


async def test_a_replay_waits_for_the_lock_a_gateway_holds_while_it_applies_calls(
    new_database: Callable[..., Any],
) -> None:
    """Found in CI: `deferred replay` run the moment a recovery's calls were applied was refused
    as a second replay, the gateway still holding the replay lock it applies them under. It
    waits for a lock held for a moment, and refuses one held past `--wait`."""
    async with running_gateway(new_database) as srv:
        holder = await asyncpg.connect(srv.dsn)
        try:
            assert await deferred.try_lock_replay(holder)
            run = asyncio.create_task(
                asyncio.to_thread(cli, "deferred", "replay", "--json", "--database-url", srv.dsn)
            )
            await asyncio.sleep(2.0)
            assert not run.done()  # waiting, not refused
            await deferred.unlock_replay(holder)
            done = await asyncio.wait_for(run, 60)
            assert json.loads(done.stdout)["total"] == 0

            assert await deferred.try_lock_replay(holder)
            refused = await asyncio.to_thread(
                cli, "deferred", "replay", "--wait", "1", "--database-url", srv.dsn, check=False
            )
            assert refused.returncode == 2, refused.stderr
            assert "已等待1秒仍未结束：请勿重复启动" in refused.stderr, refused.stderr
        finally:
            await holder.close()


async def test_a_replay_waits_for_a_serving_gateways_journal_to_drain(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: `deferred replay` run the moment the ledger came back settled a
    person's later visits while a serving gateway's journal still held an earlier one (drained
    seconds later), so the deductible fell on the wrong visit. While a running process holds a
    segment with records in the journal folder, replay waits for it, and refuses past `--wait`."""
    dsn = await new_database("journals")
    segment = tmp_path / "host-1234-abcd.journal"
    segment.write_bytes(b'{"kind": "claim"}\n')  # what it holds is the serving gateway's to read
    holder = segment.open("rb")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a serving gateway's segment
    try:
        argv = ["deferred", "replay", "--journal-dir", str(tmp_path), "--database-url", dsn]
        refused = await asyncio.to_thread(cli, *argv, "--wait", "1", check=False)
        assert refused.returncode == 2, refused.stderr
        assert "仍有1个应急日志段未并入账本（host-1234-abcd.journal）" in refused.stderr
        assert not (tmp_path / "host-1234-abcd.damaged").exists()  # not drained from under it

        run = asyncio.create_task(asyncio.to_thread(cli, *argv, "--json"))
        await asyncio.sleep(2.0)
        assert not run.done()  # waiting
        segment.unlink()  # the serving gateway drains it and lets it go
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
        done = await asyncio.wait_for(run, 60)
        assert json.loads(done.stdout)["total"] == 0
    finally:
        holder.close()
