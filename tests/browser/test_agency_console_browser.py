"""The agency's console in a real headless Chromium: a clerk registers a manual claim and enters
its lines, a reviewer reviews it, the clerk settles it, the reviewer approves the settlement, the
clerk records the patient's account and makes a payout batch, four approvers approve it, the
clerk downloads the bank file and imports the bank's return file. Screenshots under
test-artifacts/ (agency-claim.png, agency-batch.png, agency-claim-form.png)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.glyphs import cjk_glyphs
from tests.browser.test_console_browser import ARTIFACTS
from tests.integration.agency_helpers import bank_answers
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import BIG_LINES

pytestmark = pytest.mark.integration
PERSON = "441800000000000001"
HOSPITAL = "H44180000001"
ACCOUNT = "6222020200000000011"
APPROVERS = ("approver1", "approver2", "approver3", "approver4")


def _driver(downloads: Path) -> Any:
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("chromium / chromium-driver not installed (make system-deps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver


class Desk:
    """One browser, used by each operator in turn (log out, log in as the next)."""

    def __init__(self, url: str, downloads: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.url = url
        self.driver = _driver(downloads)
        self.wait = WebDriverWait(self.driver, 20)

    def by_id(self, ident: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, ident)

    def log_in(self, login: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.driver.get(self.url + "/console/login")
        self.driver.delete_all_cookies()
        self.driver.get(self.url + "/console/login")
        self.by_id("operator").send_keys(login)
        self.by_id("password").send_keys(f"{login}-2026")
        self.by_id("login").click()
        self.wait.until(ec.presence_of_element_located((By.ID, "state")))

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def press(self, button: str) -> str:
        """Click a form's button and answer the next page's message (or its refusal)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        clicked = self.by_id(button)
        clicked.click()

        def gone(_: object) -> bool:
            # The page the click left: Chromium may say so as a stale element or, mid-navigation,
            # as "Node with given id does not belong to the document"; either means it is gone.
            try:
                clicked.is_enabled()
            except WebDriverException:
                return True
            return False

        self.wait.until(gone)
        self.wait.until(
            ec.any_of(
                ec.presence_of_element_located((By.ID, "message")),
                ec.presence_of_element_located((By.ID, "error")),
            )
        )
        found = self.driver.find_elements(By.ID, "message") or self.driver.find_elements(
            By.ID, "error"
        )
        return str(found[0].get_attribute("id")) + ":" + found[0].text

    def fill(self, **fields: str) -> None:
        for ident, value in fields.items():
            box = self.by_id(ident)
            box.clear()
            box.send_keys(value)


def _drive(url: str, downloads: Path) -> dict[str, Any]:
    from selenium.webdriver.support.ui import Select

    seen: dict[str, Any] = {}
    desk = Desk(url, downloads)
    try:
        desk.log_in("clerk1")
        desk.open("/console/claims")
        Select(desk.by_id("cert_type")).select_by_value("01")
        desk.fill(
            cert_no=PERSON,
            fixmedins_code=HOSPITAL,
            med_type="11",
            begntime="2026-06-03 08:30:00",
            invoice_nos="FP-WEB-1",
        )
        seen["register"] = desk.press("register")
        claim_no = desk.driver.current_url.rsplit("/", 1)[1].split("?")[0]
        seen["claim_no"] = claim_no
        lines = "\n".join(
            f"{ln['feedetl_sn']}|{ln['medins_list_codg']}|{ln['pric']}|{ln['cnt']}|"
            f"{ln['det_item_fee_sumamt']}|2026-06-03 08:40:00"
            for ln in BIG_LINES
        )
        desk.by_id("lines-text").send_keys(lines)
        seen["lines"] = desk.press("enter-lines")
        seen["clerk_may_review"] = bool(desk.driver.find_elements("id", "review-form"))

        desk.log_in("reviewer1")
        desk.open(f"/console/claims/{claim_no}")
        seen["review"] = desk.press("review")
        desk.log_in("clerk1")
        desk.open(f"/console/claims/{claim_no}")
        seen["settle"] = desk.press("settle")
        desk.log_in("reviewer1")
        desk.open(f"/console/claims/{claim_no}")
        seen["batch_review"] = desk.press("batch-review")
        seen["split"] = {
            row.get_attribute("data-field"): row.find_elements("tag name", "td")[1].text
            for row in desk.driver.find_elements("css selector", "#split tr[data-field]")
        }
        ARTIFACTS.mkdir(exist_ok=True)
        desk.driver.save_screenshot(str(ARTIFACTS / "agency-claim.png"))

        desk.log_in("clerk1")
        desk.open("/console/payouts")
        desk.fill(
            psn_no=PERSON,
            bank_code="102100000001",
            bank_name="工商银行",
            account_no=ACCOUNT,
            holder="演示职工甲",
        )
        desk.by_id("account-reason").send_keys("参保人申请")
        seen["account"] = desk.press("set-account")
        seen["made"] = desk.press("make-batch")
        batch_no = desk.driver.current_url.rsplit("/", 1)[1].split("?")[0]
        seen["batch_no"] = batch_no
        # The maker is no approver: the page offers no approval to a clerk.
        seen["clerk_may_approve"] = bool(desk.driver.find_elements("id", "approve-form"))
        seen["approvals"] = []
        for login in APPROVERS:
            desk.log_in(login)
            desk.open(f"/console/payouts/{batch_no}")
            seen["approvals"].append(desk.press("approve"))
            if login == APPROVERS[0]:
                # The page offers the next level to any approver: the service refuses the one
                # who approved the level before, and the page says why.
                seen["twice"] = desk.press("approve")

        desk.log_in("clerk1")
        desk.open(f"/console/payouts/{batch_no}")
        seen["batch_line"] = desk.by_id("batch").text
        desk.by_id("export").click()
        target = downloads / f"{batch_no}.txt"
        deadline = time.monotonic() + 20
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["downloaded"] = target.read_bytes() if target.exists() else b""
        answer = downloads / "return.txt"
        answer.write_bytes(bank_answers(seen["downloaded"], {}))
        desk.open(f"/console/payouts/{batch_no}")  # now exported: the return form is offered
        desk.by_id("return-file").send_keys(str(answer))
        seen["returned"] = desk.press("import-return")
        seen["items"] = [
            row.get_attribute("data-status")
            for row in desk.driver.find_elements("css selector", "#items tr.item")
        ]
        seen["masked"] = ACCOUNT not in desk.driver.page_source
        desk.driver.save_screenshot(str(ARTIFACTS / "agency-batch.png"))

        desk.open(f"/console/claims/{claim_no}/form")
        seen["form_glyphs"] = cjk_glyphs(desk.driver)
        seen["form_owed"] = desk.by_id("owed").text
        desk.driver.save_screenshot(str(ARTIFACTS / "agency-claim-form.png"))
    finally:
        desk.driver.quit()
    return seen


