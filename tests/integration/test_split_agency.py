"""The agency's desks over a ledger split by region: a manual claim (零星报销) lives and settles
in the insured region's database, a payout batch pays from the database that owes, an invoice is
claimed once whichever region claims it, and the emergency team's counts and lists read every
database. Driven over real HTTP (the console's API) and the CLI, as the desks use them; the
same claim at a gateway over one database gives the same money."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import db
from gateway.ledger import payouts as payout_store
from gateway.ledger.partitions import Partition, Partitions
from gateway.protocol.errors import Unavailable
from gateway.services import agency_ledgers
from tests.integration.agency_helpers import (
    api_get,
    api_login,
    api_ok,
    api_post,
    bank_answers,
)
from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import (
    BIG_LINES,
    BIG_TOTAL,
    DRUG_LINES,
    DRUG_TOTAL,
    clear_rule,
    cli,
    set_rule,
    until,
)
from tests.integration.split_helpers import (
    BIJIE,
    BIJIE_WORKER,
    PHARMACY_OF,
    QINGYUAN,
    WENZHOU,
    WENZHOU_RETIREE,
    Split,
    split_gateway,
)

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"  # a 清远 hospital treating patients of every region
BIJIE_OTHER = "520500000000000002"  # a resident (390)
WENZHOU_OTHER = "330300000000000002"
QINGYUAN_PERSON = "441800000000000005"
APPROVERS = ("approver1", "approver2", "approver3", "approver4")


@pytest.fixture(scope="module")
async def split(new_database: Callable[..., Any]) -> AsyncIterator[Split]:
    async with split_gateway(new_database) as made:
        yield made


@pytest.fixture(scope="module")
async def single(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database) as srv:
        yield srv


async def _register(srv: Server, psn_no: str, invoice: str, day: str) -> tuple[int, Any]:
    clerk = await api_login(srv, "clerk1")
    registration = {
        "cert_type": "01",
        "cert_no": psn_no,
        "fixmedins_code": HOSPITAL,
        "med_type": "11",
        "begntime": f"{day} 08:30:00",
        "invoice_nos": [invoice],
    }
    return await api_post(srv, "/api/console/claims/register", clerk, registration)


async def _claim(
    srv: Server, psn_no: str, invoice: str, day: str, *, batch_reviewed: bool = True
) -> dict[str, Any]:
    """A claim through every desk: registered, lines entered, reviewed, settled, batch-reviewed
    (unless not asked)."""
    clerk, reviewer = await api_login(srv, "clerk1"), await api_login(srv, "reviewer1")
    status, claim = await _register(srv, psn_no, invoice, day)
    assert status == 200, claim
    no = claim["claim_no"]
    feedetail = [{**ln, "fee_ocur_time": f"{day} 08:40:00"} for ln in BIG_LINES]
    await api_ok(srv, "/api/console/claims/lines", clerk, {"claim_no": no, "feedetail": feedetail})
    await api_ok(srv, "/api/console/claims/review", reviewer, {"claim_no": no})
    settled = await api_ok(srv, "/api/console/claims/settle", clerk, {"claim_no": no})
    assert isinstance(settled, dict)
    if batch_reviewed:
        [done] = await api_ok(
            srv, "/api/console/claims/batch-review", reviewer, {"claim_nos": [no]}
        )
        assert done["status"] == "batch_reviewed"
    return settled


async def _account(srv: Server, psn_no: str, account_no: str) -> None:
    clerk = await api_login(srv, "clerk1")
    account = {
        "psn_no": psn_no,
        "bank_code": "102100000001",
        "bank_name": "工商银行",
        "account_no": account_no,
        "holder": "参保人",
        "reason": "参保人申请",
    }
    await api_ok(srv, "/api/console/payouts/account", clerk, account)


async def test_a_remote_patients_manual_claim_lives_and_settles_in_their_regions_database(
    split: Split, single: Server, tmp_path: Path
) -> None:
    there = await _claim(split.srv, BIJIE_WORKER, "FP-SPLIT-1", "2026-06-03")
    alone = await _claim(single, BIJIE_WORKER, "FP-SPLIT-1", "2026-06-03")
    money = ("medfee_sumamt", "reimbursement")
    assert {k: there[k] for k in money} == {k: alone[k] for k in money}
    assert there["reimbursement"] != "0.00"
    no, setl_id = there["claim_no"], there["setl_id"]
    bijie = f"cluster {BIJIE}"
    for sql, key in (
        ("SELECT count(*) FROM manual_claims WHERE claim_no = $1", no),
        ("SELECT count(*) FROM manual_claim_lines WHERE claim_no = $1", no),
        ("SELECT count(*) FROM owed_lines WHERE source_ref = $1", no),
        ("SELECT count(*) FROM settlements WHERE setl_id = $1", setl_id),
        ("SELECT count(*) FROM audit_log WHERE target = 'manual_claim:' || $1", no),
    ):
        assert await split.holding(sql, key) == [bijie], sql
    # Numbered in the cluster's own range: no other database draws the same claim number.
    assert len(no) > len(alone["claim_no"])

    watch = await api_login(split.srv, "watch", "watch-2026")
    # Audited where each step ran; the console's recent audit reads every database.
    status, audited = await api_get(split.srv, "/api/audit?limit=200", watch)
    assert status == 200
    assert {r["ledger"] for r in audited if r["target"] == f"manual_claim:{no}"} == {"bijie"}
    # The claims are the agency staff's to read (the emergency team's viewer is refused).
    assert (await api_get(split.srv, f"/api/console/claims/{no}", watch))[0] == 403
    reviewer = await api_login(split.srv, "reviewer1")
    status, form = await api_get(split.srv, f"/api/console/claims/{no}", reviewer)
    assert status == 200 and form["split"]["medfee_sumamt"] == BIG_TOTAL
    assert form["fixmedins_name"] != HOSPITAL  # named from the reference data
    local = await _claim(split.srv, QINGYUAN_PERSON, "FP-SPLIT-2", "2026-06-03")
    status, listed = await api_get(split.srv, "/api/console/claims", reviewer)
    numbers = [c["claim_no"] for c in listed]
    assert {no, local["claim_no"]} <= set(numbers) and numbers == sorted(numbers)

    # An institution cannot undo the agency's settlement there either (the guard joins the
    # claim and its settlement in one database).
    row = (
        await split.rows(
            split.clusters[BIJIE],
            "SELECT setl_id, mdtrt_id, psn_no FROM settlements WHERE setl_id = $1",
            setl_id,
        )
    )[0]
    refused = await split.srv.client(HOSPITAL).call(
        "2208", {"data": dict(row)}, insuplc_admdvs=BIJIE
    )
    assert refused["infcode"] == -1 and f"零星报销{no}的结算" in refused["err_msg"]

    listed_cli = json.loads(
        cli("claims", "list", "--json", "--database-url", split.srv.dsn,
            "--config", str(split.config_file(tmp_path))).stdout
    )  # fmt: skip
    assert {no, local["claim_no"]} <= {c["claim_no"] for c in listed_cli}


async def test_payout_batches_pay_from_the_database_that_owes(split: Split, tmp_path: Path) -> None:
    """A batch is made in each database owing something payable; each is approved, exported
    and its bank return applied where it lives; the totals page adds them up."""
    remote = await _claim(split.srv, WENZHOU_OTHER, "FP-PAY-1", "2026-06-04")
    local = await _claim(split.srv, "441800000000000006", "FP-PAY-2", "2026-06-04")
    await _account(split.srv, WENZHOU_OTHER, "6222020200000000021")
    await _account(split.srv, "441800000000000006", "6222020200000000022")
    assert await split.holding(
        "SELECT count(*) FROM payout_accounts WHERE psn_no = $1", WENZHOU_OTHER
    ) == [f"cluster {WENZHOU}"]

    clerk = await api_login(split.srv, "clerk1")
    made = await api_ok(split.srv, "/api/console/payouts/batch", clerk, {})
    batches = made["batches"]  # one per database owing; the first also at the top
    assert made["batch_no"] == batches[0]["batch_no"]
    by_payee = {item["psn_no"]: b for b in batches for item in b["items"]}
    wenzhou_batch = by_payee[WENZHOU_OTHER]["batch_no"]
    main_batch = by_payee["441800000000000006"]["batch_no"]
    assert wenzhou_batch != main_batch
    assert await split.holding(
        "SELECT count(*) FROM payout_batches WHERE batch_no = $1", wenzhou_batch
    ) == [f"cluster {WENZHOU}"]
    assert await split.holding(
        "SELECT count(*) FROM payout_batches WHERE batch_no = $1", main_batch
    ) == ["main"]

    approvers = [await api_login(split.srv, a) for a in APPROVERS]
    for batch_no in (wenzhou_batch, main_batch):
        for level, token in enumerate(approvers, 1):
            await api_ok(
                split.srv,
                "/api/console/payouts/approve",
                token,
                {"batch_no": batch_no, "level": level},
            )
        status, (payment, _) = await api_post(
            split.srv, "/api/console/payouts/export", clerk, {"batch_no": batch_no}
        )
        assert status == 200 and payment.startswith(f"H|PAY|{batch_no}|".encode())
        answer = bank_answers(payment, {})
        other = main_batch if batch_no == wenzhou_batch else wenzhou_batch
        status, refused = await api_post(
            split.srv,
            "/api/console/payouts/return",
            clerk,
            {"file": answer.decode(), "batch_no": other},
        )
        assert status == 400 and f"回盘文件属于支付批次{batch_no}" in refused["error"]
        summary = await api_ok(
            split.srv, "/api/console/payouts/return", clerk, {"file": answer.decode()}
        )
        assert summary["batch_no"] == batch_no and summary["failed_count"] == 0
    paid = {
        ref: await split.holding(
            "SELECT count(*) FROM owed_lines WHERE source_ref = $1 AND status = 'paid'", ref
        )
        for ref in (remote["claim_no"], local["claim_no"])
    }
    assert paid == {remote["claim_no"]: [f"cluster {WENZHOU}"], local["claim_no"]: ["main"]}

    status, overview = await api_get(split.srv, "/api/console/payouts", clerk)
    shown = {b["batch_no"]: b["status"] for b in overview["batches"]}
    assert shown[wenzhou_batch] == shown[main_batch] == "returned"
    status, view = await api_get(split.srv, f"/api/console/payouts/{wenzhou_batch}", clerk)
    assert status == 200 and view["items"][0]["psn_no"] == WENZHOU_OTHER
    assert await split.findings() == {}

    # The month's clearing report counts the payouts of every database (found from outside:
    # it read the main one's only).
    month = dt.date.today().strftime("%Y-%m")
    report = json.loads(
        cli("clearing", "monthly", "--month", month, "--json", "--database-url", split.srv.dsn,
            "--config", str(split.config_file(tmp_path))).stdout
    )  # fmt: skip
    paid_lines = 0
    for dsn in split.everywhere().values():
        paid_lines += (
            await split.rows(dsn, "SELECT count(*) FROM payout_items WHERE status = 'paid'")
        )[0][0]
    assert report["payouts"]["paid"]["lines"] == paid_lines >= 2


async def test_an_invoice_is_claimed_once_whichever_region_claims_it(split: Split) -> None:
    """The same hospital invoice for a 温州 patient, then a 毕节 one: each claim would live in
    its own cluster, and the second is refused as on a single ledger; once the first is
    withdrawn the invoice is free again."""
    status, first = await _register(split.srv, WENZHOU_RETIREE, "FP-ONCE-1", "2026-06-05")
    assert status == 200, first
    status, second = await _register(split.srv, BIJIE_OTHER, "FP-ONCE-1", "2026-06-05")
    assert status == 409 and f"已在零星报销{first['claim_no']}中登记" in second["error"], second
    assert (
        await split.holding("SELECT count(*) FROM manual_claims WHERE psn_no = $1", BIJIE_OTHER)
        == []
    )

    clerk = await api_login(split.srv, "clerk1")
    await api_ok(
        split.srv,
        "/api/console/claims/withdraw",
        clerk,
        {"claim_no": first["claim_no"], "reason": "参保人撤回"},
    )
    status, again = await _register(split.srv, BIJIE_OTHER, "FP-ONCE-1", "2026-06-05")
    assert status == 200, again
    held = await split.rows(
        split.srv.dsn,
        "SELECT claim_no FROM invoice_registry WHERE fixmedins_code = $1 AND invono = $2",
        HOSPITAL,
        "FP-ONCE-1",
    )
    assert [r[0] for r in held] == [again["claim_no"]]
    # The first claim's own region may not take it back now.
    status, refused = await _register(split.srv, WENZHOU_RETIREE, "FP-ONCE-1", "2026-06-05")
    assert status == 409 and again["claim_no"] in refused["error"]


async def test_a_deferred_claim_is_counted_replayed_and_paid_in_its_regions_database(
    split: Split, tmp_path: Path
) -> None:
    """Settlements at a 清远 hospital deferred: a 毕节 patient's claim is kept in 毕节's cluster, the emergency team's
    page and `plan show` count it there, replay settles it there, and its reimbursement is
    batched there: cancelling its settlement is then refused as on a single ledger."""
    config = str(split.config_file(tmp_path))
    # The rule's region is where patients are treated: the 清远 hospital's, whose 毕节 patient
    # this is.
    await set_rule(split.srv.dsn, f"region:{QINGYUAN}", "settlement", "defer", "演练主动报")
    pos = split.srv.client(PHARMACY_OF[QINGYUAN], QINGYUAN)

    async def in_force() -> bool:
        drug = pos.drug_input(QINGYUAN_PERSON, "2026-06-05 10:00:00", DRUG_TOTAL, DRUG_LINES)
        answer = await pos.call("2101", drug)
        return "应急预案" in (answer["warn_msg"] or "")

    await until(in_force)
    his = split.srv.client(HOSPITAL)
    remote = {"insuplc_admdvs": BIJIE}
    day = "2026-06-06"
    reg = await his.ok(
        "2201",
        {"data": {"psn_no": BIJIE_OTHER, "insutype": "390", "begntime": f"{day} 08:30:00",
                  "mdtrt_cert_type": "01", "mdtrt_cert_no": BIJIE_OTHER, "ipt_otp_no": "MZ-DF-1",
                  "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01", "dept_name": "内科",
                  "caty": "A03"}},
        **remote,
    )  # fmt: skip
    mdtrt_id = reg["data"]["mdtrt_id"]
    rows = his.fee_rows(mdtrt_id, BIJIE_OTHER, BIG_LINES, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows}, **remote)
    data = his.settle_data(BIJIE_OTHER, mdtrt_id, "11", BIG_TOTAL, "390", "0", chrg_bchno="B1")
    answer = await his.ok("2207", data, **remote)
    claim_id = answer["setlinfo"]["setl_id"]
    assert claim_id.startswith("DF")

    async def drained() -> bool:
        found = await split.holding("SELECT count(*) FROM deferred WHERE claim_id = $1", claim_id)
        return found == [f"cluster {BIJIE}"]

    await until(drained, within=20)
    watch = await api_login(split.srv, "watch", "watch-2026")
    status, overview = await api_get(split.srv, "/api/plan", watch)
    assert status == 200 and overview["deferred"]["claims_pending"] >= 1
    shown = json.loads(
        cli("plan", "show", "--json", "--database-url", split.srv.dsn, "--config", config).stdout
    )
    assert shown["deferred"]["claims_pending"] == overview["deferred"]["claims_pending"]
    listed = cli("deferred", "list", "--json", "--database-url", split.srv.dsn, "--config", config)
    assert claim_id in listed.stdout

    await clear_rule(split.srv.dsn, f"region:{QINGYUAN}", "settlement")

    async def lifted() -> bool:
        return not await in_force()

    await until(lifted)
    replayed = json.loads(
        cli("deferred", "replay", "--json", "--database-url", split.srv.dsn, "--config", config).stdout
    )  # fmt: skip
    assert replayed["failed"] == [] and replayed["settled"] >= 1
    setl = await split.rows(
        split.clusters[BIJIE],
        "SELECT d.setl_id, s.mdtrt_id, s.psn_no FROM deferred d JOIN settlements s"
        " USING (setl_id) WHERE d.claim_id = $1 AND d.status = 'settled'",
        claim_id,
    )
    assert len(setl) == 1
    await _account(split.srv, BIJIE_OTHER, "6222020200000000031")
    clerk = await api_login(split.srv, "clerk1")
    await api_ok(split.srv, "/api/console/payouts/batch", clerk, {"source": "deferred"})
    assert await split.holding(
        "SELECT count(*) FROM owed_lines WHERE source_ref = $1 AND status = 'batched'", claim_id
    ) == [f"cluster {BIJIE}"]
    refused = await his.call("2208", {"data": dict(setl[0])}, **remote)
    assert refused["infcode"] == -1 and "已纳入支付批次" in refused["err_msg"], refused
    assert await split.findings() == {}
    # Each database's audit chain, the clusters' included (the desks' steps there).
    verified = cli("audit", "verify", "--database-url", split.srv.dsn, "--config", config)
    assert verified.stdout.count("audit log intact") == 3 and "(bijie)" in verified.stdout


async def test_a_database_that_does_not_answer_is_left_for_a_later_batch(split: Split) -> None:
    """One region group's outage does not hold back the others' payees: batches are made where
    the databases answer, and the clerk is told which one was left; with none answering, a
    refusal the clerk can read."""
    claim = await _claim(split.srv, BIJIE_WORKER, "FP-LATER-1", "2026-06-07")
    await _account(split.srv, BIJIE_WORKER, "6222020200000000041")
    pools = {
        name: await db.create_pool(dsn, min_size=1, max_size=2)
        for name, dsn in (("main", split.srv.dsn), ("bijie", split.clusters[BIJIE]),
                          ("wenzhou", split.clusters[WENZHOU]))
    }  # fmt: skip
    await pools["wenzhou"].close()  # the outage: every acquire now fails
    try:
        ledgers = Partitions(
            Partition("main", pools["main"]),
            [
                Partition("bijie", pools["bijie"], frozenset({BIJIE})),
                Partition("wenzhou", pools["wenzhou"], frozenset({WENZHOU})),
            ],
        )
        made = await agency_ledgers.make_batches(ledgers, "clerk9", dt.datetime.now(), None, None)
        assert made.unreachable == ["wenzhou"] and "wenzhou" in made.note()
        paid_here = {item["psn_no"] for _, view in made.batches for item in view["items"]}
        assert BIJIE_WORKER in paid_here
        assert await split.holding(
            "SELECT count(*) FROM owed_lines WHERE source_ref = $1 AND status = 'batched'",
            claim["claim_no"],
        ) == [f"cluster {BIJIE}"]
        gone = Partitions(Partition("main", pools["wenzhou"]))
        with pytest.raises(Unavailable, match="暂时无法连接"):
            await agency_ledgers.make_batches(gone, "clerk9", dt.datetime.now(), None, None)
    finally:
        for pool in pools.values():
            await pool.close()


async def test_a_batch_review_across_databases_is_all_or_none(split: Split) -> None:
    """Found from outside: claims of several region groups reviewed together, one of them not
    settled, answered 409 while the others' databases had committed their part."""
    bijie = await _claim(split.srv, BIJIE_WORKER, "FP-ALL-1", "2026-06-08", batch_reviewed=False)
    wenzhou = await _claim(
        split.srv, WENZHOU_RETIREE, "FP-ALL-2", "2026-06-08", batch_reviewed=False
    )
    status, pending = await _register(split.srv, WENZHOU_OTHER, "FP-ALL-3", "2026-06-08")
    assert status == 200
    reviewer = await api_login(split.srv, "reviewer1")
    nos = [bijie["claim_no"], wenzhou["claim_no"], pending["claim_no"]]
    status, refused = await api_post(
        split.srv, "/api/console/claims/batch-review", reviewer, {"claim_nos": nos}
    )
    assert status == 409 and pending["claim_no"] in refused["error"]
    for no in nos:
        assert (
            await split.holding(
                "SELECT count(*) FROM manual_claims WHERE claim_no = $1 AND status = 'batch_reviewed'",
                no,
            )
            == []
        ), no
        assert (
            await split.holding("SELECT count(*) FROM owed_lines WHERE source_ref = $1", no) == []
        )
    done = await api_ok(
        split.srv, "/api/console/claims/batch-review", reviewer, {"claim_nos": nos[:2]}
    )
    assert sorted(c["claim_no"] for c in done) == sorted(nos[:2])
    assert {c["status"] for c in done} == {"batch_reviewed"}


