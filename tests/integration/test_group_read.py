"""The group read: pre-settlements read in batches answer as each read alone would."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from gateway.core.model import Accumulators
from gateway.ledger import db
from gateway.ledger.writes import Writes
from gateway.ops import metrics
from gateway.pipeline.group_read import GroupRead
from gateway.pipeline.grouped import Built, Held, Job
from gateway.protocol.errors import NotInsured
from tests.integration.conftest import Server
from tests.integration.emergency_helpers import clear_rule, set_rule, until
from tests.integration.his_client import decode
from tests.integration.test_pharmacy import EMPLOYEE, LINES, PHARMACY

# Insured persons of several kinds, one not insured (psn_insu_stas 2), one nobody knows.
PERSONS = [f"44180000000000000{n}" for n in range(1, 8)] + ["441800000000009999"]
INSUTYPE = {"441800000000000004": "390", "441800000000000005": "390", "441800000000000006": "390"}
DATES = ["2026-06-01 10:00:00", "2025-12-30 09:00:00"]  # two years: two accumulator rows
VOLATILE = {"setl_time", "medins_setl_id"}  # when, and the request's own msgid


def _requests() -> list[tuple[str, str]]:
    return [(psn, day) for psn in PERSONS for day in DATES]


def _stable(answer: dict[str, Any]) -> tuple[Any, ...]:
    """What the answer says of the money and the refusal, not when it was made."""
    output = answer.get("output") or {}
    info = {k: v for k, v in (output.get("setlinfo") or {}).items() if k not in VOLATILE}
    return (
        answer["infcode"],
        answer.get("err_msg"),
        info,
        output.get("setldetail"),
        output.get("detlcutinfo"),
    )


def _batches(kind: str = "preview") -> tuple[float, float]:
    """(reads of this kind, batches) so far in this process."""
    count = sum_ = 0.0
    for family in metrics.GROUP_READ_BATCH_SIZE.collect():
        for sample in family.samples:
            if sample.labels.get("kind") != kind:
                continue
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                sum_ = sample.value
    return sum_, count


async def test_presettlements_read_together_answer_as_one_at_a_time(server: Server) -> None:
    pos = server.client(PHARMACY)

    def drug(psn: str, day: str) -> dict[str, Any]:
        return pos.drug_input(psn, day, "144.70", LINES, insutype=INSUTYPE.get(psn, "310"))

    alone = [_stable(await pos.call("2101", drug(psn, day))) for psn, day in _requests()]
    assert {a[0] for a in alone} == {0, -1}  # both answers and refusals are compared
    read_before, batches_before = _batches()
    for _ in range(3):
        together = await asyncio.gather(
            *(pos.call("2101", drug(psn, day)) for psn, day in _requests())
        )
        assert [_stable(a) for a in together] == alone
    read, batches = _batches()
    # Every one was read by the group read, and not one by one.
    assert read - read_before == 3 * len(alone)
    assert batches - batches_before < read - read_before

    # Read after a settlement commits: the batch sees it (nothing is cached).
    before = (await pos.ok("2101", drug(EMPLOYEE, DATES[0])))["setlinfo"]["balc"]
    await pos.ok("2102", drug(EMPLOYEE, DATES[0]))
    alone_after = (await pos.ok("2101", drug(EMPLOYEE, DATES[0])))["setlinfo"]["balc"]
    assert alone_after < before
    after = await asyncio.gather(*(pos.ok("2101", drug(EMPLOYEE, DATES[0])) for _ in range(8)))
    assert {out["setlinfo"]["balc"] for out in after} == {alone_after}


def _job(psn_no: str, build: Any = None) -> Job:
    def balance_of(held: Held, _visit: int, _setl: int) -> Built:
        if held.person is None:
            raise NotInsured(f"人员编号{psn_no}不存在，请重新读卡获取人员信息")
        return Built(
            output=held.balance, writes=Writes(), balance=held.balance, year=Accumulators()
        )

    return Job(psn_no=psn_no, year=2026, build=build or balance_of)


async def test_a_refusal_is_its_own_and_a_batch_that_fails_sends_each_its_own_way(
    server: Server,
) -> None:
    pool = await db.create_pool(server.dsn, min_size=1, max_size=2)
    try:
        reads = GroupRead(pool, readers=1, max_batch=64, acquire_timeout=5)
        expires = asyncio.get_running_loop().time() + 5
        want = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", EMPLOYEE)

        got = await asyncio.gather(
            reads.preview(_job(EMPLOYEE), expires),
            reads.preview(_job("441800000000009999"), expires),
            reads.preview(_job(EMPLOYEE), expires),
            return_exceptions=True,
        )
        assert isinstance(got[1], NotInsured)
        assert [g.output for g in (got[0], got[2]) if isinstance(g, Built)] == [want, want]

        def broken(held: Held, _visit: int, _setl: int) -> Built:
            raise RuntimeError("a bug in one build")

        # A failure that is not a refusal fails the batch: each request takes the single path.
        got = await asyncio.gather(
            reads.preview(_job(EMPLOYEE), expires),
            reads.preview(_job(EMPLOYEE, broken), expires),
        )
        assert got == [None, None]

        # Past its deadline a request is answered TimeoutError, as a slow ledger's, and is not
        # read for anyone later.
        with pytest.raises(TimeoutError):
            await reads.preview(_job(EMPLOYEE), asyncio.get_running_loop().time())
        assert reads.previews._take() == []
    finally:
        await pool.close()


async def test_retries_the_plan_refuses_are_looked_up_together_and_get_their_answers(
    server: Server,
) -> None:
    """Under `reject` a writing request is first looked up in the msgid journal: looked up in
    batches, each retry still gets its own stored answer byte for byte."""
    pos = server.client(PHARMACY)
    first: list[tuple[bytes, bytes]] = []
    for _ in range(6):
        body = msgspec.json.encode(
            pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES))
        )
        status, answer = await pos.post_raw(body)
        assert status == 200 and decode(answer)["infcode"] == 0
        first.append((body, answer))
    unknown = msgspec.json.encode(
        pos.envelope("2102", pos.drug_input(PERSONS[-1], DATES[0], "144.70", LINES))
    )
    status, refusal = await pos.post_raw(unknown)
    assert decode(refusal)["infcode"] == -1  # a refusal is journaled too
    first.append((unknown, refusal))

    await set_rule(server.dsn, f"institution:{PHARMACY}", "settlement", "reject")

    async def refused_fresh() -> bool:
        fresh = pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES))
        return bool((await pos.call("2102", fresh["input"]))["infcode"] == -1)

    assert await until(refused_fresh, within=5.0)
    looked_up, batches = _batches("msgid")
    other_body = msgspec.json.encode(
        {
            **msgspec.json.decode(first[0][0]),
            "input": pos.drug_input(EMPLOYEE, DATES[0], "80.00", LINES[:1]),
        }
    )
    fresh = [
        msgspec.json.encode(pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "1", [])))
        for _ in range(6)
    ]
    sent = [body for body, _ in first] * 2 + fresh + [other_body]
    answers = await asyncio.gather(*(pos.post_raw(body) for body in sent))
    assert all(status == 200 for status, _ in answers)
    got = [answer for _, answer in answers]
    assert got[: 2 * len(first)] == [answer for _, answer in first] * 2
    assert all(decode(a)["infcode"] == -1 for a in got[2 * len(first) :])
    assert "报文ID" in decode(got[-1])["err_msg"]  # the same msgid with another body
    after, batches_after = _batches("msgid")
    assert after - looked_up == len(sent)
    assert batches_after - batches < after - looked_up
    await clear_rule(server.dsn, f"institution:{PHARMACY}", "settlement")
