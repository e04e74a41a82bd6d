"""Day-end reconciliation (3201, 9101 → 3202 → 9102) and the monthly clearing report."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import io
import json
import re
import shutil
import sys
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, refusal_words

HOSPITAL = "H44180000002"
# An institution of their own for the tests that upload files (each institution's uploads are
# paced) and whose day's totals no other test reads.
UPLOADER = REFUNDER = "H44180000001"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EMPLOYEES = ["441800000000000001", "441800000000000003"]


async def _visit(
    his: HisClient, psn_no: str, n: int, price: str, msgid: str | None = None
) -> dict[str, Any]:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    mdtrt_id = await his.register(psn_no, "310", now, f"MZ-REC-{n}")
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0005",
            "pric": price,
            "cnt": "1",
            "det_item_fee_sumamt": price,
        }
    ]
    await his.ok("2204", {"feedetail": his.fee_rows(mdtrt_id, psn_no, lines, now, "B1")})
    out = await his.ok(
        "2207",
        his.settle_data(psn_no, mdtrt_id, "11", price, "310", "1", chrg_bchno="B1"),
        msgid=msgid,
    )
    info = out["setlinfo"]
    assert isinstance(info, dict)
    return info


async def _cancel(his: HisClient, settled: dict[str, Any]) -> None:
    """2208 of a settlement `_visit` made."""
    keys = ("setl_id", "mdtrt_id", "psn_no")
    await his.ok("2208", {"data": {k: settled[k] for k in keys}})


@pytest.fixture(scope="module")
async def day(server: Server) -> list[dict[str, Any]]:
    """A day at one hospital: six settlements, one of them refunded (its record removed)."""
    his = server.client(HOSPITAL)
    settled = [await _visit(his, EMPLOYEES[i % 2], i, f"{60 + i * 7}.50") for i in range(6)]
    gone = settled.pop(2)
    await _cancel(his, gone)
    return settled


def _totals(rows: list[dict[str, Any]]) -> dict[str, str]:
    def total(field: str) -> str:
        return f"{sum(Decimal(r[field]) for r in rows):.2f}"

    return {
        "medfee_sumamt": total("medfee_sumamt"),
        "fund_pay_sumamt": total("fund_pay_sumamt"),
        "acct_pay": total("acct_pay"),
        "cash_payamt": total("psn_cash_pay"),
        "fixmedins_setl_cnt": str(len(rows)),
    }


def _stmt(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    today = dt.date.today().isoformat()
    t = _totals(rows)
    return {
        "data": {
            "insutype": "310",
            "clr_type": "11",
            "setl_optins": "441800",
            "stmt_begndate": today,
            "stmt_enddate": today,
            "medfee_sumamt": t["medfee_sumamt"],
            "fund_pay_sumamt": t["fund_pay_sumamt"],
            "acct_pay": t["acct_pay"],
            "cash_payamt": t["cash_payamt"],
            "fixmedins_setl_cnt": t["fixmedins_setl_cnt"],
            **extra,
        }
    }


async def test_a_day_reconciles(server: Server, day: list[dict[str, Any]]) -> None:
    his = server.client(HOSPITAL)
    out = await his.ok("3201", _stmt(day))
    assert out["stmtinfo"]["stmt_rslt"] == "0", out["stmtinfo"]["stmt_rslt_dscr"]
    assert out["stmtinfo"]["setl_optins"] == "441800"


async def test_a_day_sent_as_a_utc_moment_is_that_moments_day(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: a date was its first ten characters, so a Java client's midnight
    of today in Beijing written in UTC ("…T16:00:00.000+0000" of yesterday) reconciled
    yesterday. Here the moment is early today in the gateway's zone, written in a zone where
    it is still yesterday."""
    his = server.client(HOSPITAL)
    early = dt.datetime.combine(dt.date.today(), dt.time(0, 30)).astimezone()
    behind = early.astimezone(dt.timezone(dt.timedelta(hours=-10)))
    assert behind.date() < early.date()
    sent = behind.strftime("%Y-%m-%dT%H:%M:%S.000-1000")
    out = await his.ok("3201", _stmt(day, stmt_begndate=sent, stmt_enddate=sent))
    assert out["stmtinfo"]["stmt_rslt"] == "0", out["stmtinfo"]["stmt_rslt_dscr"]
    junk = await his.call("3201", _stmt(day, stmt_begndate=f"{dt.date.today()}xyz"))
    assert junk["infcode"] == -1 and "stmt_begndate" in junk["err_msg"], junk


