"""Catalog corrections: 3301/3302, 13xx queries, at the counter and in bulk (plan, apply, resume)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway.app.reference import load_reference
from gateway.app.server import Settings, build_app
from gateway.core.model import Accumulators, PersonState, Visit
from gateway.core.settle import apply, settle
from gateway.jobs import corrections
from gateway.ledger import corrections as corrections_store
from gateway.ledger import fees, persons, reference_store
from gateway.ledger.db import create_pool
from tests.integration.agency_helpers import ledger_on, settled_claim
from tests.integration.conftest import GENEROUS, Server

HOSPITAL = "H44180000001"
DRUG = "YP9003"  # the hospital's own code for 阿托伐他汀钙片, a class-B drug
CLASS_B = "XC10AAA140A001010100003"
WRONG_CLASS_A = "XA10BAA020A001010100004"  # 盐酸二甲双胍片, class A: the mistake
ROOT = Path(__file__).resolve().parents[2]


def _mapping(code: str, item: str = DRUG, begndate: str = "2026-01-01") -> dict[str, Any]:
    return {
        "data": {
            "fixmedins_hilist_id": item,
            "fixmedins_hilist_name": "阿托伐他汀钙片",
            "list_type": "101",
            "med_list_codg": code,
            "begndate": begndate,
            "enddate": "2099-12-31",
        }
    }


async def _cli(*args: str) -> tuple[int, str, str]:
    """`python -m gateway …`, read by a thread: on a loaded box the event loop's pipe reader
    handed back the first 64 KiB of a 200-settlement plan, with the command's exit 0 (CI,
    2026-12-06 09:38), where the whole output is there for any plain reader."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _apply_killed_after_its_first_line(dsn: str) -> list[dict[str, Any]]:
    """`corrections apply --json` killed (SIGKILL) as soon as its first line arrives: the lines
    it wrote before it died."""
    command = [sys.executable, "-m", "gateway", "corrections", "apply", "--institution", HOSPITAL,
               "--item", DRUG, "--json", "--database-url", dsn]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        first = await proc.stdout.readline()
    finally:
        proc.kill()
    rest = await proc.stdout.read()
    await proc.wait()
    return [json.loads(line) for line in (first + rest).decode().splitlines() if line.strip()]


async def _visit(
    server: Server, psn_no: str, ipt: str, item: str = DRUG
) -> tuple[str, dict[str, Any]]:
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(psn_no, "310", "2026-05-10 09:00:00", ipt)
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": item,
            "pric": "40",
            "cnt": "2",
            "det_item_fee_sumamt": "80.00",
        },
        {
            "feedetl_sn": "2",
            "medins_list_codg": "ZL0001",
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        },
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, psn_no, lines, "2026-05-10 09:10:00", "B1")}
    )
    out = await his.ok(
        "2207", his.settle_data(psn_no, mdtrt_id, "11", "105.00", "310", "1", chrg_bchno="B1")
    )
    return mdtrt_id, out["setlinfo"]


async def test_catalog_queries_and_revoke(server: Server) -> None:
    his = server.client(HOSPITAL)
    await his.ok("3301", {"catalogcompin": [_mapping(WRONG_CLASS_A, "ZZ0001")["data"]]})
    page = await his.ok(
        "1317", {"data": {"medins_list_codg": "ZZ0001", "page_num": 1, "page_size": 10}}
    )
    assert page["recordCounts"] == 1 and page["data"][0]["med_list_codg"] == WRONG_CLASS_A
    all_mine = await his.ok("1317", {"data": {"page_num": 2, "page_size": 10}})
    assert all_mine["pageNum"] == 2 and all_mine["size"] == 10 and all_mine["recordCounts"] == 28
    assert not all_mine["firstPage"] and all_mine["pages"] == 3
    b = await his.ok("1312", {"data": {"hilist_code": CLASS_B, "page_num": 1, "page_size": 5}})
    assert b["data"][0]["chrgitm_lv"] == "02"
    cap = await his.ok(
        "1318",
        {
            "data": {
                "hilist_code": "002705000010000",
                "insu_admdvs": "441800",
                "page_num": 1,
                "page_size": 5,
            }
        },
    )
    assert cap["data"][0]["hilist_pric_uplmt_amt"] == Decimal("520.000000")  # a JSON number
    ratio = await his.ok(
        "1319",
        {"data": {"hilist_code": CLASS_B, "insu_admdvs": "441800", "page_num": 1, "page_size": 5}},
    )
    assert Decimal(ratio["data"][0]["selfpay_prop"]) == Decimal("0.1")
    # An unknown national code is refused; another institution's mappings are not shown.
    bad = await his.call("3301", _mapping("NO-SUCH-CODE", "ZZ0002"))
    assert bad["infcode"] == -1 and "不存在" in bad["err_msg"]
    other = await server.client("H44180000002").call(
        "1317", {"data": {"fixmedins_code": HOSPITAL, "page_num": 1, "page_size": 5}}
    )
    assert other["infcode"] == -1
    # 3302 revokes: the item is unmapped again at once, and the answer says so.
    revoked = await his.call(
        "3302",
        {
            "data": {
                "fixmedins_code": HOSPITAL,
                "fixmedins_hilist_id": "ZZ0001",
                "list_type": "101",
                "med_list_codg": WRONG_CLASS_A,
            }
        },
    )
    assert revoked["infcode"] == 0, revoked
    assert revoked["warn_msg"] == (
        "项目ZZ0001已无有效对照，其费用按未对照全额自费；如需医保结算请重新上传对照（3301）"
    )
    gone = await his.ok(
        "1317", {"data": {"medins_list_codg": "ZZ0001", "page_num": 1, "page_size": 10}}
    )
    assert gone["recordCounts"] == 0
    again = await his.call(
        "3302",
        {
            "data": {
                "fixmedins_hilist_id": "ZZ0001",
                "list_type": "101",
                "med_list_codg": WRONG_CLASS_A,
            }
        },
    )
    assert again["infcode"] == -1


