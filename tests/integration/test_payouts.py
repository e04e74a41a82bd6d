"""Payouts (拨付): claims and replayed 主动报 reimbursements → batch → four approvals by four
operators → bank file → return file with a failure → re-batched and paid, every total
reconciling; never paid twice."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from gateway.core.money import fen_text
from gateway.jobs import clearing
from gateway.ledger import checker
from gateway.ledger import payouts as store
from gateway.protocol.errors import BadRequest, Conflict, NotFound
from gateway.services import payouts
from tests.integration.agency_helpers import (
    Ledger,
    agency_ledger,
    bank_answers,
    ledger_on,
    settled_claim,
    with_checksum,
)
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import (
    BIG_LINES,
    BIG_TOTAL,
    DRUG_LINES,
    DRUG_TOTAL,
    clear_rule,
    cli,
    connect,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient

HOSPITAL = "H44180000001"
# A claim within the year's outpatient cap with a share to reimburse, and person 5's account.
SMALL = [{"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "20",
          "det_item_fee_sumamt": "800.00"}]  # fmt: skip
ACCOUNT_5 = {"bank_code": "102100000001", "bank_name": "工商银行",
             "holder": "户名5", "operator": "clerk1", "reason": "登记"}  # fmt: skip
PHARMACY = "P44180000001"
APPROVERS = ("approver1", "approver2", "approver3", "approver4")
ACCOUNTS = {
    "441800000000000001": "6222020200000000011",
    "441800000000000002": "6222020200000000022",
    "441800000000000003": "6222020200000000033",
    "441800000000000004": "6222020200000000044",
}


async def _accounts(conn: asyncpg.Connection) -> None:
    for psn_no, account_no in ACCOUNTS.items():
        await payouts.set_account(
            conn,
            psn_no,
            bank_code="102100000001",
            bank_name="工商银行",
            account_no=account_no,
            holder=f"户名{psn_no[-1]}",
            operator="clerk1",
            reason="参保人申请登记",
        )


async def _approved(conn: asyncpg.Connection, batch_no: str) -> None:
    for level, who in enumerate(APPROVERS, 1):
        await payouts.approve(conn, batch_no, level, who)


async def _deferred_claims(srv: Any, *, replay: bool = True) -> dict[str, tuple[str, str]]:
    """Two outpatient claims taken while settlement was deferred (主动报), then replayed (or
    left pending, the plan still in force): each person's (claim number, mdtrt_id)."""
    await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")
    his: HisClient = srv.client(HOSPITAL)
    pos: HisClient = srv.client(PHARMACY)

    async def in_force() -> bool:
        drug = pos.drug_input("441800000000000001", "2026-06-05 10:00:00", DRUG_TOTAL, DRUG_LINES)
        answer = await pos.call("2101", drug)
        return "应急预案" in (answer["warn_msg"] or "")

    await until(in_force)
    claims: dict[str, tuple[str, str]] = {}
    for n, psn_no in enumerate(("441800000000000001", "441800000000000002")):
        day = f"2026-06-0{n + 2}"
        mdtrt_id = await his.register(psn_no, "310", f"{day} 08:30:00", f"MZ-P-{n}")
        await his.visit_info(mdtrt_id, psn_no, "11", f"{day} 08:30:00")
        rows = his.fee_rows(mdtrt_id, psn_no, BIG_LINES, f"{day} 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        data = his.settle_data(psn_no, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
        answer = await his.ok("2207", data)
        assert answer["setlinfo"]["setl_id"].startswith("DF")
        claims[psn_no] = (answer["setlinfo"]["setl_id"], mdtrt_id)
    if replay:
        summary = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
        assert summary["settled"] == 2 and summary["owed"] == 2
    return claims


async def test_full_payout_cycle(new_database: Callable[..., Any]) -> None:
    async with running_gateway(new_database) as srv:
        await _deferred_claims(srv)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            await _cycle(ledger, conn, srv.dsn)


async def _cycle(ledger: Ledger, conn: asyncpg.Connection, dsn: str) -> None:
    manual = [
        await settled_claim(ledger, "441800000000000003", "2026-06-04", BIG_LINES, "FP-3"),
        await settled_claim(ledger, "441800000000000004", "2026-06-05", BIG_LINES, "FP-4"),
    ]
    replayed = {
        r["claim_id"]: int(r["reimbursement_fen"])
        for r in await conn.fetch(
            "SELECT claim_id, reimbursement_fen FROM deferred WHERE status = 'settled'"
        )
    }
    assert len(replayed) == 2 and all(v > 0 for v in replayed.values())
    await _accounts(conn)
    # Replay recorded what its claims owe as it ended; gathering again adds nothing.
    owed = await conn.fetch("SELECT source_ref FROM owed_lines WHERE source = 'deferred'")
    assert sorted(r["source_ref"] for r in owed) == sorted(replayed)
    assert await payouts.gather(conn) == 0  # once per claim
    owed_total = sum(replayed.values()) + sum(c.reimbursement_fen or 0 for c in manual)
    assert owed_total > 0

    batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
    assert (batch.line_count, batch.total_fen) == (4, owed_total)
    with pytest.raises(Conflict, match="没有可支付"):  # every owed line is in the open batch
        await payouts.create_batch(conn, "maker", dt.datetime.now())
    # Maker-checker, in order, four distinct operators.
    with pytest.raises(Conflict, match="不能审批本人制作"):
        await payouts.approve(conn, batch.batch_no, 1, "maker")
    with pytest.raises(Conflict, match="须先完成初审"):
        await payouts.approve(conn, batch.batch_no, 2, "approver2")
    await payouts.approve(conn, batch.batch_no, 1, "approver1")
    await payouts.approve(conn, batch.batch_no, 1, "approver1")  # the same step again: nothing
    with pytest.raises(Conflict, match="同一人不能再审批"):
        await payouts.approve(conn, batch.batch_no, 2, "approver1")
    await payouts.approve(conn, batch.batch_no, 2, "approver2")
    await payouts.approve(conn, batch.batch_no, 3, "approver3")
    with pytest.raises(Conflict, match="须完成初审和三级复核"):
        await payouts.export(conn, batch.batch_no, "maker")
    await payouts.approve(conn, batch.batch_no, 4, "approver4")
    assert len(await store.approvals(conn, batch.batch_no)) == 4

    name, payment = await payouts.export(conn, batch.batch_no, "maker")
    assert await payouts.export(conn, batch.batch_no, "maker") == (name, payment)  # locked
    rows = payment.decode().splitlines()
    assert rows[0].split("|")[:3] == ["H", "PAY", batch.batch_no]
    trailer = rows[-1].split("|")
    assert trailer[1] == "4" and trailer[2] == f"{owed_total // 100}.{owed_total % 100:02d}"
    assert sum(int(r.split("|")[6].replace(".", "")) for r in rows[1:-1]) == owed_total

    # The bank fails person 2's payment (a closed account).
    failed_seq = next(int(r.split("|")[1]) for r in rows[1:-1] if r.split("|")[2].endswith("2"))
    answer = bank_answers(payment, {failed_seq: "账户已销户"})
    # Tampered, mismatched or foreign return files are refused whole, changing nothing.
    forged = answer.replace(b"|S|", b"|F|", 1)
    for bad, why in (
        (forged, "校验码"),
        (with_checksum(forged), "失败原因"),
        (with_checksum(_drop_line(answer)), "不一致"),
        (with_checksum(_change_amount(answer)), "不一致"),
        (with_checksum(_dashed_day(answer)), "应为yyyyMMdd"),  # found from outside: taken
        (with_checksum(_padded_seq(answer)), "明细格式不正确"),  # found from outside: "01"
        # Found from outside: Windows line endings, the checksum taken over them, were told the
        # file had perhaps been modified.
        (_windows_lines(answer), "回车换行（CRLF"),
    ):
        with pytest.raises(BadRequest, match=why):
            await payouts.import_return(conn, bad, "cashier")
    # A batch there is none of: unknown (the API's 404), in the return's words.
    with pytest.raises(NotFound, match=r"整批拒绝导入：支付批次号ZX.*不存在"):
        await payouts.import_return(
            conn, with_checksum(answer.replace(b"H|RET|ZF", b"H|RET|ZX", 1)), "cashier"
        )
    assert {i.status for i in await store.items(conn, batch.batch_no)} == {"pending"}

    first = await payouts.import_return(conn, answer, "cashier")
    failed_fen = next(
        i.amount_fen for i in await store.items(conn, batch.batch_no) if i.seq == failed_seq
    )
    assert (first.paid_count, first.failed_count, first.failed_fen) == (3, 1, failed_fen)
    assert first.paid_fen + first.failed_fen == owed_total
    again = await payouts.import_return(conn, answer, "cashier")
    assert again.again and (again.paid_fen, again.failed_fen) == (first.paid_fen, first.failed_fen)
    with pytest.raises(Conflict, match="已导入回盘"):
        await payouts.import_return(conn, bank_answers(payment, {}), "cashier")
    assert await store.totals(conn) == {
        "owed": (1, failed_fen),
        "batched": (0, 0),
        "paid": (3, owed_total - failed_fen),
        "withdrawn": (0, 0),
        "failed": (1, failed_fen),
    }

    # Not paid again to the account the bank refused (found from outside: it was re-batched
    # unchanged): the line waits for a corrected account, and the refusal says so.
    with pytest.raises(payouts.NothingToPay, match="需更正收款账户"):
        await payouts.create_batch(conn, "maker", dt.datetime.now())
    assert await store.owed_without_account(conn) == ["441800000000000002"]

    # The account is corrected; the failed line joins a later batch and is paid.
    await payouts.set_account(
        conn,
        "441800000000000002",
        bank_code="103100000002",
        bank_name="农业银行",
        account_no="6228480000000000022",
        holder="户名2",
        operator="clerk1",
        reason="原账户已销户，参保人更正",
    )
    second = await payouts.create_batch(conn, "maker", dt.datetime.now())
    assert (second.line_count, second.total_fen) == (1, failed_fen)
    await _approved(conn, second.batch_no)
    _, payment2 = await payouts.export(conn, second.batch_no, "maker")
    assert b"6228480000000000022" in payment2
    done = await payouts.import_return(conn, bank_answers(payment2, {}), "cashier")
    assert (done.paid_count, done.paid_fen, done.failed_count) == (1, failed_fen, 0)
    totals = await store.totals(conn)
    assert totals["owed"] == (0, 0) and totals["paid"] == (4, owed_total)
    assert first.paid_fen + done.paid_fen == owed_total  # every owed fen paid, once
    with pytest.raises(payouts.NothingToPay):
        await payouts.create_batch(conn, "maker", dt.datetime.now())

    # Masked everywhere shown; every account change audited, masked.
    view = await payouts.batch_view(conn, second.batch_no)
    assert view["items"][0]["account_no"] == "6228***********0022"
    assert "6228480000000000022" not in json.dumps(view)
    # Its times in the gateway's local time (Beijing), as the console's list of batches gives
    # them (found from outside: this view said UTC, 12-07 beside a batch number of 12-08).
    beijing = dt.datetime.now().astimezone().utcoffset()
    assert dt.datetime.fromisoformat(view["created_at"]).utcoffset() == beijing
    assert view["approvals"] and all(
        dt.datetime.fromisoformat(a["at"]).utcoffset() == beijing for a in view["approvals"]
    )
    changes = await conn.fetch(
        "SELECT before, after FROM audit_log WHERE action = 'payout.account' ORDER BY audit_id"
    )
    assert len(changes) == len(ACCOUNTS) + 1
    assert "6222020200000000022" not in json.dumps([dict(r) for r in changes], default=str)
    async with connect(dsn) as check_conn:
        assert await checker.check(check_conn) == []
    await payouts.refresh_metrics([conn], dt.datetime.now(dt.UTC))
    gauge = REGISTRY.get_sample_value
    assert gauge("sgw_payout_yuan", {"state": "paid"}) == owed_total / 100
    assert gauge("sgw_payout_yuan", {"state": "failed"}) == failed_fen / 100
    assert gauge("sgw_payout_lines", {"state": "paid"}) == 4
    assert gauge("sgw_payout_lines", {"state": "owed"}) == 0
    assert gauge("sgw_payout_owed_oldest_seconds") == 0  # nothing left unpaid

    # The month's clearing report shows the manual claims per institution and the payouts.
    month = dt.date.today().strftime("%Y-%m")
    report = json.loads(cli("clearing", "monthly", "--month", month, "--json", "--database-url", dsn).stdout)  # fmt: skip
    assert report["payouts"] == {
        "batches": 2,
        "batched": {"lines": 5, "amount": fen_text(owed_total + failed_fen)},
        "paid": {"lines": 4, "amount": fen_text(owed_total)},
        "failed": {"lines": 1, "amount": fen_text(failed_fen)},
    }
    shown = {r["fixmedins_code"]: r for r in report["institutions"]}
    assert shown[HOSPITAL]["manual_claims"] == {
        "claims": 2,
        "medfee_sumamt": fen_text(2 * 162500),
        "to_patients": fen_text(sum(c.reimbursement_fen or 0 for c in manual)),
    }
    # Paid to the patients, not cleared to the institution.
    assert shown[HOSPITAL]["total"]["declared"] == "0.00" and shown[HOSPITAL]["lines"] == []
    page = clearing.to_html(await clearing.monthly(conn, month))
    assert (
        "本月零星报销结算2笔" in page and '<td>银行回盘：支付成功</td><td class="n">4</td>' in page
    )
    # The sheet a desk reconciles from carries the same (found from outside: it held only the
    # settlements' rows, zeros for this month).
    sheet = list(csv.DictReader(io.StringIO(clearing.to_csv(await clearing.monthly(conn, month)))))
    by_kind = {(r["机构编码"], r["医疗类别"]): r for r in sheet}
    manual_row = by_kind[(HOSPITAL, "零星报销（经办机构支付给参保人）")]
    assert (manual_row["人次"], manual_row["实际费用总额"], manual_row["应付参保人"]) == (
        "2",
        fen_text(2 * 162500),
        fen_text(sum(c.reimbursement_fen or 0 for c in manual)),
    )
    assert manual_row["申报金额"] == ""  # not the institution's to declare
    paid_out = {r["医疗类别"]: (r["人次"], r["拨付金额"]) for r in sheet if r["机构编码"] == ""}
    assert paid_out == {
        f"本月拨付：制单（2个支付批次，{clearing.REBATCHED}）": (
            "5",
            fen_text(owed_total + failed_fen),
        ),
        "本月拨付：银行回盘支付成功": ("4", fen_text(owed_total)),
        "本月拨付：银行回盘支付失败（退回待支付）": ("1", fen_text(failed_fen)),
    }


def _windows_lines(answer: bytes) -> bytes:
    """The return file saved with CR LF line endings, its checksum taken over them."""
    rows = answer.decode().splitlines()
    covered = "".join(f"{r}\r\n" for r in rows[:-1]).encode()
    t = rows[-1].split("|")
    return covered + "|".join((*t[:3], hashlib.sha256(covered).hexdigest())).encode() + b"\r\n"


def _drop_line(answer: bytes) -> bytes:
    rows = answer.decode().splitlines()
    return ("\n".join([rows[0], *rows[2:]]) + "\n").encode()


def _change_amount(answer: bytes) -> bytes:
    rows = answer.decode().splitlines()
    f = rows[1].split("|")
    f[3] = "0.01"
    return ("\n".join([rows[0], "|".join(f), *rows[2:]]) + "\n").encode()


async def test_rejection_releases_the_lines(new_database: Callable[..., Any]) -> None:
    async with agency_ledger(new_database) as ledger, ledger.pool.acquire() as conn:
        claim = await settled_claim(ledger, "441800000000000001", "2026-06-03", BIG_LINES, "FP")
        assert claim.reimbursement_fen
        await _accounts(conn)
        batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
        await payouts.approve(conn, batch.batch_no, 1, "approver1")
        with pytest.raises(Conflict, match="不能审批本人"):
            await payouts.reject(conn, batch.batch_no, 2, "maker", "金额有误")
        rejected = await payouts.reject(conn, batch.batch_no, 2, "approver2", "账户待核实")
        assert rejected.status == "rejected"
        with pytest.raises(Conflict, match="已退回"):
            await payouts.approve(conn, batch.batch_no, 2, "approver3")
        # Found from outside: its export was told to finish the approvals it can no longer take.
        with pytest.raises(Conflict, match=r"已被审批人退回，不能报盘.*重新制作支付批次"):
            await payouts.export(conn, batch.batch_no, "maker")
        assert (await store.totals(conn))["owed"] == (1, claim.reimbursement_fen)
        again = await payouts.create_batch(conn, "maker", dt.datetime.now())
        assert (again.line_count, again.total_fen) == (1, claim.reimbursement_fen)
        assert await checker.check(conn) == []
        await payouts.refresh_metrics([conn], dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
        assert REGISTRY.get_sample_value("sgw_payout_lines", {"state": "batched"}) == 1
        oldest = REGISTRY.get_sample_value("sgw_payout_owed_oldest_seconds")
        assert oldest is not None and oldest > 30 * 86400  # unpaid past the alert's deadline
        # The checker sees a line owed again while its batch is open, and a batch's total
        # changed behind its lines.
        await conn.execute("UPDATE owed_lines SET status = 'owed'")
        await conn.execute("UPDATE payout_batches SET total_fen = total_fen + 1")
        found = await checker.check(conn)
        assert any(p.startswith("owed line") and "owed but 1 pending" in p for p in found)
        assert any(f"payout batch {again.batch_no}" in p for p in found)


async def test_concurrent_batches_never_share_a_line(new_database: Callable[..., Any]) -> None:
    async with agency_ledger(new_database) as ledger:
        async with ledger.pool.acquire() as conn:
            for n, psn_no in enumerate(ACCOUNTS):
                await settled_claim(ledger, psn_no, "2026-06-03", BIG_LINES, f"FP-{n}")
            await _accounts(conn)
            owed = {o["owed_id"] for o in await store.owed_rows(conn)}
            assert len(owed) == 4
        async with ledger.pool.acquire() as a, ledger.pool.acquire() as b:
            # A makes a batch of two and holds its transaction open while B makes one: B takes
            # its lines past A's (skip locked), then waits for the audit chain A holds.
            ta = a.transaction()
            await ta.start()
            first = await payouts.create_batch(a, "maker-a", dt.datetime.now(), limit=2)
            pid_b = b.get_server_pid()
            making = asyncio.ensure_future(payouts.create_batch(b, "maker-b", dt.datetime.now()))

            async def b_waits_for_a() -> bool:
                return bool(
                    await a.fetchval(
                        "SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = $1",
                        pid_b,
                    )
                )

            await until(b_waits_for_a)
            await ta.commit()
            second = await asyncio.wait_for(making, timeout=10)
            in_a = {i.owed_id for i in await store.items(a, first.batch_no)}
            in_b = {i.owed_id for i in await store.items(b, second.batch_no)}
            assert len(in_a) == 2 and in_a.isdisjoint(in_b) and in_a | in_b == owed
        async with ledger.pool.acquire() as conn:
            await payouts.reject(conn, first.batch_no, 1, "approver1", "重新制单")
            await payouts.reject(conn, second.batch_no, 1, "approver1", "重新制单")
        # Two at once: one takes every line or they split them; none is taken twice.
        async with ledger.pool.acquire() as a, ledger.pool.acquire() as b:
            got = await asyncio.gather(
                payouts.create_batch(a, "maker-a", dt.datetime.now()),
                payouts.create_batch(b, "maker-b", dt.datetime.now()),
                return_exceptions=True,
            )
            made = [g for g in got if not isinstance(g, BaseException)]
            assert all(
                isinstance(g, payouts.NothingToPay) for g in got if isinstance(g, BaseException)
            )
            taken = [i.owed_id for m in made for i in await store.items(a, m.batch_no)]
            assert sorted(taken) == sorted(owed)
            # Even past the skip-locked read, the unique index refuses a line in two open batches.
            lines = await store.items(a, made[0].batch_no)
            twice = [
                store.Taken(
                    owed_id=i.owed_id,
                    psn_no=i.psn_no,
                    amount_fen=i.amount_fen,
                    bank_code=i.bank_code,
                    account_no=i.account_no,
                    holder=i.holder,
                )
                for i in lines
            ]
            with pytest.raises(asyncpg.UniqueViolationError):
                async with a.transaction():
                    await store.insert_batch(a, "ZFTWICE", twice, "forger")


async def test_a_reimbursement_in_a_batch_or_paid_keeps_its_settlement(
    new_database: Callable[..., Any],
) -> None:
    """2208 of a settlement the agency pays back: a manual claim's is refused; a replayed
    主动报 claim's is refused once its reimbursement is in a batch or paid, and, merely owed,
    cancelled with its owed line withdrawn; a bulk correction touches neither."""
    async with running_gateway(new_database) as srv:
        await _deferred_claims(srv)  # persons 1 and 2, replayed
        await clear_rule(srv.dsn, "region:441800", "settlement")
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)

        async def normal() -> bool:
            drug = pos.drug_input(
                "441800000000000001", "2026-06-05 10:00:00", DRUG_TOTAL, DRUG_LINES
            )
            answer = await pos.call("2101", drug)
            return "应急预案" not in (answer["warn_msg"] or "")

        await until(normal)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            manual = await settled_claim(
                ledger, "441800000000000003", "2026-06-04", BIG_LINES, "FP-C"
            )
            replayed = {
                r["psn_no"]: r
                for r in await conn.fetch(
                    "SELECT d.claim_id, d.psn_no, s.setl_id, s.mdtrt_id FROM deferred d"
                    " JOIN settlements s USING (setl_id) WHERE d.status = 'settled'"
                )
            }
            await payouts.set_account(
                conn, "441800000000000001", bank_code="102100000001", bank_name="工商银行",
                account_no="6222020200000000011", holder="户名1", operator="clerk1", reason="登记",
            )  # fmt: skip
            owed = "SELECT count(*) FROM owed_lines WHERE source = 'deferred'"
            assert await conn.fetchval(owed) == 2  # recorded by the replay
            assert await payouts.gather(conn) == 0
            batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
            assert batch.line_count == 1  # person 1's; person 2 has no account yet

            async def cancel(setl_id: str, mdtrt_id: str, psn_no: str) -> dict[str, Any]:
                data = {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}
                return await his.call("2208", {"data": data})

            before = await srv.ledger_fingerprint()
            answer = await cancel(manual.setl_id or "", manual.mdtrt_id or "", manual.psn_no)
            assert (
                answer["infcode"] == -1 and f"零星报销{manual.claim_no}的结算" in answer["err_msg"]
            )
            one = replayed["441800000000000001"]
            answer = await cancel(one["setl_id"], one["mdtrt_id"], one["psn_no"])
            assert answer["infcode"] == -1
            assert f"已纳入支付批次{batch.batch_no}，不能撤销" in answer["err_msg"]
            assert await srv.ledger_fingerprint() == before  # nothing cancelled

            # A bulk correction would settle them again: refused for every claim the agency pays.
            two = replayed["441800000000000002"]
            async with conn.transaction():
                why = await store.hold_for_cancel(conn, two["setl_id"], resettling=True)
            assert why is not None and "不能批量纠错重结算" in why
            # Merely owed: the cancellation stands and the owed line is withdrawn with it.
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", two["claim_id"]
                )
                == "owed"
            )
            await his.ok("2208", {"data": {k: two[k] for k in ("setl_id", "mdtrt_id", "psn_no")}})
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", two["claim_id"]
                )
                == "withdrawn"
            )
            assert await payouts.gather(conn) == 0  # its settlement is no longer in force

            await _approved(conn, batch.batch_no)
            _, payment = await payouts.export(conn, batch.batch_no, "maker")
            await payouts.import_return(conn, bank_answers(payment, {}), "cashier")
            answer = await cancel(one["setl_id"], one["mdtrt_id"], one["psn_no"])
            assert answer["infcode"] == -1
            assert f"已由支付批次{batch.batch_no}支付给参保人" in answer["err_msg"]
            async with connect(srv.dsn) as check_conn:
                assert await checker.check(check_conn) == []


