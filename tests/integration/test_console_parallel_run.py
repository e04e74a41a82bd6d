"""The console's parallel-run view: the difference rates by category, institution and hour, the
items that differ most, and each difference's two answers side by side; the page and its JSON
for any operator, nothing for a visitor, a clear refusal for a period that cannot be read."""

from __future__ import annotations

import datetime as dt
import json

import aiohttp

from gateway.ledger import db
from gateway.ledger import shadow as store
from tests.integration.conftest import Server
from tests.integration.test_console import OPERATOR, VIEWER, _login

PHARMACY = "P44180000001"
HOSPITAL = "H44180000001"


def _comparison(msgid: str, *, code: str, category: str, differs: bool) -> store.Comparison:
    answer = json.dumps({"output": {"setlinfo": {"hifp_pay": "12.00", "note": "<b>x</b>"}}})
    # An amount as a JSON number with its two decimals, as centres write them.
    theirs = '{"output": {"setlinfo": {"hifp_pay": "6.00", "medfee_sumamt": 19.80}}}'
    return store.Comparison(
        answered_by="gateway",
        fixmedins_code=code,
        admdvs="441800",
        infno="2102",
        shadow_infno="2101",
        msgid=msgid,
        med_type="41",
        category=category,
        differs=differs,
        cause="catalog_class" if differs else None,
        item="YP0003" if differs else None,
        request="{}" if differs else None,
        answer=answer if differs else None,
        shadow_answer=theirs if differs else None,
        diagnosis={"summary": "目录类别不一致"} if differs else None,
        differences=(("catalog_class", "line 1", "YP0003", "chrgitm_lv", "02", "01"),)
        if differs
        else (),
    )


async def test_the_parallel_run_page_and_its_json(server: Server) -> None:
    pool = await db.create_pool(server.dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await store.insert(
                conn, _comparison("M1", code=PHARMACY, category="pharmacy", differs=True)
            )
            await store.insert(
                conn, _comparison("M2", code=PHARMACY, category="pharmacy", differs=False)
            )
            await store.insert(
                conn, _comparison("M3", code=HOSPITAL, category="outpatient", differs=False)
            )
    finally:
        await pool.close()

    async with server.session.get(server.url + "/api/parallel-run") as r:
        assert r.status == 401  # a visitor sees nothing
    token = await _login(server, VIEWER)  # read-only operators may look
    auth = {"Authorization": f"Bearer {token}"}
    async with server.session.get(server.url + "/api/parallel-run", headers=auth) as r:
        assert r.status == 200
        view = await r.json()
    by_category = {row["key"]: row for row in view["by_category"]}
    assert by_category["pharmacy"] == {
        "key": "pharmacy",
        "compared": 2,
        "differing": 1,
        "rate": "50.00%",
    }
    assert by_category["outpatient"]["differing"] == 0
    assert {row["key"]: row["differing"] for row in view["by_institution"]} == {
        PHARMACY: 1,
        HOSPITAL: 0,
    }
    assert sum(b["compared"] for b in view["by_hour"]) == 3
    [item] = view["worst_items"]
    assert (item["fixmedins_code"], item["item"], item["cause"]) == (
        PHARMACY,
        "YP0003",
        "catalog_class",
    )
    assert (item["answered"], item["shadowed"]) == ("02", "01")
    [difference] = view["differences"]
    assert difference["msgid"] == "M1"
    assert json.loads(difference["answer"])["output"]["setlinfo"]["hifp_pay"] == "12.00"
    assert json.loads(difference["shadow_answer"])["output"]["setlinfo"]["hifp_pay"] == "6.00"

    # A period before the comparisons shows none; one that cannot be read is refused.
    past = {"from": "2020-01-01", "to": "2020-01-02"}
    async with server.session.get(server.url + "/api/parallel-run", headers=auth, params=past) as r:
        assert r.status == 200 and (await r.json())["by_category"] == []
    bad = {"from": "yesterday"}
    async with server.session.get(server.url + "/api/parallel-run", headers=auth, params=bad) as r:
        assert r.status == 400 and "时间yesterday无效" in (await r.json())["error"]

    async with server.session.get(server.url + "/console/parallel-run", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/login"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(server.url + "/console/login", data=OPERATOR) as r:
            assert r.status == 200 and "/console/parallel-run" in await r.text()
        async with browser.get(server.url + "/console/parallel-run") as r:
            assert r.status == 200
            html = await r.text()
    assert "并行比对" in html and "YP0003" in html and "50.00%" in html
    # Both answers side by side, escaped.
    assert html.count('<div class="pair">') == 1
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    # Its numbers as they were written (found from outside: 19.80 was shown as 19.8).
    assert "&quot;medfee_sumamt&quot;: 19.80" in html, html
    assert dt.date.today().isoformat()[:4] in html