async def test_agency_console_in_headless_chromium(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    for shot in ("agency-claim.png", "agency-batch.png", "agency-claim-form.png"):
        (ARTIFACTS / shot).unlink(missing_ok=True)
    async with running_gateway(new_database) as srv:
        seen = await asyncio.to_thread(_drive, srv.url, tmp_path)
        claim_no, batch_no = seen["claim_no"], seen["batch_no"]
        assert seen["register"] == f"message:零星报销{claim_no}已登记"
        assert seen["lines"] == f"message:零星报销{claim_no}已录入明细2条"
        assert not seen["clerk_may_review"]
        assert seen["review"] == f"message:零星报销{claim_no}明细已审核"
        assert seen["settle"].startswith(f"message:零星报销{claim_no}已结算，应报销")
        owed = seen["settle"].rsplit("应报销", 1)[1].removesuffix("元")
        assert seen["batch_review"] == f"message:结算审核通过1笔：{claim_no}"
        assert seen["split"]["medfee_sumamt"] == "1625.00"
        assert seen["account"] == f"message:{PERSON}的收款账户已登记为6222***********0011"
        assert seen["made"] == f"message:支付批次{batch_no}已制单：1笔，{owed}元"
        # Made when the page says, in the gateway's local time as every page says a time (found
        # from outside: the batch's time was UTC, cut from its text, beside a Beijing batch no.).
        made_at = await srv.fetchval(
            "SELECT created_at FROM payout_batches WHERE batch_no = $1", batch_no
        )
        assert f"制单 clerk1 {made_at.astimezone():%Y-%m-%d %H:%M:%S}" in seen["batch_line"]
        assert not seen["clerk_may_approve"]
        assert seen["twice"] == ("error:approver1已办理本批次的初审，同一人不能再审批其他级别")
        assert seen["approvals"] == [
            f"message:支付批次{batch_no}{step}通过"
            for step in ("初审", "一级复核", "二级复核", "三级复核")
        ]
        stored = await srv.fetchval("SELECT body FROM payout_files WHERE batch_no = $1", batch_no)
        assert seen["downloaded"] == bytes(stored) and ACCOUNT.encode() in seen["downloaded"]
        assert seen["returned"] == f"message:支付批次{batch_no}回盘：成功1笔{owed}元，失败0笔0.00元"
        assert seen["items"] == ["paid"] and seen["masked"]
        assert seen["form_glyphs"]["rendered"], f"Chinese drawn as boxes: {seen['form_glyphs']}"
        assert f"{owed} 元" in seen["form_owed"]
        # The pages are the ledger's truth.
        assert (
            await srv.fetchval("SELECT status FROM owed_lines WHERE source_ref = $1", claim_no)
            == "paid"
        )
        assert (
            await srv.fetchval("SELECT status FROM payout_batches WHERE batch_no = $1", batch_no)
            == "returned"
        )
        approvers = await srv.fetch(
            "SELECT operator FROM payout_approvals WHERE batch_no = $1 ORDER BY level", batch_no
        )
        assert [r["operator"] for r in approvers] == list(APPROVERS)
        assert await srv.check_ledger() == []
    for shot in ("agency-claim.png", "agency-batch.png", "agency-claim-form.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
