"""Reading a region's reference files: the demo set, and files that must not load."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from gateway.app.reference import ReferenceDataError, load_reference, parse_policies, snapshot_of

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo"


def test_demo_set_loads() -> None:
    ref = load_reference(DEMO)
    assert len(ref.institutions) == 9 and len(ref.persons) == 11
    assert len(ref.catalog) == 27 and len(ref.mappings) == 195
    assert len(ref.ratios) == 24 and len(ref.caps) == 13 and len(ref.policies) == 4
    assert ref.class_b_default_bp == 1000

    pharmacy = next(i for i in ref.institutions if i.fixmedins_code == "P44180000001")
    assert pharmacy.hosp_lv == 1  # empty hosp_lv
    persons = {p.psn_no: p for p in ref.persons}
    retiree = persons["441800000000000002"]
    assert retiree.chronic_dise_codg == ("M07800",) and retiree.brdy == dt.date(1955, 5, 5)
    assert persons["441800000000000001"].chronic_dise_codg == ()
    assert persons["441800000000000006"].maf_class == "tekun"
    assert ref.balances["441800000000000001"] == 200_000
    assert ref.balances["330300000000000001"] == 1_000_000

    ratio = next(r for r in ref.ratios if r.med_list_codg == "XC10AAA140A001010100003")
    assert ratio.selfpay_bp == 1000 and ratio.begndate == dt.date(2020, 1, 1)
    cap = next(c for c in ref.caps if c.med_list_codg == "002705000010000")
    assert cap.cap_micro == 520_000_000

    qingyuan = ref.policies[0]
    assert qingyuan.admdvs == "441800" and qingyuan.acct_usable_remote
    assert qingyuan.employee.outpatient.cap_fen == 300_000
    assert qingyuan.employee.chronic.cap_fen is None  # no cap_fen: no cap
    assert qingyuan.employee.pharmacy.ratio_bp == 0
    segments = qingyuan.resident.mi_segments
    assert [(s.upto_fen, s.ratio_bp) for s in segments] == [(10_000_000, 6000), (0, 7000)]
    assert snapshot_of(ref, 3).version == 3


POLICY = """
[[policy]]
admdvs = "441800"
begndate = "2020-01-01"
enddate = "2099-12-31"
  [policy.employee]
  outpatient = { dedc_fen = 30000, ratio_by_level_bp = [7000, 6500, 6000] }
  inpatient  = { dedc_by_level_fen = [1, 2, 3], ratio_by_level_bp = [9500, 9000, 8500] }
  chronic    = { ratio_by_level_bp = [8500, 8500, 8500] }
  [policy.resident]
  outpatient = { ratio_by_level_bp = [5000, 5000, 5000] }
  inpatient  = { dedc_by_level_fen = [1, 2, 3], ratio_by_level_bp = [9000, 7500, 6000] }
  chronic    = { ratio_by_level_bp = [6500, 6500, 6500] }
  [policy.assistance]
  dibao_bp = 7000
  tekun_bp = 9000
  cap_fen = 5000000
"""


def test_minimal_policy_takes_defaults() -> None:
    (policy,), default_bp = parse_policies(POLICY)
    assert default_bp == 1000
    assert policy.employee.inpatient.repeat_dedc_bp == 10_000
    assert policy.employee.outpatient.cap_fen is None
    assert policy.resident.outpatient.dedc_fen == 0
    assert policy.employee.pharmacy.ratio_bp == 0 and policy.employee.pharmacy.cap_fen is None
    assert not policy.acct_usable_remote


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("dedc_fen = 30000", "dedc_fen = 300.00", "dedc_fen"),  # yuan written where fen is due
        ("dedc_fen = 30000", 'dedc_fen = "30000"', "dedc_fen"),
        ("tekun_bp = 9000", "tekun_bp = 0.9", "tekun_bp"),
        ("[9500, 9000, 8500]", "[9500, 9000]", "ratio_by_level_bp"),
        ("cap_fen = 5000000", "", "cap_fen"),
        ('enddate = "2099-12-31"', 'enddate = "2099-13-31"', "policy"),
        (
            'admdvs = "441800"',
            'admdvs = "441800"\nacct_usable_remote = "false"',
            "acct_usable_remote",
        ),
    ],
)
def test_bad_policies_are_refused(old: str, new: str, fragment: str) -> None:
    assert old in POLICY
    with pytest.raises(ReferenceDataError, match=fragment):
        parse_policies(POLICY.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "fragment"),
    [
        ("selfpay_props.csv", ",0.10,", ",0.12345,", "selfpay_props.csv 第2行"),  # 5 decimals
        ("price_caps.csv", ",5500.000000,", ",NaN,", "price_caps.csv 第2行"),
        ("persons.csv", ",2000.00,", ",2000.001,", "persons.csv 第2行"),
        ("catalog.csv", ",2020-01-01,", ",2020-02-30,", "catalog.csv 第2行"),
        ("mappings.csv", ",2020-01-01,", ",2020-01-01,extra,", "mappings.csv 第2行"),
        ("institutions.csv", ",1,3,441800", ",1,x,441800", "institutions.csv 第2行"),
    ],
)
def test_bad_rows_name_file_and_line(
    tmp_path: Path, file: str, old: str, new: str, fragment: str
) -> None:
    for f in DEMO.iterdir():
        shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / file).read_text(encoding="utf-8")
    assert old in text
    (tmp_path / file).write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ReferenceDataError, match=fragment):
        load_reference(tmp_path)


def test_several_chronic_codes(tmp_path: Path) -> None:
    for f in DEMO.iterdir():
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "persons.csv"
    path.write_text(
        path.read_text(encoding="utf-8").replace(",M07800,QY", ",M07800; I10 ;,QY"), "utf-8"
    )
    persons = {p.psn_no: p for p in load_reference(tmp_path).persons}
    assert persons["441800000000000002"].chronic_dise_codg == ("M07800", "I10")
