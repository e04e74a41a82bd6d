"""The group read: pre-settlements read in batches answer as each read alone would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from gateway.app.appkeys import GATEWAY
from gateway.core.model import Accumulators
from gateway.ledger import db, idempotency
from gateway.ledger.writes import Writes
from gateway.ops import metrics
from gateway.pipeline.group_read import GroupRead
from gateway.pipeline.grouped import Built, Held, Job, Unread
from gateway.pipeline.recent_answers import RecentAnswers
from gateway.protocol.errors import NotInsured
from tests.integration.conftest import Server
from tests.integration.emergency_helpers import (
    OUTPATIENT_LINES,
    OUTPATIENT_TOTAL,
    clear_rule,
    connect,
    set_rule,
    until,
)
from tests.integration.his_client import HisClient, decode
from tests.integration.test_pharmacy import EMPLOYEE, LINES, PHARMACY

# Insured persons of several kinds, one not insured (psn_insu_stas 2), one nobody knows.
PERSONS = [f"44180000000000000{n}" for n in range(1, 8)] + ["441800000000009999"]
INSUTYPE = {"441800000000000004": "390", "441800000000000005": "390", "441800000000000006": "390"}
DATES = ["2026-06-01 10:00:00", "2025-12-30 09:00:00"]
HOSPITAL = "H44180000001"
WORKERS = [
    "441800000000000001",
    "441800000000000002",
    "441800000000000003",
]  # two years: two accumulator rows
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


def _settling_again(pos: HisClient) -> Callable[[], Awaitable[bool]]:
    """Whether the pharmacy's sales are settled again (the rule cleared has reached the
    process)."""

    async def settling() -> bool:
        drug = pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES)
        return bool((await pos.call("2101", drug))["infcode"] == 0)

    return settling


async def test_retries_the_plan_refuses_are_looked_up_together_and_get_their_answers(
    server: Server,
) -> None:
    """Under `reject` a writing request gets the answer its msgid already has: a sale's retry
    from the refusal's own keep (in batches: the keep's statement finds the earlier answer), a
    cancellation's, which keeps nothing, from the msgid journal looked up in batches; each
    retry gets its own stored answer byte for byte. The retries of the sales this process
    answered are answered from its recent answers, without the ledger."""
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
    kept, batches = _batches("kept")
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
    after, batches_after = _batches("kept")
    remembered = 2 * (len(first) - 1) + 1  # the sales' retries, and the other body under one
    assert after - kept == len(sent) - remembered
    assert batches_after - batches < after - kept

    # A cancellation keeps nothing under `reject`: its msgid is looked up first, in batches.
    cancels = []
    for _body, answer in first[:6]:
        setl = decode(answer)["output"]["setlinfo"]
        ref = {
            "data": {"setl_id": setl["setl_id"], "mdtrt_id": setl["mdtrt_id"], "psn_no": EMPLOYEE}
        }
        cancels.append(msgspec.json.encode(pos.envelope("2103", ref)))
    looked_up, batches = _batches("msgid")
    refused = await asyncio.gather(*(pos.post_raw(body) for body in cancels + cancels))
    assert all(decode(a)["infcode"] == -1 and "未退费" in decode(a)["err_msg"] for _, a in refused)
    after, batches_after = _batches("msgid")
    assert after - looked_up == 2 * len(cancels)
    assert batches_after - batches < after - looked_up
    await clear_rule(server.dsn, f"institution:{PHARMACY}", "settlement")

    assert await until(_settling_again(pos), within=5.0)  # the next tests share this gateway


def _kept(msgid: str, answer: bytes, *, elsewhere: bool = False) -> idempotency.Kept:
    return idempotency.Kept(
        "KEEPTEST0001", msgid, "2102", msgid.encode().ljust(32, b"-"), answer, -1, elsewhere
    )


async def test_refusals_kept_together_are_each_kept_once_and_the_first_answer_wins(
    server: Server,
) -> None:
    """`keep_many`: each key written with its answer once, by the first that gives it; a key
    that had an answer keeps it and hands it back; one an open transaction holds past the
    bound fails the whole statement, nothing of it kept, and the group read's batch then sends
    each refusal to be kept alone."""
    run = f"K{time.time_ns()}"
    a, b, c, d = (f"{run}-{n}" for n in "abcd")
    async with connect(server.dsn) as conn:
        got = await idempotency.keep_many(
            conn, [_kept(a, b"A1"), _kept(b, b"B1", elsewhere=True), _kept(a, b"A2")]
        )
        assert got[:2] == [None, None]
        assert isinstance(got[2], idempotency.Stored) and got[2].answer == b"A1"
        got = await idempotency.keep_many(conn, [_kept(c, b"C1"), _kept(a, b"A3")])
        assert got[0] is None
        assert isinstance(got[1], idempotency.Stored) and got[1].answer == b"A1"
        rows = await conn.fetch(
            "SELECT msgid, answer, infcode, answered_elsewhere FROM idempotency"
            " WHERE fixmedins_code = 'KEEPTEST0001' AND msgid LIKE $1 ORDER BY msgid",
            f"{run}-%",
        )
        assert [tuple(r) for r in rows] == [
            (a, b"A1", -1, False),
            (b, b"B1", -1, True),
            (c, b"C1", -1, False),
        ]

        async with connect(server.dsn) as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256)"
                " VALUES ('KEEPTEST0001', $1, '2102', $2)",
                f"{run}-held", b"h" * 32,
            )  # fmt: skip
            with pytest.raises(asyncpg.LockNotAvailableError):
                await idempotency.keep_many(
                    conn, [_kept(d, b"D1"), _kept(f"{run}-held", b"H1")], lock_wait_ms=50
                )
            pool = await db.create_pool(server.dsn, min_size=1, max_size=2)
            try:
                reads = GroupRead(pool, readers=1, max_batch=64, acquire_timeout=5)
                expires = asyncio.get_running_loop().time() + 5
                with pytest.raises(Unread):
                    await reads.keep(_kept(f"{run}-held", b"H2"), expires)
                # Kept in a batch of its own, a refusal with no key held is kept.
                assert await reads.keep(_kept(d, b"D2"), expires) is None
            finally:
                await pool.close()
            await tx.rollback()
        assert await conn.fetchval(
            "SELECT answer FROM idempotency WHERE fixmedins_code = 'KEEPTEST0001' AND msgid = $1",
            d,
        ) == b"D2"  # fmt: skip
        await conn.execute("DELETE FROM idempotency WHERE fixmedins_code = 'KEEPTEST0001'")


async def _sold_and_forgotten(server: Server, pos: HisClient) -> list[tuple[bytes, bytes]]:
    """Four sales settled, as bodies and answers, and forgotten by the process's recent answers,
    as if another process had answered them: their retries' answers come from the ledger."""
    sold = []
    for _ in range(4):
        body = msgspec.json.encode(
            pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES))
        )
        status, answer = await pos.post_raw(body)
        assert status == 200 and decode(answer)["infcode"] == 0
        sold.append((body, answer))
    assert server.app is not None
    gw = server.app[GATEWAY]
    gw.recent = RecentAnswers(gw.recent.capacity)
    return sold


