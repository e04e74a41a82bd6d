"""Group commit: settlements committed together behave exactly as settlements committed alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from msgspec.structs import replace

from gateway.app.config import GroupCommitConfig
from gateway.ops import metrics
from gateway.pipeline.group_commit import GroupCommit
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.his_client import certificate, decode

PHARMACY = "P44180000001"
EMPLOYEE = "441800000000000001"  # 2000.00 in the account
RETIREE = "441800000000000002"
CIVIL_SERVANT = "441800000000000003"
LAPSED = "441800000000000007"  # psn_insu_stas 2: refused
DAY = "2026-03-01 10:00:00"
# One writer: while it commits, everything else that arrives waits and forms the next batch.
ONE_WRITER = replace(GENEROUS, group_commit=GroupCommitConfig(writers=1, max_batch=64))


def basket(price: str, cnt: int = 1, code: str = "YP0001") -> list[dict[str, Any]]:
    total = Decimal(price) * cnt
    return [
        {
            "feedetl_sn": "1",
            "medins_list_codg": code,
            "pric": price,
            "cnt": str(cnt),
            "det_item_fee_sumamt": f"{total:.2f}",
        }
    ]


def batches() -> tuple[float, float]:
    """(settlements, batches) the group commit has counted so far in this process."""
    total = count = 0.0
    for family in metrics.GROUP_BATCH_SIZE.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


@pytest.fixture(scope="module")
async def grouped(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database, ONE_WRITER) as srv:
        yield srv


async def _balance(server: Server, psn_no: str) -> int:
    return int(await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", psn_no))


async def test_a_burst_settles_in_shared_batches_and_the_ledger_balances(grouped: Server) -> None:
    pos = grouped.client(PHARMACY)
    people = [EMPLOYEE, RETIREE, CIVIL_SERVANT]
    before = {p: await _balance(grouped, p) for p in people}
    settled_before, batches_before = batches()
    answers = await asyncio.gather(
        *(
            pos.ok("2102", pos.drug_input(people[i % 3], DAY, "37.00", basket("18.50", 2)))
            for i in range(60)
        )
    )
    settled, counted = batches()
    # 60 settlements in fewer commits than settlements: batches of more than one happened.
    assert settled - settled_before == 60
    assert counted - batches_before < 60
    assert len({a["setlinfo"]["setl_id"] for a in answers}) == 60
    for person in people:
        mine = [a["setlinfo"] for a in answers if a["setlinfo"]["psn_no"] == person]
        paid = sum(Decimal(i["acct_pay"]) for i in mine)
        assert await _balance(grouped, person) == before[person] - int(paid * 100)
        # One person's settlements form one chain of balances, batch or no batch.
        balcs = sorted({Decimal(i["balc"]) for i in mine}, reverse=True)
        assert len(balcs) == len(mine)
    assert await grouped.check_ledger() == []


async def test_one_person_in_one_batch_never_overdraws(grouped: Server) -> None:
    """Eight 500.00 purchases against 2000.00: each computed against the one before it."""
    pos = grouped.client(PHARMACY)
    person = EMPLOYEE
    start = await _balance(grouped, person)
    answers = await asyncio.gather(
        *(
            pos.ok("2102", pos.drug_input(person, DAY, "500.00", basket("250.00", 2, "YP0003")))
            for _ in range(8)
        )
    )
    infos = [a["setlinfo"] for a in answers]
    paid = sum(Decimal(i["acct_pay"]) for i in infos)
    assert 0 <= await _balance(grouped, person) == start - int(paid * 100)
    assert min(Decimal(i["balc"]) for i in infos) >= 0
    # Every yuan of the account was spent once: what it could not pay went to cash.
    cash = sum(Decimal(i["psn_cash_pay"]) for i in infos)
    assert cash > 0
    assert await grouped.check_ledger() == []


async def test_a_refusal_in_a_batch_writes_only_its_answer(grouped: Server) -> None:
    pos = grouped.client(PHARMACY)
    good = [
        pos.envelope("2102", pos.drug_input(RETIREE, DAY, "9.90", basket("9.90"))) for _ in range(6)
    ]
    lapsed = pos.envelope("2102", pos.drug_input(LAPSED, DAY, "9.90", basket("9.90")))
    unknown = pos.envelope(
        "2102", pos.drug_input("441800999999999999", DAY, "9.90", basket("9.90"))
    )
    wrong_total = pos.envelope("2102", pos.drug_input(RETIREE, DAY, "10.00", basket("9.90")))
    bodies = [msgspec.json.encode(e) for e in [*good, lapsed, unknown, wrong_total]]
    answers = await asyncio.gather(*(pos.post_raw(b) for b in bodies))
    decoded = [decode(raw) for _, raw in answers]
    assert [a["infcode"] for a in decoded] == [0] * 6 + [-1] * 3
    assert "参保状态异常" in decoded[6]["err_msg"]
    assert "不存在" in decoded[7]["err_msg"]
    assert "不一致" in decoded[8]["err_msg"]
    refused = [e["msgid"] for e in (lapsed, unknown, wrong_total)]
    for table, column in (("encounters", "created_msgid"), ("settlements", "medins_setl_id")):
        written = await grouped.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = ANY($1::text[])", refused
        )
        assert written == 0, table
    # The refusals are journaled: a retry gets the same bytes.
    for body, (_, first) in zip(bodies[6:], answers[6:], strict=True):
        status, again = await pos.post_raw(body)
        assert status == 200
        assert again == first
    assert await grouped.check_ledger() == []


async def test_the_same_msgid_in_one_burst_settles_once(grouped: Server) -> None:
    pos = grouped.client(PHARMACY)
    body = msgspec.json.encode(
        pos.envelope("2102", pos.drug_input(RETIREE, DAY, "9.90", basket("9.90")))
    )
    msgid = msgspec.json.decode(body)["msgid"]
    answers = await asyncio.gather(*(pos.post_raw(body) for _ in range(8)))
    assert len({raw for _, raw in answers}) == 1
    assert decode(answers[0][1])["infcode"] == 0
    assert (
        await grouped.fetchval("SELECT count(*) FROM settlements WHERE medins_setl_id = $1", msgid)
        == 1
    )


async def test_a_failed_batch_leaves_nothing_and_its_requests_settle_one_by_one(
    grouped: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that cannot commit (here: the database refuses its write) is rolled back whole;
    each of its requests then takes the single path and is answered once."""
    real = GroupCommit._settle
    failures = 0

    async def failing(self: GroupCommit, conn: asyncpg.Connection, batch: list[Any]) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            await real(self, conn, batch)  # everything staged and flushed ...
            raise asyncpg.DeadlockDetectedError("injected")  # ... then the commit fails
        return await real(self, conn, batch)

    monkeypatch.setattr(GroupCommit, "_settle", failing)
    pos = grouped.client(PHARMACY)
    envelopes = [
        pos.envelope("2102", pos.drug_input(RETIREE, DAY, "9.90", basket("9.90")))
        for _ in range(10)
    ]
    answers = await asyncio.gather(*(pos.post_raw(msgspec.json.encode(e)) for e in envelopes))
    assert failures == 1
    assert all(decode(raw)["infcode"] == 0 for _, raw in answers)
    msgids = [e["msgid"] for e in envelopes]
    assert (
        await grouped.fetchval(
            "SELECT count(*) FROM settlements WHERE medins_setl_id = ANY($1::text[])", msgids
        )
        == 10
    )
    assert await grouped.check_ledger() == []


