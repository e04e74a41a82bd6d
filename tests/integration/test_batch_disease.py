"""One charge batch, one disease: protocol §2.3 (2204 `chrg_bchno`, "同一收费批次号病种编号必须
一致"), and the visit's own where its information (2203) named one.

Found from outside: a 门慢门特 visit (2203 med_type 14, M07800, the person's registered chronic
disease) took a batch whose lines named M07800 and I10.X00 (not registered) in one upload and one
more I10.X00 line later, and settled all three at the chronic ratio. Each refusal is checked on
the group commit (the default) and on the single path (`[group_commit] writers = 0`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from msgspec.structs import replace

from gateway.app.config import GroupCommitConfig
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import line

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
RETIREE = "441800000000000002"  # filed for the chronic disease M07800 only
EMPLOYEE = "441800000000000001"
DAY = "2026-06-08"
CHRONIC = "M07800"
OTHER = "I10.X00"


@pytest_asyncio.fixture(scope="module", params=["grouped", "single"])
async def server(
    request: pytest.FixtureRequest, new_database: Callable[..., Any]
) -> AsyncIterator[Server]:
    config = GENEROUS
    if request.param == "single":
        config = replace(GENEROUS, group_commit=GroupCommitConfig(writers=0))
    async with running_gateway(new_database, config) as srv:
        yield srv


def _line(sn: str) -> dict[str, Any]:
    return line(sn, "YP0003", "45.5", 1)


def _rows(
    his: HisClient, mdtrt_id: str, psn_no: str, batch: str, lines: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    rows = his.fee_rows(mdtrt_id, psn_no, [_line(sn) for sn, _ in lines], f"{DAY} 09:10:00", batch)
    for row, (_, code) in zip(rows, lines, strict=True):
        row["dise_codg"] = code
    return rows


async def _visit(his: HisClient, psn_no: str, ipt: str, med_type: str | None, dise: str) -> str:
    mdtrt_id = await his.register(psn_no, "310", f"{DAY} 09:00:00", ipt)
    if med_type is not None:
        await his.visit_info(mdtrt_id, psn_no, med_type, f"{DAY} 09:00:00", dise)
    return mdtrt_id


async def _unsettled(server: Server, mdtrt_id: str) -> list[str]:
    rows = await server.fetch(
        "SELECT feedetl_sn FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL"
        " ORDER BY feedetl_sn",
        mdtrt_id,
    )
    return [r["feedetl_sn"] for r in rows]


def _presettle(his: HisClient, psn_no: str, mdtrt_id: str, med_type: str, total: str) -> Any:
    return his.call(
        "2206", his.settle_data(psn_no, mdtrt_id, med_type, total, "310", "0", chrg_bchno="MX")
    )


async def test_a_chronic_visits_batch_takes_no_line_of_another_disease(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(his, RETIREE, "BD-1", "14", CHRONIC)
    mixed = _rows(his, mdtrt_id, RETIREE, "MX", [("m1", CHRONIC), ("m2", OTHER)])
    refused = await his.call("2204", {"feedetail": mixed})
    assert refused["infcode"] == -1, refused
    words = str(refused["err_msg"])
    assert "m2" in words and OTHER in words and CHRONIC in words and "2203" in words, words
    assert await _unsettled(server, mdtrt_id) == []  # nothing of the refused upload is kept

    # The visit's disease on its lines, or none, is taken and settled at the chronic ratio.
    own = _rows(his, mdtrt_id, RETIREE, "MX", [("m1", CHRONIC), ("m3", "")])
    assert (await his.call("2204", {"feedetail": own}))["infcode"] == 0
    late = _rows(his, mdtrt_id, RETIREE, "MX", [("m4", OTHER)])
    refused = await his.call("2204", {"feedetail": late})
    assert refused["infcode"] == -1 and "m4" in str(refused["err_msg"]), refused
    assert await _unsettled(server, mdtrt_id) == ["m1", "m3"]
    answer = await _presettle(his, RETIREE, mdtrt_id, "14", "91.00")
    assert answer["infcode"] == 0, answer


async def test_a_batch_holds_one_disease_across_its_uploads(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(his, EMPLOYEE, "BD-2", None, "")  # no 2203: no disease of its own
    mixed = _rows(his, mdtrt_id, EMPLOYEE, "MX", [("a1", "J06.900"), ("a2", OTHER)])
    refused = await his.call("2204", {"feedetail": mixed})
    assert refused["infcode"] == -1, refused
    words = str(refused["err_msg"])
    assert "同一收费批次号病种编码必须一致" in words and "a1" in words and "a2" in words, words

    first = _rows(his, mdtrt_id, EMPLOYEE, "MX", [("a1", "J06.900")])
    assert (await his.call("2204", {"feedetail": first}))["infcode"] == 0
    second = _rows(his, mdtrt_id, EMPLOYEE, "MX", [("a2", OTHER)])
    refused = await his.call("2204", {"feedetail": second})
    assert refused["infcode"] == -1 and "a1" in str(refused["err_msg"]), refused
    # Another disease goes in a batch of its own; a line naming none joins any batch.
    other_batch = _rows(his, mdtrt_id, EMPLOYEE, "MY", [("a2", OTHER)])
    assert (await his.call("2204", {"feedetail": other_batch}))["infcode"] == 0
    plain = _rows(his, mdtrt_id, EMPLOYEE, "MX", [("a3", "")])
    assert (await his.call("2204", {"feedetail": plain}))["infcode"] == 0
    assert await _unsettled(server, mdtrt_id) == ["a1", "a2", "a3"]


async def test_a_batch_of_another_disease_than_the_chronic_visit_now_names_is_not_settled(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    # Filed for two chronic diseases: the visit's 2203 may name either before it settles.
    await server.fetch(
        "UPDATE persons SET chronic_dise_codg = $2 WHERE psn_no = $1", RETIREE, [CHRONIC, OTHER]
    )
    mdtrt_id = await _visit(his, RETIREE, "BD-3", "14", CHRONIC)
    lines = _rows(his, mdtrt_id, RETIREE, "MX", [("c1", CHRONIC), ("c2", "")])
    assert (await his.call("2204", {"feedetail": lines}))["infcode"] == 0
    await his.visit_info(mdtrt_id, RETIREE, "14", f"{DAY} 09:00:00", OTHER)  # corrected since
    refused = await _presettle(his, RETIREE, mdtrt_id, "14", "91.00")
    assert refused["infcode"] == -1, refused
    words = str(refused["err_msg"])
    assert "c1" in words and "2205" in words and OTHER in words, words
    settled = await his.call(
        "2207", his.settle_data(RETIREE, mdtrt_id, "14", "91.00", "310", "0", chrg_bchno="MX")
    )
    assert settled["infcode"] == -1, settled
    assert await _unsettled(server, mdtrt_id) == ["c1", "c2"]  # nothing settled

    # Withdrawn and sent again under the visit's disease, the batch settles.
    await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "MX", "psn_no": RETIREE}})
    again = _rows(his, mdtrt_id, RETIREE, "MX", [("c1", OTHER), ("c2", "")])
    assert (await his.call("2204", {"feedetail": again}))["infcode"] == 0
    assert (await _presettle(his, RETIREE, mdtrt_id, "14", "91.00"))["infcode"] == 0


async def test_an_ordinary_visits_lines_are_not_held_to_its_diagnosis_code(server: Server) -> None:
    """An ordinary (11) visit's 2203 dise_codg often holds an ICD diagnosis (YiBinActive's client
    sends one), which prices nothing: its lines' own code is only held to their batch."""
    his = server.client(HOSPITAL)
    mdtrt_id = await _visit(his, EMPLOYEE, "BD-4", "11", "N05.900x003")
    lines = _rows(his, mdtrt_id, EMPLOYEE, "MX", [("o1", "J06.900"), ("o2", "")])
    assert (await his.call("2204", {"feedetail": lines}))["infcode"] == 0
    answer = await _presettle(his, EMPLOYEE, mdtrt_id, "11", "91.00")
    assert answer["infcode"] == 0, answer
