"""Manual claims (零星报销): the counter's settlement, every step checked and idempotent."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from gateway.jobs import clearing
from gateway.ledger import checker, payouts, reconciliations
from gateway.ledger import manual_claims as store
from gateway.protocol.errors import BadRequest, Conflict, GatewayError, LineRejected, RuleRejected
from gateway.services import manual_claims
from tests.integration.agency_helpers import (
    HOSPITAL,
    agency_ledger,
    ledger_on,
    lines_of,
    reviewed_claim,
    settled_claim,
    settled_while_the_counter_waits,
    waiting_for_a_person,
)
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import (
    BIG_LINES,
    BIG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    connect,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient, certificate

COMPARED = (
    "psn_no, service_date, medfee_sumamt, fulamt_ownpay_amt, overlmt_selfpay,"
    " preselfpay_amt, inscp_scp_amt, act_pay_dedc, hifp_pay, cvlserv_pay, hifes_pay, hifmi_pay,"
    " hifob_pay, maf_pay, oth_pay, fund_pay_sumamt, psn_part_amt, acct_pay, psn_cash_pay, balc,"
    " pool_prop_bp, clr_type, insutype"
)
PERSON = "441800000000000001"
# (day, lines, total, account used): the deductible and the accumulators carry from one to the
# next, and the second uses the personal account.
VISITS = [
    ("2026-06-01", OUTPATIENT_LINES, "140.00", False),
    ("2026-06-03", BIG_LINES, BIG_TOTAL, True),
    ("2026-06-05", BIG_LINES, BIG_TOTAL, False),
]


async def test_manual_claim_settles_as_the_counter_does(new_database: Callable[..., Any]) -> None:
    async with running_gateway(new_database) as counter, agency_ledger(new_database) as agency:
        his = counter.client(HOSPITAL)
        for n, (day, rows, total, acct) in enumerate(VISITS):
            mdtrt_id = await his.register(PERSON, "310", f"{day} 08:30:00", f"MZ-M-{n}")
            await his.visit_info(mdtrt_id, PERSON, "11", f"{day} 08:30:00")
            fee_rows = his.fee_rows(mdtrt_id, PERSON, rows, f"{day} 08:40:00", "B1")
            await his.ok("2204", {"feedetail": fee_rows})
            data = his.settle_data(
                PERSON, mdtrt_id, "11", total, "310", "1" if acct else "0", chrg_bchno="B1"
            )
            await his.ok("2207", data)
        claims = [
            await settled_claim(agency, PERSON, day, rows, f"FP{n}", acct_used=acct)
            for n, (day, rows, _total, acct) in enumerate(VISITS)
        ]

        async with agency.pool.acquire() as conn:
            manual = [
                tuple(r.values())
                for r in await conn.fetch(
                    f"SELECT {COMPARED} FROM settlements WHERE status = 'settled'"
                    " ORDER BY service_date"
                )
            ]
            manual_acc = [tuple(r.values()) for r in await conn.fetch(
                "SELECT * FROM accumulators ORDER BY psn_no, year")]  # fmt: skip
            owed = await payouts.owed_rows(conn)
            cash = {
                r["setl_id"]: (r["medfee_sumamt"], r["psn_cash_pay"], r["acct_pay"])
                for r in await conn.fetch(
                    "SELECT setl_id, medfee_sumamt, psn_cash_pay, acct_pay FROM settlements"
                )
            }
        at_counter = [
            tuple(r.values())
            for r in await counter.fetch(
                f"SELECT {COMPARED} FROM settlements WHERE status = 'settled' ORDER BY service_date"
            )
        ]
        counter_acc = [tuple(r.values()) for r in await counter.fetch(
            "SELECT * FROM accumulators ORDER BY psn_no, year")]  # fmt: skip
        assert len(manual) == len(VISITS)
        assert manual == at_counter  # every amount, the account balance after each
        assert manual_acc == counter_acc
        assert any(row[15] > 0 for row in manual)  # the fund paid something
        assert any(row[17] > 0 for row in manual)  # and the account, where asked
        # What is owed: the bill less the counter's cash part, once per claim.
        for c in claims:
            assert c.status == "batch_reviewed" and c.setl_id is not None
            medfee, psn_cash, _acct = cash[c.setl_id]
            assert c.reimbursement_fen == medfee - psn_cash
        assert sorted((o["source_ref"], o["amount_fen"]) for o in owed) == sorted(
            (c.claim_no, c.reimbursement_fen) for c in claims if c.reimbursement_fen
        )
        # A settled claim keeps its invoice (found from outside, asked: every step past
        # registration was thought to free it). An invoice is its institution's paper: the
        # same number from another hospital is another paper.
        again = manual_claims.Registration(
            cert_type="01",
            cert_no=PERSON,
            fixmedins_code=HOSPITAL,
            med_type="11",
            begntime=dt.datetime(2026, 6, 2, 8, 30),  # another visit's claim, not the same again
            invoice_nos=("fp0",),
        )
        async with agency.pool.acquire() as conn:
            with pytest.raises(Conflict, match=f"发票号FP0已在零星报销{claims[0].claim_no}"):
                await manual_claims.register(
                    conn, agency.snapshot, again, "clerk1", dt.datetime.now()
                )
            elsewhere = msgspec_replace(again, fixmedins_code="H44180000002")
            taken = await manual_claims.register(
                conn, agency.snapshot, elsewhere, "clerk1", dt.datetime.now()
            )
            assert taken.claim_no != claims[0].claim_no and taken.invoice_nos == ["FP0"]
        async with connect(agency.dsn) as conn:
            assert await checker.check(conn) == []


async def test_steps_are_checked_and_idempotent(new_database: Callable[..., Any]) -> None:
    async with agency_ledger(new_database) as agency, agency.pool.acquire() as conn:
        now = dt.datetime.now()
        reg = manual_claims.Registration(
            cert_type="02",
            cert_no="441802199001011234",
            fixmedins_code=HOSPITAL,
            med_type="11",
            begntime=dt.datetime(2026, 6, 1, 8, 30),
            invoice_nos=("INV-1", "INV-2"),
        )
        claim = await manual_claims.register(conn, agency.snapshot, reg, "clerk1", now)
        assert claim.psn_no == PERSON and claim.status == "registered"
        # The same registration again is the same claim; the invoice in another claim is refused.
        again = await manual_claims.register(conn, agency.snapshot, reg, "clerk1", now)
        assert again.claim_no == claim.claim_no
        other = manual_claims.Registration(
            cert_type="01",
            cert_no="441800000000000002",
            fixmedins_code=HOSPITAL,
            med_type="11",
            begntime=dt.datetime(2026, 6, 1, 8, 30),
            invoice_nos=("INV-2",),
        )
        with pytest.raises(Conflict, match="发票号INV-2已在零星报销"):
            await manual_claims.register(conn, agency.snapshot, other, "clerk1", now)
        # One paper whatever keyboard typed its number (found from outside: each of these was
        # registered beside the live INV-2).
        for typed in ("inv-2", "ＩＮＶ－２", " ｉｎｖ-2 "):
            with pytest.raises(Conflict, match="发票号INV-2已在零星报销"):
                await manual_claims.register(
                    conn,
                    agency.snapshot,
                    msgspec_replace(other, invoice_nos=(typed,)),
                    "clerk1",
                    now,
                )
        with pytest.raises(BadRequest, match="发票号重复登记"):
            await manual_claims.register(
                conn,
                agency.snapshot,
                msgspec_replace(other, invoice_nos=("INV-7", "inv-7")),
                "clerk1",
                now,
            )
        with pytest.raises(GatewayError, match="未登记"):
            await manual_claims.register(
                conn,
                agency.snapshot,
                manual_claims.Registration(
                    cert_type="01",
                    cert_no=PERSON,
                    fixmedins_code="H99999999999",
                    med_type="11",
                    begntime=dt.datetime(2026, 6, 1, 8, 30),
                    invoice_nos=("X",),
                ),
                "clerk1",
                now,
            )
        # Settling before review is refused; a line before the visit, or unknown, is refused.
        with pytest.raises(Conflict, match="已登记"):
            await manual_claims.settle(conn, agency.snapshot, claim.claim_no, "clerk2", now)
        with pytest.raises(LineRejected, match="早于"):
            await manual_claims.enter_lines(
                conn,
                agency.snapshot,
                claim.claim_no,
                lines_of(OUTPATIENT_LINES, "2026-05-30 08:00:00"),
                "clerk1",
            )
        bad = [dict(OUTPATIENT_LINES[0], det_item_fee_sumamt="99.00")]  # not price x quantity
        with pytest.raises(LineRejected):
            await manual_claims.enter_lines(
                conn, agency.snapshot, claim.claim_no, lines_of(bad, "2026-06-01 09:00:00"), "c"
            )
        lines = lines_of(OUTPATIENT_LINES, "2026-06-01 09:00:00")
        await manual_claims.enter_lines(conn, agency.snapshot, claim.claim_no, lines, "clerk1")
        await manual_claims.enter_lines(conn, agency.snapshot, claim.claim_no, lines, "clerk1")
        assert len(await store.lines(conn, claim.claim_no)) == len(OUTPATIENT_LINES)
        # Maker-checker: the clerk who entered the lines does not review them.
        with pytest.raises(Conflict, match="不能审核本人"):
            await manual_claims.review(conn, claim.claim_no, "clerk1")
        await manual_claims.review(conn, claim.claim_no, "reviewer1")
        settled = await manual_claims.settle(conn, agency.snapshot, claim.claim_no, "clerk2", now)
        again = await manual_claims.settle(conn, agency.snapshot, claim.claim_no, "clerk2", now)
        assert again == settled
        assert await conn.fetchval("SELECT count(*) FROM settlements") == 1
        # The institution is neither cleared nor reconciled for the patient's claim: the report
        # shows the claim apart, paid back to the patient.
        [shown] = (await clearing.monthly(conn, f"{now:%Y-%m}")).institutions
        assert (shown.lines, shown.total.declared) == ([], 0)
        assert shown.manual_claims == clearing.ManualClaims(
            1, settled.medfee_sumamt or 0, settled.reimbursement_fen or 0
        )
        period = reconciliations.Period(
            fixmedins_code=HOSPITAL,
            setl_optins=await conn.fetchval("SELECT clr_optins FROM settlements"),
            begndate=now.date(),
            enddate=now.date(),
        )
        assert (await reconciliations.centre_totals(conn, period)).count == 0
        with pytest.raises(Conflict, match="结算经办人以外"):
            await manual_claims.batch_review(conn, [claim.claim_no], "clerk2")
        await manual_claims.batch_review(conn, [claim.claim_no], "reviewer2")
        await manual_claims.batch_review(conn, [claim.claim_no], "reviewer2")
        owed = await payouts.owed_rows(conn)
        assert [(o["source_ref"], o["amount_fen"]) for o in owed] == (
            [(claim.claim_no, settled.reimbursement_fen)] if settled.reimbursement_fen else []
        )
        # Withdrawing a settled claim is refused; a withdrawn claim frees its invoices.
        with pytest.raises(Conflict, match="不能撤回"):
            await manual_claims.withdraw(conn, claim.claim_no, "clerk1", "误登记")
        third = await manual_claims.register(
            conn,
            agency.snapshot,
            msgspec_replace(other, invoice_nos=("INV-9",)),
            "clerk1",
            now,
        )
        await manual_claims.withdraw(conn, third.claim_no, "clerk1", "误登记")
        fourth = await manual_claims.register(
            conn, agency.snapshot, msgspec_replace(other, invoice_nos=("INV-9",)), "clerk1", now
        )
        assert fourth.claim_no != third.claim_no
        actions = [
            r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY audit_id")
        ]
        assert actions.count("claim.settle") == 1 and "claim.withdraw" in actions


def msgspec_replace(reg: manual_claims.Registration, **kw: Any) -> manual_claims.Registration:
    return msgspec.structs.replace(reg, **kw)


RETIREE = "441800000000000002"
STAY_LINES = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0003", "pric": "60", "cnt": "10", "det_item_fee_sumamt": "600.00"},
    {"feedetl_sn": "2", "medins_list_codg": "ZL0008", "pric": "20", "cnt": "20", "det_item_fee_sumamt": "400.00"},
]  # fmt: skip


async def test_inpatient_claim_settles_as_the_counter_does(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as counter, agency_ledger(new_database) as agency:
        his = counter.client(HOSPITAL)
        admitted = await his.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": RETIREE, "insutype": "310", "begntime": "2026-04-01 10:00:00",
                    "mdtrt_cert_type": "01", "mdtrt_cert_no": RETIREE, "med_type": "21",
                    "ipt_no": "ZY-M-1", "atddr_no": "D1", "chfpdr_name": "医生",
                    "adm_diag_dscr": "肺炎", "adm_dept_codg": "K1", "adm_dept_name": "内科",
                    "adm_bed": "3", "dscg_maindiag_code": "J18", "dscg_maindiag_name": "肺炎",
                },
                "diseinfo": [],
            },
        )  # fmt: skip
        mdtrt_id = admitted["result"]["mdtrt_id"]
        rows = his.fee_rows(mdtrt_id, RETIREE, STAY_LINES, "2026-04-02 10:00:00", "")
        await his.ok("2301", {"feedetail": rows})
        await his.ok(
            "2402",
            {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE, "endtime": "2026-04-05 10:00:00",
                          "insutype": "310", "dscg_way": "1"}},
        )  # fmt: skip
        await his.ok("2304", his.settle_data(RETIREE, mdtrt_id, "21", "1000.00", "310", "0"))

        async with agency.pool.acquire() as conn:
            now = dt.datetime.now()
            claim = await manual_claims.register(
                conn,
                agency.snapshot,
                manual_claims.Registration(
                    cert_type="01",
                    cert_no=RETIREE,
                    fixmedins_code=HOSPITAL,
                    med_type="21",
                    begntime=dt.datetime(2026, 4, 1, 10),
                    endtime=dt.datetime(2026, 4, 5, 10),
                    invoice_nos=("ZY-FP-1",),
                ),
                "clerk1",
                now,
            )
            lines = lines_of(STAY_LINES, "2026-04-02 10:00:00")
            await manual_claims.enter_lines(conn, agency.snapshot, claim.claim_no, lines, "clerk1")
            await manual_claims.review(conn, claim.claim_no, "reviewer1")
            settled = await manual_claims.settle(
                conn, agency.snapshot, claim.claim_no, "clerk2", now
            )
            manual = [
                tuple(r.values()) for r in await conn.fetch(f"SELECT {COMPARED} FROM settlements")
            ]
            used = await conn.fetchval("SELECT adm_dedc_used_fen FROM encounters")
            assert await checker.check(conn) == []
        at_counter = [
            tuple(r.values()) for r in await counter.fetch(f"SELECT {COMPARED} FROM settlements")
        ]
        assert manual == at_counter
        assert used == await counter.fetchval("SELECT adm_dedc_used_fen FROM encounters")
        assert settled.reimbursement_fen == manual[0][2] - manual[0][18]  # bill less cash part
        assert settled.reimbursement_fen


async def test_a_claim_keeps_the_counters_dates_and_its_kind_of_institution(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a claim for a visit of 2023 (before the late-billing bound), a stay
    discharged next year and a line dated next year were settled and paid; and a pharmacy's
    sale claimed as an outpatient visit was paid under outpatient rules, where the pharmacy
    counter pays nothing. Now refused, as the counter refuses them."""
    async with agency_ledger(new_database) as agency, agency.pool.acquire() as conn:
        now = dt.datetime.now()

        def reg(**kw: Any) -> manual_claims.Registration:
            fields: dict[str, Any] = {
                "cert_type": "01",
                "cert_no": PERSON,
                "fixmedins_code": HOSPITAL,
                "med_type": "11",
                "begntime": dt.datetime(now.year, 1, 2, 8, 30),
                "invoice_nos": (f"INV-D-{len(kw)}-{sorted(kw)}",),
            }
            return manual_claims.Registration(**{**fields, **kw})

        with pytest.raises(RuleRejected, match=r"就诊时间begntime.*早于本地区"):
            await manual_claims.register(
                conn, agency.snapshot, reg(begntime=dt.datetime(now.year - 3, 6, 1, 9)), "c", now
            )
        with pytest.raises(RuleRejected, match=r"出院时间endtime.*晚于当前时间"):
            await manual_claims.register(
                conn,
                agency.snapshot,
                reg(med_type="21", endtime=now + dt.timedelta(days=40)),
                "c",
                now,
            )
        with pytest.raises(RuleRejected, match="药店购药不受理零星报销"):
            await manual_claims.register(
                conn, agency.snapshot, reg(fixmedins_code="P44180000001"), "c", now
            )
        claim = await manual_claims.register(conn, agency.snapshot, reg(), "clerk1", now)
        tomorrow = (now + dt.timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
        with pytest.raises(LineRejected, match=r"费用发生时间fee_ocur_time.*晚于当前时间"):
            await manual_claims.enter_lines(
                conn, agency.snapshot, claim.claim_no, lines_of(OUTPATIENT_LINES, tomorrow), "c"
            )


async def _bill_at_the_counter(his: HisClient, day: str, no: str) -> dict[str, Any]:
    """A visit registered, described and its lines uploaded: its 2207's input, ready to send."""
    mdtrt_id = await his.register(PERSON, "310", f"{day} 08:30:00", no)
    await his.visit_info(mdtrt_id, PERSON, "11", f"{day} 08:30:00")
    rows = his.fee_rows(mdtrt_id, PERSON, BIG_LINES, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    return his.settle_data(PERSON, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")


async def test_a_bill_the_funds_already_pay_is_not_claimed_again(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a manual claim for a bill settled at the counter (or replayed from a
    主动报 claim) was settled and its reimbursement owed, the fund paying one bill twice. The
    same person's bill at the same institution on the same day and of the same total is refused
    at 结算, naming the settlement, and nothing is written; another total that day is settled."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        day = "2026-06-10"
        data = await _bill_at_the_counter(his, day, "MZ-TWICE-1")
        setl_id = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        before = await counter.ledger_fingerprint()
        with pytest.raises(Conflict) as refused:
            await settled_claim(agency, PERSON, day, BIG_LINES, "FP-TWICE-1")
        assert f"已有金额相同的医保结算{setl_id}" in str(refused.value)
        assert "重复报销" in str(refused.value)
        # The claim was registered, its lines entered and reviewed; no visit, line,
        # settlement or owed line was written for it.
        assert await counter.ledger_fingerprint() == before
        assert await counter.fetchval("SELECT count(*) FROM settlements") == 1
        assert await counter.fetchval("SELECT count(*) FROM owed_lines") == 0
        # Another bill that day (another total) is the agency's to settle.
        other = await settled_claim(agency, PERSON, day, OUTPATIENT_LINES, "FP-TWICE-2")
        assert other.status == "batch_reviewed" and other.setl_id
        # Its settlement is the agency's: a 2601 of its message id from the institution is
        # refused, and bars nothing (found from outside: answered 成功 with a tombstone).
        omsgid = f"{other.claim_no}S"
        reversal = {"data": {"psn_no": PERSON, "omsgid": omsgid, "oinfno": "2207"}}
        answer = await his.call("2601", reversal)
        assert answer["infcode"] == -1
        assert answer["err_msg"] == (
            f"原报文{omsgid}是经办机构零星报销{other.claim_no}的结算，不是本机构发送的交易，不能冲正"
        )
        assert (
            await counter.fetchval("SELECT count(*) FROM idempotency WHERE msgid = $1", omsgid) == 0
        )
        assert (
            await counter.fetchval(
                "SELECT status FROM settlements WHERE setl_id = $1", other.setl_id
            )
            == "settled"
        )
        async with connect(counter.dsn) as conn:
            assert await checker.check(conn) == []


async def test_a_bill_the_agency_reimbursed_is_not_settled_again_at_the_counter(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a bill the agency had reimbursed as a manual claim was settled again
    at the counter afterwards (the same person, institution, day and total), and the funds paid
    it twice. Its 2206 and 2207 are refused naming the claim, nothing written; a bill of another
    total that day settles; once the claim's settlement is cancelled by the agency's undo, the
    bill may be settled (tested at the ledger: the claim's settlement cancelled)."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        day = "2026-06-12"
        claim = await settled_claim(agency, PERSON, day, BIG_LINES, "FP-COUNTER-1")
        data = await _bill_at_the_counter(his, day, "MZ-COUNTER-1")
        before = await counter.ledger_fingerprint()
        for infno in ("2206", "2207"):
            answer = await his.call(infno, data)
            assert answer["infcode"] == -1, (infno, answer)
            assert f"已由经办机构零星报销（受理号{claim.claim_no}）" in answer["err_msg"], answer
        after = await counter.ledger_fingerprint()
        assert {k: v for k, v in after.items() if k != "idempotency"} == {
            k: v for k, v in before.items() if k != "idempotency"
        }  # the refusal's answer kept against its msgid, nothing else
        # Another bill that day, of another total, is the counter's to settle.
        mdtrt_id = await his.register(PERSON, "310", f"{day} 10:30:00", "MZ-COUNTER-2")
        await his.visit_info(mdtrt_id, PERSON, "11", f"{day} 10:30:00")
        rows = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES, f"{day} 10:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        other = his.settle_data(
            PERSON, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        assert (await his.ok("2207", other))["setlinfo"]["setl_id"]
        # The claim's settlement no longer in force: the bill is the counter's again.
        await counter.fetchval(
            "UPDATE settlements SET status = 'cancelled' WHERE setl_id = $1 RETURNING 1",
            claim.setl_id,
        )
        assert (await his.ok("2207", data))["setlinfo"]["setl_id"]


async def test_a_bill_settled_at_the_counter_while_the_agency_settles_its_claim_is_paid_once(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: the counter's 2207 of a bill and the agency's 结算 of a manual claim
    for the same bill, at the same moment, both went through, the funds paying the bill twice:
    the counter read the claims that reimbursed its bill before taking the person's lock, and
    the claim committed while it waited there. The agency's settlement is held open here,
    holding the person, until the counter's 2207 waits for the person; the 2207 is then
    refused naming the claim, and one settlement stands."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        day = "2026-06-13"
        data = await _bill_at_the_counter(his, day, "MZ-RACE-1")
        async with agency.pool.acquire() as conn:
            claim = await reviewed_claim(conn, agency, PERSON, day, BIG_LINES, "FP-RACE-9")

        async def the_single_path_waits(_call: object) -> bool:
            if not await waiting_for_a_person(counter.dsn):
                return False
            await asyncio.sleep(0.3)  # past the batch's bounded wait: the single path's
            return await waiting_for_a_person(counter.dsn)

        answer = await settled_while_the_counter_waits(
            agency, PERSON, claim.claim_no, his.call("2207", data), the_single_path_waits
        )
        assert answer["infcode"] == -1, answer
        assert f"已由经办机构零星报销（受理号{claim.claim_no}）" in answer["err_msg"], answer
        assert await counter.fetchval(
            "SELECT count(*) FROM settlements WHERE psn_no = $1 AND status = 'settled'"
            " AND service_date = $2",
            PERSON,
            dt.date.fromisoformat(day),
        ) == 1  # fmt: skip


async def test_a_bill_waiting_as_a_deferred_claim_is_not_claimed_again(
    new_database: Callable[..., Any],
) -> None:
    """The same for a 主动报 claim not yet replayed: its replay will owe the reimbursement."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        day = "2026-06-11"
        data = await _bill_at_the_counter(his, day, "MZ-TWICE-3")
        await set_rule(counter.dsn, f"institution:{HOSPITAL}", "settlement", "defer")

        async def deferred() -> bool:
            return "应急预案" in str((await his.call("2206", data))["warn_msg"] or "")

        await until(deferred)
        claim_id = (await his.ok("2207", data))["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
        with pytest.raises(Conflict) as refused:
            await settled_claim(agency, PERSON, day, BIG_LINES, "FP-TWICE-3")
        assert f"待补结算的暂存结算{claim_id}" in str(refused.value)
        assert "待系统补结算后自动报销，无需零星报销" in str(refused.value)  # the clerk waits
        assert await counter.fetchval("SELECT count(*) FROM settlements") == 0


async def test_one_bill_claimed_twice_at_once_is_settled_once(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: two claims of the same bill (two invoices, one visit's total) settled
    at the same moment by two clerks were both settled, the reimbursement owed twice: the check
    for a bill already paid read the ledger before the person's lock. It runs under it now."""
    async with agency_ledger(new_database) as agency:
        day, now = "2026-06-12", dt.datetime.now()
        async with agency.pool.acquire() as conn:
            numbers = [
                (await reviewed_claim(conn, agency, PERSON, day, BIG_LINES, invoice)).claim_no
                for invoice in ("FP-RACE-1", "FP-RACE-2")
            ]

        async def settle(claim_no: str, clerk: str) -> Any:
            async with agency.pool.acquire() as conn:
                try:
                    return await manual_claims.settle(conn, agency.snapshot, claim_no, clerk, now)
                except Conflict as exc:
                    return exc

        done = await asyncio.gather(settle(numbers[0], "clerk2"), settle(numbers[1], "clerk3"))
        refused = [d for d in done if isinstance(d, Conflict)]
        assert len(refused) == 1 and "重复报销" in str(refused[0]), done
        async with agency.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM settlements") == 1
            assert await checker.check(conn) == []


async def _reviewed_stay_claim(
    agency: Any, begntime: dt.datetime, endtime: dt.datetime, invoice: str
) -> Any:
    """An inpatient manual claim of PERSON at HOSPITAL, its lines on the stay's first day at 15:00,
    reviewed and ready for 结算."""
    async with agency.pool.acquire() as conn:
        return await reviewed_claim(
            conn, agency, PERSON, f"{begntime:%Y-%m-%d}", BIG_LINES, invoice,
            med_type="21", stay=(begntime, endtime),
        )  # fmt: skip


async def _settled_claim(agency: Any, claim_no: str) -> Any:
    async with agency.pool.acquire() as conn:
        return await manual_claims.settle(
            conn, agency.snapshot, claim_no, "clerk2", dt.datetime.now()
        )


async def _stay_claim(
    agency: Any, begntime: dt.datetime, endtime: dt.datetime, invoice: str
) -> Any:
    """An inpatient manual claim of PERSON at HOSPITAL, its lines on the stay's first day at 15:00,
    settled by the agency."""
    claim = await _reviewed_stay_claim(agency, begntime, endtime, invoice)
    return await _settled_claim(agency, claim.claim_no)


async def _hospital_stay(
    his: HisClient, begntime: str, ipt_no: str, fee_day: str, endtime: str
) -> str:
    """A stay of PERSON at the hospital: admitted, BIG_LINES and one line more uploaded on
    `fee_day`, discharged; its mdtrt_id (unsettled)."""
    admission = {
        "mdtrtinfo": {
            "psn_no": PERSON, "insutype": "310", "begntime": begntime, **certificate(PERSON),
            "med_type": "21", "ipt_no": ipt_no, "atddr_no": "D1", "chfpdr_name": "医生",
            "adm_dept_codg": "K1", "adm_dept_name": "内科", "adm_bed": "3",
            "adm_diag_dscr": "肺炎", "dscg_maindiag_code": "J18.9", "dscg_maindiag_name": "肺炎",
        },
        "diseinfo": [],
    }  # fmt: skip
    mdtrt_id = str((await his.ok("2401", admission))["result"]["mdtrt_id"])
    extra = {"feedetl_sn": "3", "medins_list_codg": "ZL0001", "pric": "12.5", "cnt": "1", "det_item_fee_sumamt": "12.50"}  # fmt: skip
    rows = his.fee_rows(mdtrt_id, PERSON, [*BIG_LINES, extra], f"{fee_day} 09:00:00", "0")
    await his.ok("2301", {"feedetail": rows})
    discharge = {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "insutype": "310",
                              "endtime": endtime, "dscg_way": "1"}}  # fmt: skip
    await his.ok("2402", discharge)
    return mdtrt_id


async def _hospital_settled_stay(
    his: HisClient, begntime: str, ipt_no: str, fee_day: str, endtime: str
) -> tuple[str, str]:
    """A stay of PERSON at the hospital (`_hospital_stay`) settled by the hospital (2304): its
    mdtrt_id and setl_id."""
    mdtrt_id = await _hospital_stay(his, begntime, ipt_no, fee_day, endtime)
    settle = his.settle_data(PERSON, mdtrt_id, "21", "1637.50", "310", "0", mid_setl_flag="0")
    return mdtrt_id, (await his.ok("2304", settle))["setlinfo"]["setl_id"]


async def test_a_stay_the_agency_reimbursed_is_not_settled_again_whatever_its_total(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a stay the agency had reimbursed as a manual claim was billed by the
    hospital afterwards with one line more than the claim's, and its 2304 settled: the funds
    paid one stay twice (the guard matched the exact total only). A stay overlapping one the
    agency reimbursed at the same institution is refused naming the claim; a stay after it
    settles."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        claim = await _stay_claim(
            agency, dt.datetime(2026, 6, 20, 8, 30), dt.datetime(2026, 6, 23, 10), "FP-STAY-1"
        )

        same = await _hospital_stay(
            his, "2026-06-20 09:00:00", "ZY-AGAIN-1", "2026-06-21", "2026-06-23 09:00:00"
        )
        data = his.settle_data(PERSON, same, "21", "1637.50", "310", "0", mid_setl_flag="0")
        before = await counter.ledger_fingerprint()
        for infno in ("2303", "2304"):
            answer = await his.call(infno, data)
            assert answer["infcode"] == -1, (infno, answer)
            assert answer["err_msg"] == (
                f"参保人{PERSON}在本机构2026-06-20至2026-06-23的住院已由经办机构零星报销（受理号"
                f"{claim.claim_no}），与本次住院时间重叠，疑为同一次住院重复结算，不予结算；"
                "如确为另一次住院，请联系经办机构核实后处理"
            ), answer
        after = await counter.ledger_fingerprint()
        assert {k: v for k, v in after.items() if k != "idempotency"} == {
            k: v for k, v in before.items() if k != "idempotency"
        }
        # A stay after the reimbursed one is the hospital's to settle, one begun the afternoon of
        # its discharge too.
        later = await _hospital_stay(
            his, "2026-06-23 15:00:00", "ZY-AGAIN-2", "2026-06-24", "2026-06-27 09:00:00"
        )
        settled = await his.ok(
            "2304", his.settle_data(PERSON, later, "21", "1637.50", "310", "0", mid_setl_flag="0")
        )
        assert settled["setlinfo"]["setl_id"]

        # A claim registered by dates alone is known to the day: the stay it claims began on
        # 07-01 (time unknown), so a stay discharged on 07-01 is not it (found from outside: a
        # claim of 12-05 to 12-06 by dates refused the stay discharged on 12-05 at nine).
        by_dates = await _stay_claim(
            agency, dt.datetime(2026, 7, 1), dt.datetime(2026, 7, 3), "FP-STAY-2"
        )
        before_it = await _hospital_stay(
            his, "2026-06-29 08:00:00", "ZY-AGAIN-3", "2026-06-30", "2026-07-01 09:00:00"
        )
        data = his.settle_data(PERSON, before_it, "21", "1637.50", "310", "0", mid_setl_flag="0")
        assert (await his.ok("2304", data))["setlinfo"]["setl_id"]
        # The same stay billed by the hospital with its times is the claim's.
        again = await _hospital_stay(
            his, "2026-07-01 14:00:00", "ZY-AGAIN-4", "2026-07-02", "2026-07-03 10:00:00"
        )
        data = his.settle_data(PERSON, again, "21", "1637.50", "310", "0", mid_setl_flag="0")
        refused = await his.call("2304", data)
        assert refused["infcode"] == -1 and f"受理号{by_dates.claim_no}" in refused["err_msg"], (
            refused
        )


async def test_a_stay_the_hospital_settled_is_not_reimbursed_again_whatever_its_total(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside, the other way round from the test above: a stay the hospital had
    settled (2304, one line more than the agency's bill) was reimbursed as a manual claim, the
    exact-total check letting it through, and the funds paid the stay twice. 结算 of an
    inpatient claim overlapping a stay of the person at the institution that the funds pay is
    refused naming the settlement, nothing written; once the hospital cancels its settlement
    the claim settles; a claim by dates alone is known to the day."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        stay, setl_id = await _hospital_settled_stay(
            his, "2026-08-01 09:00:00", "ZY-PAID-1", "2026-08-02", "2026-08-05 10:00:00"
        )

        claim = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 8, 1), dt.datetime(2026, 8, 5), "FP-PAID-1"
        )
        before = await counter.ledger_fingerprint()
        with pytest.raises(Conflict) as refused:
            await _settled_claim(agency, claim.claim_no)
        assert str(refused.value) == (
            f"参保人{PERSON}在{HOSPITAL}的住院（2026-08-01 09:00至2026-08-05 10:00）已有医保结算"
            f"{setl_id}，与本受理的住院时间重叠，疑为同一次住院重复报销，不予结算；如确为另一次"
            "住院，请核实入出院时间后重新受理，或在系统外按手工报销办理"
        )
        assert await counter.ledger_fingerprint() == before
        async with agency.pool.acquire() as conn:
            assert (await store.get(conn, claim.claim_no)).status == "reviewed"

        # The hospital cancels its settlement: the funds no longer pay the stay, the claim does.
        cancel = {"data": {"setl_id": setl_id, "mdtrt_id": stay, "psn_no": PERSON}}
        await his.ok("2305", cancel)
        assert (await _settled_claim(agency, claim.claim_no)).status == "settled"

        # A stay discharged at ten on 08-12 and a claim by dates beginning 08-12: another stay
        # (its admission that day, time unknown). The same claim by the moment of 09:00 is not.
        _, later_setl = await _hospital_settled_stay(
            his, "2026-08-10 09:00:00", "ZY-PAID-2", "2026-08-11", "2026-08-12 10:00:00"
        )
        by_moment = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 8, 12, 9), dt.datetime(2026, 8, 14, 10), "FP-PAID-2"
        )
        with pytest.raises(Conflict) as refused:
            await _settled_claim(agency, by_moment.claim_no)
        assert f"医保结算{later_setl}" in str(refused.value)
        by_dates = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 8, 12), dt.datetime(2026, 8, 14), "FP-PAID-3"
        )
        assert (await _settled_claim(agency, by_dates.claim_no)).status == "settled"

        # A stay admitted and discharged within one day, and a claim of that day by dates: the
        # same stay (found from outside: reimbursed, the funds paying it twice), both ways.
        _, one_day_setl = await _hospital_settled_stay(
            his, "2026-08-20 05:00:00", "ZY-PAID-3", "2026-08-20", "2026-08-20 18:00:00"
        )
        that_day = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 8, 20), dt.datetime(2026, 8, 20), "FP-PAID-4"
        )
        with pytest.raises(Conflict) as refused:
            await _settled_claim(agency, that_day.claim_no)
        assert f"医保结算{one_day_setl}" in str(refused.value)
        claimed = await _stay_claim(
            agency, dt.datetime(2026, 8, 25), dt.datetime(2026, 8, 25), "FP-PAID-5"
        )
        billed = await _hospital_stay(
            his, "2026-08-25 06:00:00", "ZY-PAID-4", "2026-08-25", "2026-08-25 17:00:00"
        )
        settle = his.settle_data(PERSON, billed, "21", "1637.50", "310", "0", mid_setl_flag="0")
        answer = await his.call("2304", settle)
        assert answer["infcode"] == -1 and f"受理号{claimed.claim_no}" in answer["err_msg"], answer