async def test_the_desks_refuse_malformed_fields_in_words(split: Split) -> None:
    """Found from outside: a list where a number belongs was looked up as its own text (404),
    a null claim number as "None", an unknown status filter answered an empty list."""
    clerk = await api_login(split.srv, "clerk1")
    reviewer = await api_login(split.srv, "reviewer1")
    watch = await api_login(split.srv, "watch", "watch-2026")
    for path, token, doc, words in (
        ("/api/console/payouts/export", clerk, {"batch_no": ["ZF1"]}, "batch_no应为文本"),
        ("/api/console/claims/settle", clerk, {"claim_no": None}, "claim_no应为文本"),
        ("/api/console/claims/batch-review", reviewer, {"claim_nos": [None]}, "claim_nos应为"),
    ):
        status, body = await api_post(split.srv, path, token, doc)
        assert (status, words in body["error"]) == (400, True), body
    status, body = await api_get(split.srv, "/api/console/claims?status=bogus", reviewer)
    assert status == 400 and "状态只能为" in body["error"]
    status, body = await _register(split.srv, BIJIE_OTHER, "F" * 65, "2026-06-09")
    assert status == 400 and "不能超过64个字符" in body["error"]

    # A NUL anywhere (PostgreSQL's text cannot hold one): refused in words, not HTTP 500, and
    # not "the database is unreachable".
    status, body = await _register(split.srv, BIJIE_OTHER, "Q\x001", "2026-06-09")
    assert status == 400 and "控制字符" in body["error"], body
    duty = await api_login(split.srv, "duty", "duty-2026")
    rule = {"scope": "global", "class": "settlement", "action": "defer", "reason": "x\x00"}
    status, body = await api_post(split.srv, "/api/plan/rules", duty, rule)
    assert status == 400 and "控制字符" in body["error"], body
    for path in ("/api/console/claims/LX%00", "/api/console/payouts/ZF%00"):
        status, body = await api_get(split.srv, path, reviewer)
        assert status == 404 and "不存在" in body["error"], (path, body)
    async with split.srv.session.get(
        split.srv.url + "/console/claims/LX%00", headers={"Authorization": f"Bearer {reviewer}"}
    ) as r:
        assert r.status in (303, 404)
    async with split.srv.session.get(
        split.srv.url + "/console/claims/LX%00", headers={"Authorization": f"Bearer {watch}"}
    ) as r:
        assert r.status == 403  # the agency's pages are its staff's


