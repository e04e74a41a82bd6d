"""The bulk correction's report as a clerk reads it: each settlement, each person, each fund;
what the counter collects and what it refunds, never netted into a negative "owes"."""

from __future__ import annotations

import csv
import io

from gateway.jobs.corrections import Item, Summary

AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")


def _item(old_setl_id: str, psn_no: str, cash: tuple[int, int], fund: tuple[int, int]) -> Item:
    old = dict.fromkeys(AMOUNTS, 0) | {"psn_cash_pay": cash[0], "fund_pay_sumamt": fund[0]}
    new = dict.fromkeys(AMOUNTS, 0) | {"psn_cash_pay": cash[1], "fund_pay_sumamt": fund[1]}
    return Item(
        old_setl_id=old_setl_id,
        new_setl_id="",
        psn_no=psn_no,
        mdtrt_id=f"V{old_setl_id}",
        old=old,
        new=new,
        fund_deltas={"310100": fund[1] - fund[0]},
        codes=[("1", "YP9002", "XA-OLD", "XC-NEW")],
    )


def test_a_refund_and_a_charge_of_one_person_are_told_apart() -> None:
    summary = Summary(
        items=[
            _item("S1", "P1", (1000, 500), (0, 500)),  # cap freed: 5.00 back to the patient
            _item("S2", "P1", (0, 7614), (7614, 0)),  # class C now: 76.14 to collect
            _item("S3", "P2", (100, 100), (0, 0)),
        ]
    )
    text = "\n".join(summary.to_text("would re-settle", 3, "YP9002"))
    assert text.startswith(
        "would re-settle 3 of 3 settlements that used YP9002 under a mapping other than the one"
        " in force now\n"
    )
    assert "nothing to correct" not in text
    assert "  S1 → (new number given when applied)  person P1  visit VS1" in text
    assert "patient: refund 5.00" in text and "patient: collect 76.14" in text
    assert "patient: nothing to collect or refund" in text
    assert "lines 1 YP9002: XA-OLD → XC-NEW" in text
    assert "  P1  2 settlements  collect 76.14  refund 5.00  account: unchanged" in text
    assert "per fund:\n  310100: -71.14" in text
    assert text.endswith("patients: collect 76.14 in total, refund 5.00 in total")
    doc = summary.to_json()
    assert doc["persons"]["P1"]["patient_owes"] == "71.14"  # the net, kept for old readers
    assert (doc["persons"]["P1"]["patient_collect"], doc["persons"]["P1"]["patient_refund"]) == (
        "76.14",
        "5.00",
    )
    first = doc["settlements"][0]
    assert (first["patient_owes"], first["patient_collect"], first["patient_refund"]) == (
        "-5.00",
        "0.00",
        "5.00",
    )
    header = summary.to_csv().splitlines()[0].split(",")
    assert header[header.index("patient_owes") + 1 : header.index("patient_owes") + 3] == [
        "patient_collect",
        "patient_refund",
    ]


def test_the_account_is_told_apart_from_the_funds() -> None:
    """Found from outside: "fund -227.04 (310100 -180.60 320100 -46.44 310200 227.04)": the
    account listed among the funds, the parenthesis netting to nothing under its headline."""
    item = _item("S1", "P1", (0, 0), (22704, 0))
    item.fund_deltas = {"310100": -18060, "320100": -4644, "310200": 22704}
    item.new["acct_pay"] = 22704
    text = "\n".join(Summary(items=[item]).to_text("would re-settle", 1, "YP9002"))
    assert "    fund -227.04 (310100 -180.60 320100 -46.44)  account: pays 227.04 more" in text
    assert "  310200 (personal account): 227.04" in text


def test_an_account_paying_less_is_said_to_get_it_back() -> None:
    """Found from outside: "account -2061.20" read as taken from the account, where the account
    pays 2061.20 less and gets it back."""
    item = _item("S1", "P1", (0, 0), (0, 0))
    item.old["acct_pay"] = 206120
    text = "\n".join(Summary(items=[item]).to_text("would re-settle", 1, "YP9002"))
    assert "account: pays 2061.20 less, back to the account" in text, text
    assert "account -2061.20" not in text


def test_a_his_text_cannot_print_lines_of_its_own_or_start_a_formula() -> None:
    """Found from outside: a line break in an uploaded serial number or item code printed lines
    of its own in the clerk's report ("patients: refund 9999.00"), and a serial number
    "+SUM(1,1)" began the CSV's cell."""
    item = _item("S1", "P1", (0, 0), (0, 0))
    item.codes = [("+SUM(1,1)\n  patients: refund 9999.00", "Z\nper person:", "XA-OLD", "XC-NEW")]
    summary = Summary(items=[item])
    text = summary.to_text("would re-settle", 1, "Z\n  patients: refund 9999.00")
    lines = text if isinstance(text, list) else text.splitlines()
    assert not [x for x in lines if x.startswith("  patients: refund 9999.00")], lines
    assert sum(1 for x in lines if x.startswith("per person:")) == 1, lines
    joined = "\n".join(lines)
    assert "used Z\\n  patients: refund 9999.00 under a mapping" in joined
    row = next(csv.DictReader(io.StringIO(summary.to_csv())))
    assert row["code_changes"].startswith("'+SUM(1,1)"), row["code_changes"]


def test_nothing_to_correct_says_why_not_that_the_item_was_unused() -> None:
    """Found from outside: "would re-settle 0 of 0 settlements using YP0003" read as if no
    settlement had used the item, where each had used it under the mapping still in force."""
    text = Summary(items=[]).to_text("would re-settle", 0, "YP0003")
    assert text[0] == (
        "would re-settle 0 of 0 settlements that used YP0003 under a mapping other than the one"
        " in force now"
    )
    assert "upload the corrected mapping first (3301)" in text[1], text


def test_a_settlement_the_rules_refused_to_re_settle_is_in_the_csv_and_the_json() -> None:
    """Found from outside: the text named a failure ("would fail …: 是零星报销…的结算"), the CSV
    held only its header, though the README says the JSON and the CSV carry the same."""
    summary = Summary(items=[_item("S1", "P1", (0, 500), (500, 0))])
    summary.failed = [("S2", "是零星报销LX2026120600000003的结算，不能撤销或重结算")]
    rows = list(csv.DictReader(io.StringIO(summary.to_csv())))
    assert [(r["old_setl_id"], r["not_corrected"]) for r in rows] == [
        ("S1", ""),
        ("S2", "是零星报销LX2026120600000003的结算，不能撤销或重结算"),
    ]
    assert rows[1]["patient_collect"] == ""  # nothing computed for it
    assert summary.to_json()["failed"] == [
        {"setl_id": "S2", "why": "是零星报销LX2026120600000003的结算，不能撤销或重结算"}
    ]