HOSPITAL = "H44180000001"
OTHER_HOSPITAL = "H44180000002"
VISIT_DAY = "2026-03-02 09:00:00"
VISIT_LINES = [
    {
        "feedetl_sn": "1",
        "medins_list_codg": "ZL0004",
        "pric": "30",
        "cnt": "2",
        "det_item_fee_sumamt": "60.00",
    }
]


async def _open_visit(server: Server, psn_no: str, ipt_otp_no: str, code: str = HOSPITAL) -> str:
    his = server.client(code)
    mdtrt_id = await his.register(psn_no, "310", VISIT_DAY, ipt_otp_no)
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, psn_no, VISIT_LINES, VISIT_DAY, "B1")}
    )
    return mdtrt_id


def _settle_data(server: Server, psn_no: str, mdtrt_id: str) -> dict[str, Any]:
    return server.client(HOSPITAL).settle_data(
        psn_no, mdtrt_id, "11", "60.00", "310", "1", chrg_bchno="B1"
    )


async def test_outpatient_settlements_share_batches_too(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    people = [EMPLOYEE, RETIREE, CIVIL_SERVANT]
    visits = [
        (people[i % 3], await _open_visit(grouped, people[i % 3], f"MZ-GC-{i}")) for i in range(30)
    ]
    settled_before, batches_before = batches()
    answers = await asyncio.gather(
        *(his.ok("2207", _settle_data(grouped, p, m)) for p, m in visits)
    )
    settled, counted = batches()
    assert settled - settled_before == 30
    assert counted - batches_before < 30
    assert {a["setlinfo"]["mdtrt_id"] for a in answers} == {m for _, m in visits}
    lines_left = await grouped.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = ANY($1::text[]) AND setl_id IS NULL",
        [m for _, m in visits],
    )
    assert lines_left == 0
    assert await grouped.check_ledger() == []