@pytest.mark.parametrize("count", ["-1", "１", "1_0", "1.0", True])
async def test_a_settlement_count_that_is_not_one_isrefusal_words(
    server: Server, day: list[dict[str, Any]], count: object
) -> None:
    # Found from outside: -1 was taken and answered "医药机构上报-1笔".
    answer = await server.client(HOSPITAL).call("3201", _stmt(day, fixmedins_setl_cnt=count))
    assert answer["infcode"] == -1 and "fixmedins_setl_cnt应为非负整数" in answer["err_msg"]


async def test_a_missing_settlement_is_found_and_named(
    server: Server, day: list[dict[str, Any]]
) -> None:
    his = server.client(HOSPITAL)
    lost = day[1]
    kept = [r for r in day if r is not lost]
    before = await _mismatches(server)
    totals = await his.ok("3201", _stmt(kept))
    assert totals["stmtinfo"]["stmt_rslt"] == "1"  # 中心多
    assert "中心" in totals["stmtinfo"]["stmt_rslt_dscr"]
    up = await _upload_detail(his, kept)
    stmt = _stmt(kept, file_qury_no=up["file_qury_no"])
    info = (await his.ok("3202", stmt))["fileinfo"]
    # 9102 answers the zip itself, not an envelope.
    import msgspec

    env = his.envelope(
        "9102",
        {
            "fsDownloadIn": {
                "file_qury_no": info["file_qury_no"],
                "filename": info["filename"],
                "fixmedins_code": HOSPITAL,
            }
        },
    )
    status, body = await his.post_raw(msgspec.json.encode(env))
    assert status == 200 and body[:2] == b"PK"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    by_setl = {r["setl_id"]: r for r in rows}
    assert by_setl[lost["setl_id"]]["stmt_rslt"] == "1"
    assert by_setl[lost["setl_id"]]["msgid"] == lost["medins_setl_id"]
    assert Decimal(by_setl[lost["setl_id"]]["medfee_sumamt"]) == Decimal(lost["medfee_sumamt"])
    assert all(by_setl[r["setl_id"]]["stmt_rslt"] == "0" for r in kept)
    assert len(rows) == len(day)
    assert await _mismatches(server) >= before + 2
    # Another institution cannot read this file.
    other = server.client("H44180000001")
    refused = await other.call(
        "9102",
        {"fsDownloadIn": {"file_qury_no": info["file_qury_no"], "filename": info["filename"]}},
    )
    assert refused["infcode"] == -1


async def test_changed_amount_is_inconsistent(server: Server, day: list[dict[str, Any]]) -> None:
    his = server.client(HOSPITAL)
    stmt = _stmt(day)
    stmt["data"]["medfee_sumamt"] = (
        f"{Decimal(stmt['data']['medfee_sumamt']) + Decimal('0.01'):.2f}"
    )
    out = await his.ok("3201", stmt)
    assert out["stmtinfo"]["stmt_rslt"] == "3"


