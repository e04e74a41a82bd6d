"""The ledger split by pooling region: each region's money in its own database.

Three databases on the test PostgreSQL stand for the main database and two ledger clusters
(毕节 520500 in one, 温州 330300 in the other; 清远 441800 stays in the main one). The same
requests are sent to a gateway over the split ledger and to one over a single database: the
answers' money must be the same, and each settlement must be in its insured region's database
and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.national.envelope import Request, decode_request
from gateway.jobs.reconcile import BALANCED
from gateway.ledger import db
from gateway.ledger.partitions import Partition, Partitions
from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    cli,
)
from tests.integration.his_client import HisClient, decode
from tests.integration.split_helpers import (
    BIJIE,
    BIJIE_WORKER,
    MONEY,
    PHARMACY_OF,
    QINGYUAN,
    QINGYUAN_WORKER,
    WENZHOU,
    WENZHOU_RETIREE,
    Split,
    split_gateway,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def split(new_database: Callable[..., Any]) -> AsyncIterator[Split]:
    async with split_gateway(new_database) as made:
        yield made


@pytest.fixture(scope="module")
async def single(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database) as srv:
        yield srv


async def test_persons_live_in_their_regions_database_and_the_directory_knows_all(
    split: Split,
) -> None:
    main = await split.rows(split.srv.dsn, "SELECT DISTINCT insuplc_admdvs FROM persons")
    assert {r[0] for r in main} == {QINGYUAN}
    for region, dsn in split.clusters.items():
        held = await split.rows(dsn, "SELECT DISTINCT insuplc_admdvs FROM persons")
        assert {r[0] for r in held} == {region}
        accounts = await split.rows(dsn, "SELECT count(*) FROM accounts")
        assert accounts[0][0] == 2
    directory = await split.rows(
        split.srv.dsn, "SELECT insuplc_admdvs, count(*) FROM person_directory GROUP BY 1"
    )
    assert dict((r[0], r[1]) for r in directory) == {QINGYUAN: 7, BIJIE: 2, WENZHOU: 2}


def _sale(pos: HisClient, psn_no: str) -> dict[str, Any]:
    return pos.drug_input(psn_no, "2026-07-01 10:00:00", DRUG_TOTAL, DRUG_LINES)


async def _sell(srv: Server, region: str, psn_no: str, **kw: Any) -> dict[str, Any]:
    pos = srv.client(PHARMACY_OF[region], region)
    answer = await pos.ok("2102", _sale(pos, psn_no), **kw)
    setlinfo = answer["setlinfo"]
    assert isinstance(setlinfo, dict)
    return setlinfo


@pytest.mark.parametrize(
    "region,psn_no",
    [(BIJIE, BIJIE_WORKER), (WENZHOU, WENZHOU_RETIREE), (QINGYUAN, QINGYUAN_WORKER)],
)
async def test_a_sale_is_settled_in_its_insured_regions_database_with_the_same_money(
    split: Split, single: Server, region: str, psn_no: str
) -> None:
    there = await _sell(split.srv, region, psn_no)
    alone = await _sell(single, region, psn_no)
    assert {k: there[k] for k in MONEY} == {k: alone[k] for k in MONEY}
    where = await split.holding(
        "SELECT count(*) FROM settlements WHERE setl_id = $1", there["setl_id"]
    )
    assert where == ["main" if region == QINGYUAN else f"cluster {region}"]
    journaled = await split.holding(
        "SELECT count(*) FROM idempotency WHERE fixmedins_code = $1", PHARMACY_OF[region]
    )
    assert journaled == where


async def test_a_sale_without_the_insured_region_is_routed_by_the_directory(
    split: Split, single: Server
) -> None:
    """A POS that leaves insuplc_admdvs empty: the person's region comes from the directory."""
    setl = await _sell(split.srv, WENZHOU, WENZHOU_RETIREE, insuplc_admdvs="")
    alone = await _sell(single, WENZHOU, WENZHOU_RETIREE, insuplc_admdvs="")
    assert {k: setl[k] for k in MONEY} == {k: alone[k] for k in MONEY}
    assert await split.holding(
        "SELECT count(*) FROM settlements WHERE setl_id = $1", setl["setl_id"]
    ) == [f"cluster {WENZHOU}"]


