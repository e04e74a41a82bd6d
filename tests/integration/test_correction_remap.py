"""Bulk catalog correction on lines uploaded as real HIS clients send them: with `med_list_codg`.

Every public client sends the national code on each 2204/2301 line (the interface marks it
required). A correction changes the mapping those codes came from, so re-settlement must resolve
each stored line again by its own item code, not check the old national code against the new
mapping (which refused every line and corrected nothing).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from tests.integration.conftest import Server
from tests.integration.test_corrections import (
    CLASS_B,
    DRUG,
    HOSPITAL,
    WRONG_CLASS_A,
    _cli,
    _mapping,
)
from tests.reference.data import load
from tests.reference.model import AMOUNT_FIELDS, FeeLine, Model, Settlement, Visit
from tests.reference.money import yuan_to_fen

PSN = "441800000000000001"  # employee, account 2000.00
CONSULT = "001102000010000"  # the national code of ZL0001 (普通门诊诊察费)


def _lines(drug_code: str) -> list[dict[str, Any]]:
    return [
        {
            "feedetl_sn": "1",
            "medins_list_codg": DRUG,
            "med_list_codg": drug_code,
            "pric": "40",
            "cnt": "2",
            "det_item_fee_sumamt": "80.00",
        },
        {
            "feedetl_sn": "2",
            "medins_list_codg": "ZL0001",
            "med_list_codg": CONSULT,
            "pric": "25",
            "cnt": "1",
            "det_item_fee_sumamt": "25.00",
        },
    ]


async def _settled_visit(server: Server, ipt: str, drug_code: str) -> tuple[str, dict[str, Any]]:
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(PSN, "310", "2026-05-10 09:00:00", ipt)
    rows = his.fee_rows(mdtrt_id, PSN, _lines(drug_code), "2026-05-10 09:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    out = await his.ok(
        "2207", his.settle_data(PSN, mdtrt_id, "11", "105.00", "310", "1", chrg_bchno="B1")
    )
    return mdtrt_id, out["setlinfo"]


async def _correct(server: Server, verb: str, *, as_json: bool = True) -> tuple[int, str, str]:
    return await _cli(
        "corrections",
        verb,
        "--institution",
        HOSPITAL,
        "--item",
        DRUG,
        *(("--json",) if as_json else ()),
        "--database-url",
        server.dsn,
    )


def _model_lines(drug_code: str) -> list[FeeLine]:
    return [
        FeeLine(
            feedetl_sn=ln["feedetl_sn"],
            medins_list_codg=ln["medins_list_codg"],
            pric=Decimal(ln["pric"]),
            cnt=Decimal(ln["cnt"]),
            amount_fen=yuan_to_fen(ln["det_item_fee_sumamt"]),
            fee_date=dt.date(2026, 5, 10),
            hosp_appr_flag="1",
            med_list_codg=ln["med_list_codg"],
        )
        for ln in _lines(drug_code)
    ]


def _expected_by_the_reference_model() -> tuple[Settlement, Settlement]:
    """The wrong settlement and its correction, as the independent model of the rules gives them.

    The correction is the rules' own sequence: cancel exactly (§7), then settle the same lines
    again through the corrected mapping against the accumulators of that moment.
    """
    model = Model(load())
    year = (dt.date(2026, 1, 1), dt.date(2099, 12, 31))
    visit = Visit("MZ-REMAP-1", PSN, HOSPITAL, dt.date(2026, 5, 10), "11")
    model.map_item(HOSPITAL, DRUG, WRONG_CLASS_A, *year)
    wrong = model.compute(
        visit, "11", model.split_lines(HOSPITAL, _model_lines(WRONG_CLASS_A)), "1"
    )
    model.apply("old", wrong)
    model.map_item(HOSPITAL, DRUG, CLASS_B, *year)
    model.cancel("old")
    # Re-resolved by the item code: the line now carries the corrected national code.
    right = model.compute(visit, "11", model.split_lines(HOSPITAL, _model_lines(CLASS_B)), "1")
    return wrong, right


def _fen(setlinfo: dict[str, Any]) -> dict[str, int]:
    return {k: yuan_to_fen(Decimal(str(setlinfo[k]))) for k in AMOUNT_FIELDS if k in setlinfo}


async def test_correction_resettles_lines_sent_with_the_old_national_code(server: Server) -> None:
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A))
    mdtrt_id, wrong = await _settled_visit(server, "MZ-REMAP-1", WRONG_CLASS_A)
    assert Decimal(wrong["preselfpay_amt"]) == 0  # class A by mistake
    model_wrong, model_right = _expected_by_the_reference_model()
    assert _fen(wrong) == model_wrong.amounts
    await his.ok("3301", _mapping(CLASS_B))

    code, out, err = await _correct(server, "plan")
    assert code == 0, err
    planned = json.loads(out)
    (item,) = planned["settlements"]
    assert item["old_setl_id"] == wrong["setl_id"]
    # The plan shows old → new national code per line; the unchanged line is not listed.
    assert item["lines"] == [
        {
            "feedetl_sn": "1",
            "medins_list_codg": DRUG,
            "old_med_list_codg": WRONG_CLASS_A,
            "new_med_list_codg": CLASS_B,
        }
    ]
    # Class B at 10% in 441800 on 80.00: 8.00 first self-pay, as a fresh settlement would give.
    assert Decimal(item["new_setlinfo"]["preselfpay_amt"]) == Decimal("8.00")
    # Found from outside: the plan showed a new settlement number apply never gave, and a
    # refund only as a negative "owes".
    assert item["new_setl_id"] == ""
    owes = Decimal(item["patient_owes"])
    assert (Decimal(item["patient_collect"]), Decimal(item["patient_refund"])) == (
        max(owes, Decimal(0)),
        max(-owes, Decimal(0)),
    )
    # Within the deductible, the account paid the whole visit both ways: no money moves.
    assert (owes, Decimal(item["account_delta"])) == (0, 0)
    # Without --json, the clerk's report names each settlement, its person and what the
    # counter collects or refunds, not only the totals.
    code, text, err = await _correct(server, "plan", as_json=False)
    assert code == 0, err
    assert f"{wrong['setl_id']} → (new number given when applied)  person {PSN}" in text
    assert "account: unchanged  patient: nothing to collect or refund" in text
    assert f"1 {DRUG}: {WRONG_CLASS_A} → {CLASS_B}" in text
    assert (
        f"per person:\n  {PSN}  1 settlements  collect 0.00  refund 0.00  account: unchanged"
        in text
    )

    code, out, err = await _correct(server, "apply")
    assert code == 0, err  # nothing refused
    (applied,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert applied["new_setlinfo"] == item["new_setlinfo"]  # the plan was exactly what apply did
    new_setl_id = applied["new_setl_id"]
    new = _fen(applied["new_setlinfo"])
    assert new == model_right.amounts  # every amount, as the independent model gives it

    # The re-settled line records the corrected national code, in the fee line and the settlement.
    stored = await server.fetch(
        "SELECT feedetl_sn, med_list_codg, setl_id FROM fee_lines WHERE mdtrt_id = $1"
        " ORDER BY feedetl_sn",
        mdtrt_id,
    )
    assert [(r["feedetl_sn"], r["med_list_codg"], r["setl_id"]) for r in stored] == [
        ("1", CLASS_B, new_setl_id),
        ("2", CONSULT, new_setl_id),
    ]
    used = await server.fetchval(
        "SELECT lines->0->>'med_list_codg' FROM settlements WHERE setl_id = $1",
        new_setl_id,
    )
    assert used == CLASS_B
    assert await server.check_ledger() == []

    # A second apply finds nothing left to correct.
    code, out, err = await _correct(server, "apply")
    assert code == 0, err
    assert out.strip() == ""


async def test_counter_upload_with_the_old_code_is_refused_naming_the_current_mapping(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    await his.ok("3301", _mapping(WRONG_CLASS_A))
    await his.ok("3301", _mapping(CLASS_B))
    mdtrt_id = await his.register(PSN, "310", "2026-05-11 09:00:00", "MZ-REMAP-2")
    rows = his.fee_rows(mdtrt_id, PSN, _lines(WRONG_CLASS_A), "2026-05-11 09:10:00", "B1")
    answer = await his.call("2204", {"feedetail": rows})
    assert answer["infcode"] == -1
    assert WRONG_CLASS_A in answer["err_msg"] and CLASS_B in answer["err_msg"]
    assert (
        await server.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", mdtrt_id) == 0
    )


async def test_a_mapping_that_changed_during_a_visit_is_not_taken_for_a_wrong_one(
    server: Server,
) -> None:
    """A line is priced by the mapping valid on its own date. Found from reading: each settled
    line stored the mapping valid on the visit's date beside it, and corrections compared that
    copy with today's mapping on the line's date, so a visit whose item changed its national code
    between the registration and the line (a dated change, not a mistake) was taken for a wrong
    mapping and would have been cancelled and settled again."""
    his = server.client(HOSPITAL)
    item = "YP9107"
    for code, begndate, enddate in (
        (CLASS_B, "2026-01-01", "2026-06-10"),
        (WRONG_CLASS_A, "2026-06-11", "2099-12-31"),
    ):
        mapping = _mapping(code, item)
        mapping["data"] |= {"begndate": begndate, "enddate": enddate}
        await his.ok("3301", mapping)
    mdtrt_id = await his.register(PSN, "310", "2026-06-10 23:30:00", "MZ-REMAP-DATED")
    line = {
        "feedetl_sn": "1",
        "medins_list_codg": item,
        "pric": "40",
        "cnt": "2",
        "det_item_fee_sumamt": "80.00",
    }
    rows = his.fee_rows(mdtrt_id, PSN, [line], "2026-06-11 00:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    info = (
        await his.ok(
            "2207", his.settle_data(PSN, mdtrt_id, "11", "80.00", "310", "1", chrg_bchno="B1")
        )
    )["setlinfo"]
    # Priced by the row of the line's date: the class-A code, no first self-pay.
    assert Decimal(str(info["preselfpay_amt"])) == 0
    code, out, err = await _cli(
        "corrections", "plan", "--institution", HOSPITAL, "--item", item, "--json",
        "--database-url", server.dsn,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["settlements"] == []


async def test_what_the_correction_commands_cannot_take_is_refused_in_one_line(
    server: Server,
) -> None:
    """Found from outside: `corrections plan --from 2026-13-01` printed a traceback, and a
    mistyped institution was told there was nothing to correct ("0 of 0", exit 0)."""
    db = ("--database-url", server.dsn)
    base = ("--institution", HOSPITAL, "--item", DRUG, *db)
    for argv, words in (
        (("corrections", "plan", *base, "--from", "2026-13-01"), "日期“2026-13-01”无效"),
        (("corrections", "plan", *base, "--from", "2026-12-05", "--to", "2026-12-01"), "早于"),
        (("corrections", "apply", *base, "--limit", "0"), "应为正整数"),
        (("corrections", "plan", "--institution", "H99999999999", "--item", DRUG, *db),
         "定点医药机构H99999999999不存在"),
    ):  # fmt: skip
        code, out, err = await _cli(*argv)
        assert code == 2, (argv, err, out)
        assert words in err and "Traceback" not in err, (argv, err)