async def test_a_revoke_names_the_mapping_that_applies_again(server: Server) -> None:
    """Found from outside: revoking the row that had replaced another from before its first day
    brought that one back (1317 had shown it replaced) and priced the lines by it, unannounced.
    A revoke takes its rows away as if never uploaded; its answer names what applies now."""
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A, "ZZ0011", begndate="2026-06-01"))
    await his.ok("3301", _mapping(CLASS_B, "ZZ0011", begndate="2026-05-01"))
    revoke = {"fixmedins_hilist_id": "ZZ0011", "list_type": "101", "med_list_codg": CLASS_B}
    answer = await his.call("3302", {"data": revoke})
    assert answer["infcode"] == 0, answer
    assert answer["warn_msg"] == (
        f"项目ZZ0011撤销后按本机构此前上传、仍未撤销的对照结算：{WRONG_CLASS_A}（2026-06-01起）"
        "（后上传的优先）；2026-05-01至2026-05-31已无有效对照，其间费用按未对照全额自费；"
        "如不应再适用，请一并撤销"
    )
    query = {"medins_list_codg": "ZZ0011", "page_num": 1, "page_size": 10}
    page = await his.ok("1317", {"data": query})
    assert [(r["med_list_codg"], r["vali_flag"]) for r in page["data"]] == [(WRONG_CLASS_A, "1")]


async def test_a_revoke_names_the_days_its_item_is_left_unmapped(server: Server) -> None:
    """Found from outside: a pairing uploaded twice (from 2020 and again from 2025, another
    code between them) was revoked whole, and the answer named the other code's row as what
    applies, not the five years before it now unmapped, their lines all self-pay."""
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(CLASS_B, "ZZ0015", begndate="2020-01-01"))
    await his.ok("3301", _mapping(WRONG_CLASS_A, "ZZ0015", begndate="2025-06-01"))
    await his.ok("3301", _mapping(CLASS_B, "ZZ0015", begndate="2025-06-01"))
    revoke = {"fixmedins_hilist_id": "ZZ0015", "list_type": "101", "med_list_codg": CLASS_B}
    answer = await his.call("3302", {"data": [revoke]})
    assert answer["infcode"] == 0, answer
    assert answer["warn_msg"] == (
        f"项目ZZ0015撤销后按本机构此前上传、仍未撤销的对照结算：{WRONG_CLASS_A}（2025-06-01起）"
        "（后上传的优先）；2020-01-01至2025-05-31已无有效对照，其间费用按未对照全额自费；"
        "如不应再适用，请一并撤销"
    )
    before = {"medins_list_codg": "ZZ0015", "query_date": "2024-03-01", "page_num": 1,
              "page_size": 10}  # fmt: skip
    assert (await his.ok("1317", {"data": before}))["recordCounts"] == 0
    # A revoke that leaves every day it took covered names none.
    await his.ok("3301", _mapping(CLASS_B, "ZZ0016", begndate="2026-01-01"))
    await his.ok("3301", _mapping(WRONG_CLASS_A, "ZZ0016", begndate="2026-03-01"))
    later = {"fixmedins_hilist_id": "ZZ0016", "list_type": "101", "med_list_codg": WRONG_CLASS_A}
    answer = await his.call("3302", {"data": later})
    assert answer["warn_msg"] == (
        f"项目ZZ0016撤销后按本机构此前上传、仍未撤销的对照结算：{CLASS_B}（2026-01-01起）"
        "（后上传的优先）；如不应再适用，请一并撤销"
    )


async def test_an_item_mapped_twice_from_one_day_in_one_upload_is_refused(server: Server) -> None:
    """Found from outside: two national codes for one item from the same begndate in one
    upload were both taken, the last silently winning. The same row twice is one row."""
    his = server.client(HOSPITAL)
    one, other = _mapping(WRONG_CLASS_A, "ZZ0012")["data"], _mapping(CLASS_B, "ZZ0012")["data"]
    refused = await his.call("3301", {"data": [one, other]})
    assert refused["infcode"] == -1
    assert refused["err_msg"] == (
        f"第2条与第1条对照同一项目ZZ0012、同一开始日期2026-01-01，医保目录编码却不同"
        f"（{WRONG_CLASS_A}、{CLASS_B}），请只上传正确的一条"
    )
    page = await his.ok(
        "1317", {"data": {"medins_list_codg": "ZZ0012", "page_num": 1, "page_size": 5}}
    )
    assert page["recordCounts"] == 0  # nothing written
    assert (await his.ok("3301", {"data": [one, one]}))["result"]["count"] == 1


async def test_an_upload_names_a_row_a_later_row_of_it_supersedes_on_all_its_days(
    server: Server,
) -> None:
    """Found from outside: an item's history sent newest first was taken silently, and the
    older row, tried first on every day, priced the lines. Still taken (a client may mean it),
    but the answer names the row that will never be used; an upload in date order names none."""
    his = server.client(HOSPITAL)
    newest = _mapping(CLASS_B, "ZZ0013", begndate="2026-07-01")["data"]
    oldest = _mapping(WRONG_CLASS_A, "ZZ0013")["data"]
    taken = await his.call("3301", {"data": [newest, oldest]})
    assert taken["infcode"] == 0 and taken["output"]["result"]["count"] == 2
    assert taken["warn_msg"] == (
        f"已上传，但对照ZZ0013→{CLASS_B}（2026-07-01起）的全部有效期都被本次上传中排在其后的"
        "对照取代，不会被使用（同一项目以后上传的为准）；如非本意，请按开始日期从早到晚排列后"
        "重新上传"
    )
    query = {"medins_list_codg": "ZZ0013", "query_date": "2026-08-01", "page_num": 1,
             "page_size": 10}  # fmt: skip
    page = await his.ok("1317", {"data": query})
    assert [r["med_list_codg"] for r in page["data"]] == [WRONG_CLASS_A]
    in_order = await his.call("3301", {"data": [{**oldest, "fixmedins_hilist_id": "ZZ0014"},
                                                {**newest, "fixmedins_hilist_id": "ZZ0014"}]})  # fmt: skip
    assert in_order["infcode"] == 0 and in_order["warn_msg"] is None


