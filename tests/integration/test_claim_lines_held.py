"""Lines under a pending deferred claim are held until replay or withdrawal of the claim.

Found from outside: a batch claimed under `defer` (the patient paid it all in cash) was withdrawn
by 2205 and other lines uploaded under the same batch and serials; replay then settled the new
lines, and the fund reimbursed the patient for items never paid for. Now the claim's lines cannot
be withdrawn (2205 for an outpatient batch, 2302 for a stay) while the claim is pending; another
batch of the same visit can."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import (
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
PERSON = "441800000000000001"


async def _claim_batch(srv: Server, his: HisClient, pos: HisClient, mdtrt_id: str) -> Any:
    """The region's settlements deferred (seen at the pharmacy's counter), then batch B1 of the
    visit claimed: the claim's setlinfo."""
    await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

    async def deferring() -> bool:
        drug = pos.drug_input(PERSON, "2026-06-05 10:00:00", DRUG_TOTAL, DRUG_LINES)
        return "应急预案" in ((await pos.call("2101", drug))["warn_msg"] or "")

    await until(deferring)
    data = his.settle_data(PERSON, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")
    info = (await his.ok("2207", data))["setlinfo"]
    assert info["setl_id"].startswith("DF")
    return info


async def test_a_claimed_batch_cannot_be_withdrawn_before_replay(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)
        mdtrt_id = await his.register(PERSON, "310", "2026-06-02 08:30:00", "MZ-HELD-1")
        await his.visit_info(mdtrt_id, PERSON, "11", "2026-06-02 08:30:00")
        for batch in ("B1", "B2"):
            rows = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES, "2026-06-02 08:40:00", batch)
            for n, row in enumerate(rows):
                row["feedetl_sn"] = f"{batch}-{n}"
            await his.ok("2204", {"feedetail": rows})

        claim = (await _claim_batch(srv, his, pos, mdtrt_id))["setl_id"]
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await asyncio.sleep(2.5)  # every process polls the plan each second

        withdraw = {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": PERSON}}
        refused = await his.call("2205", withdraw)
        assert refused["infcode"] == -1
        assert f"收费批次B1已按应急预案暂存为待结算（暂存结算单号{claim}）" in refused["err_msg"]
        held = await srv.fetchval(
            "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND chrg_bchno = 'B1'", mdtrt_id
        )
        assert held == len(OUTPATIENT_LINES)  # nothing withdrawn
        # Another batch of the same visit is the counter's to withdraw as ever.
        await his.ok("2205", {"data": {**withdraw["data"], "chrg_bchno": "B2"}})
        assert (
            await srv.fetchval(
                "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND chrg_bchno = 'B2'",
                mdtrt_id,
            )
            == 0
        )


async def test_a_line_added_to_a_claimed_batch_is_not_the_claims(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a line uploaded into a batch after its claim made the claim's total
    wrong at replay; the claim failed, and the batch, the claimed lines with it, was then
    settled in real time (the patient's cash taken and the account charged). The claim names
    its lines as it is taken, and replay settles exactly those."""
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)
        mdtrt_id = await his.register(PERSON, "310", "2026-06-03 08:30:00", "MZ-HELD-2")
        await his.visit_info(mdtrt_id, PERSON, "11", "2026-06-03 08:30:00")
        rows = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES, "2026-06-03 08:40:00", "B1")
        uploaded = (await his.ok("2204", {"feedetail": rows}))["result"]
        claimed = {r["feedetl_sn"] for r in rows}

        info = await _claim_batch(srv, his, pos, mdtrt_id)
        claim = info["setl_id"]
        # settlement-rules §6 on this answer too (found from outside: the four parts were 0.00).
        parts = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
        assert sum(Decimal(str(info[k])) for k in parts) == Decimal(OUTPATIENT_TOTAL), info
        # ... and as the lines split (found from outside: the whole bill within the policy
        # range, a wholly self-pay class-C line included, which a HIS keeps from this answer).
        by_line = ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
        split = [sum(Decimal(str(r[k])) for r in uploaded) for k in by_line]
        assert [Decimal(str(info[k])) for k in parts] == split, (info, uploaded)
        assert Decimal(str(info["fulamt_ownpay_amt"])) == Decimal("35.00")  # YP0010, class C
        extra = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES[:1], "2026-06-03 09:00:00", "B1")
        extra[0]["feedetl_sn"] = "B1-LATER"
        await his.ok("2204", {"feedetail": extra})
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await asyncio.sleep(2.5)  # every process polls the plan each second

        done = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
        assert done["settled"] == 1 and done["failed"] == [], done
        settled = await srv.fetch(
            "SELECT feedetl_sn FROM fee_lines f JOIN deferred d ON d.setl_id = f.setl_id"
            " WHERE d.claim_id = $1",
            claim,
        )
        assert {r["feedetl_sn"] for r in settled} == claimed
        later = await srv.fetchval(
            "SELECT setl_id FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = 'B1-LATER'",
            mdtrt_id,
        )
        assert later is None  # not the claim's: the patient never paid it


async def test_a_pharmacy_claim_answers_the_split_its_sale_would_have(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a claim's answer put the whole bill within the policy range, a
    wholly self-pay line included. A pharmacy's claim answers the four parts its sale would
    have had (the patient still pays it all in cash)."""
    parts = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
    async with running_gateway(new_database) as srv:
        pos: HisClient = srv.client(PHARMACY)
        day = "2026-06-06 10:00:00"
        priced = await pos.ok("2101", pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES))
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring() -> bool:
            drug = pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES)
            return "应急预案" in ((await pos.call("2101", drug))["warn_msg"] or "")

        await until(deferring)
        claim = await pos.ok("2102", pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES))
        info = claim["setlinfo"]
        assert info["setl_id"].startswith("DF"), info
        expected = [Decimal(str(priced["setlinfo"][k])) for k in parts]
        assert [Decimal(str(info[k])) for k in parts] == expected, (info, priced)
        assert expected[0] == Decimal("35.00")  # YP0010, class C: wholly self-pay
        assert Decimal(str(info["psn_cash_pay"])) == Decimal(DRUG_TOTAL)
        # Its lines as the sale's answer has them (found from outside: no detlcutinfo, which a
        # POS reading the sale's answer into a list of lines takes as missing); the deferred
        # pre-settlement's too.
        assert claim["detlcutinfo"] == priced["detlcutinfo"] and len(priced["detlcutinfo"]) > 1
        again = await pos.ok("2101", pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES))
        assert again["detlcutinfo"] == priced["detlcutinfo"]
        assert [Decimal(str(again["setlinfo"][k])) for k in parts] == expected
        ref = {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": PERSON}}
        back = (await pos.ok("2103", ref))["setlinfo"]
        assert [Decimal(str(back[k])) for k in parts] == [-v for v in expected], back


async def test_a_deferred_pre_settlement_answers_the_split_its_claim_takes(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: under `defer` a 2206 answered the whole bill within the policy range,
    and a HIS that copied its four parts into the 2207 (as HIS clients do) was refused, the
    lines splitting otherwise ("全自费金额0.00与中心计算结果…不一致"). The pre-settlement
    answers the parts as the lines split, and the 2207 carrying them is taken as a claim."""
    parts = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)
        mdtrt_id = await his.register(PERSON, "310", "2026-06-07 08:30:00", "MZ-HELD-4")
        await his.visit_info(mdtrt_id, PERSON, "11", "2026-06-07 08:30:00")
        rows = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES, "2026-06-07 08:40:00", "B1")
        uploaded = (await his.ok("2204", {"feedetail": rows}))["result"]
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring() -> bool:
            drug = pos.drug_input(PERSON, "2026-06-07 10:00:00", DRUG_TOTAL, DRUG_LINES)
            return "应急预案" in ((await pos.call("2101", drug))["warn_msg"] or "")

        await until(deferring)
        data = his.settle_data(
            PERSON, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        priced = (await his.ok("2206", data))["setlinfo"]
        by_line = ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
        split = [sum(Decimal(str(r[k])) for r in uploaded) for k in by_line]
        assert [Decimal(str(priced[k])) for k in parts] == split, (priced, uploaded)
        copied = {k: f"{Decimal(str(priced[k])):.2f}" for k in parts}
        claim = (await his.ok("2207", {"data": {**data["data"], **copied}}))["setlinfo"]
        assert claim["setl_id"].startswith("DF"), claim
        assert [Decimal(str(claim[k])) for k in parts] == split
        # Its withdrawal negates those parts (found from outside: the whole bill as within the
        # policy range, negated, whatever the claim had answered).
        ref = {"data": {"setl_id": claim["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": PERSON}}
        back = (await his.ok("2208", ref))["setlinfo"]
        assert [Decimal(str(back[k])) for k in parts] == [-v for v in split], back


async def test_a_claim_of_a_batch_settled_meanwhile_fails_saying_its_cash_is_owed_back(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: with two workers, the same charge batch claimed at one (its ledger
    away) and settled in real time at the other at the same moment; replay failed the claim in
    the words a counter is given ("…无需再收或退款"), while the patient had paid the bill twice,
    once in cash for the claim. The claim's failure says its cash is owed back, and how."""
    async with running_gateway(new_database) as srv:
        his: HisClient = srv.client(HOSPITAL)
        pos: HisClient = srv.client(PHARMACY)
        mdtrt_id = await his.register(PERSON, "310", "2026-06-08 08:30:00", "MZ-HELD-5")
        await his.visit_info(mdtrt_id, PERSON, "11", "2026-06-08 08:30:00")
        rows = his.fee_rows(mdtrt_id, PERSON, OUTPATIENT_LINES, "2026-06-08 08:40:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        claim = (await _claim_batch(srv, his, pos, mdtrt_id))["setl_id"]
        await clear_rule(srv.dsn, "region:441800", "settlement")
        await asyncio.sleep(2.5)  # every process polls the plan each second
        # The race, as it ends: the batch settled in real time while the claim was taken.
        await srv.fetch("UPDATE deferred SET status = 'withdrawn' WHERE claim_id = $1", claim)
        data = his.settle_data(
            PERSON, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1"
        )
        assert not (await his.ok("2207", data))["setlinfo"]["setl_id"].startswith("DF")
        await srv.fetch("UPDATE deferred SET status = 'pending' WHERE claim_id = $1", claim)

        ran = cli("deferred", "replay", "--json", "--database-url", srv.dsn, check=False)
        assert ran.returncode == 1, ran.stderr  # a claim failed
        done = json.loads(ran.stdout)
        (failed,) = done["failed"]
        assert failed["claim_id"] == claim, done
        assert "现金应予退还" in failed["reason"], failed
        assert "办理撤销（退还现金）" in failed["reason"], failed
        assert "无需再收或退款" not in failed["reason"], failed


async def test_a_claim_failed_because_its_sale_stands_is_not_told_to_settle_again(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: a claim that replay filed failed because the ledger had settled its
    message (the first attempt committed in a hang that healed) was answered by 5203 "withdraw
    it (the cash refunded) and settle again": settled again, the account would pay a second
    time. Its words say the settlement stands, and to withdraw the claim for the cash only."""
    from gateway.ledger import deferred

    async with running_gateway(new_database) as srv:
        pos: HisClient = srv.client(PHARMACY)
        day = "2026-06-08 10:00:00"
        await set_rule(srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring() -> bool:
            drug = pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES)
            return "应急预案" in ((await pos.call("2101", drug))["warn_msg"] or "")

        await until(deferring)
        body = pos.envelope("2102", pos.drug_input(PERSON, day, DRUG_TOTAL, DRUG_LINES))
        claim = (await pos.ok("2102", body["input"], msgid=body["msgid"]))["setlinfo"]
        reason = deferred.ANSWERED_IN_LEDGER.format(msgid=body["msgid"])
        # Replay's verdict on it (gateway.emergency.deferred.replay, the ledger's answer found).
        await srv.fetchval(
            "UPDATE deferred SET status = 'failed', fail_reason = $2 WHERE claim_id = $1"
            " RETURNING claim_id",
            claim["setl_id"],
            reason,
        )
        told = await pos.call("5203", {"data": {"setl_id": claim["setl_id"], "psn_no": PERSON}})
        assert told["infcode"] == -1, told
        assert "原结算保留，不要重新结算" in told["err_msg"] and "后重新结算" not in told["err_msg"]
        assert "退还参保人已付现金" in told["err_msg"] and "…" not in told["err_msg"], told
        await clear_rule(srv.dsn, "region:441800", "settlement")
