"""Idempotency by msgid: identical bytes on replay, refusal on a changed body, one effect."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from adapters.national.envelope import decode_request, fingerprint
from tests.integration.conftest import Server, running_gateway
from tests.integration.his_client import decode

PERSON = "441800000000000002"
HOSPITAL = "H44180000003"
PHARMACY = "P44180000001"


async def _visit(server: Server, ipt: str) -> str:
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(PERSON, "310", "2026-02-01 09:00:00", ipt)
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0001",
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        }
    ]
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, PERSON, lines, "2026-02-01 09:10:00", "B1")}
    )
    return mdtrt_id


async def test_replayed_settlement_returns_identical_bytes(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(server, "MZ-IDEM-1")
    body = msgspec.json.encode(
        his.envelope(
            "2207", his.settle_data(PERSON, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
        )
    )
    status1, first = await his.post_raw(body)
    status2, second = await his.post_raw(body)
    assert status1 == status2 == 200
    assert decode(first)["infcode"] == 0
    assert first == second
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 1
    )
    # The same msgid with a different body is refused, and changes nothing.
    env = msgspec.json.decode(body)
    env["input"]["data"]["invono"] = "CHANGED"
    status3, third = await his.post_raw(msgspec.json.encode(env))
    answer = decode(third)
    assert status3 == 200 and answer["infcode"] == -1 and "报文ID" in answer["err_msg"]
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 1
    )


async def test_replayed_failure_returns_identical_bytes(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(server, "MZ-IDEM-2")
    # Wrong total: refused, and the refusal is replayed byte for byte.
    body = msgspec.json.encode(
        his.envelope(
            "2207", his.settle_data(PERSON, mdtrt_id, "11", "99.00", "310", "1", chrg_bchno="B1")
        )
    )
    _, first = await his.post_raw(body)
    _, second = await his.post_raw(body)
    assert decode(first)["infcode"] == -1
    assert first == second


async def test_concurrent_duplicates_have_one_effect(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(server, "MZ-IDEM-3")
    body = msgspec.json.encode(
        his.envelope(
            "2207", his.settle_data(PERSON, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
        )
    )
    results = await asyncio.gather(*(his.post_raw(body) for _ in range(10)))
    bodies = {r[1] for r in results}
    assert len(bodies) == 1
    assert decode(results[0][1])["infcode"] == 0
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 1
    )


async def test_msgid_scoped_per_institution(server: Server) -> None:
    a = server.client(HOSPITAL)
    b = server.client("H44180000002")
    shared = "SHARED-MSGID-0001"
    q = {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802195505052345"}}
    assert (await a.call("9001", {"signIn": {"opter_no": "A"}}, msgid=shared))["infcode"] == 0
    assert (await b.call("9001", {"signIn": {"opter_no": "B"}}, msgid=shared))["infcode"] == 0
    assert (await a.call("1101", q))["infcode"] == 0


async def test_answers_are_kept_seven_days_then_purged(server: Server) -> None:
    his = server.client(HOSPITAL)
    old, recent = his.msgid(), his.msgid()
    for msgid in (old, recent):
        assert (await his.call("9001", {"signIn": {"opter_no": "A"}}, msgid=msgid))["infcode"] == 0
    await server.fetch(
        "UPDATE idempotency SET created_at = now() - interval '8 days' WHERE msgid = $1", old
    )
    await server.fetch(
        "UPDATE idempotency SET created_at = now() - interval '6 days 23 hours' WHERE msgid = $1",
        recent,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "idempotency",
        "purge",
        "--keep-days",
        "1",
        "--database-url",
        server.dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0 and b"removed 1" in out
    # The floor is said, not applied silently (found from outside).
    assert "--keep-days 1 is below the 7-day floor" in err.decode(), err
    kept = {
        r["msgid"]
        for r in await server.fetch(
            "SELECT msgid FROM idempotency WHERE msgid = ANY($1::text[])", [old, recent]
        )
    }
    assert kept == {recent}  # --keep-days 1 is raised to the 7-day floor


async def test_a_retry_stamped_again_gets_the_stored_answer(server: Server) -> None:
    """A counter that rebuilds its envelope to retry (a new inf_time, another device or
    operator) is retrying: it gets the first answer byte for byte, on the group commit's path
    (2207) and the single one (2201), and nothing is done twice. Only what the message asks for
    (infno, areas, input) is its content; changed, the refusal says to look the first up before
    any new msgid (a new msgid for a settled sale would be a second sale)."""
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(server, "MZ-IDEM-STAMP")
    data = his.settle_data(PERSON, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
    env = his.envelope("2207", data)
    _, first = await his.post_raw(msgspec.json.encode(env))
    assert decode(first)["infcode"] == 0
    restamped = {**env, "inf_time": "2026-02-01 09:59:59", "dev_no": "DEV-99", "opter": "OP999"}
    _, again = await his.post_raw(msgspec.json.encode(restamped))
    assert again == first
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 1
    )

    registration = his.envelope(
        "2201",
        {
            "data": {
                "psn_no": PERSON,
                "insutype": "310",
                "begntime": "2026-02-01 11:00:00",
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": PERSON,
                "ipt_otp_no": "MZ-IDEM-STAMP-2",
            }
        },
    )
    _, opened = await his.post_raw(msgspec.json.encode(registration))
    assert decode(opened)["infcode"] == 0, decode(opened)["err_msg"]
    _, reopened = await his.post_raw(
        msgspec.json.encode({**registration, "inf_time": "2026-02-01 11:00:09"})
    )
    assert reopened == opened
    assert (
        await server.fetchval(
            "SELECT count(*) FROM encounters WHERE ipt_otp_no = 'MZ-IDEM-STAMP-2'"
        )
        == 1
    )

    # Another amount under the same msgid: another message, refused in words that do not send
    # the clerk to a new msgid before the first is looked up.
    changed = {**env, "input": {"data": {**data, "medfee_sumamt": "26.00"}}}
    _, refused = await his.post_raw(msgspec.json.encode(changed))
    answer = decode(refused)
    assert answer["infcode"] == -1 and "请先查询原交易结果" in answer["err_msg"]
    # Which settlement is the message's (found from outside: a 5203 by the patient showed
    # another, unrelated one).
    assert "medins_setl_id为" in answer["err_msg"]


def _five_lines(price: str) -> list[dict[str, str]]:
    """A pharmacy sale's five lines of one unit each at `price`."""
    return [
        {
            "feedetl_sn": str(n),
            "medins_list_codg": code,
            "pric": price,
            "cnt": "1",
            "det_item_fee_sumamt": price,
        }
        for n, code in enumerate(("YP0007", "YP0003", "YP0010", "YP0002", "YP0009"), 1)
    ]


