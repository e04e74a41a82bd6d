"""The emergency console and the clearing page in a real headless Chromium (Debian's chromium
and chromium-driver, driven by Selenium): log in, set a rule with a reason, see the state and
the audit row change, clear it again; the Chinese on both pages is drawn with real glyphs."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.jobs import clearing
from tests.browser.glyphs import cjk_glyphs
from tests.integration.conftest import running_gateway
from tests.integration.emergency_helpers import set_rule
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _driver(env: Mapping[str, str] | None = None) -> Any:
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
    # The driver is named explicitly: Selenium Manager never downloads anything.
    return webdriver.Chrome(service=Service(executable_path=chromedriver, env=env), options=options)


def _drive(url: str, behind_the_page: Callable[[], None]) -> dict[str, Any]:
    """Blocking browser work (run in a thread so the in-process gateway keeps serving);
    `behind_the_page` changes the rule the page shows, as another operator would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    seen: dict[str, Any] = {}
    driver = _driver()
    try:
        wait = WebDriverWait(driver, 15)
        driver.get(url + "/console")
        wait.until(ec.presence_of_element_located((By.ID, "login-form")))
        seen["redirected_to_login"] = driver.current_url.endswith("/console/login")
        seen["glyphs"] = cjk_glyphs(driver)
        driver.find_element(By.ID, "operator").send_keys("duty")
        driver.find_element(By.ID, "password").send_keys("duty-2026")
        driver.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "state")))
        seen["state_before"] = driver.find_element(By.ID, "state").text

        driver.find_element(By.ID, "scope").send_keys("region:330300")
        Select(driver.find_element(By.ID, "class")).select_by_value("settlement")
        Select(driver.find_element(By.ID, "action")).select_by_value("defer")
        driver.find_element(By.ID, "reason").send_keys("温州实时结算停机演练")
        driver.find_element(By.ID, "set").click()
        wait.until(ec.presence_of_element_located((By.ID, "message")))
        seen["state_after_set"] = driver.find_element(By.ID, "state").text
        seen["rules_after_set"] = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#rules tr.rule")
        ]
        seen["audit_after_set"] = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#audit tr.audit-row")
        ]
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "console.png"))

        # Clearing without a reason is refused on the page; with one it returns to normal.
        row = driver.find_element(By.CSS_SELECTOR, '#rules tr.rule[data-scope="region:330300"]')
        row.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(ec.presence_of_element_located((By.ID, "error")))
        seen["clear_without_reason"] = driver.find_element(By.ID, "error").text
        # Another operator changes the rule while this page shows `defer`: its clear is refused
        # (found from outside: it cleared the other's `reject` and said "已恢复正常").
        behind_the_page()
        row = driver.find_element(By.CSS_SELECTOR, '#rules tr.rule[data-scope="region:330300"]')
        row.find_element(By.NAME, "reason").send_keys("以为仍是暂存")
        row.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(ec.staleness_of(row))  # the answer's page, not this one's earlier error
        wait.until(ec.presence_of_element_located((By.ID, "error")))
        seen["clear_stale"] = driver.find_element(By.ID, "error").text
        seen["rules_after_stale"] = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#rules tr.rule")
        ]
        row = driver.find_element(By.CSS_SELECTOR, '#rules tr.rule[data-scope="region:330300"]')
        row.find_element(By.NAME, "reason").send_keys("演练结束")
        row.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(ec.presence_of_element_located((By.ID, "message")))
        seen["state_after_clear"] = driver.find_element(By.ID, "state").text
        seen["audit_after_clear"] = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#audit tr.audit-row")
        ]
    finally:
        driver.quit()
    return seen