async def test_1101_by_id_card_without_a_region_finds_the_person_in_their_cluster(
    split: Split,
) -> None:
    his = split.srv.client("H44180000001")
    ask = {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "330302195209093333"}}
    out = await his.ok("1101", ask, insuplc_admdvs="")
    assert out["baseinfo"]["psn_no"] == WENZHOU_RETIREE
    assert out["insuinfo"][0]["insuplc_admdvs"] == WENZHOU


async def _hospital_visit(
    srv: Server,
    psn_no: str,
    region: str,
    ipt_otp_no: str,
    day: str,
    lines: list[dict[str, Any]],
    total: str,
) -> dict[str, Any]:
    """2201 → 2204 → 2207 at a 清远 hospital, every call naming `region` as the insured's."""
    his = srv.client("H44180000001")
    remote = {"insuplc_admdvs": region}
    reg = await his.ok(
        "2201",
        {"data": {"psn_no": psn_no, "insutype": "310", "begntime": f"{day} 09:00:00",
                  "mdtrt_cert_type": "01", "mdtrt_cert_no": psn_no, "ipt_otp_no": ipt_otp_no,
                  "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01", "dept_name": "内科",
                  "caty": "A03"}},
        **remote,
    )  # fmt: skip
    mdtrt_id = reg["data"]["mdtrt_id"]
    rows = his.fee_rows(mdtrt_id, psn_no, lines, f"{day} 09:10:00", "B1")
    await his.ok("2204", {"feedetail": rows}, **remote)
    data = his.settle_data(psn_no, mdtrt_id, "11", total, "310", "1", chrg_bchno="B1")
    setlinfo = (await his.ok("2207", data, **remote))["setlinfo"]
    assert isinstance(setlinfo, dict)
    return setlinfo


async def _remote_visit(srv: Server, ipt_otp_no: str) -> dict[str, Any]:
    """A 毕节 worker treated at a 清远 hospital: every call names the insured region 520500."""
    return await _hospital_visit(
        srv, BIJIE_WORKER, BIJIE, ipt_otp_no, "2026-07-02", OUTPATIENT_LINES, OUTPATIENT_TOTAL
    )


async def test_a_visit_away_from_home_commits_in_the_insured_regions_cluster(
    split: Split, single: Server
) -> None:
    there = await _remote_visit(split.srv, "MZ-REMOTE-1")
    alone = await _remote_visit(single, "MZ-REMOTE-1")
    assert {k: there[k] for k in MONEY} == {k: alone[k] for k in MONEY}
    for table, key, value in (
        ("encounters", "mdtrt_id", there["mdtrt_id"]),
        ("fee_lines", "mdtrt_id", there["mdtrt_id"]),
        ("settlements", "setl_id", there["setl_id"]),
    ):
        held = await split.holding(f"SELECT count(*) FROM {table} WHERE {key} = $1", value)
        assert held == [f"cluster {BIJIE}"], table


@pytest.mark.parametrize("named", [QINGYUAN, "999999", "abcdef"])
async def test_a_remote_patients_visit_under_another_region_settles_in_their_cluster(
    split: Split, single: Server, named: str
) -> None:
    """Found from outside: a HIS that fills insuplc_admdvs with its own region (or a wrong one)
    had a 毕节 patient's registration refused as "人员编号…不存在，请重新读卡" by the split
    ledger, though 1101 had found them and one database settles them. A request naming a
    person goes to the person's region."""
    args = (BIJIE_WORKER, named, f"MZ-NAMED-{named}", "2026-07-03")
    there = await _hospital_visit(split.srv, *args, OUTPATIENT_LINES, OUTPATIENT_TOTAL)
    alone = await _hospital_visit(single, *args, OUTPATIENT_LINES, OUTPATIENT_TOTAL)
    assert {k: there[k] for k in MONEY} == {k: alone[k] for k in MONEY}
    held = await split.holding(
        "SELECT count(*) FROM settlements WHERE setl_id = $1", there["setl_id"]
    )
    assert held == [f"cluster {BIJIE}"]