async def test_a_stored_answer_is_compressed_with_lz4_and_replays_byte_for_byte(
    server: Server,
) -> None:
    """A pharmacy sale's answer (a line of detlcutinfo each) and its settlement's lines are past
    the size at which PostgreSQL compresses a row; where the server has lz4 (022_answers_lz4.sql,
    025_settlement_lines_lz4.sql) both are stored so, and a retry still gets the very bytes.
    Ten lines: since a settled line no longer carries a copy of its mapping, five are not past it."""
    pos = server.client(PHARMACY)
    ten = [
        *_five_lines("9.90"),
        *({**ln, "feedetl_sn": str(int(ln["feedetl_sn"]) + 5)} for ln in _five_lines("9.90")),
    ]
    env = pos.envelope("2102", pos.drug_input(PERSON, "2026-06-01 10:00:00", "99.00", ten))
    body = msgspec.json.encode(env)
    _, first = await pos.post_raw(body)
    assert decode(first)["infcode"] == 0, decode(first)["err_msg"]
    has_lz4 = await server.fetchval(
        "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    stored = await server.fetchval(
        "SELECT pg_column_compression(answer) FROM idempotency"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        PHARMACY,
        env["msgid"],
    )
    lines = await server.fetchrow(
        "SELECT pg_column_compression(lines) AS how, octet_length(lines::text) AS size"
        " FROM settlements WHERE fixmedins_code = $1 AND medins_setl_id = $2",
        PHARMACY,
        env["msgid"],
    )
    assert len(first) > 2100  # past the row size at which PostgreSQL compresses
    assert stored == ("lz4" if has_lz4 else "pglz")
    assert lines is not None and lines["size"] > 2100
    assert lines["how"] == ("lz4" if has_lz4 else "pglz")
    _, again = await pos.post_raw(body)
    assert again == first


async def test_answering_a_claim_stays_on_its_page(new_database: Callable[..., Any]) -> None:
    """Each settlement claims its msgid and answers it in one transaction: the answer is an
    update of the claim, and finds room on the claim's page (023), so no index gets a second
    entry for it. Concurrent sales, so that the group commit claims many on a page at once."""
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        lines = _five_lines("1.00")
        sales = 40
        answers = await asyncio.gather(
            *(
                pos.call("2102", pos.drug_input(PERSON, "2026-06-01 10:00:00", "5.00", lines))
                for _ in range(sales)
            )
        )
        assert all(a["infcode"] == 0 for a in answers), [a["err_msg"] for a in answers]
        # The backends report their counts within seconds of going idle.
        deadline = time.monotonic() + 30
        while True:
            row = await srv.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE relname = 'idempotency'"
            )
            assert row is not None
            if row["n_tup_upd"] >= sales or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert row["n_tup_upd"] >= sales
        assert row["n_tup_hot_upd"] == row["n_tup_upd"]


async def test_a_retry_gets_its_answer_though_its_input_is_refused_now(server: Server) -> None:
    """An answer stored before a stricter input rule (here: sixteen digits per amount, which
    older code did not hold) is still the retry's answer: the msgid is claimed, and the retry
    found, before the input is judged. Refused instead, the counter would be told to start over
    for a sale that was settled."""
    pos = server.client(PHARMACY)
    lines = _five_lines("9.90")
    lines[0] |= {"pric": "999999999999000.01", "det_item_fee_sumamt": "999999999999000.01"}
    env = pos.envelope(
        "2102", pos.drug_input(PERSON, "2026-06-01 10:00:00", "999999999999039.61", lines)
    )
    body = msgspec.json.encode(env)
    _, refused = await pos.post_raw(msgspec.json.encode({**env, "msgid": env["msgid"] + "X"}))
    assert "超出范围" in decode(refused)["err_msg"]  # the rule as it is today
    stored = b'{"infcode":0,"output":{"setlinfo":{"setl_id":"S-EARLIER"}}}'
    await server.fetchval(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode)"
        " VALUES ($1, $2, '2102', $3, $4, 0)",
        PHARMACY,
        env["msgid"],
        fingerprint(decode_request(body)),
        stored,
    )
    _, again = await pos.post_raw(body)
    assert again == stored