async def test_console_in_headless_chromium(new_database: Callable[..., Any]) -> None:
    async with running_gateway(new_database) as srv:
        loop = asyncio.get_running_loop()

        def behind_the_page() -> None:
            changed = set_rule(
                srv.dsn, "region:330300", "settlement", "reject", "另一值班员改为拒绝"
            )
            asyncio.run_coroutine_threadsafe(changed, loop).result(timeout=15)

        seen = await asyncio.to_thread(_drive, srv.url, behind_the_page)
        assert seen["redirected_to_login"]
        assert seen["glyphs"]["rendered"], f"Chinese drawn as boxes: {seen['glyphs']}"
        assert seen["state_before"].startswith("normal")
        assert seen["state_after_set"].startswith("degraded")
        (rule,) = seen["rules_after_set"]
        assert rule[:2] == ["region:330300", "settlement"]
        assert (
            rule[2].startswith("defer") and rule[3] == "温州实时结算停机演练" and rule[4] == "duty"
        )
        newest = seen["audit_after_set"][0]
        assert newest[2:6] == [
            "duty",
            "plan.set",
            "region:330300/settlement",
            "温州实时结算停机演练",
        ]
        assert "原因" in seen["clear_without_reason"]
        stale = seen["clear_stale"]
        assert "已于" in stale and "由test设为reject" in stale and "请刷新页面" in stale, stale
        (rule,) = seen["rules_after_stale"]  # refused: the other's rule stands, shown now
        assert rule[2].startswith("reject") and rule[3] == "另一值班员改为拒绝", rule
        assert seen["state_after_clear"].startswith("normal")
        newest = seen["audit_after_clear"][0]
        assert newest[2:6] == ["duty", "plan.clear", "region:330300/settlement", "演练结束"]
        # The page is the ledger's truth: the rule and both audit rows are in the database.
        rows = await srv.fetch("SELECT action, operator, reason FROM audit_log ORDER BY audit_id")
        assert [tuple(r.values()) for r in rows] == [
            ("plan.set", "duty", "温州实时结算停机演练"),
            ("plan.set", "test", "另一值班员改为拒绝"),
            ("plan.clear", "duty", "演练结束"),
        ]
        assert await srv.fetchval("SELECT count(*) FROM plan_rules") == 0
        assert (ARTIFACTS / "console.png").stat().st_size > 10_000


def _render(page: Path, screenshot: Path | None, env: Mapping[str, str] | None = None) -> Any:
    """Open a local page, judge its Chinese glyphs, and optionally keep a screenshot."""
    driver = _driver(env)
    try:
        driver.get(page.as_uri())
        glyphs = cjk_glyphs(driver)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return glyphs
    finally:
        driver.quit()


async def test_clearing_page_draws_its_chinese(new_database: Callable[..., Any]) -> None:
    """The monthly clearing page, as the gateway renders it for printing, after a real sale."""
    today = dt.date.today()
    async with running_gateway(new_database) as srv:
        pos = HisClient(srv.session, srv.url, "P44180000001")
        lines = [
            {
                "feedetl_sn": "1",
                "medins_list_codg": "YP0007",
                "pric": "9.9",
                "cnt": "2",
                "det_item_fee_sumamt": "19.80",
            }
        ]
        # An hour ago, not a fixed hour of today: a run after midnight found 09:00 in the future.
        sold = (dt.datetime.now() - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        sale = pos.drug_input("441800000000000001", sold, "19.80", lines)
        await pos.ok("2102", sale)
        conn = await asyncpg.connect(srv.dsn)
        try:
            report = await clearing.monthly(conn, today.strftime("%Y-%m"))
        finally:
            await conn.close()
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "clearing-page.html"
    page.write_text(clearing.to_html(report), encoding="utf-8")
    assert "清远演示大药房" in page.read_text(encoding="utf-8")
    shot = ARTIFACTS / "clearing-page.png"
    shot.unlink(missing_ok=True)
    glyphs = await asyncio.to_thread(_render, page, shot)
    assert glyphs["rendered"], f"Chinese drawn as boxes: {glyphs}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_boxes_are_told_from_glyphs(tmp_path: Path) -> None:
    """The judge itself: Chromium given only a Latin font draws every Chinese character as the
    same box, and the page is found wanting."""
    latin = [
        d
        for d in (
            Path("/usr/share/fonts/truetype/dejavu"),
            Path("/usr/share/fonts/truetype/liberation"),
        )
        if d.is_dir()
    ]
    if not latin:
        pytest.skip("no Latin-only font directory to build a font configuration without CJK")
    dirs = "".join(f"<dir>{d}</dir>" for d in latin)
    conf = tmp_path / "fonts.conf"
    conf.write_text(
        f'<?xml version="1.0"?><fontconfig>{dirs}<cachedir>{tmp_path / "cache"}</cachedir>'
        "</fontconfig>",
        encoding="utf-8",
    )
    page = tmp_path / "page.html"
    page.write_text(
        '<!doctype html><html><head><meta charset="utf-8"></head>'
        "<body style=\"font-family: 'Noto Sans CJK SC', sans-serif\">医保结算</body></html>",
        encoding="utf-8",
    )
    without_cjk = _render(page, None, env={**os.environ, "FONTCONFIG_FILE": str(conf)})
    assert not without_cjk["rendered"] and without_cjk["distinct_shapes"] == 1, without_cjk