async def test_a_sale_under_another_region_settles_once_and_its_retry_finds_it(
    split: Split, single: Server
) -> None:
    pos = split.srv.client(PHARMACY_OF[WENZHOU], WENZHOU)
    body = msgspec.json.encode(
        pos.envelope("2102", _sale(pos, WENZHOU_RETIREE), insuplc_admdvs=QINGYUAN)
    )
    first = await pos.post_raw(body)
    again = await pos.post_raw(body)
    assert (await single.client(PHARMACY_OF[WENZHOU], WENZHOU).post_raw(body))[0] == 200
    assert first[0] == again[0] == 200 and first[1] == again[1], decode(first[1])
    setl_id = decode(first[1])["output"]["setlinfo"]["setl_id"]
    held = await split.holding("SELECT count(*) FROM settlements WHERE setl_id = $1", setl_id)
    assert held == [f"cluster {WENZHOU}"]


async def test_with_the_directory_away_a_request_goes_only_where_its_person_is(
    split: Split,
) -> None:
    """Found from outside: the main database away, a sale sent with another region's
    insuplc_admdvs for a person the process had not met was refused as "no such person" in that
    region's database, the refusal kept; the main database back, its retry settled in the
    person's: two answers to one message. The envelope's region takes a request only where the
    person is; elsewhere the directory's outage is the caller's to retry."""
    pools = {
        name: await db.create_pool(dsn, min_size=1, max_size=2)
        for name, dsn in (("main", split.srv.dsn), ("bijie", split.clusters[BIJIE]),
                          ("wenzhou", split.clusters[WENZHOU]))
    }  # fmt: skip
    await pools["main"].close()  # the main database's outage: every acquire fails
    try:
        ledgers = Partitions(
            Partition("main", pools["main"]),
            [
                Partition("bijie", pools["bijie"], frozenset({BIJIE})),
                Partition("wenzhou", pools["wenzhou"], frozenset({WENZHOU})),
            ],
        )
        pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)

        def sale(region: str) -> Request:
            body = pos.envelope("2102", _sale(pos, BIJIE_WORKER), insuplc_admdvs=region)
            return decode_request(msgspec.json.encode(body))

        assert (await ledgers.of_request(sale(BIJIE), 1.0)).name == "bijie"
        for elsewhere in (WENZHOU, QINGYUAN):
            with pytest.raises(db.UNAVAILABLE):
                await ledgers.of_request(sale(elsewhere), 1.0)
    finally:
        for pool in pools.values():
            await pool.close()


async def test_synthetic_persons_of_a_cluster_are_made_up_to_their_number(
    split: Split, tmp_path: Path
) -> None:
    """Found from outside: a second `demo synth` for a split region counted the region's persons
    in the main database, which its cluster had taken, and failed on the directory's key; it
    said "N in all" where more were there; it made persons of a region nothing knows, and took
    a negative number."""
    config = str(split.config_file(tmp_path))
    args = ("demo", "synth", "--region", BIJIE, "--database-url", split.srv.dsn, "--config", config)
    assert (
        "added 3 synthetic persons in region 520500 (3 there now)"
        in cli(*args, "--persons", "3").stdout
    )
    assert (
        "added 2 synthetic persons in region 520500 (5 there now)"
        in cli(*args, "--persons", "5").stdout
    )
    assert (
        "added 0 synthetic persons in region 520500 (5 there now)"
        in cli(*args, "--persons", "4").stdout
    )
    nowhere = cli(
        "demo",
        "synth",
        "--region",
        "999999",
        "--persons",
        "2",
        "--database-url",
        split.srv.dsn,
        check=False,
    )
    assert (
        nowhere.returncode == 2
        and "region 999999 is not one the reference data knows" in nowhere.stderr
    )
    negative = cli(*args, "--persons", "-5", check=False)
    assert negative.returncode == 2 and "应为正整数" in negative.stderr
    held = await split.rows(
        split.clusters[BIJIE], "SELECT count(*) FROM persons WHERE psn_no LIKE 'S520500%'"
    )
    assert held[0][0] == 5


async def test_a_retry_reaches_the_same_cluster_and_gets_its_stored_answer(
    split: Split, single: Server
) -> None:
    pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)
    body = msgspec.json.encode(pos.envelope("2102", _sale(pos, BIJIE_WORKER)))
    first = await pos.post_raw(body)
    again = await pos.post_raw(body)
    # The same sale at the single-database gateway: both ledgers keep the same history.
    assert (await single.client(PHARMACY_OF[BIJIE], BIJIE).post_raw(body))[0] == 200
    assert first[0] == again[0] == 200 and first[1] == again[1]
    setl_id = decode(first[1])["output"]["setlinfo"]["setl_id"]
    rows = await split.rows(
        split.clusters[BIJIE], "SELECT count(*) FROM settlements WHERE setl_id = $1", setl_id
    )
    assert rows[0][0] == 1


