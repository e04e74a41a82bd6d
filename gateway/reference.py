"""A region's reference files (the demo set in config/demo/) read into the core's records.

The same code reads a real region's exports: institutions, persons, catalog (1312), mappings
(3301 / 1317), self-pay ratios (1319), price caps (1318) and the policy versions.
"""

from __future__ import annotations

import csv
import datetime as dt
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.catalog import Snapshot
from gateway.core.model import (
    AssistancePolicy,
    CatalogEntry,
    InpatientPolicy,
    Institution,
    Mapping,
    MiSegment,
    OutpatientPolicy,
    Person,
    PharmacyPolicy,
    Policy,
    PriceCap,
    SelfpayRatio,
    SidePolicy,
)
from gateway.money import to_bp, to_fen, to_micro


@dataclass(frozen=True)
class Reference:
    institutions: tuple[Institution, ...]
    persons: tuple[Person, ...]
    balances: dict[str, int]
    catalog: tuple[CatalogEntry, ...]
    mappings: tuple[Mapping, ...]
    ratios: tuple[SelfpayRatio, ...]
    caps: tuple[PriceCap, ...]
    policies: tuple[Policy, ...]
    class_b_default_bp: int


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            yield {k: (v or "").strip() for k, v in row.items()}


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _triple(values: list[int]) -> tuple[int, int, int]:
    if len(values) != 3:
        raise ValueError("level arrays must have three values (levels 1, 2, 3)")
    return (int(values[0]), int(values[1]), int(values[2]))


def _outpatient(doc: dict[str, Any]) -> OutpatientPolicy:
    return OutpatientPolicy(
        dedc_fen=int(doc.get("dedc_fen", 0)),
        ratio_by_level_bp=_triple(doc["ratio_by_level_bp"]),
        cap_fen=int(doc["cap_fen"]) if "cap_fen" in doc else None,
    )


def _side(doc: dict[str, Any]) -> SidePolicy:
    ip = doc["inpatient"]
    ph = doc.get("pharmacy", {"ratio_bp": 0})
    return SidePolicy(
        outpatient=_outpatient(doc["outpatient"]),
        inpatient=InpatientPolicy(
            dedc_by_level_fen=_triple(ip["dedc_by_level_fen"]),
            repeat_dedc_bp=int(ip.get("repeat_dedc_bp", 10000)),
            ratio_by_level_bp=_triple(ip["ratio_by_level_bp"]),
            cap_fen=int(ip["cap_fen"]) if "cap_fen" in ip else None,
        ),
        chronic=_outpatient(doc["chronic"]),
        pharmacy=PharmacyPolicy(
            ratio_bp=int(ph.get("ratio_bp", 0)),
            cap_fen=int(ph["cap_fen"]) if "cap_fen" in ph else None,
        ),
        retiree_bonus_bp=int(doc.get("retiree_bonus_bp", 0)),
        cvlserv_ratio_bp=int(doc.get("cvlserv_ratio_bp", 0)),
        ob_ratio_bp=int(doc.get("ob_ratio_bp", 0)),
        ob_cap_fen=int(doc.get("ob_cap_fen", 0)),
        mi_threshold_fen=int(doc.get("mi_threshold_fen", 0)),
        mi_segments=tuple(
            MiSegment(upto_fen=int(s["upto_fen"]), ratio_bp=int(s["ratio_bp"]))
            for s in doc.get("mi_segments", [])
        ),
        mi_cap_fen=int(doc.get("mi_cap_fen", 0)),
    )


def parse_policies(text: str) -> tuple[tuple[Policy, ...], int]:
    """policies.toml -> the policy versions and the default class-B self-pay ratio."""
    doc = tomllib.loads(text)
    policies = []
    for p in doc.get("policy", []):
        a = p["assistance"]
        policies.append(
            Policy(
                admdvs=str(p["admdvs"]),
                name=str(p.get("name", "")),
                begndate=_date(str(p["begndate"])),
                enddate=_date(str(p["enddate"])),
                acct_usable_remote=bool(p.get("acct_usable_remote", False)),
                employee=_side(p["employee"]),
                resident=_side(p["resident"]),
                assistance=AssistancePolicy(
                    dibao_bp=int(a["dibao_bp"]),
                    tekun_bp=int(a["tekun_bp"]),
                    cap_fen=int(a["cap_fen"]),
                ),
            )
        )
    default_bp = int(doc.get("defaults", {}).get("class_b_selfpay_bp", 1000))
    return tuple(policies), default_bp