async def test_institutions_clearing_amounts_are_paid_in_batches_of_their_own(
    new_database: Callable[..., Any],
) -> None:
    """The month's clearing amounts (the report's declared totals) owed to the institutions
    once, kept out of the patients' batches, paid to the institutions' accounts in their own
    batch through the same four approvals, bank file and return."""
    # Settled now (the clearing month is the settlement time's); served yesterday, at fixed
    # hours that are never in the future (a run after midnight found today's 10:00 there).
    month = dt.date.today().strftime("%Y-%m")
    today = dt.date.today() - dt.timedelta(days=1)
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)
        for n, psn_no in enumerate(("441800000000000001", "441800000000000002")):
            mdtrt_id = await his.register(psn_no, "310", f"{today} 08:30:00", f"MZ-C-{n}")
            await his.visit_info(mdtrt_id, psn_no, "11", f"{today} 08:30:00")
            rows = his.fee_rows(mdtrt_id, psn_no, BIG_LINES, f"{today} 08:40:00", "B1")
            await his.ok("2204", {"feedetail": rows})
            data = his.settle_data(psn_no, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
            await his.ok("2207", data)
        sale = pos.drug_input("441800000000000003", f"{today} 10:00:00", DRUG_TOTAL, DRUG_LINES)
        await pos.ok("2102", sale)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            # The month still runs: its amounts are recorded once, so not before it ends (found
            # from outside: recorded mid-month, the rest of the month was never owed).
            db = ("--database-url", srv.dsn)
            early = cli("payouts", "gather-clearing", "--month", month, *db, check=False)
            assert early.returncode == 2 and "尚未结束" in early.stderr
            # Then the month ends: the same settlements, seen a month later (their time moved
            # back a month, as the clock moving on would leave them).
            await conn.execute("UPDATE settlements SET setl_time = setl_time - interval '1 month'")
            month = (dt.date.today().replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
            report = await clearing.monthly(conn, month)
            declared = {r.fixmedins_code: r.total.declared for r in report.institutions}
            assert set(declared) == {HOSPITAL, PHARMACY} and all(declared.values())
            got = json.loads(cli("payouts", "gather-clearing", "--month", month, "--json", "--operator", "clerk1", *db).stdout)  # fmt: skip
            assert got["recorded"] == 2
            assert got["amounts"] == {k: fen_text(v) for k, v in declared.items()}
            again = json.loads(cli("payouts", "gather-clearing", "--month", month, "--json", *db).stdout)  # fmt: skip
            assert again["recorded"] == 0  # once per institution and month
            refused = cli("payouts", "gather-clearing", "--month", "2026-13", *db, check=False)
            assert refused.returncode == 2 and "费款所属期" in refused.stderr

            # A patient's reimbursement is owed too: the patients' batch leaves the clearing out.
            claim = await settled_claim(
                ledger, "441800000000000004", "2026-06-04", BIG_LINES, "FP-4"
            )
            await _accounts(conn)
            patients = await payouts.create_batch(conn, "maker", dt.datetime.now())
            assert (patients.line_count, patients.total_fen) == (1, claim.reimbursement_fen)
            missing = cli("payouts", "batch", "--source", "clearing", *db, check=False)
            assert (
                missing.returncode == 2
                and "2家机构待拨付但未登记或需更正收款账户" in missing.stderr
            )
            for code, account in (
                (HOSPITAL, "6217000000000000001"),
                (PHARMACY, "6217000000000000002"),
            ):
                shown = json.loads(cli(
                    "payouts", "account", code, "--institution", "--bank-code", "105100000001",
                    "--bank-name", "建设银行", "--account-no", account, "--holder", f"机构{code}",
                    "--reason", "机构申请", "--operator", "clerk1", "--json", *db,
                ).stdout)  # fmt: skip
                assert shown["account_no"] == account[:4] + "*" * 11 + account[-4:]
            made = json.loads(cli("payouts", "batch", "--source", "clearing", "--operator", "maker", "--json", *db).stdout)  # fmt: skip
            assert (made["count"], made["total"]) == (2, fen_text(sum(declared.values())))
            batch_no = made["batch_no"]
            await _approved(conn, batch_no)
            _, payment = await payouts.export(conn, batch_no, "maker")
            paid_to = {
                r.split("|")[2]: r.split("|")[5:] for r in payment.decode().splitlines()[1:-1]
            }
            assert paid_to == {
                HOSPITAL: ["6217000000000000001", fen_text(declared[HOSPITAL])],
                PHARMACY: ["6217000000000000002", fen_text(declared[PHARMACY])],
            }
            done = await payouts.import_return(conn, bank_answers(payment, {}), "cashier")
            assert (done.paid_count, done.paid_fen) == (2, sum(declared.values()))
            assert {
                r["source_ref"]: r["status"]
                for r in await store.owed_rows(conn)
                if r["source"] == "clearing"
            } == {f"{HOSPITAL}:{month}": "paid", f"{PHARMACY}:{month}": "paid"}
            async with connect(srv.dsn) as check_conn:
                assert await checker.check(check_conn) == []


async def test_an_accounts_fields_never_break_a_bank_file_line(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a holder with \\v, \\f, \\x1c or U+2028 was accepted into the payment
    file, where any reader splitting on Unicode line ends cuts the payee's line in two; a byte
    the terminal could not encode crashed the CLI. Each is refused in words, nothing stored."""
    async with agency_ledger(new_database) as ledger, ledger.pool.acquire() as conn:
        for holder in (
            "张\v三",
            "张\f三",
            "张\x1c三",
            "张\u2028三",
            "张\u0085三",
            "张\udcff三",
            "张|三",
            "\u202e丁",  # a right-to-left override (found from outside)
            "张\u200b三",
        ):
            with pytest.raises(BadRequest, match="户名不能包含"):
                await payouts.set_account(
                    conn,
                    "441800000000000001",
                    bank_code="102100000001",
                    bank_name="工商银行",
                    account_no="6222020200000000011",
                    holder=holder,
                    operator="clerk1",
                    reason="参保人申请登记",
                )
        # Nor does a field of 5,000 characters go whole into the bank's file.
        for field in ("holder", "bank_name", "bank_code"):
            account = {
                "bank_code": "102100000001",
                "bank_name": "工商银行",
                "account_no": "6222020200000000011",
                "holder": "张三",
                field: "张" * 5000,
            }
            with pytest.raises(BadRequest, match="不能超过100个字符"):
                await payouts.set_account(
                    conn, "441800000000000001", **account, operator="clerk1", reason="登记"
                )
        # A bank code is digits (found from outside: "=1+1" went into the bank's file).
        for code in ("=1+1", "ICBC", "12", "1021000000011"):
            with pytest.raises(BadRequest, match="开户行行号须为3至12位数字"):
                await payouts.set_account(
                    conn,
                    "441800000000000001",
                    bank_code=code,
                    bank_name="工商银行",
                    account_no="6222020200000000011",
                    holder="张三",
                    operator="clerk1",
                    reason="登记",
                )
        assert await conn.fetchval("SELECT count(*) FROM payout_accounts") == 0


async def test_one_person_under_another_spelling_is_still_one_approver(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: "a1", "A1" and "a1 " were taken for three people at three levels,
    and after that "ａ１" (full-width) for a second person at the last level."""
    async with agency_ledger(new_database) as ledger, ledger.pool.acquire() as conn:
        await settled_claim(ledger, "441800000000000003", "2026-06-04", BIG_LINES, "FP-S")
        await _accounts(conn)
        batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
        with pytest.raises(Conflict, match="不能审批本人制作"):
            await payouts.approve(conn, batch.batch_no, 1, " Maker")
        await payouts.approve(conn, batch.batch_no, 1, "a1")
        for alias in ("A1", "a1 ", "ａ１", "Ａ 1"):
            with pytest.raises(Conflict, match="同一人不能再审批"):
                await payouts.approve(conn, batch.batch_no, 2, alias)


async def test_a_payee_whose_account_the_bank_refused_waits_for_its_correction(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: after the bank reported an account closed, a new claim's
    reimbursement for the same person was batched to it. Every line owed to the payee waits
    until the account changes; then both are paid to the new one."""
    # Two claims within the year's outpatient cap, each with a share to reimburse.
    small = SMALL
    async with (
        running_gateway(new_database) as srv,
        ledger_on(srv.dsn) as ledger,
        ledger.pool.acquire() as conn,
    ):
        person = "441800000000000005"
        first = await settled_claim(ledger, person, "2026-06-04", small, "FP-BANK-1")
        account = ACCOUNT_5
        await payouts.set_account(conn, person, account_no="6222020200000000055", **account)
        batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
        await _approved(conn, batch.batch_no)
        _, payment = await payouts.export(conn, batch.batch_no, "maker")
        await payouts.import_return(conn, bank_answers(payment, {1: "账户已销户"}), "cashier")
        later = await settled_claim(ledger, person, "2026-06-05", small, "FP-BANK-2")
        assert (first.reimbursement_fen or 0) > 0 and (later.reimbursement_fen or 0) > 0
        with pytest.raises(payouts.NothingToPay, match="需更正收款账户"):
            await payouts.create_batch(conn, "maker", dt.datetime.now())
        assert await store.owed_without_account(conn) == [person]
        # The refused account entered again is refused at once, nothing written (found from
        # outside: it was answered as taken, and only the next batch said otherwise).
        for again in ("6222020200000000055", "6222 0202 0000 0000 055"):
            with pytest.raises(Conflict, match="曾被银行退回（账户已销户），不能再作为收款账户"):
                await payouts.set_account(conn, person, account_no=again, **account)
        assert await store.owed_without_account(conn) == [person]
        await payouts.set_account(conn, person, account_no="6222020200000000056", **account)
        second = await payouts.create_batch(conn, "maker", dt.datetime.now())
        owed = (first.reimbursement_fen or 0) + (later.reimbursement_fen or 0)
        assert (second.line_count, second.total_fen) == (2, owed)
        # Its lines batched to the corrected account, the payee no longer waits for one: the
        # next refusal counts only who does (asked from outside: it read "2人" with one).
        waiting = "441800000000000006"
        await settled_claim(ledger, waiting, "2026-06-06", small, "FP-BANK-3")
        with pytest.raises(payouts.NothingToPay) as refused:
            await payouts.create_batch(conn, "maker", dt.datetime.now())
        assert refused.value.missing == [waiting]
        assert "（1人待付款但未登记收款账户或需更正收款账户）" in str(refused.value)
        async with connect(srv.dsn) as check_conn:
            assert await checker.check(check_conn) == []


async def test_a_batch_made_before_the_bank_refused_an_account_is_not_sent_to_it(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a second batch made while the first was at the bank went out to the
    account the first one's return file had just refused. Its export is refused until the
    batch is returned, the account corrected and the lines batched again."""
    small = SMALL
    async with (
        running_gateway(new_database) as srv,
        ledger_on(srv.dsn) as ledger,
        ledger.pool.acquire() as conn,
    ):
        person = "441800000000000005"
        account = ACCOUNT_5
        await payouts.set_account(conn, person, account_no="6222020200000000055", **account)
        await settled_claim(ledger, person, "2026-06-04", small, "FP-BANK-A")
        first = await payouts.create_batch(conn, "maker", dt.datetime.now())
        await _approved(conn, first.batch_no)
        _, payment = await payouts.export(conn, first.batch_no, "maker")
        later = await settled_claim(ledger, person, "2026-06-05", small, "FP-BANK-B")
        second = await payouts.create_batch(conn, "maker", dt.datetime.now())
        await _approved(conn, second.batch_no)
        await payouts.import_return(conn, bank_answers(payment, {1: "账户已销户"}), "cashier")
        with pytest.raises(Conflict, match="收款账户已被银行退回") as refused:
            await payouts.export(conn, second.batch_no, "maker")
        assert person in str(refused.value) and "退回该支付批次" in str(refused.value)
        assert (await store.batch(conn, second.batch_no)).status == "approved"  # nothing sent
        await payouts.reject(conn, second.batch_no, 4, APPROVERS[3], "账户被银行退回")
        await payouts.set_account(conn, person, account_no="6222020200000000056", **account)
        third = await payouts.create_batch(conn, "maker", dt.datetime.now())
        await _approved(conn, third.batch_no)
        _, sent = await payouts.export(conn, third.batch_no, "maker")
        accounts = {line.split("|")[5] for line in sent.decode().splitlines()[1:-1]}
        assert accounts == {"6222020200000000056"}
        assert third.total_fen == (later.reimbursement_fen or 0) + first.total_fen
        async with connect(srv.dsn) as check_conn:
            assert await checker.check(check_conn) == []


def _dashed_day(answer: bytes) -> bytes:
    """The return file with its header's date written yyyy-MM-dd."""
    head, rest = answer.split(b"\n", 1)
    f = head.split(b"|")
    day = f[3].decode()
    f[3] = f"{day[:4]}-{day[4:6]}-{day[6:]}".encode()
    return b"|".join(f) + b"\n" + rest


def _padded_seq(answer: bytes) -> bytes:
    """The return file with its first line's seq written with a leading zero ("01" for 1)."""
    head, first, rest = answer.split(b"\n", 2)
    f = first.split(b"|")
    f[1] = b"0" + f[1]
    return head + b"\n" + b"|".join(f) + b"\n" + rest
