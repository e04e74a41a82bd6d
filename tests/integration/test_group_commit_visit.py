"""The outpatient visit's own writes in the group commit: 2203 (diagnosis) and 2204 (fee upload)
batched with each other and with settlements answer and write exactly as one at a time.

A batch sends one statement per table in first-staged order, so a job on a visit an earlier job
of the same batch changed must not be built from the batch's read: it goes the single path once
the batch has committed. These tests build such batches on purpose: the one writer is held on a
locked account row while the requests queue behind it in a known order."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from msgspec.structs import replace

from adapters.national import deferral
from gateway.app.appkeys import GATEWAY
from gateway.app.config import GroupCommitConfig
from tests.integration.conftest import Server, running_gateway
from tests.integration.his_client import HisClient
from tests.integration.test_group_commit import (
    DAY,
    EMPLOYEE,
    HOSPITAL,
    ONE_WRITER,
    PHARMACY,
    RETIREE,
    VISIT_DAY,
    VISIT_LINES,
    basket,
    batches,
)

pytestmark = pytest.mark.integration

CIVIL_SERVANT = "441800000000000003"


@pytest.fixture(scope="module")
async def grouped(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(new_database, ONE_WRITER) as srv:
        yield srv


def _waiting(server: Server) -> int:
    """Requests waiting for the gateway's one group-commit writer."""
    assert server.app is not None
    (group,) = server.app[GATEWAY].groups.values()
    return len(group._waiting)  # type: ignore[attr-defined]


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


@asynccontextmanager
async def _writer_held(server: Server) -> AsyncIterator[Callable[[Awaitable[Any]], Any]]:
    """The one writer stuck in a batch (a 2102 of EMPLOYEE waiting for the account row held
    here); `queue(call)` starts a call and returns once it waits for the next batch, so the
    calls queued form one batch in the order given. On exit the row is let go."""
    holder = await asyncpg.connect(server.dsn)
    held = holder.transaction()
    await held.start()
    await holder.execute("SELECT 1 FROM accounts WHERE psn_no = $1 FOR UPDATE", EMPLOYEE)
    pos = server.client(PHARMACY)
    blocked = asyncio.create_task(
        pos.ok("2102", pos.drug_input(EMPLOYEE, DAY, "9.90", basket("9.90")))
    )

    async def stuck() -> bool:
        return bool(
            await server.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
        )

    await _until(stuck, "the writer waits for the held account row")
    tasks: list[asyncio.Task[Any]] = []

    async def queue(call: Awaitable[Any]) -> asyncio.Task[Any]:
        before = _waiting(server)
        task = asyncio.ensure_future(call)
        tasks.append(task)

        async def arrived() -> bool:
            return _waiting(server) > before or task.done()

        await _until(arrived, "the call waits for the writer")
        return task

    try:
        yield queue
    finally:
        await held.rollback()
        await holder.close()
        await blocked
        await asyncio.gather(*tasks, return_exceptions=True)


async def _visit(server: Server, psn_no: str, ipt_otp_no: str) -> str:
    return await server.client(HOSPITAL).register(psn_no, "310", VISIT_DAY, ipt_otp_no)


def _upload(server: Server, psn_no: str, mdtrt_id: str) -> dict[str, Any]:
    his = server.client(HOSPITAL)
    return {"feedetail": his.fee_rows(mdtrt_id, psn_no, VISIT_LINES, VISIT_DAY, "B1")}


def _settle(server: Server, psn_no: str, mdtrt_id: str, med_type: str = "11") -> dict[str, Any]:
    return server.client(HOSPITAL).settle_data(
        psn_no, mdtrt_id, med_type, "60.00", "310", "1", chrg_bchno="B1"
    )