async def test_refusals_reject_keeps_are_kept_in_batches_each_once(server: Server) -> None:
    """Under `reject` a sale's refusal is kept against its msgid (the counter takes the bill in
    cash): kept in batches, each msgid once, sent twice at once answered the same bytes both
    times, and the same after the rule is cleared; nothing settled."""
    pos = server.client(PHARMACY)
    sold = await _sold_and_forgotten(server, pos)
    await set_rule(server.dsn, f"institution:{PHARMACY}", "settlement", "reject")
    try:

        async def refused_fresh() -> bool:
            drug = pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES)
            return bool((await pos.call("2101", drug))["infcode"] == -1)

        assert await until(refused_fresh, within=5.0)
        settled = await server.fetchval("SELECT count(*) FROM settlements")
        kept, batches = _batches("kept")
        bodies = [
            msgspec.json.encode(
                pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES))
            )
            for _ in range(24)
        ]
        retries = [body for body, _ in sold]
        answers = await asyncio.gather(*(pos.post_raw(body) for body in bodies + bodies + retries))
        assert all(status == 200 for status, _ in answers)
        # A retry of a sale settled before the rule gets its settlement, byte for byte.
        assert [answer for _, answer in answers[48:]] == [answer for _, answer in sold]
        got = [answer for _, answer in answers[:48]]
        assert got[:24] == got[24:]  # each msgid's two copies: one answer
        assert len(set(got[:24])) == 24
        assert all("本报文ID不再办理医保结算" in decode(a)["err_msg"] for a in got)
        kept_after, batches_after = _batches("kept")
        # Every copy went through a batch (the second copy's keep finds the first's answer),
        # fewer batches than refusals kept.
        assert kept_after - kept == 48 + len(sold)
        assert batches_after - batches < kept_after - kept
        msgids = [decode(body)["msgid"] for body in bodies]
        rows = await server.fetch(
            "SELECT msgid, answer, infcode FROM idempotency"
            " WHERE fixmedins_code = $1 AND msgid = ANY($2::text[])",
            PHARMACY,
            msgids,
        )
        assert sorted((r["msgid"], bytes(r["answer"]), r["infcode"]) for r in rows) == sorted(
            zip(msgids, got[:24], [-1] * 24, strict=True)
        )
    finally:
        await clear_rule(server.dsn, f"institution:{PHARMACY}", "settlement")

    assert await until(_settling_again(pos), within=5.0)
    again = await asyncio.gather(*(pos.post_raw(body) for body in bodies))
    assert [answer for _, answer in again] == got[:24]
    assert await server.fetchval("SELECT count(*) FROM settlements") == settled