async def test_5203_by_setl_id_alone_finds_a_settlement_in_a_cluster(
    split: Split, single: Server
) -> None:
    """A query naming neither the insured region nor the person: looked for in every database."""
    setl = await _sell(split.srv, BIJIE, BIJIE_WORKER)
    pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)
    ask = {"data": {"setl_id": setl["setl_id"], "mdtrt_id": "", "psn_no": ""}}
    out = await pos.ok("5203", ask, insuplc_admdvs="")
    assert out["setlinfo"]["setl_id"] == setl["setl_id"]
    other = split.srv.client("P44180000001")
    refused = await other.call("5203", ask, insuplc_admdvs="")  # not this pharmacy's
    assert refused["infcode"] == -1 and "未查询到" in refused["err_msg"]
    await _sell(single, BIJIE, BIJIE_WORKER)  # the same history in both ledgers


async def test_every_database_balances(split: Split) -> None:
    assert await split.findings() == {}


async def _local_visit(srv: Server, ipt_otp_no: str) -> None:
    his = srv.client("H44180000001")
    begntime = "2026-07-02 10:00:00"
    mdtrt_id = await his.register(QINGYUAN_WORKER, "310", begntime, ipt_otp_no)
    rows = his.fee_rows(mdtrt_id, QINGYUAN_WORKER, OUTPATIENT_LINES, begntime, "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(
        QINGYUAN_WORKER, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1"
    )
    await his.ok("2207", data)


_TODAYS = (
    "SELECT clr_optins, count(*), coalesce(sum(medfee_sumamt), 0), coalesce(sum(fund_pay_sumamt), 0),"
    " coalesce(sum(acct_pay), 0) FROM settlements WHERE fixmedins_code = 'H44180000001'"
    " AND insutype = '310' AND clr_type = '11' AND status = 'settled'"
    " AND setl_time >= current_date GROUP BY clr_optins"
)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


async def test_3201_counts_the_institutions_settlements_in_every_database(
    split: Split, single: Server
) -> None:
    """An institution reconciles everything it settled, whichever database holds each patient's
    money: the split gateway's answer is the single one's."""
    for srv in (split.srv, single):
        await _remote_visit(srv, "MZ-REMOTE-3201")
        await _local_visit(srv, "MZ-LOCAL-3201")
    totals: dict[str, list[int]] = {}
    holding: set[str] = set()
    for name, dsn in split.everywhere().items():
        for r in await split.rows(dsn, _TODAYS):
            holding.add(name)
            sums = totals.setdefault(r[0], [0, 0, 0, 0])
            for i in range(4):
                sums[i] += int(r[i + 1])
    assert len(holding) >= 2, holding  # the institution's settlements are in two databases
    today = dt.date.today().isoformat()
    for optins, (count, medfee, fund, acct) in totals.items():
        stmt = {"data": {"insutype": "310", "clr_type": "11", "setl_optins": optins,
                         "stmt_begndate": today, "stmt_enddate": today,
                         "medfee_sumamt": _yuan(medfee), "fund_pay_sumamt": _yuan(fund),
                         "acct_pay": _yuan(acct), "fixmedins_setl_cnt": str(count)}}  # fmt: skip
        for srv in (split.srv, single):
            out = await srv.client("H44180000001").ok("3201", stmt)
            assert out["stmtinfo"]["stmt_rslt"] == BALANCED, (optins, out)


async def test_readiness_names_each_clusters_breaker(split: Split) -> None:
    async with split.srv.session.get(split.srv.url + "/readyz") as r:
        ready = await r.json()
    assert r.status == 200
    assert ready["ledger_clusters"] == {"bijie": "closed", "wenzhou": "closed"}