async def test_an_upload_and_the_settlement_after_it_in_one_batch_settle_its_lines(
    grouped: Server,
) -> None:
    """Without the single path for the second job, the settlement is built from the batch's
    read of the visit, where the upload's lines are not yet, and is refused (nothing to
    settle), or marks lines settled before they are inserted."""
    his = grouped.client(HOSPITAL)
    other = await _visit(grouped, CIVIL_SERVANT, "MZ-GCV-OTHER")
    await his.ok("2204", _upload(grouped, CIVIL_SERVANT, other))
    mdtrt_id = await _visit(grouped, RETIREE, "MZ-GCV-1")
    async with _writer_held(grouped) as queue:
        # Another visit's settlement first, so its statements lead the batch's order.
        first = await queue(his.ok("2207", _settle(grouped, CIVIL_SERVANT, other)))
        upload = await queue(his.ok("2204", _upload(grouped, RETIREE, mdtrt_id)))
        settle = await queue(his.ok("2207", _settle(grouped, RETIREE, mdtrt_id)))
    assert Decimal(str((await first)["setlinfo"]["medfee_sumamt"])) == Decimal("60.00")
    assert [r["feedetl_sn"] for r in (await upload)["result"]] == ["1"]
    info = (await settle)["setlinfo"]
    assert Decimal(str(info["medfee_sumamt"])) == Decimal("60.00")
    unsettled = await grouped.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = ANY($1::text[]) AND setl_id IS NULL",
        [mdtrt_id, other],
    )
    assert unsettled == 0
    assert await grouped.check_ledger() == []


async def test_a_diagnosis_and_the_settlement_after_it_in_one_batch_settle_as_its_visit(
    grouped: Server,
) -> None:
    """The settlement reads the visit's med_type (here a chronic disease's, with its own
    ratios): the 2203 just before it in the batch must have been applied, as it would have
    been one at a time."""
    his = grouped.client(HOSPITAL)
    alone = await _visit(grouped, RETIREE, "MZ-GCV-ALONE")
    await his.ok("2204", _upload(grouped, RETIREE, alone))
    await his.visit_info(alone, RETIREE, "14", VISIT_DAY, "M07800")
    expected = (await his.ok("2207", _settle(grouped, RETIREE, alone, "14")))["setlinfo"]
    mdtrt_id = await _visit(grouped, RETIREE, "MZ-GCV-2")
    await his.ok("2204", _upload(grouped, RETIREE, mdtrt_id))
    async with _writer_held(grouped) as queue:
        info = await queue(his.visit_info(mdtrt_id, RETIREE, "14", VISIT_DAY, "M07800"))
        settle = await queue(his.ok("2207", _settle(grouped, RETIREE, mdtrt_id, "14")))
    await info
    got = (await settle)["setlinfo"]
    differs = {"mdtrt_id", "setl_id", "setl_time", "medins_setl_id", "balc"}
    assert {k: v for k, v in got.items() if k not in differs} == {
        k: v for k, v in expected.items() if k not in differs
    }
    assert got["hifp_pay"] != 0
    assert (
        await grouped.fetchval(
            "SELECT category FROM settlements WHERE setl_id = $1", got["setl_id"]
        )
        == "chronic"
    )
    assert await grouped.check_ledger() == []


async def test_uploads_and_diagnoses_share_batches_and_are_answered_as_alone(
    grouped: Server,
) -> None:
    his = grouped.client(HOSPITAL)
    people = [EMPLOYEE, RETIREE, CIVIL_SERVANT]
    visits = [
        (people[i % 3], await _visit(grouped, people[i % 3], f"MZ-GCV-B{i}")) for i in range(24)
    ]
    alone = await _visit(grouped, RETIREE, "MZ-GCV-B-ALONE")
    expected = (await his.ok("2204", _upload(grouped, RETIREE, alone)))["result"]
    serials = "SELECT (SELECT last_value FROM mdtrt_seq), (SELECT last_value FROM setl_seq)"
    drawn_before = tuple(await grouped.fetchrow(serials) or ())
    written_before, batches_before = batches()
    await asyncio.gather(*(his.visit_info(m, p, "11", VISIT_DAY) for p, m in visits))
    answers = await asyncio.gather(*(his.ok("2204", _upload(grouped, p, m)) for p, m in visits))
    written, counted = batches()
    assert written - written_before == 48
    assert counted - batches_before < 48  # batches of more than one happened
    assert all(a["result"] == expected for a in answers)
    # Neither draws a 就诊ID or 结算ID: their batches take no serials (nor accumulators).
    assert tuple(await grouped.fetchrow(serials) or ()) == drawn_before
    stored = await grouped.fetchval(
        "SELECT count(*) FROM fee_lines WHERE mdtrt_id = ANY($1::text[])", [m for _, m in visits]
    )
    assert stored == len(visits) * len(VISIT_LINES)