async def test_a_stay_waiting_as_a_deferred_claim_is_not_reimbursed_whatever_its_total(
    new_database: Callable[..., Any],
) -> None:
    """The same for a stay whose 2304 the plan deferred as a 主动报 claim: its replay will pay
    the stay, so the agency's claim of it, of another total, is refused naming the claim."""
    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        stay = await _hospital_stay(
            his, "2026-08-20 09:00:00", "ZY-WAIT-1", "2026-08-21", "2026-08-22 10:00:00"
        )
        await set_rule(counter.dsn, f"institution:{HOSPITAL}", "settlement", "defer")
        data = his.settle_data(PERSON, stay, "21", "1637.50", "310", "0", mid_setl_flag="0")

        async def deferred() -> bool:
            return "应急预案" in str((await his.call("2303", data))["warn_msg"] or "")

        await until(deferred)
        claim_id = (await his.ok("2304", data))["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
        claim = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 8, 20), dt.datetime(2026, 8, 22), "FP-WAIT-1"
        )
        with pytest.raises(Conflict) as refused:
            await _settled_claim(agency, claim.claim_no)
        assert f"已有待补结算的暂存结算{claim_id}（主动报）" in str(refused.value)
        assert await counter.fetchval("SELECT count(*) FROM settlements") == 0