async def test_retries_under_defer_find_their_answers_where_their_msgid_is_claimed(
    server: Server,
) -> None:
    """Under `defer` a sale becomes a claim whose transaction claims the msgid first, so the
    msgid journal is not read before: a retry of a sale settled before the rule (not in the
    process's recent answers) still gets its settlement byte for byte, a retry of a claim its
    claim, and nothing is claimed twice."""
    pos = server.client(PHARMACY)
    sold = await _sold_and_forgotten(server, pos)
    assert server.app is not None
    gw = server.app[GATEWAY]
    await set_rule(server.dsn, f"institution:{PHARMACY}", "settlement", "defer")
    try:

        async def deferring() -> bool:
            drug = pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES)
            return "应急预案" in str((await pos.call("2101", drug)).get("warn_msg") or "")

        assert await until(deferring, within=5.0)
        claims = [
            msgspec.json.encode(
                pos.envelope("2102", pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES))
            )
            for _ in range(6)
        ]
        first = await asyncio.gather(*(pos.post_raw(body) for body in claims))
        assert all(decode(a)["output"]["setlinfo"]["setl_id"].startswith("DF") for _, a in first)
        looked_up, _ = _batches("msgid")
        gw.recent = RecentAnswers(gw.recent.capacity)
        retries = [body for body, _ in sold] + claims
        again = await asyncio.gather(*(pos.post_raw(body) for body in retries + retries))
        want = [answer for _, answer in sold] + [answer for _, answer in first]
        assert [answer for _, answer in again] == want + want
        assert _batches("msgid")[0] == looked_up  # the journal was not read first
        held = await server.fetchval(
            "SELECT count(*) FROM deferred WHERE kind = 'claim' AND msgid = ANY($1::text[])",
            [decode(body)["msgid"] for body in claims + [b for b, _ in sold]],
        )
        assert held == len(claims)  # one claim each, none for the settled sales
    finally:
        await clear_rule(server.dsn, f"institution:{PHARMACY}", "settlement")

    assert await until(_settling_again(pos), within=5.0)