async def test_one_upload_sent_twice_in_a_burst_is_stored_once(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    mdtrt_id = await _visit(grouped, RETIREE, "MZ-GCV-TWICE")
    answers = await asyncio.gather(
        *(his.call("2204", _upload(grouped, RETIREE, mdtrt_id)) for _ in range(4))
    )
    assert sorted(a["infcode"] for a in answers) == [-1, -1, -1, 0]
    # Each refusal names a serial number the visit already holds, whichever path found it.
    named = {
        f"费用明细流水号{ln['feedetl_sn']}已上传，请勿重复上传（如需修改请先撤销）"
        for ln in VISIT_LINES
    }
    assert all(a["err_msg"] in named for a in answers if a["infcode"] == -1), answers
    stored = await grouped.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id)
    assert stored == len(VISIT_LINES)


async def test_refusals_in_a_batch_are_the_single_paths(grouped: Server) -> None:
    """Each refusal a batch can give in the words the single path gives, and nothing written."""
    his = grouped.client(HOSPITAL)
    theirs = await grouped.client("H44180000002").register(RETIREE, "310", VISIT_DAY, "MZ-GCV-T")
    mine = await _visit(grouped, RETIREE, "MZ-GCV-R")
    cancelled = await _visit(grouped, RETIREE, "MZ-GCV-C")
    await his.ok("2202", {"data": {"mdtrt_id": cancelled, "psn_no": RETIREE}})
    calls = [
        ("2204", _upload(grouped, RETIREE, theirs)),
        ("2204", _upload(grouped, EMPLOYEE, mine)),
        ("2204", _upload(grouped, RETIREE, cancelled)),
        ("2203", _info(theirs, RETIREE, "11")),
        ("2203", _info(mine, EMPLOYEE, "11")),
        ("2203", _info(mine, RETIREE, "14", "M03900")),  # not filed for that disease
        ("2203", _info(cancelled, RETIREE, "11")),
    ]
    async with _writer_held(grouped) as queue:
        tasks = [await queue(his.call(infno, data)) for infno, data in calls]
    in_batch = [(await t)["err_msg"] for t in tasks]
    one_by_one = [(await his.call(infno, data))["err_msg"] for infno, data in calls]
    assert in_batch == one_by_one
    assert all(in_batch)
    for mdtrt_id in (theirs, mine, cancelled):
        assert (
            await grouped.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id)
            == 0
        )
    assert (
        await grouped.fetchval("SELECT med_type FROM encounters WHERE mdtrt_id = $1", mine) == "11"
    )


def _info(mdtrt_id: str, psn_no: str, med_type: str, dise_codg: str = "") -> dict[str, Any]:
    return HisClient.visit_info_input(mdtrt_id, psn_no, med_type, VISIT_DAY, dise_codg)


async def test_a_provisional_id_used_online_writes_the_visit_it_became(grouped: Server) -> None:
    """A HIS that took a provisional id while the ledger was down may go on using it once the
    visit is replayed: its 2203 and 2204 take the single path (the id is resolved there) and
    must write the real visit. Both once failed: the 2203's UPDATE named the provisional id and
    changed nothing, the 2204 stored its lines under it and was refused by the database."""
    his = grouped.client(HOSPITAL)
    mdtrt_id = await _visit(grouped, RETIREE, "MZ-GCV-PV")
    provisional = deferral.new_provisional_id(
        "441800", dt.datetime(2026, 3, 2, 9, 0), "H44180000001", "MSG-PROVISIONAL"
    )
    await grouped.fetch(
        "INSERT INTO deferred_ids (provisional_id, mdtrt_id) VALUES ($1, $2) RETURNING 1",
        provisional,
        mdtrt_id,
    )
    await his.visit_info(provisional, RETIREE, "14", VISIT_DAY, "M07800")
    row = await grouped.fetchrow(
        "SELECT med_type, dise_codg FROM encounters WHERE mdtrt_id = $1", mdtrt_id
    )
    assert row is not None and tuple(row) == ("14", "M07800")
    uploaded = await his.ok("2204", _upload(grouped, RETIREE, provisional))
    assert [r["feedetl_sn"] for r in uploaded["result"]] == ["1"]
    again = await his.call("2204", _upload(grouped, RETIREE, provisional))
    assert again["err_msg"] == "费用明细流水号1已上传，请勿重复上传（如需修改请先撤销）"
    settled = await his.ok("2207", _settle(grouped, RETIREE, provisional, "14"))
    assert settled["setlinfo"]["mdtrt_id"] == mdtrt_id
    assert Decimal(str(settled["setlinfo"]["medfee_sumamt"])) == Decimal("60.00")
    assert await grouped.check_ledger() == []


