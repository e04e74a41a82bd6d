"""The agency's console API and pages over real HTTP: a claim from registration to its payment
by clerks, a reviewer and four approvers; roles, CSRF and the services' refusals in Chinese;
every step audited; the claim form printed."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import aiohttp

from tests.integration.agency_helpers import api_get as _get
from tests.integration.agency_helpers import api_login as _login
from tests.integration.agency_helpers import api_ok as _ok
from tests.integration.agency_helpers import api_post as _post
from tests.integration.agency_helpers import bank_answers, with_checksum
from tests.integration.conftest import Server
from tests.integration.emergency_helpers import BIG_LINES

PERSON = "441800000000000001"
HOSPITAL = "H44180000001"
ACCOUNT = "6222020200000000011"
APPROVERS = ("approver1", "approver2", "approver3", "approver4")


async def _refused(
    server: Server, path: str, token: str, doc: dict[str, Any], status: int, words: str
) -> None:
    """Refused with this status and message, and nothing written (the audit log unchanged)."""
    before = await server.fetchval("SELECT count(*) FROM audit_log")
    got, body = await _post(server, path, token, doc)
    assert (got, words in body["error"]) == (status, True), body
    assert await server.fetchval("SELECT count(*) FROM audit_log") == before


async def test_a_claim_to_its_payment_through_the_api(server: Server) -> None:
    clerk, reviewer, watch, duty = (
        await _login(server, "clerk1"),
        await _login(server, "reviewer1"),
        await _login(server, "watch", "watch-2026"),
        await _login(server, "duty", "duty-2026"),
    )
    approvers = [await _login(server, a) for a in APPROVERS]
    registration = {
        "cert_type": "01",
        "cert_no": PERSON,
        "fixmedins_code": HOSPITAL,
        "med_type": "11",
        "begntime": "2026-06-03 08:30:00",
        "invoice_nos": ["FP-CON-1"],
    }
    for token in (watch, duty, reviewer):  # only a clerk registers
        await _refused(server, "/api/console/claims/register", token, registration, 403, "不能办理")
    await _refused(
        server, "/api/console/claims/register", clerk, {**registration, "invoice_nos": []}, 400,
        "发票号",
    )  # fmt: skip
    # Found from outside: an invoice with a control character or the files' separator "|".
    for invoice in ("AB\x01C", "FP|1"):
        await _refused(
            server, "/api/console/claims/register", clerk,
            {**registration, "invoice_nos": [invoice]}, 400, "控制字符或“|”",
        )  # fmt: skip
    # Found from outside: the number 1 and "yes" were read as "no account", silently.
    for unclear in ("yes", 2, "是的"):
        await _refused(
            server, "/api/console/claims/register", clerk,
            {**registration, "acct_used": unclear, "invoice_nos": ["FP-CON-X"]}, 400, "acct_used",
        )  # fmt: skip
    claim = await _ok(
        server, "/api/console/claims/register", clerk, {**registration, "acct_used": 1}
    )
    assert claim["acct_used"] is True
    no = claim["claim_no"]
    assert (claim["status"], claim["psn_no"], claim["registered_by"]) == (
        "registered",
        PERSON,
        "clerk1",
    )
    again = await _ok(server, "/api/console/claims/register", clerk, registration)
    assert again["claim_no"] == no  # the same registration answers the same claim

    feedetail = [{**ln, "fee_ocur_time": "2026-06-03 08:40:00"} for ln in BIG_LINES]
    bad = [{**feedetail[0], "fee_ocur_time": "2026-06-02 08:40:00"}]
    await _refused(
        server, "/api/console/claims/lines", clerk, {"claim_no": no, "feedetail": bad}, 400, "费用明细流水号1"
    )  # fmt: skip
    entered = await _ok(
        server, "/api/console/claims/lines", clerk, {"claim_no": no, "feedetail": feedetail}
    )
    assert entered["status"] == "lines_entered"
    await _refused(server, "/api/console/claims/review", clerk, {"claim_no": no}, 403, "经办员")
    await _refused(server, "/api/console/claims/settle", clerk, {"claim_no": no}, 409, "明细已录入")
    reviewed = await _ok(server, "/api/console/claims/review", reviewer, {"claim_no": no})
    assert reviewed["status"] == "reviewed" and reviewed["reviewed_by"] == "reviewer1"
    settled = await _ok(server, "/api/console/claims/settle", clerk, {"claim_no": no})
    row = await server.fetchrow(
        "SELECT medfee_sumamt, psn_cash_pay FROM settlements WHERE setl_id = $1",
        settled["setl_id"],
    )
    assert row is not None and settled["medfee_sumamt"] == "1625.00"
    owed_fen = row["medfee_sumamt"] - row["psn_cash_pay"]
    owed = f"{owed_fen // 100}.{owed_fen % 100:02d}"
    assert settled["reimbursement"] == owed and owed_fen > 0
    [done] = await _ok(server, "/api/console/claims/batch-review", reviewer, {"claim_nos": [no]})
    assert done["status"] == "batch_reviewed"

    # The agency's records are its staff's: found from outside, the emergency team's viewer
    # and operator read the patients' claims, bills and bank accounts.
    for outsider in (watch, duty):
        for path in ("/api/console/claims", f"/api/console/claims/{no}", "/api/console/payouts"):
            refused, body = await _get(server, path, outsider)
            assert refused == 403 and "不能办理" in body["error"], (path, body)
    status, listed = await _get(server, "/api/console/claims", reviewer)
    assert status == 200 and [(c["claim_no"], c["status_name"]) for c in listed] == [
        (no, "结算已审核")
    ]
    status, shown = await _get(server, f"/api/console/claims/{no}", reviewer)
    assert status == 200 and [ln["det_item_fee_sumamt"] for ln in shown["lines"]] == [
        "25.00",
        "1600.00",
    ]
    assert shown["split"]["medfee_sumamt"] == "1625.00" and shown["payout"]["status"] == "owed"
    assert (await _get(server, "/api/console/claims/LX404", reviewer))[0] == 404

    # Payouts: no account yet, then one (masked in the answer), a batch, four approvals.
    await _refused(server, "/api/console/payouts/batch", clerk, {}, 409, "未登记收款账户")
    account = {
        "psn_no": PERSON,
        "bank_code": "102100000001",
        "bank_name": "工商银行",
        "account_no": ACCOUNT,
        "holder": "演示职工甲",
        "reason": "参保人申请",
    }
    shown_account = await _ok(server, "/api/console/payouts/account", clerk, account)
    assert shown_account["account_no"] == "6222***********0011"
    status, overview = await _get(server, "/api/console/payouts", clerk)
    assert overview["totals"]["owed"] == {"count": 1, "amount": owed}
    batch = await _ok(server, "/api/console/payouts/batch", clerk, {})
    batch_no = batch["batch_no"]
    assert (batch["count"], batch["total"], batch["status"]) == (1, owed, "pending")
    assert ACCOUNT not in str(batch) and batch["items"][0]["account_no"] == "6222***********0011"

    approve = "/api/console/payouts/approve"
    await _refused(server, approve, clerk, {"batch_no": batch_no, "level": 1}, 403, "经办员")
    await _refused(
        server, approve, approvers[2], {"batch_no": batch_no, "level": 3}, 409, "须先完成初审"
    )
    await _refused(server, approve, approvers[0], {"batch_no": batch_no, "level": 1, "reject": ""}, 400, "退回须填写原因")  # fmt: skip
    for level, token in enumerate(approvers, 1):
        view = await _ok(server, approve, token, {"batch_no": batch_no, "level": level})
        if level == 1:
            await _refused(
                server, approve, token, {"batch_no": batch_no, "level": 2}, 409, "同一人不能"
            )
    assert view["status"] == "approved" and [a["operator"] for a in view["approvals"]] == list(
        APPROVERS
    )

    await _refused(server, "/api/console/payouts/export", approvers[0], {"batch_no": batch_no}, 403, "审批员")  # fmt: skip
    status, (payment, disposition) = await _post(
        server, "/api/console/payouts/export", clerk, {"batch_no": batch_no}
    )
    assert status == 200 and disposition == f'attachment; filename="{batch_no}.txt"'
    assert payment.startswith(f"H|PAY|{batch_no}|".encode()) and ACCOUNT.encode() in payment
    again_file = (
        await _post(server, "/api/console/payouts/export", clerk, {"batch_no": batch_no})
    )[1]
    assert again_file[0] == payment  # exported once; the same bytes again

    answer = bank_answers(payment, {})
    forged = with_checksum(answer.replace(owed.encode(), b"1.00"))
    await _refused(server, "/api/console/payouts/return", clerk, {"file": forged.decode()}, 400, "整批拒绝导入")  # fmt: skip
    # A return for a batch there is none of: unknown, as the API says of any (404).
    elsewhere = with_checksum(answer.replace(batch_no.encode(), b"ZF20260101999999"))
    await _refused(server, "/api/console/payouts/return", clerk, {"file": elsewhere.decode()}, 404, "ZF20260101999999不存在")  # fmt: skip
    summary = await _ok(server, "/api/console/payouts/return", clerk, {"file": answer.decode()})
    assert (summary["paid_count"], summary["paid"], summary["failed_count"]) == (1, owed, 0)
    assert (await _ok(server, "/api/console/payouts/return", clerk, {"file": answer.decode()}))[
        "again"
    ]
    status, overview = await _get(server, "/api/console/payouts", clerk)
    assert overview["totals"]["paid"] == {"count": 1, "amount": owed}
    assert overview["batches"][0]["status_name"] == "已回盘"

    # Every step is in the audit log under the operator who took it.
    rows = await server.fetch(
        "SELECT operator, action FROM audit_log WHERE action LIKE 'claim.%' OR action LIKE 'payout.%'"
        " ORDER BY audit_id"
    )
    assert [(r["operator"], r["action"]) for r in rows] == [
        ("clerk1", "claim.register"),
        ("clerk1", "claim.lines"),
        ("reviewer1", "claim.review"),
        ("clerk1", "claim.settle"),
        ("reviewer1", "claim.batch_review"),
        ("clerk1", "payout.account"),
        ("clerk1", "payout.batch"),
        *((a, f"payout.approve.{n}") for n, a in enumerate(APPROVERS, 1)),
        ("clerk1", "payout.export"),
        ("clerk1", "payout.return"),
    ]
    # A claim's rows carry its state before and after each step.
    steps = await server.fetch(
        "SELECT before, after FROM audit_log WHERE action LIKE 'claim.%' ORDER BY audit_id"
    )
    assert [(r["before"], r["after"]) for r in steps] == [
        (None, {"status": "registered"}),
        ({"status": "registered"}, {"status": "lines_entered"}),
        ({"status": "lines_entered"}, {"status": "reviewed"}),
        ({"status": "reviewed"}, {"status": "settled"}),
        ({"status": "settled"}, {"status": "batch_reviewed"}),
    ]
    assert await server.check_ledger() == []


async def test_pages_show_each_role_its_steps_and_forms_need_the_token(server: Server) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.get(server.url + "/console/claims", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/login"
        login = {"operator": "clerk1", "password": "clerk1-2026"}
        async with browser.post(server.url + "/console/login", data=login) as r:
            assert r.status == 200
        async with browser.get(server.url + "/console/claims") as r:
            html = await r.text()
        assert 'id="register-form"' in html and 'id="batch-review-form"' not in html
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert csrf is not None
        form = {
            "cert_type": "01",
            "cert_no": "441800000000000002",
            "fixmedins_code": HOSPITAL,
            "med_type": "11",
            "begntime": "2026-06-04 09:00:00",
            "invoice_nos": "FP-PAGE-1, FP-PAGE-2",
            "back": "/console/claims",
        }
        before = await server.fetchval("SELECT count(*) FROM manual_claims")
        async with browser.post(
            server.url + "/console/claims/register", data=form, allow_redirects=False
        ) as r:
            assert r.status == 403  # no token
        # The API from the cookie's session needs the token in its header.
        async with browser.post(server.url + "/api/console/claims/register", json=form) as r:
            assert r.status == 403 and "X-CSRF-Token" in (await r.json())["error"]
        assert await server.fetchval("SELECT count(*) FROM manual_claims") == before
        async with browser.post(
            server.url + "/console/claims/register", data={**form, "csrf": csrf.group(1)}
        ) as r:
            page = await r.text()
            assert r.url.path.startswith("/console/claims/LX")
        assert "已登记" in page and "FP-PAGE-1、FP-PAGE-2" in page and 'id="lines-form"' in page
        no = r.url.path.rsplit("/", 1)[1]
        # A refusal goes back to the page alone (found from outside: a `back` with a query and
        # a fragment put the refusal after the "#", where it was never shown).
        for back in ("/console/claims?x=1#<script>", "//evil.example/console/", "/console/../x"):
            async with browser.post(
                server.url + "/console/claims/register",
                data={**form, "csrf": csrf.group(1), "begntime": "bad", "back": back},
                allow_redirects=False,
            ) as r:
                assert r.status == 303, back
                where = r.headers["Location"]
                assert where.startswith("/console/claims?err=") and "#" not in where, where
        # Escaped bytes that are not UTF-8 (found from outside: stored as "��ABC").
        before_bad = await server.fetchval("SELECT count(*) FROM manual_claims")
        raw = f"csrf={csrf.group(1)}&cert_type=01&cert_no=441800000000000002" + (
            f"&fixmedins_code={HOSPITAL}&med_type=11&begntime=2026-06-06+09:00:00"
            "&invoice_nos=%FF%FEabc"
        )
        async with browser.post(
            server.url + "/console/claims/register",
            data=raw.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as r:
            assert r.status == 400 and "UTF-8" in await r.text()
        assert await server.fetchval("SELECT count(*) FROM manual_claims") == before_bad
        # A refusal comes back to the page as the service's Chinese message, escaped.
        async with browser.post(
            server.url + "/console/claims/lines",
            data={"csrf": csrf.group(1), "claim_no": no, "back": f"/console/claims/{no}",
                  "lines": "<b>X</b>|ZL0001|25|1|25.00|2026-06-01 09:10:00"},
        ) as r:  # fmt: skip
            page = await r.text()
        assert 'id="error"' in page and "&lt;b&gt;X&lt;/b&gt;" in page and "<b>X</b>" not in page
        lines = "\n".join(
            f"{ln['feedetl_sn']}|{ln['medins_list_codg']}|{ln['pric']}|{ln['cnt']}|"
            f"{ln['det_item_fee_sumamt']}|2026-06-04 09:10:00"
            for ln in BIG_LINES
        )
        async with browser.post(
            server.url + "/console/claims/lines",
            data={"csrf": csrf.group(1), "claim_no": no, "lines": lines},
        ) as r:
            page = await r.text()
        assert "已录入明细2条" in page and page.count('class="line"') == 2
        # A clerk may not review: the page says so, and offers no review form.
        async with browser.post(
            server.url + "/console/claims/review",
            data={"csrf": csrf.group(1), "claim_no": no, "back": f"/console/claims/{no}"},
        ) as r:
            page = await r.text()
        assert "当前账号（经办员）不能办理此项业务" in page and 'id="review-form"' not in page
        async with browser.get(server.url + f"/console/claims/{no}/form") as r:
            assert r.status == 409 and "结算后才能打印" in await r.text()

    # The reviewer's page offers the review; reviewing it there moves the claim on.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        login = {"operator": "reviewer1", "password": "reviewer1-2026"}
        async with browser.post(server.url + "/console/login", data=login) as r:
            assert r.status == 200
        async with browser.get(server.url + f"/console/claims/{no}") as r:
            html = await r.text()
        assert 'id="review-form"' in html and 'id="lines-form"' not in html
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert csrf is not None
        async with browser.post(
            server.url + "/console/claims/review", data={"csrf": csrf.group(1), "claim_no": no}
        ) as r:
            assert "明细已审核" in await r.text()
    assert await server.fetchval("SELECT status FROM manual_claims WHERE claim_no = $1", no) == (
        "reviewed"
    )


async def test_times_written_with_an_offset_are_the_local_times_they_stand_for(
    server: Server,
) -> None:
    """Found from outside: a begntime, endtime or line time with an offset (+08:00, Z) met the
    checks against local times and failed there: HTTP 500 at the API and the desk, a
    traceback at the shell. It is converted to local time, as the gateway's clocks read it."""
    clerk = await _login(server, "clerk1")
    east8 = dt.timezone(dt.timedelta(hours=8))
    registration = {
        "cert_type": "01",
        "cert_no": PERSON,
        "fixmedins_code": HOSPITAL,
        "med_type": "11",
        "begntime": "2026-06-05T09:00:00+08:00",
        "invoice_nos": ["FP-TZ-1"],
    }
    claim = await _ok(server, "/api/console/claims/register", clerk, registration)
    stored = await server.fetchval(
        "SELECT begntime FROM manual_claims WHERE claim_no = $1", claim["claim_no"]
    )
    assert stored == dt.datetime(2026, 6, 5, 9, tzinfo=east8).astimezone().replace(tzinfo=None)
    # Half an hour into the visit, written in UTC: read back as the same local time.
    fee_time = (stored + dt.timedelta(minutes=30)).astimezone().astimezone(dt.UTC)
    feedetail = [{**ln, "fee_ocur_time": fee_time.isoformat()} for ln in BIG_LINES]
    entered = await _ok(
        server,
        "/api/console/claims/lines",
        clerk,
        {"claim_no": claim["claim_no"], "feedetail": feedetail},
    )
    assert entered["status"] == "lines_entered"
    times = await server.fetch(
        "SELECT DISTINCT fee_ocur_time FROM manual_claim_lines WHERE claim_no = $1",
        claim["claim_no"],
    )
    assert [r["fee_ocur_time"] for r in times] == [stored + dt.timedelta(minutes=30)]