async def test_ids_drawn_by_different_databases_never_collide(split: Split) -> None:
    """Each cluster draws its 就诊ID and 结算ID serials from its own range (the main database
    from 0): a 清远 hospital's visits of 清远 and 毕节 patients share its region and date."""
    numbers = {
        r[0]: r[1]
        for r in await split.rows(split.srv.dsn, "SELECT name, number FROM ledger_numbers")
    }
    assert sorted(numbers) == ["bijie", "wenzhou"] and len(set(numbers.values())) == 2
    seen: dict[str, list[str]] = {"setl_id": [], "mdtrt_id": []}
    for name, dsn in split.everywhere().items():
        cluster = name.removeprefix("cluster ")
        number = 0 if name == "main" else numbers[{BIJIE: "bijie", WENZHOU: "wenzhou"}[cluster]]
        for kind, table in (("setl_id", "settlements"), ("mdtrt_id", "encounters")):
            ids = [r[0] for r in await split.rows(dsn, f"SELECT {kind} FROM {table}")]
            assert ids, (name, kind)
            assert all(i[14:16] == f"{number:02d}" for i in ids), (name, ids[:3])
            # In every database a visit's serial is odd and a settlement's even (migration 037).
            odd = kind == "mdtrt_id"
            assert all(int(i[-12:]) % 2 == odd for i in ids), (name, kind, ids[:3])
            seen[kind] += ids
    for ids in seen.values():
        assert len(ids) == len(set(ids))
    assert not set(seen["setl_id"]) & set(seen["mdtrt_id"])


async def test_the_monthly_clearing_sums_every_database(
    split: Split, single: Server, tmp_path: Path
) -> None:
    """The month's clearing table over the split ledger is the single ledger's: the same
    settlements (each test here sends its requests to both gateways), summed across the
    databases."""
    for srv in (split.srv, single):
        await _remote_visit(srv, "MZ-REMOTE-CLR")
        await _sell(srv, BIJIE, BIJIE_WORKER)
        await _sell(srv, WENZHOU, WENZHOU_RETIREE)
    config = split.config_file(tmp_path)
    month = dt.date.today().strftime("%Y-%m")
    args = ("clearing", "monthly", "--month", month, "--json")
    there = json.loads(cli(*args, "--database-url", split.srv.dsn, "--config", str(config)).stdout)
    alone = json.loads(cli(*args, "--database-url", single.dsn).stdout)
    differing = [
        (a, b) for a, b in zip(there["institutions"], alone["institutions"], strict=False) if a != b
    ]
    assert there == alone, differing
    codes = {r["fixmedins_code"] for r in there["institutions"]}
    assert {"H44180000001", "P52050000001", "P33030000001"} <= codes


# Last in the module: it changes a mapping of H44180000001 in both gateways.
DRUG = "YP9003"  # the hospital's own code of 阿托伐他汀钙片 (class B)
CLASS_B, WRONG_CLASS_A = "XC10AAA140A001010100003", "XA10BAA020A001010100004"


def _drug_mapping(code: str) -> dict[str, Any]:
    return {"data": {"fixmedins_hilist_id": DRUG, "fixmedins_hilist_name": "阿托伐他汀钙片",
                     "list_type": "101", "med_list_codg": code, "begndate": "2026-01-01",
                     "enddate": "2099-12-31"}}  # fmt: skip


async def _drug_visit(srv: Server, psn_no: str, region: str, ipt_otp_no: str) -> str:
    lines = [{"feedetl_sn": "1", "medins_list_codg": DRUG, "pric": "40", "cnt": "2",
              "det_item_fee_sumamt": "80.00"}]  # fmt: skip
    setlinfo = await _hospital_visit(srv, psn_no, region, ipt_otp_no, "2026-05-10", lines, "80.00")
    return str(setlinfo["setl_id"])


async def test_a_bulk_catalog_correction_reaches_every_database(
    split: Split, single: Server, tmp_path: Path
) -> None:
    """A wrong mapping applied to a 清远 patient (main database) and a 毕节 patient (毕节's
    cluster): the correction plans and re-settles both, as the single-database gateway does."""
    config = split.config_file(tmp_path)
    for srv in (split.srv, single):
        await srv.client("H44180000001").ok("3301", _drug_mapping(WRONG_CLASS_A))
        await _drug_visit(srv, QINGYUAN_WORKER, QINGYUAN, "MZ-CORR-1")
        await _drug_visit(srv, BIJIE_WORKER, BIJIE, "MZ-CORR-2")
        await srv.client("H44180000001").ok("3301", _drug_mapping(CLASS_B))
    args = ("corrections", "plan", "--institution", "H44180000001", "--item", DRUG, "--json")
    there = json.loads(cli(*args, "--database-url", split.srv.dsn, "--config", str(config)).stdout)
    alone = json.loads(cli(*args, "--database-url", single.dsn).stdout)
    assert len(there["settlements"]) == len(alone["settlements"]) == 2
    assert there["funds"] == alone["funds"] and there["totals"] == alone["totals"]
    cli("corrections", "apply", "--institution", "H44180000001", "--item", DRUG,
        "--database-url", split.srv.dsn, "--config", str(config))  # fmt: skip
    assert await split.holding("SELECT count(*) FROM correction_items") == [
        "main",
        f"cluster {BIJIE}",
    ]