async def test_a_diagnosis_wrong_twice_names_its_med_type_first_whatever_its_id(
    grouped: Server,
) -> None:
    """The med_type is judged before the visit is looked up, under an ordinary id or a
    provisional one not yet replayed."""
    his = grouped.client(HOSPITAL)
    mine = await _visit(grouped, RETIREE, "MZ-GCV-TWO")
    unknown = deferral.new_provisional_id(
        "441800", dt.datetime(2026, 3, 2, 9, 0), "H44180000001", "MSG-UNKNOWN"
    )
    for mdtrt_id in (mine, unknown, "NO-SUCH-VISIT"):
        got = await his.call("2203", _info(mdtrt_id, RETIREE, "99"))
        assert got["infcode"] == -1 and "不支持的医疗类别99" in got["err_msg"], mdtrt_id
    pending = await his.call("2203", _info(unknown, RETIREE, "11"))
    assert "临时编号" in pending["err_msg"]


@pytest.fixture(scope="module")
async def single(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    async with running_gateway(
        new_database, replace(ONE_WRITER, group_commit=GroupCommitConfig(writers=0, max_batch=64))
    ) as srv:
        yield srv


@pytest.mark.parametrize("path", ["grouped", "single"])
async def test_a_line_sent_into_a_settled_batch_is_refused(
    path: str, grouped: Server, single: Server
) -> None:
    """Found from outside (twice): a 2204 into a charge batch already settled was taken, and a
    second 2207 of the batch settled the new line as a second settlement of the same batch. The
    upload is refused naming the line and the batch, by the grouped path and the single one
    alike, and nothing is written; another batch, or the batch once its settlement is
    cancelled, takes lines as before."""
    server = grouped if path == "grouped" else single
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(server, RETIREE, f"MZ-GCV-SETTLED-{path}")
    await his.ok("2204", _upload(server, RETIREE, mdtrt_id))
    settled = (await his.ok("2207", _settle(server, RETIREE, mdtrt_id)))["setlinfo"]
    late = [dict(VISIT_LINES[0], feedetl_sn="9")]
    rows = his.fee_rows(mdtrt_id, RETIREE, late, VISIT_DAY, "B1")
    refused = await his.call("2204", {"feedetail": rows})
    assert refused["infcode"] == -1
    assert refused["err_msg"].startswith("费用明细流水号9：收费批次B1已结算，不能再上传"), refused
    count = "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1"
    assert await server.fetchval(count, mdtrt_id) == len(VISIT_LINES)
    # Another batch takes it; so does the first once its settlement is cancelled.
    other = his.fee_rows(mdtrt_id, RETIREE, late, VISIT_DAY, "B2")
    assert [r["feedetl_sn"] for r in (await his.ok("2204", {"feedetail": other}))["result"]] == [
        "9"
    ]
    await his.ok(
        "2208", {"data": {"setl_id": settled["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    )
    again = his.fee_rows(
        mdtrt_id, RETIREE, [dict(VISIT_LINES[0], feedetl_sn="10")], VISIT_DAY, "B1"
    )
    assert (await his.call("2204", {"feedetail": again}))["infcode"] == 0
    assert await server.check_ledger() == []


async def test_a_chronic_settlement_without_the_disease_is_sent_to_2203(grouped: Server) -> None:
    """Found from outside: a 2207 of med_type 14 on a visit whose 2203 named no disease was told
    to fill in dise_codg, a field 2207 does not have."""
    his = grouped.client(HOSPITAL)
    mdtrt_id = await _visit(grouped, RETIREE, "MZ-GCV-NODISE")
    await his.ok("2204", _upload(grouped, RETIREE, mdtrt_id))
    refused = await his.call("2207", _settle(grouped, RETIREE, mdtrt_id, "14"))
    assert refused["err_msg"] == "门诊慢特病结算须先在就诊信息上传（2203）中填写病种编码dise_codg"
    await his.visit_info(mdtrt_id, RETIREE, "14", VISIT_DAY, "M07800")
    assert (await his.call("2207", _settle(grouped, RETIREE, mdtrt_id, "14")))["infcode"] == 0