async def test_a_mapping_superseded_from_its_first_day_is_not_listed_as_valid(
    server: Server,
) -> None:
    """Found from outside: an item mapped again from the same begndate (the correction of a
    wrong mapping) showed both rows valid in a 1317 without query_date; the replaced one is
    never used, so it is listed only to a query for invalid rows (vali_flag 0), flagged 0. A
    row replaced only from a later day is still used before it, and still listed."""
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A, "ZZ0009"))
    await his.ok("3301", _mapping(CLASS_B, "ZZ0009"))  # the same begndate: replaces it whole
    query = {"medins_list_codg": "ZZ0009", "page_num": 1, "page_size": 10}
    page = await his.ok("1317", {"data": query})
    assert [(r["med_list_codg"], r["vali_flag"]) for r in page["data"]] == [(CLASS_B, "1")]
    old = await his.ok("1317", {"data": {**query, "vali_flag": "0"}})
    assert [(r["med_list_codg"], r["vali_flag"]) for r in old["data"]] == [(WRONG_CLASS_A, "0")]
    await his.ok("3301", _mapping(WRONG_CLASS_A, "ZZ0009", begndate="2026-07-01"))
    both = await his.ok("1317", {"data": query})
    # The earlier row up to the day before the later one replaces it (found from outside:
    # listed to 2099 beside it, two valid rows for one item to a client mirroring the table).
    assert [(r["med_list_codg"], r["begndate"], r["enddate"]) for r in both["data"]] == [
        (CLASS_B, "2026-01-01 00:00:00", "2026-06-30 00:00:00"),
        (WRONG_CLASS_A, "2026-07-01 00:00:00", "2099-12-31 00:00:00"),
    ]
    on = await his.ok("1317", {"data": {**query, "query_date": "2026-06-30"}})
    assert [r["med_list_codg"] for r in on["data"]] == [CLASS_B]