async def test_hostile_bodies_are_refused_in_words(server: Server) -> None:
    """Whatever a client posts to the agency's API, the answer is a refusal in Chinese (never a
    5xx), and nothing is written."""
    clerk, reviewer, approver = (
        await _login(server, "clerk1"),
        await _login(server, "reviewer1"),
        await _login(server, "approver1"),
    )
    hostile: list[Any] = [
        {},
        {"claim_no": 5, "claim_nos": 5, "batch_no": None, "level": "99999999999999999999"},
        {"claim_no": "LX" + "9" * 5000, "refuse": ["x"], "reason": {"a": 1}},
        {"feedetail": "x", "lines": 7, "claim_no": "LX1"},
        {"feedetail": [{"feedetl_sn": "1", "pric": 1e400, "cnt": "abc", "fee_ocur_time": 3}]},
        {
            "cert_type": "01",
            "cert_no": "x",
            "fixmedins_code": HOSPITAL,
            "med_type": "11",
            "begntime": "2026-99-99",
            "invoice_nos": "A,B",
        },
        {"limit": "99999999999999999999", "source": "all"},
        {"limit": "-1"},
        {"psn_no": PERSON, "account_no": "12|34", "bank_code": "", "reason": " "},
        {"file": "H|RET|ZF1|20260101|1|1.00\nT|0|0.00|x\n"},
        {"file": 12},
    ]
    before = await server.ledger_fingerprint()
    audit_rows = await server.fetchval("SELECT count(*) FROM audit_log")
    for group, name in (
        ("claims", "register"), ("claims", "lines"), ("claims", "review"), ("claims", "settle"),
        ("claims", "batch-review"), ("claims", "withdraw"), ("payouts", "account"),
        ("payouts", "batch"), ("payouts", "approve"), ("payouts", "export"), ("payouts", "return"),
    ):  # fmt: skip
        token = {"review": reviewer, "batch-review": reviewer, "approve": approver}.get(name, clerk)
        for doc in hostile:
            status, body = await _post(server, f"/api/console/{group}/{name}", token, doc)
            assert 400 <= status < 500, (name, doc, status, body)
            assert isinstance(body, dict) and body["error"], (name, doc, body)
    async with server.session.post(
        server.url + "/api/console/claims/register",
        data=b"[1, 2",
        headers={"Authorization": f"Bearer {clerk}", "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400 and "JSON" in (await r.json())["error"]
    assert await server.ledger_fingerprint() == before
    assert await server.fetchval("SELECT count(*) FROM audit_log") == audit_rows


async def test_an_element_of_a_json_list_is_one_invoice(server: Server) -> None:
    """Found from outside: "NO 52001" in a JSON list was held as two invoices, "NO" and
    "52001", and another claim's "52001" was refused as claimed already."""
    clerk = await _login(server, "clerk1")
    registration = {
        "cert_type": "01",
        "cert_no": "441800000000000003",
        "fixmedins_code": HOSPITAL,
        "med_type": "11",
        "begntime": "2026-06-02 08:30:00",
        "invoice_nos": ["NO 52001, A"],
    }
    spaced = await _ok(server, "/api/console/claims/register", clerk, registration)
    assert spaced["invoice_nos"] == ["NO 52001, A"], spaced
    other = {**registration, "begntime": "2026-06-05 08:30:00", "invoice_nos": ["52001"]}
    assert (await _ok(server, "/api/console/claims/register", clerk, other))["invoice_nos"] == [
        "52001"
    ]
