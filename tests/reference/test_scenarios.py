"""Scenarios the random run draws only now and then, spelled out against a real gateway and the
reference model."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.conftest import running_gateway
from tests.reference import data as reference_data
from tests.reference.model import FeeLine, Model, Visit
from tests.reference.money import fen_text, yuan_to_fen

pytestmark = pytest.mark.integration

PSN = "441800000000000004"  # resident, 441800
HOSPITAL = "H44180000002"  # level 2, 441800


def _row(line: FeeLine, mdtrt_id: str, fee_time: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "feedetl_sn": line.feedetl_sn,
        "mdtrt_id": mdtrt_id,
        "psn_no": PSN,
        "med_type": "21",
        "fee_ocur_time": fee_time,
        "med_list_codg": "",
        "medins_list_codg": line.medins_list_codg,
        "det_item_fee_sumamt": fen_text(line.amount_fen),
        "cnt": str(line.cnt),
        "pric": str(line.pric),
        "bilg_dept_codg": "K02",
        "bilg_dept_name": "外科",
        "bilg_dr_codg": "D001",
        "bilg_dr_name": "医生",
        "hosp_appr_flag": "1",
    }
    if line.init_feedetl_sn:
        row["init_feedetl_sn"] = line.init_feedetl_sn
    return row


def _settle(mdtrt_id: str, medfee: int, mid: str) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": PSN,
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "441802197507074567",
            "medfee_sumamt": fen_text(medfee),
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "insutype": "390",
            "acct_used_flag": "0",
            "invono": "",
            "mid_setl_flag": mid,
        }
    }


async def test_refund_of_a_line_settled_mid_way(new_database: Callable[..., Any]) -> None:
    """§2 "S (negative for refund lines of 2301 with negative cnt)": nothing limits a refund to
    lines not yet settled, and the final settlement's totals stay ≥ 0 (§6), so the refund is
    taken and settled with the next settlement."""
    model = Model(reference_data.load())
    day = dt.date(2025, 5, 1)
    surgery = FeeLine("1", "ZL0009", Decimal(3000), Decimal(1), 300000, day, "1")
    drip = FeeLine("2", "ZL0008", Decimal(20), Decimal(10), 20000, day, "1")
    nursing = FeeLine("3", "ZL0010", Decimal(400), Decimal(5), 200000, day, "1")
    refund = FeeLine("4", "ZL0008", Decimal(20), Decimal(-5), -10000, day, "1", "", "2")
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        admitted = await his.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": PSN,
                    "insutype": "390",
                    "begntime": "2025-05-01 08:00:00",
                    "mdtrt_cert_type": "02",
                    "mdtrt_cert_no": "441802197507074567",
                    "med_type": "21",
                    "ipt_no": "ZY-REFUND-1",
                    "atddr_no": "D001",
                    "chfpdr_name": "医生",
                    "adm_diag_dscr": "急性阑尾炎",
                    "adm_dept_codg": "K02",
                    "adm_dept_name": "外科",
                    "adm_bed": "1",
                    "dscg_maindiag_code": "K35.800",
                    "dscg_maindiag_name": "急性阑尾炎",
                },
                "diseinfo": [],
            },
        )
        mdtrt_id = str(admitted["result"]["mdtrt_id"])
        visit = Visit(mdtrt_id, PSN, HOSPITAL, day, "21")
        first = [surgery, drip]
        await his.ok(
            "2301", {"feedetail": [_row(ln, mdtrt_id, "2025-05-01 10:00:00") for ln in first]}
        )
        mid_way = model.compute(visit, "21", model.split_lines(HOSPITAL, first), "0")
        out = await his.ok("2304", _settle(mdtrt_id, 320000, "1"))
        assert yuan_to_fen(out["setlinfo"]["hifp_pay"]) == mid_way.amounts["hifp_pay"]
        model.apply(str(out["setlinfo"]["setl_id"]), mid_way)

        second = [nursing, refund]
        await his.ok(
            "2301", {"feedetail": [_row(ln, mdtrt_id, "2025-05-02 10:00:00") for ln in second]}
        )
        await his.ok(
            "2402",
            {
                "dscginfo": {
                    "mdtrt_id": mdtrt_id,
                    "psn_no": PSN,
                    "insutype": "390",
                    "endtime": "2025-05-03 10:00:00",
                    "dscg_dept_codg": "K02",
                    "dscg_dept_name": "外科",
                    "dscg_way": "1",
                },
                "diseinfo": [],
            },
        )
        final = model.compute(visit, "21", model.split_lines(HOSPITAL, second), "0")
        out = await his.ok("2304", _settle(mdtrt_id, 190000, "0"))
        got = {k: yuan_to_fen(out["setlinfo"][k]) for k in final.amounts}
        assert got == final.amounts