async def test_one_visit_settled_twice_in_a_burst_settles_once(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    mdtrt_id = await _open_visit(grouped, RETIREE, "MZ-GC-TWICE")
    envelopes = [his.envelope("2207", _settle_data(grouped, RETIREE, mdtrt_id)) for _ in range(4)]
    answers = [
        decode(raw)
        for _, raw in await asyncio.gather(
            *(his.post_raw(msgspec.json.encode(e)) for e in envelopes)
        )
    ]
    assert sorted(a["infcode"] for a in answers) == [-1, -1, -1, 0]
    assert all("已结算" in a["err_msg"] for a in answers if a["infcode"] == -1)
    assert (
        await grouped.fetchval(
            "SELECT count(*) FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'", mdtrt_id
        )
        == 1
    )
    assert await grouped.check_ledger() == []


async def test_a_refunded_visit_settled_again_in_a_batch_names_what_it_replaces(
    grouped: Server,
) -> None:
    his = grouped.client(HOSPITAL)
    mdtrt_id = await _open_visit(grouped, CIVIL_SERVANT, "MZ-GC-AGAIN")
    first = (await his.ok("2207", _settle_data(grouped, CIVIL_SERVANT, mdtrt_id)))["setlinfo"]
    await his.ok(
        "2208",
        {"data": {"setl_id": first["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": CIVIL_SERVANT}},
    )
    # The re-settlement arrives with other settlements, so it is committed in a batch.
    others = [await _open_visit(grouped, EMPLOYEE, f"MZ-GC-OTHER-{i}") for i in range(5)]
    answers = await asyncio.gather(
        his.ok("2207", _settle_data(grouped, CIVIL_SERVANT, mdtrt_id)),
        *(his.ok("2207", _settle_data(grouped, EMPLOYEE, m)) for m in others),
    )
    again = answers[0]["setlinfo"]
    assert again["setl_id"] != first["setl_id"]
    assert again["medfee_sumamt"] == first["medfee_sumamt"]
    replaces = await grouped.fetchval(
        "SELECT replaces_setl_id FROM settlements WHERE setl_id = $1", again["setl_id"]
    )
    assert replaces == first["setl_id"]
    assert await grouped.check_ledger() == []


async def test_a_visit_of_another_institution_or_person_is_refused_in_a_batch(
    grouped: Server,
) -> None:
    theirs = await _open_visit(grouped, RETIREE, "MZ-GC-THEIRS", OTHER_HOSPITAL)
    mine = await _open_visit(grouped, RETIREE, "MZ-GC-MINE")
    his = grouped.client(HOSPITAL)
    stolen, wrong_person, fine = await asyncio.gather(
        his.call("2207", _settle_data(grouped, RETIREE, theirs)),
        his.call("2207", _settle_data(grouped, EMPLOYEE, mine)),
        his.call("2207", _settle_data(grouped, RETIREE, mine)),
    )
    assert stolen["infcode"] == -1 and "不属于本机构" in stolen["err_msg"]
    assert wrong_person["infcode"] == -1 and "不一致" in wrong_person["err_msg"]
    assert fine["infcode"] == 0
    assert (
        await grouped.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", theirs) == 0
    )


def _registration(his: Any, psn_no: str, ipt_otp_no: str) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": psn_no,
            "insutype": "310",
            "begntime": DAY,
            **certificate(psn_no),
            "ipt_otp_no": ipt_otp_no,
            "atddr_no": "D001",
            "dr_name": "医生",
            "dept_code": "K01",
            "dept_name": "内科",
            "caty": "A03",
        }
    }