async def _reverse(
    srv: Server, pharmacy: str, psn_no: str, omsgid: str, region: str
) -> dict[str, Any]:
    pos = srv.client(pharmacy, region)
    ask = {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": "2102"}}
    return await pos.call("2601", ask, insuplc_admdvs=region)


async def test_a_2601_reaches_its_original_whatever_region_it_names(split: Split) -> None:
    """Found from outside: a 2601 sent with another region (or none and another person) went to
    a database that did not know the original, barred it there and answered success, while the
    sale stayed settled and the account charged. It runs where the original is now."""
    pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)
    body = pos.envelope("2102", _sale(pos, BIJIE_WORKER))
    sold = decode((await pos.post_raw(msgspec.json.encode(body)))[1])
    assert sold["infcode"] == 0
    setl_id = sold["output"]["setlinfo"]["setl_id"]
    bijie = split.clusters[BIJIE]
    before = (await split.rows(bijie, "SELECT balance_fen FROM accounts WHERE psn_no = $1", BIJIE_WORKER))[0][0]  # fmt: skip
    # Another person, no region: the original is found, the person checked against it.
    wrong = await _reverse(split.srv, PHARMACY_OF[BIJIE], QINGYUAN_WORKER, body["msgid"], "")
    assert wrong["infcode"] == -1 and "不一致" in wrong["err_msg"], wrong
    # The pharmacy's own region, not the patient's: reversed in 毕节's cluster all the same.
    done = await _reverse(split.srv, PHARMACY_OF[BIJIE], BIJIE_WORKER, body["msgid"], QINGYUAN)
    assert done["infcode"] == 0 and not done["warn_msg"], done
    status = await split.rows(bijie, "SELECT status FROM settlements WHERE setl_id = $1", setl_id)
    assert status[0][0] != "settled"
    after = (await split.rows(bijie, "SELECT balance_fen FROM accounts WHERE psn_no = $1", BIJIE_WORKER))[0][0]  # fmt: skip
    assert after - before == int(Decimal(sold["output"]["setlinfo"]["acct_pay"]) * 100)
    # Reversed, it is still found where it is: a second 2601 naming another person and no
    # region goes there and is refused, barring nothing anywhere (checked below).
    twice = await _reverse(split.srv, PHARMACY_OF[BIJIE], QINGYUAN_WORKER, body["msgid"], "")
    assert twice["infcode"] == -1, twice
    assert (
        await split.holding(
            # A bar (a tombstone of an original never seen) in no database: the original's own
            # key answers its retries with the reversal's refusal (reversed_answer kept).
            "SELECT count(*) FROM idempotency WHERE msgid = $1 AND tombstone"
            " AND reversed_by IS NULL",
            body["msgid"],
        )
        == []
    )


async def test_a_2601_of_an_unknown_original_bars_it_in_every_database(split: Split) -> None:
    """Reversed before it arrived, sent under any region: the late original is refused wherever
    its own region sends it, and nothing is settled."""
    pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)
    late = pos.envelope("2102", _sale(pos, BIJIE_WORKER))
    early = await _reverse(split.srv, PHARMACY_OF[BIJIE], BIJIE_WORKER, late["msgid"], QINGYUAN)
    assert early["infcode"] == 0 and early["warn_msg"], early
    barred = await split.holding(
        "SELECT count(*) FROM idempotency WHERE msgid = $1 AND tombstone", late["msgid"]
    )
    assert barred == ["main", f"cluster {BIJIE}", f"cluster {WENZHOU}"]
    answer = decode((await pos.post_raw(msgspec.json.encode(late)))[1])
    assert answer["infcode"] == -1 and "已被冲正" in answer["err_msg"], answer
    assert (
        await split.holding(
            "SELECT count(*) FROM settlements WHERE medins_setl_id = $1", late["msgid"]
        )
        == []
    )


