"""A settlement whose fund share the agency owes the patient, undone at the counter.

Found from outside (a black-box pass): a replayed 主动报 claim's settlement cancelled by 2208
(or 2601 of the claim's msgid) left its reimbursement owed, and paid, while the counter settled
the same lines again for the institution — the fund paid that share twice; and the treating
hospital could cancel the agency's manual-claim settlement and settle the lines for itself.
Now: cancelled while only owed, the owed line is withdrawn (never batched, gathered again only if
the cancellation is itself reversed); once batched or paid, the cancellation and the reversal
are refused; a manual claim's settlement cannot be
cancelled or reversed by an institution; bulk corrections leave both alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.core.model import Category
from gateway.core.money import fen_text
from gateway.ledger import checker, deferred, settlements
from gateway.ledger import payouts as store
from gateway.protocol.errors import Conflict
from gateway.services import payouts
from tests.integration.agency_helpers import bank_answers, ledger_on, settled_claim
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import BIG_LINES, clear_rule, cli
from tests.integration.test_payouts import HOSPITAL, _accounts, _approved, _deferred_claims


async def _plan_cleared(srv: Any) -> None:
    """The drill over: settlements are real-time again (every process polls the plan each second)."""
    await clear_rule(srv.dsn, "region:441800", "settlement")
    await asyncio.sleep(2.5)


async def _replayed(srv: Any) -> list[dict[str, Any]]:
    rows = await srv.fetch(
        "SELECT d.claim_id, d.msgid, d.reimbursement_fen, s.setl_id, s.mdtrt_id, s.psn_no"
        " FROM deferred d JOIN settlements s USING (setl_id) WHERE d.status = 'settled'"
        " ORDER BY d.seq"
    )
    return [dict(r) for r in rows]


async def _claims_replayed(srv: Any) -> list[dict[str, Any]]:
    """Two outpatient claims taken under `defer`, the plan cleared, both replayed."""
    await _deferred_claims(srv)
    await _plan_cleared(srv)
    return await _replayed(srv)


async def _not_gathered(srv: Any) -> None:
    """The replayed claims' reimbursements not recorded as owed yet: a replay cut short after
    its settlements and before its gather, or a ledger replayed before replay gathered."""
    await srv.fetch("DELETE FROM owed_lines WHERE source = 'deferred'")


async def _recorded_by_replay(conn: Any, *claims: dict[str, Any]) -> None:
    """Replay recorded what its claims owe as it ended; a gather adds nothing."""
    owed = await conn.fetch("SELECT source_ref FROM owed_lines WHERE source = 'deferred'")
    assert sorted(r["source_ref"] for r in owed) == sorted(c["claim_id"] for c in claims)
    assert await payouts.gather(conn) == 0


async def _batched_and_held(
    conn: Any, his: Any, first: dict[str, Any], *, approved: bool = False
) -> Any:
    """The replayed claims' reimbursements owed and made a batch (approved at every level if
    asked); the first claim's cancellation is then refused, the counter told to have an
    approver return the batch."""
    await _accounts(conn)
    await payouts.gather(conn)
    batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
    if approved:
        await _approved(conn, batch.batch_no)
    refused = await his.call("2208", _cancel(first))
    assert "请先由审批人退回该支付批次" in refused["err_msg"]
    return batch


def _lines_gauge(state: str) -> float | None:
    return REGISTRY.get_sample_value("sgw_payout_lines", {"state": state})


def _cancel(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"setl_id": row["setl_id"], "mdtrt_id": row["mdtrt_id"], "psn_no": row["psn_no"]}
    }


async def test_a_replayed_claims_reimbursement_follows_its_settlement(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        first, second = await _claims_replayed(srv)
        his = srv.client(HOSPITAL)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            await _accounts(conn)
            await _recorded_by_replay(conn, first, second)

            # Only owed: the counter may cancel; the owed line is withdrawn, never batched.
            await his.ok("2208", _cancel(first))
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == "withdrawn"
            )
            batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
            assert (batch.line_count, batch.total_fen) == (1, second["reimbursement_fen"])

            # Batched: refused, by 2208 and by 2601 of the claim's own msgid; nothing changes.
            refused = await his.call("2208", _cancel(second))
            assert refused["infcode"] == -1
            assert f"的报销款已纳入支付批次{batch.batch_no}，不能撤销或重结算" in refused["err_msg"]
            reversal = {
                "data": {"psn_no": second["psn_no"], "omsgid": second["msgid"], "oinfno": "2207"}
            }
            refused = await his.call("2601", reversal)
            assert refused["infcode"] == -1, refused
            assert (
                await srv.fetchval(
                    "SELECT status FROM settlements WHERE setl_id = $1", second["setl_id"]
                )
                == "settled"
            )
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", second["claim_id"]
                )
                == "batched"
            )
            assert await checker.check(conn) == []


async def test_a_cancelled_claim_before_gathering_is_never_owed(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        await _not_gathered(srv)
        await srv.client(HOSPITAL).ok("2208", _cancel(first))
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            assert await payouts.gather(conn) == 1  # the other claim only
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == 0
            )
            assert await checker.check(conn) == []
        # The listing says so too (found from outside: still "settled reimburse 209.30").
        listed = {
            c["claim_id"]: c
            for c in map(json.loads, cli("deferred", "list", "--json", "--database-url", srv.dsn)
            .stdout.splitlines())
        }  # fmt: skip
        gone = listed[first["claim_id"]]
        assert (gone["status"], gone["settlement_status"], gone["owed_fen"]) == (
            "settled",
            "cancelled",
            None,
        )
        assert gone["reimbursement_fen"] == first["reimbursement_fen"]  # what replay recorded
        # The bill in yuan, as its setlinfo says it (found from outside: fen here, yuan there).
        assert isinstance(gone["medfee_sumamt"], str)
        assert Decimal(gone["medfee_sumamt"]) == Decimal(str(gone["setlinfo"]["medfee_sumamt"]))
        kept = next(c for c in listed.values() if c["claim_id"] != first["claim_id"])
        assert kept["settlement_status"] == "settled"
        assert kept["owed_fen"] == kept["reimbursement_fen"] > 0
        text = cli("deferred", "list", "--database-url", srv.dsn).stdout
        line = next(x for x in text.splitlines() if x.startswith(first["claim_id"]))
        assert "settlement cancelled: nothing owed" in line and "reimburse" not in line


async def test_an_institution_cannot_undo_a_manual_claims_settlement(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv, ledger_on(srv.dsn) as ledger:
        claim = await settled_claim(ledger, "441800000000000003", "2026-06-04", BIG_LINES, "FP-U")
        row = dict(
            await srv.fetchrow(
                "SELECT setl_id, mdtrt_id, psn_no, medins_setl_id FROM settlements"
                " WHERE setl_id = $1",
                claim.setl_id,
            )
        )
        his = srv.client(HOSPITAL)
        refused = await his.call("2208", _cancel(row))
        assert refused["infcode"] == -1
        assert (
            f"是零星报销{claim.claim_no}的结算（报销款由经办机构支付给参保人），不能撤销或重结算"
            in refused["err_msg"]
        )
        reversal = {
            "data": {"psn_no": row["psn_no"], "omsgid": row["medins_setl_id"], "oinfno": "2207"}
        }
        # The institution never sent that msgid: its 2601 reverses nothing (it only bars the
        # msgid from being used later), and the agency's settlement stays in force.
        await his.call("2601", reversal)
        assert (
            await srv.fetchval("SELECT status FROM settlements WHERE setl_id = $1", claim.setl_id)
            == "settled"
        )


@pytest.mark.parametrize("gathered_first", [True, False], ids=["owed", "not-yet-gathered"])
async def test_a_gather_racing_a_cancellation_never_owes_the_cancelled_claim(
    new_database: Callable[..., Any], gathered_first: bool
) -> None:
    """Found from outside: a batch made while a 2208 of a replayed claim was committing took
    the claim's reimbursement, which was then paid for a cancelled settlement. The gather that
    precedes every batch read the settlement as in force from its snapshot and wrote the line
    again once the cancellation's withdrawal committed (or, not gathered yet, wrote it beside
    the cancellation). Here the cancellation is held open at its last step while a gather runs:
    the gather waits for it and owes nothing for that claim, and the batch does not pay it."""
    async with running_gateway(new_database) as srv:
        first, second = await _claims_replayed(srv)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            await _accounts(conn)
            if gathered_first:
                await _recorded_by_replay(conn, first, second)
            else:
                await _not_gathered(srv)
            async with ledger.pool.acquire() as canceller:  # the pool's codecs (jsonb)
                cancelling = canceller.transaction()
                await cancelling.start()
                await settlements.cancel(
                    canceller,
                    fixmedins_code=HOSPITAL,
                    setl_id=first["setl_id"],
                    mdtrt_id=first["mdtrt_id"],
                    psn_no=first["psn_no"],
                    msgid="RACE-2208",
                    now=dt.datetime.now(),
                    categories=frozenset(c.value for c in Category),
                )
                gathering = asyncio.create_task(payouts.gather(conn))
                if gathered_first:
                    # Its snapshot still sees the claim owed: it leaves it, waiting for nothing.
                    await asyncio.wait_for(asyncio.shield(gathering), 30)
                else:
                    # The settlement's lock holds the gather until the cancellation's answer.
                    await asyncio.sleep(0.5)
                    assert not gathering.done()
                await cancelling.commit()
                await gathering
            owed = await conn.fetch(
                "SELECT source_ref, status FROM owed_lines WHERE status <> 'withdrawn'"
            )
            assert [r["source_ref"] for r in owed] == [second["claim_id"]]
            # What the team's page says is owed to patients: the claim in force alone.
            counts = await deferred.counts(conn)
            assert counts["reimbursement_fen"] == second["reimbursement_fen"]
            batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
            assert (batch.line_count, batch.total_fen) == (1, second["reimbursement_fen"])
            assert await checker.check(conn) == []


async def test_a_batch_rejected_before_export_lets_the_cancellation_through(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: refused while its reimbursement was batched, the clerk is told to
    have the batch rejected first; after that, the cancellation was still refused as "sent to
    the bank" (nothing was: a rejected batch is never exported), and the owed line could not
    have been deleted anyway (the released item names it). Now it stands and the line is
    withdrawn; a 2601 of the cancellation puts the settlement back and a gather owes it again."""
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        his = srv.client(HOSPITAL)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            batch = await _batched_and_held(conn, his, first)
            owed_since = await conn.fetchval(
                "SELECT created_at FROM owed_lines WHERE source_ref = $1", first["claim_id"]
            )
            await payouts.reject(conn, batch.batch_no, 1, "approver1", "待核实")
            cancelled = await his.call("2208", _cancel(first), msgid="UNDO-2208-REJECTED")
            assert cancelled["infcode"] == 0, cancelled["err_msg"]
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == "withdrawn"
            )
            assert await checker.check(conn) == []
            await payouts.refresh_metrics([conn], dt.datetime.now(dt.UTC))
            assert _lines_gauge("withdrawn") == 1
            reversal = {"data": {"psn_no": first["psn_no"], "omsgid": "UNDO-2208-REJECTED",
                                 "oinfno": "2208"}}  # fmt: skip
            reinstated = await his.call("2601", reversal)
            # The 2208's answer had said to refund the whole bill and that the reimbursement was
            # withdrawn: the 2601's says the opposite (found from outside: 成功 alone, while the
            # reimbursement went back into the next batch).
            medfee = await srv.fetchval(
                "SELECT medfee_sumamt FROM settlements WHERE setl_id = $1", first["setl_id"]
            )
            assert reinstated["infcode"] == 0 and reinstated["warn_msg"] == (
                f"结算ID{first['setl_id']}（由暂存结算{first['claim_id']}补结算）的撤销已冲正，"
                f"结算恢复有效：撤销时提示退还的现金{fen_text(medfee)}元不应退还，如已退还请向"
                f"参保人收回；应支付给参保人的报销款{fen_text(first['reimbursement_fen'])}元恢复支付"
            )
            assert await payouts.gather(conn) == 1
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == "owed"
            )
            # Owed since the replay, as before the cancellation the 2601 undid (found from
            # outside: owed again "now", the ageing alert counted from the reversal).
            assert (
                await conn.fetchval(
                    "SELECT created_at FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == owed_since
            )
            assert await checker.check(conn) == []
            # Owed again, it is no longer counted withdrawn (found from outside: the gauge
            # kept its last figure once no line was withdrawn, so the line counted twice).
            owed_before = _lines_gauge("owed")
            await payouts.refresh_metrics([conn], dt.datetime.now(dt.UTC))
            assert _lines_gauge("withdrawn") == 0
            assert _lines_gauge("owed") == owed_before + 1


async def test_an_approved_batch_not_yet_sent_is_returned_by_one_of_its_approvers(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the counter is told to have an approver return the batch holding a
    reimbursement before cancelling its settlement, but once all four levels had approved, no
    one could (only the bank's file led on). The approver of one of its levels withdraws that
    approval: the batch is rejected, its lines owed again, and the cancellation goes through."""
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        his = srv.client(HOSPITAL)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            batch = await _batched_and_held(conn, his, first, approved=True)
            for level, who in ((1, "approver2"), (4, "stranger")):
                with pytest.raises(Conflict, match=r"只能由.*审批人approver"):
                    await payouts.reject(conn, batch.batch_no, level, who, "待核实")
            assert (await store.batch(conn, batch.batch_no)).status == "approved"
            rejected = await payouts.reject(conn, batch.batch_no, 1, "approver1", "账户待核实")
            assert rejected.status == "rejected"
            assert (
                await conn.fetchval(
                    "SELECT status FROM owed_lines WHERE source_ref = $1", first["claim_id"]
                )
                == "owed"
            )
            audited = await conn.fetchrow(
                "SELECT action, reason FROM audit_log ORDER BY audit_id DESC LIMIT 1"
            )
            assert audited["action"] == "payout.reject.1"
            assert "撤回审批并退回" in audited["reason"]
            with pytest.raises(Conflict):
                await payouts.export(conn, batch.batch_no, "clerk1")
            cancelled = await his.call("2208", _cancel(first), msgid="UNDO-2208-RETURNED")
            assert cancelled["infcode"] == 0, cancelled["err_msg"]
            assert await checker.check(conn) == []


async def test_5203_of_a_deferred_claim_tells_the_counter_where_it_stands(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a counter unsure of a 2207 queries it (5203) by the setl_id it was
    given; for a deferred claim (DF…) the answer was "no settlement", as if the acknowledged
    sale never happened. Pending, it says so with the claim's number; replayed, the claim's
    number (or its visit) finds the real settlement; withdrawn, it says so."""
    async with running_gateway(new_database) as srv:
        claims = await _deferred_claims(srv, replay=False)
        his = srv.client(HOSPITAL)

        def query(setl_id: str, mdtrt_id: str = "") -> dict[str, Any]:
            return {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": ""}}

        first, second = claims["441800000000000001"], claims["441800000000000002"]
        for ask in (query(first[0]), query("", first[1])):
            pending = await his.call("5203", ask)
            assert (
                pending["infcode"] == -1
                and f"{first[0]}为应急预案下的暂存结算" in pending["err_msg"]
            )
        withdraw = {"data": {"setl_id": second[0], "mdtrt_id": second[1],
                             "psn_no": "441800000000000002"}}  # fmt: skip
        withdrawal = his.msgid()
        withdrawn = await his.ok("2208", withdraw, msgid=withdrawal)
        # The withdrawal's own msgid, as a 2208 of a settlement answers (found from outside:
        # the claim's 2207 msgid was answered).
        assert withdrawn["setlinfo"]["medins_setl_id"] == withdrawal
        gone = await his.call("5203", query(second[0]))
        assert gone["infcode"] == -1 and f"暂存结算{second[0]}已撤销" in gone["err_msg"]

        await _plan_cleared(srv)
        replayed = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
        assert replayed["settled"] == 1
        real = await srv.fetchval("SELECT setl_id FROM deferred WHERE claim_id = $1", first[0])
        medfee, fund = await srv.fetchrow(
            "SELECT medfee_sumamt, fund_pay_sumamt FROM settlements WHERE setl_id = $1", real
        )
        owed = await srv.fetchval(
            "SELECT reimbursement_fen FROM deferred WHERE claim_id = $1", first[0]
        )
        assert fund > 0 and owed == fund
        # Found from outside: the replayed split read as an ordinary settlement, the fund's
        # share as cash the counter took too much of; a clerk refunding it paid the patient
        # twice. Shown as the counter took it (the claim's answer), with who pays the share.
        for ask in (query(first[0]), query("", first[1]), query(real)):
            found = await his.call("5203", ask)
            assert found["infcode"] == 0, found
            info = found["output"]["setlinfo"]
            assert info["setl_id"] == real != first[0]
            assert Decimal(str(info["psn_cash_pay"])) * 100 == medfee
            assert Decimal(str(info["cash_payamt"])) * 100 == medfee
            for payer in ("fund_pay_sumamt", "hifp_pay", "acct_pay", "pool_prop_selfpay"):
                assert Decimal(str(info[payer])) == 0, payer
            # Nothing of it is cleared with the institution, as the claim's answer said.
            assert (info["clr_type"], info["clr_optins"], info["clr_way"]) == (None, None, None)
            assert found["output"]["setldetail"] == []
            assert found["warn_msg"] == (
                f"结算ID{real}由应急期间暂存结算{first[0]}补结算，参保人已在窗口现金全额支付"
                f"{fen_text(medfee)}元；基金应支付部分{fen_text(owed)}元由医保经办机构直接支付"
                "给参保人，本机构无需退费"
            )
        # 5204 says the same of the lines, which carry the split it was replayed at.
        for setl_id in (first[0], real):
            lines = await his.call("5204", query(setl_id))
            assert lines["infcode"] == 0 and lines["output"], lines
            assert lines["warn_msg"] == found["warn_msg"]
        assert (await his.call("5203", query("DF-NO-SUCH")))[
            "err_msg"
        ] == "未查询到本机构的结算信息"


async def test_a_replayed_claims_cancellation_refunds_the_whole_bill_in_cash(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the cancellation answered the replayed split negated (fund −176.00,
    cash −324.00 of a 500.00 bill) while the patient had paid all 500.00 in cash under the claim
    and the fund's 176.00, owed to the patient, was withdrawn: a HIS refunding psn_cash_pay gave
    back 324.00 and the patient lost 176.00. The counter refunds what the counter took."""
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        assert first["reimbursement_fen"] > 0
        medfee = await srv.fetchval(
            "SELECT medfee_sumamt FROM settlements WHERE setl_id = $1", first["setl_id"]
        )
        his = srv.client(HOSPITAL)
        msgid = his.msgid()
        answer = await his.call("2208", _cancel(first), msgid=msgid)
        assert answer["infcode"] == 0, answer["err_msg"]
        info = answer["output"]["setlinfo"]
        bill = f"-{medfee // 100}.{medfee % 100:02d}"
        assert f"{Decimal(str(info['medfee_sumamt'])):.2f}" == bill
        assert f"{Decimal(str(info['psn_cash_pay'])):.2f}" == bill
        assert f"{Decimal(str(info['psn_part_amt'])):.2f}" == bill
        for payer in ("fund_pay_sumamt", "hifp_pay", "cvlserv_pay", "acct_pay", "hosp_part_amt"):
            assert Decimal(str(info[payer])) == 0, payer
        # Found from outside: answered clr_type 11 and clr_optins, which a HIS books into its
        # day-end totals (3201), where the centre leaves a claim's settlement out.
        assert (info["clr_type"], info["clr_optins"], info["pool_prop_selfpay"]) == (None, None, 0)
        assert info["medins_setl_id"] == msgid  # the cancellation's own (protocol §3.1)
        assert answer["output"]["setldetail"] == []
        owed = first["reimbursement_fen"]
        assert answer["warn_msg"] == (
            f"结算ID{first['setl_id']}由暂存结算{first['claim_id']}补结算，患者在窗口已现金全额"
            f"支付：请全额退还现金{bill[1:]}元；应支付给参保人的报销款"
            f"{owed // 100}.{owed % 100:02d}元已取消"
        )
        # The ledger reversed the replayed split itself, and the owed line is withdrawn.
        assert (
            await srv.fetchval(
                "SELECT status FROM settlements WHERE setl_id = $1", first["setl_id"]
            )
            == "cancelled"
        )
        assert (
            await srv.fetchval(
                "SELECT count(*) FROM owed_lines WHERE source_ref = $1 AND status <> 'withdrawn'",
                first["claim_id"],
            )
            == 0
        )


async def test_a_reimbursement_the_bank_refused_is_referred_to_the_agency(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the cancellation of a replayed claim whose reimbursement had been sent
    to the bank (and refused there) said only that the counter could not act. It stays refused
    (the money may have left, or may leave once the account is corrected) and says who acts;
    so does it while the bank has not answered yet."""
    async with running_gateway(new_database) as srv:
        first, second = await _claims_replayed(srv)
        async with ledger_on(srv.dsn) as ledger, ledger.pool.acquire() as conn:
            await _accounts(conn)
            await _recorded_by_replay(conn, first, second)
            batch = await payouts.create_batch(conn, "maker", dt.datetime.now())
            await _approved(conn, batch.batch_no)
            _, payment = await payouts.export(conn, batch.batch_no, "maker")
            # Sent, no answer back yet: found from outside, the counter was told to have an
            # approver return the batch, which no approver can once it is exported.
            for undo, data in (
                ("2208", _cancel(first)["data"]),
                ("2601", {"psn_no": first["psn_no"], "omsgid": first["msgid"], "oinfno": "2207"}),
            ):
                refused = await srv.client(HOSPITAL).call(undo, {"data": data})
                assert refused["err_msg"] == (
                    f"结算ID{first['setl_id']}（暂存结算{first['claim_id']}补结算）的报销款已随"
                    f"支付批次{batch.batch_no}报盘至银行，不能撤销或重结算；"
                    "请待银行回盘后联系医保经办机构核实该笔报销款的支付结果后处理"
                ), undo
            with pytest.raises(Conflict, match="已报盘"):
                await payouts.reject(conn, batch.batch_no, 1, "approver1", "退回以便撤销")
            await payouts.import_return(
                conn, bank_answers(payment, {1: "账户已销户", 2: "账户已销户"}), "cashier"
            )
        before = await srv.ledger_fingerprint()
        refused = await srv.client(HOSPITAL).call("2208", _cancel(first))
        assert refused["infcode"] == -1
        assert refused["err_msg"] == (
            f"结算ID{first['setl_id']}（暂存结算{first['claim_id']}补结算）的报销款曾报盘至银行"
            f"（支付批次{batch.batch_no}），不能在窗口撤销或重结算；"
            "请联系医保经办机构核实该笔报销款的支付结果后处理"
        )
        after = await srv.ledger_fingerprint()
        assert {k: v for k, v in after.items() if k != "idempotency"} == {
            k: v for k, v in before.items() if k != "idempotency"
        }


async def test_a_reversal_of_a_replayed_claims_message_says_to_refund_the_whole_bill(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a 2601 of the claim's message after replay cancelled the replayed
    settlement and withdrew the reimbursement, answering 成功 alone; the counter was not told to
    refund the whole bill it had taken in cash. It says what the 2208 says."""
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        medfee = await srv.fetchval(
            "SELECT medfee_sumamt FROM settlements WHERE setl_id = $1", first["setl_id"]
        )
        reversal = {"data": {"psn_no": first["psn_no"], "omsgid": first["msgid"], "oinfno": "2207"}}
        answer = await srv.client(HOSPITAL).call("2601", reversal)
        assert answer["infcode"] == 0, answer["err_msg"]
        owed = first["reimbursement_fen"]
        assert answer["warn_msg"] == (
            f"结算ID{first['setl_id']}由暂存结算{first['claim_id']}补结算，患者在窗口已现金全额"
            f"支付：请全额退还现金{fen_text(medfee)}元；应支付给参保人的报销款{fen_text(owed)}元已取消"
        )
        assert (
            await srv.fetchval(
                "SELECT status FROM settlements WHERE setl_id = $1", first["setl_id"]
            )
            == "cancelled"
        )


@pytest.mark.parametrize("undo", ["2208", "2601"])
async def test_a_bill_whose_replayed_claim_the_counter_cancelled_is_not_reimbursed_by_hand(
    new_database: Callable[..., Any], undo: str
) -> None:
    """Found from outside: the counter cancelled a replayed claim's settlement (2208 of its
    setl_id, or 2601 of the claim's message), refunding the whole bill in cash, and the agency
    then settled a manual claim (零星报销) of the same bill: the patient had the refund and the
    reimbursement. 结算 is refused naming the claim, nothing of it written; `ledger check` names
    the state where a ledger from before holds it."""
    async with running_gateway(new_database) as srv:
        first, _ = await _claims_replayed(srv)
        his = srv.client(HOSPITAL)
        if undo == "2208":
            await his.ok("2208", _cancel(first))
        else:
            data = {"psn_no": first["psn_no"], "omsgid": first["msgid"], "oinfno": "2207"}
            await his.ok("2601", {"data": data})
        day = "2026-06-02"  # the first claim's visit (test_payouts._deferred_claims)
        async with ledger_on(srv.dsn) as agency:
            before = await srv.ledger_fingerprint()
            with pytest.raises(Conflict) as refused:
                await settled_claim(agency, first["psn_no"], day, BIG_LINES, "FP-UNDONE-1")
            assert (
                f"暂存结算{first['claim_id']}（主动报，补结算后已由医疗机构撤销该结算并退还现金）"
                in (str(refused.value))
            )
            after = await srv.ledger_fingerprint()
            assert after == before  # the claim registered and reviewed; nothing of its 结算
            assert await srv.check_ledger() == []

            # The state itself, as a ledger from before the rule may hold it.
            status = "UPDATE deferred SET status = $2 WHERE claim_id = $1 RETURNING 1"
            await srv.fetchval(status, first["claim_id"], "failed")
            manual = await settled_claim(agency, first["psn_no"], day, BIG_LINES, "FP-UNDONE-2")
            await srv.fetchval(status, first["claim_id"], "settled")
            assert await srv.check_ledger() == [
                f"claim {first['claim_id']}: replayed, its settlement cancelled (its cash"
                f" refunded) while manual claim {manual.claim_no} reimburses a bill of the same"
                " person, day and total"
            ]