async def test_registrations_share_batches_with_settlements(grouped: Server) -> None:
    """A burst of 2201 mixed with 2102: fewer commits than requests, one visit per registration,
    each answered with its own 就诊ID, and a refused one (a lapsed person) among them."""
    his, pos = grouped.client(HOSPITAL), grouped.client(PHARMACY)
    people = [EMPLOYEE, RETIREE, CIVIL_SERVANT]
    settled_before, batches_before = batches()
    calls = [his.call("2201", _registration(his, people[i % 3], f"MZ-REG-{i}")) for i in range(30)]
    calls += [pos.call("2102", pos.drug_input(EMPLOYEE, DAY, "37.00", basket("18.50", 2))) for _ in range(10)]  # fmt: skip
    calls.append(his.call("2201", _registration(his, LAPSED, "MZ-REG-LAPSED")))
    answers = await asyncio.gather(*calls)
    settled, counted = batches()
    assert settled - settled_before == 41
    assert counted - batches_before < 41
    registered, refused = answers[:30], answers[-1]
    assert all(a["infcode"] == 0 for a in answers[:40]), [a["err_msg"] for a in answers[:40]]
    ids = [a["output"]["data"]["mdtrt_id"] for a in registered]
    assert len(set(ids)) == 30
    rows = await grouped.fetch(
        "SELECT mdtrt_id, psn_no, ipt_otp_no, kind, status, created_msgid FROM encounters"
        " WHERE mdtrt_id = ANY($1::text[]) ORDER BY ipt_otp_no",
        ids,
    )
    assert sorted((r["psn_no"], r["ipt_otp_no"]) for r in rows) == sorted(
        (people[i % 3], f"MZ-REG-{i}") for i in range(30)
    )
    assert {(r["kind"], r["status"]) for r in rows} == {("outpatient", "open")}
    assert refused["infcode"] == -1 and refused["err_msg"]
    assert await grouped.fetchval(
        "SELECT count(*) FROM encounters WHERE ipt_otp_no = 'MZ-REG-LAPSED'"
    ) == 0  # fmt: skip
    assert await grouped.check_ledger() == []


async def test_one_visit_number_registered_twice_in_a_burst_opens_one_visit(
    grouped: Server,
) -> None:
    """Two registrations of one 门诊号 in one batch fail it; each is then answered alone: one
    visit, and the other refused in words (nothing else of the batch is lost)."""
    his = grouped.client(HOSPITAL)
    answers = await asyncio.gather(
        *(his.call("2201", _registration(his, RETIREE, "MZ-REG-TWICE")) for _ in range(3)),
        *(his.call("2201", _registration(his, EMPLOYEE, f"MZ-REG-OTHER-{i}")) for i in range(5)),
    )
    twice, others = answers[:3], answers[3:]
    assert sorted(a["infcode"] for a in twice) == [-1, -1, 0]
    assert all("已登记且未撤销" in a["err_msg"] for a in twice if a["infcode"] == -1)
    # Each refusal names the visit that holds the number (found from outside: a HIS that lost
    # its first answer had no 就诊ID to carry on with).
    [opened] = [a["output"]["data"]["mdtrt_id"] for a in twice if a["infcode"] == 0]
    for refused in (a for a in twice if a["infcode"] == -1):
        assert f"就诊ID{opened}" in refused["err_msg"], refused
        assert "继续办理请使用该就诊ID" in refused["err_msg"] and "2202" in refused["err_msg"]
    assert all(a["infcode"] == 0 for a in others)
    assert await grouped.fetchval(
        "SELECT count(*) FROM encounters WHERE ipt_otp_no = 'MZ-REG-TWICE'"
    ) == 1  # fmt: skip