async def _open_visit(his: HisClient, psn_no: str, no: str) -> str:
    """2201 + 2203 + 2204 (batch B1): a visit ready to pre-settle."""
    mdtrt_id = await his.register(psn_no, "310", "2026-05-02 08:30:00", no)
    await his.visit_info(mdtrt_id, psn_no, "11", "2026-05-02 08:30:00")
    rows = his.fee_rows(mdtrt_id, psn_no, OUTPATIENT_LINES, "2026-05-02 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


def _data(his: HisClient, psn_no: str, mdtrt_id: str) -> dict[str, Any]:
    return his.settle_data(psn_no, mdtrt_id, "11", OUTPATIENT_TOTAL, "310", "0", chrg_bchno="B1")


async def test_outpatient_presettlements_read_together_answer_and_note_as_alone(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    visits = [(psn, await _open_visit(his, psn, f"MZ-GR-{n}")) for n, psn in enumerate(WORKERS)]
    # Refusals in the same batches: another person's visit, and a visit nobody opened.
    asks = [*visits, (WORKERS[0], visits[1][1]), (WORKERS[0], "MISSING-VISIT")]
    alone = [_stable(await his.call("2206", _data(his, psn, m))) for psn, m in asks]
    assert [a[0] for a in alone] == [0] * len(visits) + [-1, -1], alone
    noted_alone = await server.fetch("SELECT mdtrt_id, infno FROM presettlements ORDER BY 1")
    assert sorted(m for _, m in visits) == [r["mdtrt_id"] for r in noted_alone]

    read, batches = _batches()
    for _ in range(3):
        together = await asyncio.gather(
            *(his.call("2206", _data(his, psn, m)) for psn, m in asks * 2)
        )
        assert [_stable(a) for a in together] == alone * 2
    read_after, batches_after = _batches()
    assert read_after - read == 3 * 2 * len(asks)
    assert batches_after - batches < read_after - read
    noted = await server.fetch("SELECT mdtrt_id, infno, at FROM presettlements ORDER BY 1")
    assert [(r["mdtrt_id"], r["infno"]) for r in noted] == [
        (r["mdtrt_id"], r["infno"]) for r in noted_alone
    ]
    # Each visit's note is its latest pre-settlement's.
    before = {r["mdtrt_id"]: r["at"] for r in noted}
    await his.ok("2206", _data(his, *visits[0]))
    latest = await server.fetchval(
        "SELECT at FROM presettlements WHERE mdtrt_id = $1", visits[0][1]
    )
    assert latest >= before[visits[0][1]]


async def test_a_visit_whose_note_is_locked_holds_no_one_else(server: Server) -> None:
    """A batch mixes institutions: one visit's pre-settlement row held by a long transaction
    sends the batch's requests their own way instead of holding every pre-settlement."""
    his = server.client(HOSPITAL)
    pos = server.client(PHARMACY)
    held = (WORKERS[0], await _open_visit(his, WORKERS[0], "MZ-GR-HELD"))
    free = (WORKERS[1], await _open_visit(his, WORKERS[1], "MZ-GR-FREE"))
    await his.ok("2206", _data(his, *held))  # its note row exists
    holder = await asyncpg.connect(server.dsn)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM presettlements WHERE mdtrt_id = $1 FOR UPDATE", held[1])
        stuck: list[asyncio.Task[dict[str, Any]]] = []
        others: list[asyncio.Task[dict[str, Any]]] = []
        started = time.monotonic()
        for _ in range(6):  # interleaved, so that batches mix the held visit with the others
            stuck.append(asyncio.create_task(his.call("2206", _data(his, *held))))
            others.append(asyncio.create_task(his.call("2206", _data(his, *free))))
            drug = pos.drug_input(EMPLOYEE, DATES[0], "144.70", LINES)
            others.append(asyncio.create_task(pos.call("2101", drug)))
        answers = await asyncio.gather(*others)
        assert [a["infcode"] for a in answers] == [0] * len(others), answers
        assert time.monotonic() - started < 3.0  # not the call deadline the lock would cost
        assert not any(task.done() for task in stuck)
    finally:
        await lock.rollback()
        await holder.close()
    assert [(await task)["infcode"] for task in stuck] == [0] * len(stuck)