def load_reference(directory: Path) -> Reference:
    """Read every reference file of a region's directory."""
    institutions = tuple(
        Institution(
            fixmedins_code=r["fixmedins_code"],
            fixmedins_name=r["fixmedins_name"],
            fixmedins_type=r["fixmedins_type"],
            hosp_lv=int(r["hosp_lv"]) if r["hosp_lv"] else 1,  # pharmacies use level 1
            admdvs=r["admdvs"],
        )
        for r in _rows(directory / "institutions.csv")
    )
    persons: list[Person] = []
    balances: dict[str, int] = {}
    for r in _rows(directory / "persons.csv"):
        persons.append(
            Person(
                psn_no=r["psn_no"],
                psn_name=r["psn_name"],
                psn_cert_type=r["psn_cert_type"],
                certno=r["certno"],
                gend=r["gend"],
                brdy=_date(r["brdy"]),
                insuplc_admdvs=r["insuplc_admdvs"],
                insutype=r["insutype"],
                psn_type=r["psn_type"],
                psn_insu_stas=r["psn_insu_stas"],
                cvlserv_flag=r["cvlserv_flag"] or "0",
                maf_class=r.get("maf_class", ""),
                chronic_dise_codg=tuple(c for c in r.get("chronic_dise_codg", "").split(";") if c),
                mdtrt_cert_no_card=r.get("mdtrt_cert_no_card", ""),
            )
        )
        balances[r["psn_no"]] = to_fen(r["acct_balc"] or "0", "acct_balc")
    catalog = tuple(
        CatalogEntry(
            med_list_codg=r["med_list_codg"],
            med_list_name=r["med_list_name"],
            list_type=r["list_type"],
            med_chrgitm_type=r["med_chrgitm_type"],
            chrgitm_lv=r["chrgitm_lv"],
            lmt_used_flag=r["lmt_used_flag"] or "0",
            begndate=_date(r["begndate"]),
            enddate=_date(r["enddate"]),
        )
        for r in _rows(directory / "catalog.csv")
    )
    mappings = tuple(
        Mapping(
            fixmedins_code=r["fixmedins_code"],
            medins_list_codg=r["medins_list_codg"],
            fixmedins_hilist_name=r["fixmedins_hilist_name"],
            list_type=r["list_type"],
            med_list_codg=r["med_list_codg"],
            begndate=_date(r["begndate"]),
            enddate=_date(r["enddate"]),
        )
        for r in _rows(directory / "mappings.csv")
    )
    ratios = tuple(
        SelfpayRatio(
            med_list_codg=r["med_list_codg"],
            insu_admdvs=r["insu_admdvs"],
            selfpay_bp=to_bp(r["selfpay_prop"], "selfpay_prop"),
            begndate=_date(r["begndate"]),
            enddate=_date(r["enddate"]),
        )
        for r in _rows(directory / "selfpay_props.csv")
    )
    caps = tuple(
        PriceCap(
            med_list_codg=r["med_list_codg"],
            insu_admdvs=r["insu_admdvs"],
            cap_micro=to_micro(r["hilist_pric_uplmt_amt"], "hilist_pric_uplmt_amt"),
            begndate=_date(r["begndate"]),
            enddate=_date(r["enddate"]),
        )
        for r in _rows(directory / "price_caps.csv")
    )
    policies, default_bp = parse_policies((directory / "policies.toml").read_text(encoding="utf-8"))
    return Reference(
        institutions=institutions,
        persons=tuple(persons),
        balances=balances,
        catalog=catalog,
        mappings=mappings,
        ratios=ratios,
        caps=caps,
        policies=policies,
        class_b_default_bp=default_bp,
    )


def snapshot_of(ref: Reference, version: int = 1) -> Snapshot:
    """A snapshot straight from the files (tests, benchmarks, tools without a database)."""
    return Snapshot.build(
        version=version,
        institutions=ref.institutions,
        catalog=ref.catalog,
        mappings=ref.mappings,
        ratios=ref.ratios,
        caps=ref.caps,
        policies=ref.policies,
        class_b_default_bp=ref.class_b_default_bp,
    )
