"""The reference model replays settlement-examples.json, in order, and matches every amount."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.reference import data as reference_data
from tests.reference.model import FeeLine, Model, Rejected, Visit
from tests.reference.money import bp_text, fen_text, yuan_to_fen

EXAMPLES = Path(__file__).resolve().parents[1] / "contract" / "settlement-examples.json"


def _examples() -> list[dict[str, Any]]:
    loaded = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    assert isinstance(loaded, list)
    return loaded


def _line(raw: dict[str, str], on: dt.date, pharmacy: bool) -> FeeLine:
    return FeeLine(
        feedetl_sn=raw["feedetl_sn"],
        medins_list_codg=raw["medins_list_codg"],
        pric=Decimal(raw["pric"]),
        cnt=Decimal(raw["cnt"]),
        amount_fen=yuan_to_fen(raw["det_item_fee_sumamt"]),
        fee_date=on,
        # "pharmacy lines carry no hosp_appr_flag" (examples 8 and 9)
        hosp_appr_flag=None if pharmacy else raw.get("hosp_appr_flag"),
    )


def _replay() -> list[tuple[dict[str, Any], dict[str, str], list[dict[str, str]]]]:
    model = Model(reference_data.load())
    results = []
    for n, ex in enumerate(_examples()):
        req = ex["request"]
        on = dt.date.fromisoformat(req["service_date"])
        pharmacy = model.data.institutions[req["fixmedins_code"]].is_pharmacy
        visit = Visit(req["mdtrt_id"], req["psn_no"], req["fixmedins_code"], on, req["med_type"])
        lines = [_line(raw, on, pharmacy) for raw in req["lines"]]
        splits = model.split_lines(req["fixmedins_code"], lines)
        settlement = model.compute(visit, req["med_type"], splits, req["acct_used_flag"])
        model.apply(f"example-{n}", settlement)
        setlinfo = {k: fen_text(v) for k, v in settlement.amounts.items()}
        setlinfo["pool_prop_selfpay"] = bp_text(settlement.pool_bp)
        got_lines = [
            {
                "feedetl_sn": s.feedetl_sn,
                "chrgitm_lv": s.chrgitm_lv,
                "selfpay_prop": bp_text(s.selfpay_bp),
                "fulamt_ownpay_amt": fen_text(s.fulamt),
                "overlmt_amt": fen_text(s.overlmt),
                "preselfpay_amt": fen_text(s.preselfpay),
                "inscp_scp_amt": fen_text(s.inscp),
            }
            for s in splits
        ]
        results.append((ex, setlinfo, got_lines))
    return results


REPLAYED = _replay()


@pytest.mark.parametrize(
    ("example", "setlinfo", "lines"), REPLAYED, ids=[ex["title"][:40] for ex, _, _ in REPLAYED]
)
def test_example(
    example: dict[str, Any], setlinfo: dict[str, str], lines: list[dict[str, str]]
) -> None:
    expected = example["setlinfo"]
    assert {k: setlinfo[k] for k in expected} == expected
    assert lines == example["lines"]


def test_every_example_is_checked() -> None:
    assert len(REPLAYED) == len(_examples()) == 11
    # every setlinfo amount the examples state is one the model produces
    assert set(REPLAYED[0][0]["setlinfo"]) <= set(REPLAYED[0][1])


def test_identities_hold_on_every_example() -> None:
    for _, info, _ in REPLAYED:
        f = {k: yuan_to_fen(v) for k, v in info.items() if k != "pool_prop_selfpay"}
        assert f["medfee_sumamt"] == (
            f["fulamt_ownpay_amt"] + f["overlmt_selfpay"] + f["preselfpay_amt"] + f["inscp_scp_amt"]
        )
        assert f["medfee_sumamt"] == f["fund_pay_sumamt"] + f["psn_part_amt"] + f["hosp_part_amt"]
        assert f["psn_part_amt"] == f["acct_pay"] + f["psn_cash_pay"]


def test_cancellation_reverses_exactly() -> None:
    """Cancel the second admission of example 5's person: the balance, the year's pool and the
    admission's deductible come back; a later admission pays the full deductible again only
    when no other one is in force."""
    model = Model(reference_data.load())
    on = dt.date(2025, 5, 2)
    line = FeeLine("1", "ZL0009", Decimal(3000), Decimal(1), 300000, on, "1")
    first = Visit("A1", "441800000000000002", "H44180000001", on, "21")
    s1 = model.compute(first, "21", model.split_lines("H44180000001", [line]), "1")
    model.apply("s1", s1)
    second = Visit("A2", "441800000000000002", "H44180000001", on, "21")
    s2 = model.compute(second, "21", model.split_lines("H44180000001", [line]), "1")
    assert s2.amounts["act_pay_dedc"] == s1.amounts["act_pay_dedc"] // 2
    before = (dict(model.balances), {k: vars(v).copy() for k, v in model.years.items()})
    model.apply("s2", s2)
    answer = model.cancel("s2")
    assert answer.amounts["hifp_pay"] == -s2.amounts["hifp_pay"]
    assert answer.amounts["balc"] == model.balances["441800000000000002"]
    assert (dict(model.balances), {k: vars(v) for k, v in model.years.items()}) == before
    with pytest.raises(Rejected):
        model.cancel("s2")
    model.cancel("s1")
    again = model.compute(second, "21", model.split_lines("H44180000001", [line]), "1")
    assert again.amounts["act_pay_dedc"] == s1.amounts["act_pay_dedc"]