async def _mismatches(server: Server) -> float:
    async with server.session.get(server.url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf'sgw_reconcile_mismatches_total\{{fixmedins_code="{HOSPITAL}"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def test_monthly_report_equals_the_ledger_and_prints(
    server: Server, day: list[dict[str, Any]]
) -> None:
    month = dt.date.today().strftime("%Y-%m")
    ARTIFACTS.mkdir(exist_ok=True)
    html_path, csv_path = ARTIFACTS / "clearing.html", ARTIFACTS / "clearing.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "clearing",
        "monthly",
        "--month",
        month,
        "--json",
        "--csv",
        str(csv_path),
        "--html",
        str(html_path),
        "--database-url",
        server.dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    ledger = await server.fetch(
        "SELECT fixmedins_code, count(*) AS n, sum(medfee_sumamt) AS medfee, sum(hifp_pay) AS hifp,"
        " sum(acct_pay) AS acct, sum(psn_cash_pay) AS cash, sum(fund_pay_sumamt + acct_pay) AS declared"
        " FROM settlements WHERE status = 'settled' AND to_char(setl_time, 'YYYY-MM') = $1 GROUP BY fixmedins_code",
        month,
    )
    assert ledger
    got = {r["fixmedins_code"]: r["total"] for r in report["institutions"]}
    assert set(got) == {r["fixmedins_code"] for r in ledger}
    for row in ledger:
        total = got[row["fixmedins_code"]]
        assert total["visits"] == row["n"]
        assert Decimal(total["medfee_sumamt"]) * 100 == row["medfee"]
        assert Decimal(total["hifp_pay"]) * 100 == row["hifp"]
        assert Decimal(total["acct_pay"]) * 100 == row["acct"]
        assert Decimal(total["psn_cash_pay"]) * 100 == row["cash"]
        assert Decimal(total["declared"]) * 100 == row["declared"]
    hospital = next(r for r in report["institutions"] if r["fixmedins_code"] == HOSPITAL)
    assert hospital["total"]["visits"] == len(day)  # the refunded one is not cleared
    assert "元" in hospital["declared_in_words"]
    assert csv_path.read_text(encoding="utf-8").count(HOSPITAL) == len(hospital["lines"]) + 1
    page = html_path.read_text(encoding="utf-8")
    assert "<svg" in page and "申报金额合计（大写）" in page and "@media print" in page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (make system-deps installs it)")
    png = ARTIFACTS / "clearing.png"
    png.unlink(missing_ok=True)
    shot = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={ARTIFACTS / 'chromium-profile'}",
        "--window-size=1400,1000",
        f"--screenshot={png}",
        html_path.as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(shot.communicate(), 90)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # a rendered page, not an empty canvas


async def _upload_detail(
    his: HisClient, rows: list[dict[str, Any]], owner: str = HOSPITAL
) -> dict[str, Any]:
    """9101 of a detail file of `rows`, as the HIS writes it: tab-separated, zipped, Base64 in
    fsUploadIn.in; the upload's output."""
    detail = "".join(
        f"{r['setl_id']}\t{r['mdtrt_id']}\t{r['psn_no']}\t{r['medfee_sumamt']}\t{r['fund_pay_sumamt']}\t{r['acct_pay']}\t{r.get('refd_setl_flag', '0')}\n"
        for r in rows
    )
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("detail.txt", detail)
    upload = {
        "fsUploadIn": {
            "in": base64.b64encode(packed.getvalue()).decode(),
            "filename": "detail.zip",
            "fixmedins_code": owner,
        }
    }
    if owner in (his.fixmedins_code, "441800"):
        return await his.ok("9101", upload)
    return await his.call("9101", upload)