async def test_a_change_reaches_another_process_within_two_seconds(server: Server) -> None:
    # A second gateway on the same database, with its own snapshot, as another worker has.
    runner = web.AppRunner(build_app(Settings(server.dsn, config=GENEROUS)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        second = server.client(HOSPITAL)
        second.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        await server.client(HOSPITAL).ok("3301", _mapping(CLASS_B, "ZZ0003"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            page = await second.ok(
                "1317", {"data": {"medins_list_codg": "ZZ0003", "page_num": 1, "page_size": 5}}
            )
            if page["recordCounts"] == 1:
                break
            assert loop.time() - started < 2.0, (
                "the other process did not see the upload within 2 s"
            )
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()


async def test_correction_at_the_counter_links_the_new_settlement(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = "441800000000000003"
    await his.ok("3301", _mapping(WRONG_CLASS_A, "YP8001"))
    mdtrt_id, wrong = await _visit(server, psn, "MZ-COUNTER-1", "YP8001")
    assert Decimal(wrong["preselfpay_amt"]) == 0  # class A by mistake: no first self-pay
    await his.ok(
        "2208", {"data": {"setl_id": wrong["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn}}
    )
    await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": psn}})
    await his.ok("3301", _mapping(CLASS_B, "YP8001"))
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "YP8001",
            "pric": "40",
            "cnt": "2",
            "det_item_fee_sumamt": "80.00",
        },
        {
            "feedetl_sn": "2",
            "medins_list_codg": "ZL0001",
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        },
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, psn, lines, "2026-05-10 10:00:00", "B1")}
    )
    right = (
        await his.ok(
            "2207", his.settle_data(psn, mdtrt_id, "11", "105.00", "310", "1", chrg_bchno="B1")
        )
    )["setlinfo"]
    assert Decimal(right["preselfpay_amt"]) == Decimal("8.00")
    link = await server.fetchval(
        "SELECT replaces_setl_id FROM settlements WHERE setl_id = $1", right["setl_id"]
    )
    assert link == wrong["setl_id"]
    versions = await server.fetch(
        "SELECT snapshot_version, lines->0->>'med_list_codg' AS used FROM settlements WHERE setl_id = ANY($1::text[]) ORDER BY setl_time",
        [wrong["setl_id"], right["setl_id"]],
    )
    assert versions[0]["used"] == WRONG_CLASS_A and versions[1]["used"] == CLASS_B
    assert versions[1]["snapshot_version"] > versions[0]["snapshot_version"]


async def _expected_resettlements(
    dsn: str, items: list[dict[str, Any]], before: dict[str, tuple[int, Accumulators]]
) -> None:
    """Recompute every re-settlement with the rules and the corrected catalog, in apply's order."""
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            snapshot = await reference_store.read_snapshot(
                conn, load_reference(ROOT / "config" / "demo")
            )
            state = dict(before)
            for it in items:
                old = await conn.fetchrow(
                    "SELECT * FROM settlements WHERE setl_id = $1", it["old_setl_id"]
                )
                new = await conn.fetchrow(
                    "SELECT * FROM settlements WHERE setl_id = $1", it["new_setl_id"]
                )
                psn = old["psn_no"]
                balance, acc = state[psn]
                acc = apply(acc, Accumulators(**old["delta"]), -1)
                balance += old["acct_pay"]
                person, _ = await persons.read(conn, psn)
                lines = [ln for ln in await fees.unsettled(conn, old["mdtrt_id"])] or [
                    ln for ln in await _lines_of(conn, it["new_setl_id"], old["mdtrt_id"])
                ]
                visit = Visit(
                    fixmedins_code=HOSPITAL,
                    mdtrt_id=old["mdtrt_id"],
                    med_type=old["med_type"],
                    service_date=old["service_date"],
                    acct_used_flag=old["acct_used_flag"],
                )
                s = settle(
                    snapshot,
                    visit,
                    PersonState(person=person, balance_fen=balance, year=acc),
                    lines,
                )
                for field in (
                    "medfee_sumamt",
                    "preselfpay_amt",
                    "inscp_scp_amt",
                    "act_pay_dedc",
                    "hifp_pay",
                    "fund_pay_sumamt",
                    "acct_pay",
                    "psn_cash_pay",
                    "balc",
                ):
                    assert new[field] == getattr(s, field), (it["old_setl_id"], field)
                state[psn] = (balance - s.acct_pay, apply(acc, s.delta))
    finally:
        await pool.close()


async def _lines_of(conn: asyncpg.Connection, setl_id: str, mdtrt_id: str) -> list[fees.StoredLine]:
    """The fee lines a settlement covers (the same rows its predecessor covered)."""
    found = await conn.fetch(
        "SELECT mdtrt_id, feedetl_sn, chrg_bchno, init_feedetl_sn, psn_no, medins_list_codg, med_list_codg,"
        " pric_micro, cnt, amount_fen, fee_ocur_time, hosp_appr_flag FROM fee_lines"
        " WHERE mdtrt_id = $1 AND setl_id = $2 ORDER BY feedetl_sn",
        mdtrt_id,
        setl_id,
    )
    return [
        fees.StoredLine(
            mdtrt_id=r["mdtrt_id"],
            feedetl_sn=r["feedetl_sn"],
            chrg_bchno=r["chrg_bchno"],
            init_feedetl_sn=r["init_feedetl_sn"],
            psn_no=r["psn_no"],
            medins_list_codg=r["medins_list_codg"],
            med_list_codg=r["med_list_codg"],
            pric_micro=r["pric_micro"],
            cnt=r["cnt"],
            det_item_fee_sumamt=r["amount_fen"],
            fee_ocur_time=r["fee_ocur_time"],
            fee_date=r["fee_ocur_time"].date(),
            hosp_appr_flag=r["hosp_appr_flag"],
        )
        for r in found
    ]


async def test_bulk_correction_plan_apply_resume(server: Server, tmp_path: Path) -> None:
    code, out, err = await _cli("demo", "synth", "--persons", "50", "--database-url", server.dsn)
    assert code == 0, err
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A))
    people = [f"S441800{i:012d}" for i in range(1, 51)]
    settled: list[str] = []
    for round_ in range(4):  # 200 settlements: each person four times, interleaved
        for i, psn in enumerate(people):
            _, info = await _visit(server, psn, f"MZ-BULK-{round_}-{i}")
            settled.append(info["setl_id"])
    await his.ok("3301", _mapping(CLASS_B))  # the correction: same begndate, supersedes the mistake

    before_plan = await server.ledger_fingerprint()
    code, out, err = await _cli(
        "corrections",
        "plan",
        "--institution",
        HOSPITAL,
        "--item",
        DRUG,
        "--json",
        "--database-url",
        server.dsn,
    )
    assert code == 0, err
    planned = json.loads(out)
    assert await server.ledger_fingerprint() == before_plan  # plan changes nothing
    assert [
        r["old_setl_id"] for r in planned["settlements"]
    ] == settled  # original settlement order
    assert len(planned["persons"]) == 50
    assert all(
        Decimal(r["new_setlinfo"]["preselfpay_amt"]) == Decimal("8.00")
        for r in planned["settlements"]
    )

    opening = {
        r["psn_no"]: (
            r["balance_fen"],
            Accumulators(**{k: r[k] for k in Accumulators.__struct_fields__}),
        )
        for r in await server.fetch(
            "SELECT a.psn_no, a.balance_fen, acc.* FROM accounts a JOIN accumulators acc USING (psn_no)"
            " WHERE acc.year = 2026 AND a.psn_no LIKE 'S%'"
        )
    }
    # Killed mid-run: each correction it committed had its line written out first (found from
    # outside: killed after 39 of 44, a run's `--json` output was empty, buffered to the end).
    killed = await _apply_killed_after_its_first_line(server.dsn)
    first_run = await server.fetchval("SELECT count(*) FROM correction_items")
    assert 1 <= len(killed) <= first_run <= len(killed) + 1 and first_run < 200
    assert [r["old_setl_id"] for r in killed] == settled[: len(killed)]
    # Interrupted after 70 more, then resumed: nothing is settled twice.
    code, out, err = await _cli(
        "corrections",
        "apply",
        "--institution",
        HOSPITAL,
        "--item",
        DRUG,
        "--limit",
        "70",
        "--database-url",
        server.dsn,
    )
    assert code == 0, err
    assert await server.fetchval("SELECT count(*) FROM correction_items") == first_run + 70
    report = tmp_path / "corrections.csv"
    code, out, err = await _cli(
        "corrections",
        "apply",
        "--institution",
        HOSPITAL,
        "--item",
        DRUG,
        "--json",
        "--csv",
        str(report),
        "--database-url",
        server.dsn,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 130 - first_run
    assert await server.fetchval("SELECT count(*) FROM correction_items") == 200
    code, out, _ = await _cli(
        "corrections",
        "apply",
        "--institution",
        HOSPITAL,
        "--item",
        DRUG,
        "--json",
        "--database-url",
        server.dsn,
    )
    assert code == 0 and out.strip() == ""  # a third run finds nothing left to do
    assert (
        await server.fetchval(
            "SELECT count(*) FROM settlements WHERE setl_id = ANY($1::text[]) AND status = 'cancelled'",
            settled,
        )
        == 200
    )
    assert (
        await server.fetchval(
            "SELECT count(DISTINCT replaces_setl_id) FROM settlements WHERE replaces_setl_id = ANY($1::text[])",
            settled,
        )
        == 200
    )

    items = [
        dict(r)
        for r in await server.fetch(
            "SELECT c.old_setl_id, c.new_setl_id FROM correction_items c JOIN settlements n ON n.setl_id = c.new_setl_id"
            " ORDER BY n.setl_time, n.setl_id"
        )
    ]
    assert [it["old_setl_id"] for it in items] == settled
    # The plan announced what apply did.
    applied = {r["old_setl_id"]: r for r in rows}
    for p in planned["settlements"][first_run + 70 :]:
        assert applied[p["old_setl_id"]]["new_setlinfo"] == p["new_setlinfo"]
    await _expected_resettlements(server.dsn, items, opening)
    assert await server.check_ledger() == []

    # The agency's report equals the ledger's deltas.
    csv_rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert len(csv_rows) == 130 - first_run
    ledger = (
        await server.fetch(
            "SELECT sum(n.fund_pay_sumamt - o.fund_pay_sumamt) AS fund, sum(n.psn_cash_pay - o.psn_cash_pay) AS cash,"
            " sum(n.acct_pay - o.acct_pay) AS acct FROM correction_items c JOIN settlements o ON o.setl_id = c.old_setl_id"
            " JOIN settlements n ON n.setl_id = c.new_setl_id"
        )
    )[0]
    records = (
        await server.fetch(
            "SELECT sum(fund_delta) AS fund, sum(patient_cash_delta) AS cash, sum(acct_delta) AS acct FROM correction_items"
        )
    )[0]
    assert (records["fund"], records["cash"], records["acct"]) == (
        ledger["fund"],
        ledger["cash"],
        ledger["acct"],
    )
    report_fund = sum(Decimal(r["fund_delta"]) for r in csv_rows) + sum(
        Decimal(r["fund_delta"]) for r in planned["settlements"][: first_run + 70]
    )
    assert report_fund * 100 == ledger["fund"]
    assert ledger["fund"] < 0  # class B costs the fund: money is recovered from the pool

    # The replaced settlement cannot be undone as itself: its replacement still stands for it,
    # and both the cancellation and the reversal of its message say so (found from outside:
    # told "已撤销", a hospital voided the visit while clearing still paid the replacement).
    old = await server.fetch(
        "SELECT o.setl_id, o.mdtrt_id, o.psn_no, o.medins_setl_id, n.setl_id AS new_setl_id"
        " FROM settlements o JOIN settlements n ON n.replaces_setl_id = o.setl_id"
        " WHERE o.setl_id = $1",
        settled[0],
    )
    (first,) = old
    standing = f"已因目录更正重新结算为{first['new_setl_id']}（门诊结算，仍有效）"
    before = await server.ledger_fingerprint()
    cancel = {
        "data": {
            "setl_id": first["setl_id"],
            "mdtrt_id": first["mdtrt_id"],
            "psn_no": first["psn_no"],
        }
    }
    answer = await his.call("2208", cancel)
    assert answer["infcode"] == -1
    assert answer["err_msg"] == (
        f"结算ID{first['setl_id']}{standing}，如需撤销请对结算ID{first['new_setl_id']}发起2208"
    )
    reversal = {
        "data": {"psn_no": first["psn_no"], "omsgid": first["medins_setl_id"], "oinfno": "2207"}
    }
    answer = await his.call("2601", reversal)
    assert answer["infcode"] == -1 and standing in answer["err_msg"], answer["err_msg"]
    after = await server.ledger_fingerprint()
    assert {k: v for k, v in after.items() if k not in ("idempotency",)} == {
        k: v for k, v in before.items() if k not in ("idempotency",)
    }


async def test_monthly_clearing_lists_the_corrections(server: Server) -> None:
    month = await server.fetchval(
        "SELECT to_char(max(applied_at), 'YYYY-MM') FROM correction_items"
    )
    code, out, err = await _cli(
        "clearing", "monthly", "--month", month, "--json", "--database-url", server.dsn
    )
    assert code == 0, err
    hospital = next(r for r in json.loads(out)["institutions"] if r["fixmedins_code"] == HOSPITAL)
    records = (
        await server.fetch(
            "SELECT count(*) AS n, sum(fund_delta) AS fund, sum(patient_cash_delta) AS cash FROM correction_items"
            " WHERE fixmedins_code = $1 AND to_char(applied_at, 'YYYY-MM') = $2",
            HOSPITAL,
            month,
        )
    )[0]
    assert hospital["corrections"]["settlements"] == records["n"] >= 200
    assert Decimal(hospital["corrections"]["fund_delta"]) * 100 == records["fund"]
    assert Decimal(hospital["corrections"]["patient_cash_delta"]) * 100 == records["cash"]


async def test_a_change_is_announced_through_redis(server: Server, redis_url: str) -> None:
    # Two gateways that poll only once a minute: only the Redis announcement can tell them.
    runners = []
    for _ in range(2):
        runner = web.AppRunner(
            build_app(
                Settings(server.dsn, config=GENEROUS, redis_url=redis_url, catalog_poll_seconds=60)
            ),
            access_log=None,
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    try:
        await asyncio.sleep(0.3)  # both subscribed
        writer, reader = (server.client(HOSPITAL) for _ in range(2))
        writer.base_url = f"http://127.0.0.1:{runners[0].addresses[0][1]}"
        reader.base_url = f"http://127.0.0.1:{runners[1].addresses[0][1]}"
        await writer.ok("3301", _mapping(CLASS_B, "ZZ0004"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            page = await reader.ok(
                "1317", {"data": {"medins_list_codg": "ZZ0004", "page_num": 1, "page_size": 5}}
            )
            if page["recordCounts"] == 1:
                break
            assert loop.time() - started < 2.0, "the announcement did not reach the other process"
            await asyncio.sleep(0.05)
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_two_runs_at_once_report_no_false_failures(server: Server) -> None:
    """Found from outside: two apply runs at once over the same settlements, and the second,
    having checked before the first committed, reported every settlement as failed and told
    the operator to cancel the replacement (exit 1), though nothing was left undone. It waits
    for the first run's settlement, sees the replacement and has nothing to do."""
    item, psn = "YP8002", "441800000000000002"
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A, item))
    _, wrong = await _visit(server, psn, "MZ-RACE-1", item)
    await his.ok("3301", _mapping(CLASS_B, item))
    reference = load_reference(ROOT / "config" / "demo")
    pool = await create_pool(server.dsn, min_size=2, max_size=2)
    first, second = await pool.acquire(), await pool.acquire()
    try:
        snapshot = await reference_store.read_snapshot(first, reference)
        found = await corrections.targets(second, snapshot, HOSPITAL, item)
        assert [t.setl_id for t in found] == [wrong["setl_id"]]
        running = first.transaction()
        await running.start()  # the first run has re-settled it and not yet committed
        ahead, _ = await corrections.apply(first, snapshot, found, item, "RUN-1")
        assert len(ahead.items) == 1
        beside = asyncio.create_task(corrections.apply(second, snapshot, found, item, "RUN-2"))
        await asyncio.sleep(0.5)
        assert not beside.done()  # waits for the first run
        await running.commit()
        summary, failed = await asyncio.wait_for(beside, 10)
        assert failed == [] and summary.items == []
        replaced = await corrections_store.corrected_by(second, wrong["setl_id"])
        assert replaced is not None and summary.elsewhere == [(wrong["setl_id"], replaced)]
        assert await corrections.targets(second, snapshot, HOSPITAL, item) == []
    finally:
        await pool.release(first)
        await pool.release(second)
        await pool.close()


@pytest.mark.parametrize("undo", ["2208", "2601"])
async def test_a_settlement_undone_at_the_counter_mid_run_is_not_a_failure(
    server: Server, undo: str
) -> None:
    """Found from outside: a 2601 of a settlement landed while `apply` ran over it, and the run
    reported it failed ("已冲正…视为未发生，无需撤销") and exited 1, over nothing left to
    correct. A target the counter undid since the targets were read is passed over as undone,
    written nowhere, and the run has no failure."""
    item, psn = {"2208": "YP8006", "2601": "YP8007"}[undo], "441800000000000003"
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A, item))
    mdtrt_id, wrong = await _visit(server, psn, f"MZ-UNDONE-{undo}", item)
    msgid = await server.fetchval(
        "SELECT medins_setl_id FROM settlements WHERE setl_id = $1", wrong["setl_id"]
    )
    await his.ok("3301", _mapping(CLASS_B, item))
    reference = load_reference(ROOT / "config" / "demo")
    pool = await create_pool(server.dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            snapshot = await reference_store.read_snapshot(conn, reference)
            found = await corrections.targets(conn, snapshot, HOSPITAL, item)
            assert [t.setl_id for t in found] == [wrong["setl_id"]]
            if undo == "2208":
                data = {"setl_id": wrong["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn}
            else:
                data = {"psn_no": psn, "omsgid": msgid, "oinfno": "2207"}
            await his.ok(undo, {"data": data})
            before = await server.ledger_fingerprint()
            summary, failed = await corrections.apply(conn, snapshot, found, item, "RUN-U")
            assert failed == [] and summary.items == [] and summary.elsewhere == []
            assert summary.undone == [wrong["setl_id"]]
            assert await server.ledger_fingerprint() == before
            assert await corrections.targets(conn, snapshot, HOSPITAL, item) == []
    finally:
        await pool.close()


async def test_a_mapping_whose_list_type_is_not_its_codes_is_refused(server: Server) -> None:
    """Found from outside: a drug's national code (list_type 101) was taken as a service item's
    mapping (201), and 1317 listed the item under a category its code is not."""
    his = server.client(HOSPITAL)
    wrong = _mapping(CLASS_B, "YP8003")
    wrong["data"]["list_type"] = "201"
    refused = await his.call("3301", wrong)
    assert refused["infcode"] == -1, refused
    assert "list_type201" in refused["err_msg"] and "101" in refused["err_msg"]
    assert (
        await server.fetchval(
            "SELECT count(*) FROM catalog_mappings WHERE medins_list_codg = 'YP8003'"
        )
        == 0
    )
    await his.ok("3301", _mapping(CLASS_B, "YP8003"))


async def test_a_page_past_the_end_or_past_nine_digits(server: Server) -> None:
    """Found from outside: page 10^20 was answered endRow 999999999999999999990, past the
    64-bit integer a client parses it into, and above recordCounts."""
    his = server.client(HOSPITAL)
    huge = await his.call("1312", {"data": {"page_num": "1" + "0" * 20, "page_size": 10}})
    assert huge["infcode"] == -1 and "page_num应为正整数" in huge["err_msg"], huge
    past = await his.ok("1312", {"data": {"page_num": "2147483647", "page_size": 10}})
    assert past["size"] == 0 and past["startRow"] == 0 and past["endRow"] == 0
    assert past["recordCounts"] > 0 and past["lastPage"] is True


async def test_1317_on_a_date_lists_the_row_a_settlement_uses(server: Server) -> None:
    """Found from outside: an item uploaded twice, the later upload valid from an earlier date,
    was listed by 1317 with both rows valid on a date both cover, so a HIS that took the other
    row's code had its sale refused ("目录对照不一致"). On a date, 1317 lists the row in force
    (the later upload, as a settlement resolves it); without a date, every row a settlement
    uses on some day: not the earlier upload, replaced from before its first day."""
    his = server.client(HOSPITAL)
    item = "ZZ1317"
    await his.ok("3301", _mapping(WRONG_CLASS_A, item, "2026-12-01"))
    await his.ok("3301", _mapping(CLASS_B, item, "2026-11-01"))
    query = {"medins_list_codg": item, "page_num": 1, "page_size": 10}
    on = await his.ok("1317", {"data": {**query, "query_date": "2026-12-05"}})
    assert [r["med_list_codg"] for r in on["data"]] == [CLASS_B]
    assert on["recordCounts"] == 1
    every = await his.ok("1317", {"data": query})
    assert [r["med_list_codg"] for r in every["data"]] == [CLASS_B]
    never = await his.ok("1317", {"data": {**query, "vali_flag": "0"}})
    assert [(r["med_list_codg"], r["vali_flag"]) for r in never["data"]] == [(WRONG_CLASS_A, "0")]


async def test_1317_lists_a_mapping_again_for_the_days_after_a_bounded_replacement(
    server: Server,
) -> None:
    """Found from outside: a row replaced for five days by an upload with an enddate was listed
    by 1317 as ending the day before them, on a query dated after them too, though settlements
    used it again from the sixth day: a HIS mirroring its table from 1317 would take the item
    for unmapped after the five days. 1317 lists each period a settlement uses a row."""
    his = server.client(HOSPITAL)
    item = "ZZ1318"
    await his.ok("3301", _mapping(CLASS_B, item, "2026-01-01"))
    window = _mapping(WRONG_CLASS_A, item, "2026-12-01")
    window["data"]["enddate"] = "2026-12-05"
    await his.ok("3301", window)
    query = {"medins_list_codg": item, "page_num": 1, "page_size": 10}
    every = await his.ok("1317", {"data": query})
    assert [(r["med_list_codg"], r["begndate"], r["enddate"]) for r in every["data"]] == [
        (CLASS_B, "2026-01-01 00:00:00", "2026-11-30 00:00:00"),
        (WRONG_CLASS_A, "2026-12-01 00:00:00", "2026-12-05 00:00:00"),
        (CLASS_B, "2026-12-06 00:00:00", "2099-12-31 00:00:00"),
    ]
    for day, code, begins in (
        ("2026-11-30", CLASS_B, "2026-01-01 00:00:00"),
        ("2026-12-03", WRONG_CLASS_A, "2026-12-01 00:00:00"),
        ("2026-12-06", CLASS_B, "2026-12-06 00:00:00"),
    ):
        on = await his.ok("1317", {"data": {**query, "query_date": day}})
        assert [(r["med_list_codg"], r["begndate"]) for r in on["data"]] == [(code, begins)], day
    never = await his.ok("1317", {"data": {**query, "vali_flag": "0"}})
    assert never["data"] == []  # each row is used on some day
    # query_date and begndate read as every date field is (found from outside: a one-digit day
    # refused, an offset's time cut to its written day, and begndate ignored).
    for sent in ("2026-12-6", "2026-12-05T16:30:00.000+0000", "20261206"):
        on = await his.ok("1317", {"data": {**query, "query_date": sent}})
        assert [r["begndate"] for r in on["data"]] == ["2026-12-06 00:00:00"], sent
    since = await his.ok("1317", {"data": {**query, "begndate": "2026-12-1"}})
    assert [r["begndate"] for r in since["data"]] == ["2026-12-01 00:00:00", "2026-12-06 00:00:00"]


async def test_a_query_for_invalid_rows_gets_none(server: Server) -> None:
    """Found from outside: vali_flag "0" on 1312 and 1317 returned the valid rows. Every
    catalog, cap and ratio row held is in force, so it gets none; "1" and no flag get them all.
    A mapping replaced from before its first day is never used: 1317 lists it to "0" only."""
    his = server.client(HOSPITAL)
    for infno in ("1312", "1317", "1318", "1319"):
        page = {"page_num": 1, "page_size": 5}
        every = await his.ok(infno, {"data": page})
        valid = await his.ok(infno, {"data": {**page, "vali_flag": "1"}})
        invalid = await his.ok(infno, {"data": {**page, "vali_flag": "0"}})
        assert every["recordCounts"] > 0, infno
        assert valid["recordCounts"] == every["recordCounts"], infno
        if infno != "1317":
            assert (invalid["recordCounts"], invalid["data"]) == (0, []), infno
            continue
        assert all(r["vali_flag"] == "0" for r in invalid["data"]), invalid
        everything = {"page_num": 1, "page_size": 1000}
        used = (await his.ok(infno, {"data": everything}))["data"]
        unused = (await his.ok(infno, {"data": {**everything, "vali_flag": "0"}}))["data"]
        key = [(r["medins_list_codg"], r["med_list_codg"], r["begndate"]) for r in used]
        assert not {
            (r["medins_list_codg"], r["med_list_codg"], r["begndate"]) for r in unused
        } & set(key)


async def test_a_settlement_the_rules_refuse_is_reported_and_never_holds_up_the_rest(
    server: Server, tmp_path: Path
) -> None:
    """Found from outside: a manual claim's settlement (which no correction may re-settle),
    the oldest of a correction's targets, was named on stderr by `plan` while its `--json` said
    `"failed": []` and its `--csv` had no `not_corrected` row; and it used up `apply --limit 1`
    on every run, so a clerk correcting in slices never got past it."""
    item = "YP9103"  # a code of this test's own: no other test's settlements use it
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A, item=item))
    async with ledger_on(server.dsn) as ledger:
        line = {"feedetl_sn": "1", "medins_list_codg": item, "pric": "40", "cnt": "2",
                "det_item_fee_sumamt": "80.00"}  # fmt: skip
        claim = await settled_claim(ledger, "441800000000000002", "2026-05-09", [line], "FP-9103")
    claimed = claim.setl_id
    assert claimed
    visits = [
        (await _visit(server, "441800000000000001", f"MZ-LIMIT-{n}", item))[1]["setl_id"]
        for n in range(2)
    ]
    await his.ok("3301", _mapping(CLASS_B, item=item))

    def args(verb: str, *more: str) -> list[str]:
        return ["corrections", verb, "--institution", HOSPITAL, "--item", item, *more,
                "--database-url", server.dsn]  # fmt: skip

    report = tmp_path / "plan.csv"
    code, out, err = await _cli(*args("plan", "--json", "--csv", str(report)))
    assert code == 1 and f"would fail {claimed}" in err, (code, err)
    planned = json.loads(out)
    assert [r["old_setl_id"] for r in planned["settlements"]] == visits
    assert [f["setl_id"] for f in planned["failed"]] == [claimed], planned["failed"]
    assert "零星报销" in planned["failed"][0]["why"]
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert [(r["old_setl_id"], bool(r["not_corrected"])) for r in rows] == [
        (visits[0], False),
        (visits[1], False),
        (claimed, True),
    ]
    # In slices of one: each run corrects one, the refused one named each time.
    for n, setl_id in enumerate(visits, start=1):
        code, out, err = await _cli(*args("apply", "--limit", "1", "--json"))
        assert code == 1 and f"failed {claimed}" in err, (code, err)
        done = [json.loads(x) for x in out.splitlines() if x.strip()]
        assert [r["old_setl_id"] for r in done] == [setl_id], done
        corrected = "SELECT count(*) FROM correction_items WHERE old_setl_id = ANY($1::text[])"
        assert await server.fetchval(corrected, visits) == n
    code, out, err = await _cli(*args("apply", "--limit", "1", "--json"))
    assert code == 1 and out.strip() == "" and f"failed {claimed}" in err


async def test_a_mid_way_settlement_corrected_under_its_stays_closing_one_is_not_a_finding(
    server: Server,
) -> None:
    """Found by CI's stateful run (seed 1698548396): a stay's mid-way settlement whose item was
    remapped was corrected in bulk while the stay's closing settlement, its own lines unaffected,
    stayed in force. The correction's re-settlement came into force after the closing one, and
    the ledger check named it as a mid-way settlement taken under a closing one, which the
    counter cannot do but a correction does by design (it settles the same lines again at once,
    in the place of the one it replaces)."""
    his = server.client(HOSPITAL)
    item, psn = "YP8011", "441800000000000003"
    await his.ok("3301", _mapping(WRONG_CLASS_A, item))
    admission = {
        "mdtrtinfo": {"psn_no": psn, "insutype": "310", "begntime": "2026-05-01 08:00:00",
                      "mdtrt_cert_type": "01", "mdtrt_cert_no": psn, "med_type": "21",
                      "ipt_no": "ZY-CORR-MID-1"},
        "diseinfo": [],
    }  # fmt: skip
    mdtrt_id = (await his.ok("2401", admission))["result"]["mdtrt_id"]
    drug = {"feedetl_sn": "1", "medins_list_codg": item, "pric": "40", "cnt": "10",
            "det_item_fee_sumamt": "400.00"}  # fmt: skip
    bed = {"feedetl_sn": "2", "medins_list_codg": "ZL0003", "pric": "300", "cnt": "1",
           "det_item_fee_sumamt": "300.00"}  # fmt: skip
    rows = his.fee_rows(mdtrt_id, psn, [drug], "2026-05-02 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    data = his.settle_data(psn, mdtrt_id, "21", "400.00", "310", "0", mid_setl_flag="1")
    mid_way = (await his.ok("2304", data))["setlinfo"]["setl_id"]
    rows = his.fee_rows(mdtrt_id, psn, [bed], "2026-05-03 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    discharge = {
        "dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": psn, "endtime": "2026-05-04 10:00:00"}
    }
    await his.ok("2402", discharge)
    data = his.settle_data(psn, mdtrt_id, "21", "300.00", "310", "0", mid_setl_flag="0")
    closing = (await his.ok("2304", data))["setlinfo"]["setl_id"]
    await his.ok("3301", _mapping(CLASS_B, item))  # the correction of the mistake
    code, out, err = await _cli(
        "corrections", "apply", "--institution", HOSPITAL, "--item", item, "--json",
        "--database-url", server.dsn,
    )  # fmt: skip
    assert code == 0, err
    [done] = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert done["old_setl_id"] == mid_way
    in_force = await server.fetch(
        "SELECT setl_id, mid_setl_flag FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'"
        " ORDER BY in_force_seq",
        mdtrt_id,
    )
    assert [(r["setl_id"], r["mid_setl_flag"]) for r in in_force] == [
        (closing, "0"), (done["new_setl_id"], "1")
    ]  # fmt: skip
    assert await server.check_ledger() == []