def test_a_command_that_cannot_reach_its_database_says_so() -> None:
    """Found from outside: `deferred replay` against a server out of connections ended in a
    traceback. Any database a command cannot reach is a refusal in words, exit status 2."""
    gone = "postgresql://postgres@127.0.0.1:5432/sgw_no_such_database"
    for command in (("claims", "list"), ("deferred", "list"), ("plan", "show")):
        done = cli(*command, "--database-url", gone, check=False)
        assert done.returncode == 2 and "无法连接数据库" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


async def test_nothing_to_pay_counts_the_payees_waiting_in_every_database(split: Split) -> None:
    """Found from outside: the refusal counted one database's payees without an account."""
    await _claim(split.srv, WENZHOU_RETIREE, "FP-WAIT-1", "2026-06-10")
    await _claim(split.srv, "441800000000000004", "FP-WAIT-2", "2026-06-10")
    waiting: set[str] = set()
    for dsn in split.everywhere().values():
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                waiting |= set(await payout_store.owed_without_account(conn, "deferred"))
        finally:
            await pool.close()
    assert {WENZHOU_RETIREE, "441800000000000004"} <= waiting
    clerk = await api_login(split.srv, "clerk1")
    status, body = await api_post(
        split.srv, "/api/console/payouts/batch", clerk, {"source": "deferred"}
    )
    assert status == 409 and f"（{len(waiting)}人待付款" in body["error"], body


async def test_the_same_registration_sent_at_once_answers_one_claim(split: Split) -> None:
    """Found from outside: of four identical registrations sent together, one was refused as if
    another claim held the invoice; each is the same registration and gets the same claim."""
    clerk = await api_login(split.srv, "clerk1")
    registration = {
        "cert_type": "01",
        "cert_no": BIJIE_OTHER,
        "fixmedins_code": HOSPITAL,
        "med_type": "11",
        "begntime": "2026-06-11 08:30:00",
        "invoice_nos": ["FP-TWICE-1", "FP-TWICE-2"],
    }
    answers = await asyncio.gather(
        *(
            api_post(split.srv, "/api/console/claims/register", clerk, registration)
            for _ in range(4)
        )
    )
    assert {status for status, _ in answers} == {200}, answers
    assert len({body["claim_no"] for _, body in answers}) == 1
    assert await split.holding(
        "SELECT count(*) FROM manual_claims WHERE $1 = ANY(invoice_nos)", "FP-TWICE-1"
    ) == [f"cluster {BIJIE}"]
