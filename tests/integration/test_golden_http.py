"""Every worked example of settlement-examples.json, in order, through its real transaction chain.

Outpatient: 2201 → 2203 → 2204 → 2206 → 2207; inpatient: 2401 → 2301 → 2402 → 2303 → 2304;
pharmacy: 2101 → 2102. The examples share state (accounts, deductibles, admissions), as the
rules file says, so they run in order against one freshly loaded database.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import amount_text

EXAMPLES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "contract" / "settlement-examples.json").read_text(
        encoding="utf-8"
    )
)
SETTLEMENT_ONLY = {
    "setl_id",
    "setl_time",
    "clr_optins",
    "clr_way",
    "mdtrt_id",
    "medins_setl_id",
}


async def _run(server: Server, ex: dict[str, Any]) -> dict[str, Any]:
    req = ex["request"]
    client = server.client(req["fixmedins_code"])
    psn_no = req["psn_no"]
    begntime = f"{req['service_date']} 09:00:00"
    med_type = req["med_type"]
    insutype = (
        "310"
        if psn_no
        in {"441800000000000001", "441800000000000002", "441800000000000003", "520500000000000001"}
        else "390"
    )
    medfee = str(sum(Decimal(ln["det_item_fee_sumamt"]) for ln in req["lines"]))
    if med_type == "41":
        drug = client.drug_input(
            psn_no, begntime, medfee, req["lines"], req["acct_used_flag"], insutype
        )
        pre = await client.ok("2101", drug)
        out = await client.ok("2102", drug)
        return {"pre": pre, "settled": out, "lines": out["detlcutinfo"]}
    if med_type.startswith("2"):
        admitted = await client.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": psn_no,
                    "insutype": insutype,
                    "begntime": begntime,
                    "mdtrt_cert_type": "01",
                    "mdtrt_cert_no": psn_no,
                    "med_type": med_type,
                    "ipt_no": req["mdtrt_id"],
                    "atddr_no": "D001",
                    "chfpdr_name": "医生",
                    "adm_diag_dscr": "入院诊断",
                    "adm_dept_codg": "K01",
                    "adm_dept_name": "外科",
                    "adm_bed": "01",
                    "dscg_maindiag_code": "K35.900",
                    "dscg_maindiag_name": "阑尾炎",
                },
                "diseinfo": [],
            },
        )
        mdtrt_id = admitted["result"]["mdtrt_id"]
        uploaded = await client.ok(
            "2301", {"feedetail": client.fee_rows(mdtrt_id, psn_no, req["lines"], begntime, "")}
        )
        await client.ok(
            "2402",
            {
                "dscginfo": {
                    "mdtrt_id": mdtrt_id,
                    "psn_no": psn_no,
                    "insutype": insutype,
                    "endtime": f"{req['service_date']} 18:00:00",
                    "dscg_dept_codg": "K01",
                    "dscg_dept_name": "外科",
                    "dscg_way": "1",
                },
                "diseinfo": [],
            },
        )
        data = client.settle_data(
            psn_no, mdtrt_id, med_type, medfee, insutype, req["acct_used_flag"], mid_setl_flag="0"
        )
        pre = await client.ok("2303", data)
        out = await client.ok("2304", data)
        return {"pre": pre, "settled": out, "lines": uploaded["result"], "mdtrt_id": mdtrt_id}
    mdtrt_id = await client.register(psn_no, insutype, begntime, req["mdtrt_id"])
    await client.visit_info(mdtrt_id, psn_no, med_type, begntime)
    uploaded = await client.ok(
        "2204", {"feedetail": client.fee_rows(mdtrt_id, psn_no, req["lines"], begntime, "B1")}
    )
    data = client.settle_data(
        psn_no, mdtrt_id, med_type, medfee, insutype, req["acct_used_flag"], chrg_bchno="B1"
    )
    pre = await client.ok("2206", data)
    out = await client.ok("2207", data)
    return {"pre": pre, "settled": out, "lines": uploaded["result"], "mdtrt_id": mdtrt_id}


@pytest.fixture(scope="module")
async def answers(server: Server) -> list[dict[str, Any]]:
    """All examples answered, in order."""
    return [await _run(server, ex) for ex in EXAMPLES]


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e["title"] for e in EXAMPLES])
async def test_example_setlinfo(answers: list[dict[str, Any]], index: int) -> None:
    expected = EXAMPLES[index]["setlinfo"]
    got = answers[index]["settled"]["setlinfo"]
    pharmacy = EXAMPLES[index]["request"]["med_type"] == "41"
    for field, value in expected.items():
        if field == "hosp_part_amt" and pharmacy:
            assert field not in got  # the pharmacy setlinfo has no hospital share (protocol §2.5)
            assert value == "0.00"
        elif field == "pool_prop_selfpay":
            assert f"{Decimal(got[field]):.4f}" == value, field
        else:
            assert amount_text(got[field]) == value, field
    assert got["setl_id"], "a settlement answers its setl_id"
    assert got["medins_setl_id"], "medins_setl_id echoes the msgid"


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e["title"] for e in EXAMPLES])
async def test_example_lines(answers: list[dict[str, Any]], index: int) -> None:
    expected = EXAMPLES[index]["lines"]
    got = {row["feedetl_sn"]: row for row in answers[index]["lines"]}
    assert len(got) == len(expected)
    for line in expected:
        row = got[line["feedetl_sn"]]
        assert row["chrgitm_lv"] == line["chrgitm_lv"]
        assert f"{Decimal(row['selfpay_prop']):.4f}" == line["selfpay_prop"]
        for field in ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt"):
            assert amount_text(row[field]) == line[field], (line["feedetl_sn"], field)


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e["title"] for e in EXAMPLES])
async def test_presettlement_equals_settlement(answers: list[dict[str, Any]], index: int) -> None:
    pre = answers[index]["pre"]["setlinfo"]
    settled = answers[index]["settled"]["setlinfo"]
    assert pre["setl_id"] is None
    for field, value in settled.items():
        if field not in SETTLEMENT_ONLY:
            assert pre[field] == value, field
    assert answers[index]["pre"]["setldetail"] == answers[index]["settled"]["setldetail"]


async def test_fund_rows_add_up(answers: list[dict[str, Any]]) -> None:
    for a in answers:
        info, detail = a["settled"]["setlinfo"], a["settled"]["setldetail"]
        funds = sum(Decimal(r["fund_payamt"]) for r in detail)
        assert funds == Decimal(info["fund_pay_sumamt"]) + Decimal(info["acct_pay"])


async def test_ledger_balances_after_the_examples(
    server: Server, answers: list[dict[str, Any]]
) -> None:
    assert await server.check_ledger() == []