@pytest.mark.parametrize("undone", ["withdrawn", "replayed-then-cancelled"])
async def test_a_stay_whose_claim_the_counter_refunded_is_not_reimbursed_with_a_line_less(
    new_database: Callable[..., Any], undone: str
) -> None:
    """Found from outside: a stay's 主动报 claim (2304 under `defer`) that the counter withdrew,
    or whose replayed settlement it cancelled, its whole cash refunded, was then reimbursed by
    the agency as a manual claim of one line less (the exact-total check let it through), and
    the hospital could no longer settle the stay. 结算 is refused naming the claim, whatever
    the claim's total, as for a stay the funds pay."""
    from gateway.app.server import GATEWAY
    from tests.integration.emergency_helpers import clear_rule, cli

    async with running_gateway(new_database) as counter, ledger_on(counter.dsn) as agency:
        his = counter.client(HOSPITAL)
        stay = await _hospital_stay(
            his, "2026-09-01 09:00:00", "ZY-REFUNDED-1", "2026-09-02", "2026-09-04 10:00:00"
        )
        scope = f"institution:{HOSPITAL}"
        await set_rule(counter.dsn, scope, "settlement", "defer", "演练主动报")
        assert counter.app is not None
        await counter.app[GATEWAY].reload_plan(force=True)
        data = his.settle_data(PERSON, stay, "21", "1637.50", "310", "0", mid_setl_flag="0")
        claim = (await his.ok("2304", data))["setlinfo"]["setl_id"]
        assert claim.startswith("DF")
        await clear_rule(counter.dsn, scope, "settlement")
        await counter.app[GATEWAY].reload_plan(force=True)
        if undone == "withdrawn":
            await his.ok("2305", {"data": {"setl_id": claim, "mdtrt_id": stay, "psn_no": PERSON}})
            words = f"暂存结算{claim}（主动报，已由医疗机构撤销并退还现金）"
        else:
            cli("deferred", "replay", "--json", "--database-url", counter.dsn)
            setl_id = await counter.fetchval(
                "SELECT setl_id FROM deferred WHERE claim_id = $1", claim
            )
            await his.ok("2305", {"data": {"setl_id": setl_id, "mdtrt_id": stay, "psn_no": PERSON}})
            words = f"暂存结算{claim}（主动报，补结算后已由医疗机构撤销该结算并退还现金）"
        # BIG_LINES: the stay's bill less its third line (1625.00, not 1637.50).
        less = await _reviewed_stay_claim(
            agency, dt.datetime(2026, 9, 1), dt.datetime(2026, 9, 4), "FP-REFUNDED-1"
        )
        before = await counter.ledger_fingerprint()
        with pytest.raises(Conflict) as refused:
            await _settled_claim(agency, less.claim_no)
        assert words in str(refused.value) and "疑为同一次住院重复报销" in str(refused.value)
        assert await counter.ledger_fingerprint() == before