async def test_1101_with_the_hospitals_own_region_finds_a_remote_patient(split: Split) -> None:
    """Found from outside: a HIS that fills insuplc_admdvs with its own region before it has
    read the card was told the 毕节 patient did not exist. 1101 is routed by the directory."""
    his = split.srv.client("H44180000001")
    for cert_type, cert_no in (("02", "520502198806061111"), ("01", BIJIE_WORKER)):
        ask = {"data": {"mdtrt_cert_type": cert_type, "mdtrt_cert_no": cert_no}}
        out = await his.ok("1101", ask, insuplc_admdvs=QINGYUAN)
        assert out["baseinfo"]["psn_no"] == BIJIE_WORKER
        assert out["insuinfo"][0]["insuplc_admdvs"] == BIJIE


async def test_5203_with_the_wrong_region_still_finds_the_settlement(split: Split) -> None:
    """Found from outside: "not found" for a settlement that exists (sent with the pharmacy's
    wrong region) could make the counter settle again under a new msgid."""
    setl = await _sell(split.srv, WENZHOU, WENZHOU_RETIREE)
    pos = split.srv.client(PHARMACY_OF[WENZHOU], WENZHOU)
    for region in (QINGYUAN, "999999", ""):
        ask = {"data": {"setl_id": setl["setl_id"], "mdtrt_id": "", "psn_no": ""}}
        out = await pos.ok("5203", ask, insuplc_admdvs=region)
        assert out["setlinfo"]["setl_id"] == setl["setl_id"]


async def test_an_inpatient_stay_without_a_region_is_discharged_and_settled(split: Split) -> None:
    """Found from outside: 2402 names the person in `dscginfo`, which the routing did not read,
    and a 2302 with `data` as an array was not routed either: both refused as 'visit unknown'."""
    his = split.srv.client("H44180000001")
    none = {"insuplc_admdvs": ""}
    person, begn = WENZHOU_RETIREE, "2026-04-01 09:00:00"
    adm = await his.ok(
        "2401",
        {"mdtrtinfo": {"psn_no": person, "insutype": "310", "med_type": "21",
                       "begntime": begn, "mdtrt_cert_type": "01", "mdtrt_cert_no": person,
                       "ipt_no": "ZY-SPLIT-1", "atddr_no": "D001", "chfpdr_name": "医生",
                       "adm_diag_dscr": "肺炎", "adm_dept_codg": "K02", "adm_dept_name": "呼吸科",
                       "adm_bed": "12", "dscg_maindiag_code": "J18.900",
                       "dscg_maindiag_name": "肺炎"}},
        **none,
    )  # fmt: skip
    mdtrt_id = adm["result"]["mdtrt_id"] if "result" in adm else adm["data"]["mdtrt_id"]
    rows = his.fee_rows(mdtrt_id, person, OUTPATIENT_LINES, "2026-04-02 10:00:00", "B1")
    await his.ok("2301", {"feedetail": rows}, **none)
    withdraw = {"data": [{"feedetl_sn": "3", "mdtrt_id": mdtrt_id, "psn_no": person}]}
    await his.ok("2302", withdraw, **none)
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": person, "endtime": "2026-04-05 10:00:00",
                      "dise_codg": "J18.900", "dise_name": "肺炎", "dscg_way": "1",
                      "dscg_dept_codg": "K02", "dscg_dept_name": "呼吸科"}},
        **none,
    )  # fmt: skip
    held = await split.holding("SELECT count(*) FROM encounters WHERE mdtrt_id = $1", mdtrt_id)
    assert held == [f"cluster {WENZHOU}"]


async def test_a_retried_2601_that_barred_its_original_gets_its_stored_answer(
    split: Split,
) -> None:
    """The 2601 ran in the database its region names (毕节's here) and barred the unknown
    original everywhere; its retry, same msgid and body, must reach that database again and be
    answered as the first time, not run anew where a bar merely stands ("already reversed")."""
    pos = split.srv.client(PHARMACY_OF[BIJIE], BIJIE)
    late = pos.envelope("2102", _sale(pos, BIJIE_WORKER))
    ask = {"data": {"psn_no": BIJIE_WORKER, "omsgid": late["msgid"], "oinfno": "2102"}}
    body = msgspec.json.encode(pos.envelope("2601", ask))
    first = await pos.post_raw(body)
    again = await pos.post_raw(body)
    assert decode(first[1])["infcode"] == 0, first
    assert first == again