async def _detail_compared(
    server: Server,
    rows: list[dict[str, Any]],
    declared: list[dict[str, Any]],
    institution: str = HOSPITAL,
    **extra: Any,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """9101 a detail file of `rows`, 3202 with the totals of `declared`: the 3202 output and
    the result file's rows (9102). Each institution's uploads are paced (at least 1 MiB each,
    a burst of 8): a test with uploads of its own takes an institution of its own."""
    import msgspec

    his = server.client(institution)
    up = await _upload_detail(his, rows, owner=institution)
    out = await his.ok("3202", _stmt(declared, file_qury_no=up["file_qury_no"], **extra))
    info = out["fileinfo"]
    env = his.envelope(
        "9102",
        {"fsDownloadIn": {"file_qury_no": info["file_qury_no"], "filename": info["filename"]}},
    )
    status, body = await his.post_raw(msgspec.json.encode(env))
    assert status == 200 and body[:2] == b"PK"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    return out, list(csv.DictReader(io.StringIO(text), delimiter="\t"))


async def test_a_settlement_listed_twice_is_reported_not_dropped(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: a detail file listing one settlement twice, with totals that count it
    twice, was answered 成功 with every row 对平 and the repeat gone from the result."""
    listed = [*day, day[0]]
    out, rows = await _detail_compared(server, listed, listed)
    assert len(rows) == len(listed)
    again = [r for r in rows if r["setl_id"] == day[0]["setl_id"]]
    assert sorted(r["stmt_rslt"] for r in again) == ["0", "2"]
    assert any("重复" in r["memo"] for r in again)
    # The whole comparison's result, beside the file, as 3201 words it.
    stmt = out["stmtinfo"]
    assert stmt["stmt_rslt"] == "2" and stmt["setl_optins"] == "441800"
    assert stmt["stmt_rslt_dscr"]


async def test_totals_the_file_does_not_make_are_told_in_the_answer(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: a right file with totals declaring one settlement more was answered
    成功, the mismatch recorded where the institution could not see it."""
    extra = {**day[0], "setl_id": "NOT-IN-THE-FILE"}
    out, rows = await _detail_compared(server, day, [*day, extra])
    assert all(r["stmt_rslt"] == "0" for r in rows)
    assert out["stmtinfo"]["stmt_rslt"] == "2", out["stmtinfo"]
    # 3202 declares cash, not the account (found from outside: its words gave the institution
    # an account total of 0.00 it never sent).
    words = out["stmtinfo"]["stmt_rslt_dscr"]
    cash = _totals([*day, extra])["cash_payamt"]
    assert f"医药机构上报{len(day) + 1}笔" in words and f"现金支付{cash}" in words, words
    assert "个人账户" not in words
    # It points at its own result file, not at 3202 (found from outside).
    assert "9102" in words and "3202" not in words, words
    balanced, _ = await _detail_compared(server, day, day)
    assert balanced["stmtinfo"]["stmt_rslt"] == "0", balanced["stmtinfo"]


async def test_a_listed_settlement_the_period_does_not_count_is_told_why(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: a cancelled settlement listed in the file was "医药机构有此结算，中心
    没有", though the centre holds it; so was any settlement of another day or group. The memo
    says why it is not counted; an id the centre does not hold keeps the old words."""
    his = server.client(HOSPITAL)
    cancelled = await _visit(his, EMPLOYEES[0], 90, "33.50")
    await _cancel(his, cancelled)
    unknown = {**day[0], "setl_id": "441800NOSUCHSETTLEMENT"}
    _, rows = await _detail_compared(server, [*day, cancelled, unknown], day)
    memo = {r["setl_id"]: (r["stmt_rslt"], r["memo"]) for r in rows}
    assert memo[cancelled["setl_id"]][0] == "2"
    assert "已撤销" in memo[cancelled["setl_id"]][1]
    # The flag it names is the request's, said so (found from outside: "（退费结算标志为0）"
    # beside the row's own flag 1 read as a contradiction).
    assert "对账请求的退费结算标志（refd_setl_flag）为0" in memo[cancelled["setl_id"]][1]
    assert memo[unknown["setl_id"]] == ("2", "医药机构有此结算，中心没有")
    # The centre holds the cancelled settlement: its row carries its msgid and the amounts the
    # centre holds (found from outside: an empty msgid and 0.00s, protocol §2.7's row says
    # both); an id the centre does not hold has neither.
    held = {r["setl_id"]: r for r in rows}
    assert held[cancelled["setl_id"]]["msgid"] == cancelled["medins_setl_id"]
    assert cancelled["medins_setl_id"].startswith(HOSPITAL)
    centre_amounts = [k for k in held[cancelled["setl_id"]] if k.endswith("medfee_sumamt")]
    assert len(centre_amounts) == 1, held[cancelled["setl_id"]]
    assert Decimal(held[cancelled["setl_id"]][centre_amounts[0]]) == cancelled["medfee_sumamt"]
    assert held[unknown["setl_id"]]["msgid"] == ""
    assert held[unknown["setl_id"]][centre_amounts[0]] == "0.00"


async def test_a_file_owned_by_the_institutions_region_is_its_own(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: openhis fills fsUploadIn.fixmedins_code with its setl_optins (the
    region's code) and every upload was refused; the region of the institution sending it names
    no other institution. Another institution's code is still refused."""
    his = server.client(UPLOADER)
    mine = [await _visit(his, EMPLOYEES[0], 95, "21.50")]
    up = await _upload_detail(his, mine, owner="441800")
    out = await his.ok("3202", _stmt(mine, file_qury_no=up["file_qury_no"]))
    # Compared as the institution's own file (the day holds the other tests' settlements too).
    assert out["fileinfo"]["file_qury_no"] and out["stmtinfo"]["setl_optins"] == "441800"
    for other in (HOSPITAL, "520500"):
        refused = await _upload_detail(his, mine, owner=other)
        assert refused["infcode"] == -1 and "文件所属机构" in refused["err_msg"], refused
    # An older openhis sends the 3202's clr_type there (found from outside: refused): it names
    # no one else's file. (Another hospital of the region: each upload is charged to its
    # institution's upload budget, which this one's four have used.)
    up = await _upload_detail(server.client("H44180000003"), mine, owner="11")
    assert up["infcode"] == 0 and up["output"]["file_qury_no"], up


async def test_a_refund_booked_as_negative_amounts_is_told_how_the_centre_counts_it(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: a HIS writing a refunded settlement's row as negative amounts, as
    the file's rule for rows flagged 1 allows, was told only that its amounts differed: with
    refd_setl_flag 1 the centre counts a refunded settlement once, by its original amounts, and
    the memo says so. Written with the original amounts, the row balances."""
    his = server.client(REFUNDER)
    refunded = await _visit(his, EMPLOYEES[1], 91, "44.50")
    await _cancel(his, refunded)
    negative = {
        **refunded,
        "refd_setl_flag": "1",
        **{k: f"-{refunded[k]}" for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")},
    }
    _, rows = await _detail_compared(server, [negative], [refunded], REFUNDER, refd_setl_flag="1")
    [row] = [r for r in rows if r["setl_id"] == refunded["setl_id"]]
    assert (row["stmt_rslt"], row["refd_setl_flag"]) == ("3", "1"), row
    assert "退费标志为1的行请填写原结算的正数金额" in row["memo"], row
    as_counted = {**refunded, "refd_setl_flag": "1"}
    _, rows = await _detail_compared(server, [as_counted], [refunded], REFUNDER, refd_setl_flag="1")
    [row] = [r for r in rows if r["setl_id"] == refunded["setl_id"]]
    assert (row["stmt_rslt"], row["memo"]) == ("0", ""), row


async def test_a_reversed_settlement_is_not_counted_as_refunded(server: Server) -> None:
    """Found from outside: with refd_setl_flag 1, a 2207 a 2601 reversed was counted beside the
    refunded ones ("中心多"), though a reversal (冲正) undoes the message as if it never came and
    the HIS keeps no record of it. A 2208's cancellation is still counted with flag 1."""
    his = server.client("H44180000003")
    kept = await _visit(his, EMPLOYEES[0], 70, "41.50")
    refunded = await _visit(his, EMPLOYEES[1], 71, "52.50")
    await _cancel(his, refunded)
    msgid = his.msgid()
    reversed_ = await _visit(his, EMPLOYEES[0], 72, "63.50", msgid=msgid)
    await his.ok("2601", {"data": {"psn_no": EMPLOYEES[0], "omsgid": msgid, "oinfno": "2207"}})
    in_force = await his.ok("3201", _stmt([kept], refd_setl_flag="0"))
    assert in_force["stmtinfo"]["stmt_rslt"] == "0", in_force["stmtinfo"]
    with_refunds = await his.ok("3201", _stmt([kept, refunded], refd_setl_flag="1"))
    assert with_refunds["stmtinfo"]["stmt_rslt"] == "0", with_refunds["stmtinfo"]
    # Counted, the reversed one would make the centre's side the larger.
    counted = await his.ok("3201", _stmt([kept, refunded, reversed_], refd_setl_flag="1"))
    assert counted["stmtinfo"]["stmt_rslt"] == "2", counted["stmtinfo"]


async def _as_the_centre_counts(
    server: Server, institution: str, *, refunded: bool
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The institution's day as the centre counts it for `_stmt`'s period (the rows of a detail
    file listing each settlement as the centre holds it, flagged as the centre does), and the
    totals of that period, as 3202 declares them."""
    import asyncpg

    from gateway.ledger import reconciliations

    today = dt.date.today()
    period = reconciliations.Period(
        institution, "441800", today, today, "310", "11", include_refunded=refunded
    )
    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await reconciliations.centre_rows(conn, period)
        totals = await reconciliations.centre_totals(conn, period)
    finally:
        await conn.close()

    def yuan(fen: int) -> str:
        return f"{Decimal(fen) / 100:.2f}"

    listed = [
        {
            "setl_id": r.setl_id,
            "mdtrt_id": r.mdtrt_id,
            "psn_no": r.psn_no,
            "medfee_sumamt": yuan(r.medfee_sumamt),
            "fund_pay_sumamt": yuan(r.fund_pay_sumamt),
            "acct_pay": yuan(r.acct_pay),
            "refd_setl_flag": "1" if r.refunded else "0",
        }
        for r in rows
    ]
    declared = {
        "fixmedins_setl_cnt": str(totals.count),
        "medfee_sumamt": yuan(totals.medfee_sumamt),
        "fund_pay_sumamt": yuan(totals.fund_pay_sumamt),
        "cash_payamt": yuan(totals.cash_payamt),
    }
    return listed, declared


async def test_cancelled_settlements_listed_as_in_force_are_not_balanced(server: Server) -> None:
    """Found from outside: with refd_setl_flag 1, two settlements the centre had cancelled
    (2208) listed in the file as normal ones (flag 0, their amounts: the hospital believes them
    in force) were answered 对平, every row 0 with an empty memo. Each is 数据不一致, its memo
    telling the clerk to book the refund, and the whole answer does not say balanced. A row
    flagged 1 for a settlement in force is told the other way round."""
    his = server.client(REFUNDER)
    kept = await _visit(his, EMPLOYEES[0], 80, "31.50")
    gone = [await _visit(his, EMPLOYEES[i % 2], 81 + i, f"3{i}.50") for i in range(2)]
    for settled in gone:
        await _cancel(his, settled)
    listed, declared = await _as_the_centre_counts(server, REFUNDER, refunded=True)
    cancelled = {r["setl_id"] for r in gone}
    as_the_hospital_has_it = [
        {**r, "refd_setl_flag": "0"} if r["setl_id"] in cancelled else r for r in listed
    ]
    out, rows = await _detail_compared(
        server, as_the_hospital_has_it, [], REFUNDER, refd_setl_flag="1", **declared
    )
    by_setl = {r["setl_id"]: r for r in rows}
    for setl_id in cancelled:
        row = by_setl[setl_id]
        assert (row["stmt_rslt"], row["refd_setl_flag"]) == ("3", "1"), row
        assert "中心此结算已撤销" in row["memo"] and "登记退费" in row["memo"], row
    assert by_setl[kept["setl_id"]]["stmt_rslt"] == "0", by_setl[kept["setl_id"]]
    stmt = out["stmtinfo"]
    assert stmt["stmt_rslt"] == "3", stmt
    assert "对平" not in stmt["stmt_rslt_dscr"] and "2笔明细不一致" in stmt["stmt_rslt_dscr"], stmt
    # The other way round: a settlement in force, listed as refunded.
    flagged = [
        {**r, "refd_setl_flag": "1"} if r["setl_id"] == kept["setl_id"] else r for r in listed
    ]
    out, rows = await _detail_compared(
        server, flagged, [], REFUNDER, refd_setl_flag="1", **declared
    )
    [row] = [r for r in rows if r["setl_id"] == kept["setl_id"]]
    assert (row["stmt_rslt"], row["refd_setl_flag"]) == ("3", "0"), row
    assert "中心此结算为正常结算" in row["memo"], row
    assert out["stmtinfo"]["stmt_rslt"] == "3", out["stmtinfo"]
    # Listed as the centre holds them, they balance.
    out, rows = await _detail_compared(server, listed, [], REFUNDER, refd_setl_flag="1", **declared)
    assert all(r["stmt_rslt"] == "0" for r in rows), rows
    assert out["stmtinfo"]["stmt_rslt"] == "0", out["stmtinfo"]


async def test_equal_totals_with_differing_rows_give_the_totals_and_the_result_file(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: 3202 with flag 0 answered only "总额一致但有8笔明细不一致"; its
    stmtinfo words the whole comparison as 3201 does and sends the clerk to 9102."""
    listed, declared = await _as_the_centre_counts(server, HOSPITAL, refunded=False)
    assert len(listed) >= len(day)
    wrong = [{**r, "mdtrt_id": "MZ-NOT-THIS-ONE"} for r in listed]
    out, rows = await _detail_compared(server, wrong, [], HOSPITAL, **declared)
    assert all(r["stmt_rslt"] == "3" for r in rows), rows
    stmt = out["stmtinfo"]
    words = stmt["stmt_rslt_dscr"]
    assert stmt["stmt_rslt"] == "3", stmt
    assert f"{len(listed)}笔明细不一致" in words and "9102" in words, words
    assert f"现金支付{declared['cash_payamt']}" in words, words
    assert f"医疗费总额{declared['medfee_sumamt']}" in words, words


async def test_a_period_or_agency_no_settlement_can_be_in_isrefusal_words(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: setl_optins of no region the centre clears, a period beginning after
    today and codes the ledger never writes were answered "医药机构多：中心0笔". Another region
    whose insured the centre settles is a clearing agency of the institution's (clr_optins is
    the insured region): answered."""
    his = server.client(HOSPITAL)
    before = await server.fetchval("SELECT count(*) FROM reconciliations")
    message = refusal_words(await his.call("3201", _stmt(day, setl_optins="110000")))
    assert "setl_optins“110000”" in message and "441800" in message, message
    remote = await his.ok("3201", _stmt([], setl_optins="520500"))
    assert remote["stmtinfo"]["stmt_rslt"] == "0", remote["stmtinfo"]
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    ahead = _stmt(day, stmt_begndate=tomorrow, stmt_enddate=tomorrow)
    message = refusal_words(await his.call("3201", ahead))
    today = dt.date.today().isoformat()
    assert f"对账开始日期stmt_begndate（{tomorrow}）晚于今天（{today}）" in message, message
    message = refusal_words(await his.call("3201", _stmt(day, insutype="999")))
    assert "险种类型insutype为“999”" in message and "310" in message, message
    message = refusal_words(await his.call("3201", _stmt(day, clr_type="9902")))
    assert "清算类别clr_type为“9902”" in message and "11" in message, message
    # A day-end that walks every 险种 and 清算类别 of its own declares nothing under one the
    # centre does not settle: balanced, not refused (its day-end would stop there).
    for code in ({"insutype": "320"}, {"clr_type": "9902"}):
        nothing = await his.ok("3201", _stmt([], **code))
        assert nothing["stmtinfo"]["stmt_rslt"] == "0", nothing["stmtinfo"]
    # 3202 reads its period first (before its file).
    detail = _stmt(day, file_qury_no="NO-SUCH-FILE", setl_optins="110000")
    message = refusal_words(await his.call("3202", detail))
    assert "setl_optins“110000”" in message, message
    # Nothing written for a refused request; the answered one is recorded.
    assert await server.fetchval("SELECT count(*) FROM reconciliations") == before + 3


async def test_a_settlement_count_of_too_many_digits_names_the_length(
    server: Server, day: list[dict[str, Any]]
) -> None:
    """Found from outside: 11 digits were refused "应为非负整数"; the interface's count has 10."""
    his = server.client(HOSPITAL)
    message = refusal_words(await his.call("3201", _stmt(day, fixmedins_setl_cnt="99999999999")))
    assert "fixmedins_setl_cnt" in message and "超过接口规定的10位" in message, message
    answered = await his.ok("3201", _stmt(day, fixmedins_setl_cnt="9999999999"))
    assert answered["stmtinfo"]["stmt_rslt"] == "2", answered["stmtinfo"]


async def test_a_refund_booked_as_a_second_row_is_told_how_the_centre_counts_it(
    server: Server,
) -> None:
    """A HIS's own book of a refunded settlement: its original row (flag 0), then its refund
    row of negative amounts (flag 1). Found from outside: the refund row was told only that
    the settlement was listed twice (alone, or first, it was told to write the original
    amounts); it is told how the centre counts the refund, the original row that its flag must
    be 1. (Last in the module: its visit would count in the earlier tests' days of H44180000003,
    taken because uploads are paced per institution.)"""
    his = server.client("H44180000003")
    refunded = await _visit(his, EMPLOYEES[0], 93, "44.50")
    await _cancel(his, refunded)
    negative = {
        **refunded,
        "refd_setl_flag": "1",
        **{k: f"-{refunded[k]}" for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")},
    }
    original = {**refunded, "refd_setl_flag": "0"}
    _, rows = await _detail_compared(
        server, [original, negative], [refunded], "H44180000003", refd_setl_flag="1"
    )
    first, again = [r for r in rows if r["setl_id"] == refunded["setl_id"]]
    assert "退费结算标志填1" in first["memo"], first
    assert again["memo"].startswith("医药机构明细文件重复列出此结算：此行为退费冲销行"), again
