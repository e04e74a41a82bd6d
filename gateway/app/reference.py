"""A region's reference files (the demo set in config/demo/) read into the core's records.

The same code reads a real region's exports: institutions, persons, catalog (1312), mappings
(3301 / 1317), self-pay ratios (1319), price caps (1318) and the policy versions. Decimals go
through gateway.core.money from their text; a malformed value fails the load naming file and line.
"""

from __future__ import annotations

import csv
import datetime as dt
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from gateway.core.money import to_bp, to_fen, to_micro

_T = TypeVar("_T")


class ReferenceDataError(ValueError):
    """A reference file that cannot be read into records (names the file and the line)."""


@dataclass(frozen=True)
class Reference:
    """Everything a region's reference directory holds, as the core's records."""

    institutions: tuple[Institution, ...]
    persons: tuple[Person, ...]
    balances: dict[str, int]  # psn_no -> personal account balance in fen (acct_balc)
    catalog: tuple[CatalogEntry, ...]
    mappings: tuple[Mapping, ...]
    ratios: tuple[SelfpayRatio, ...]
    caps: tuple[PriceCap, ...]
    policies: tuple[Policy, ...]
    class_b_default_bp: int


# --------------------------------------------------------------------------- CSV files


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) with every value stripped; extra or missing cells are errors."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row or None in row.values():
                raise ReferenceDataError(f"{path.name} 第{reader.line_num}行：列数与表头不一致")
            yield reader.line_num, {k: v.strip() for k, v in row.items() if k is not None}


def _read(path: Path, make: Callable[[dict[str, str]], _T]) -> tuple[_T, ...]:
    """Every row of a CSV file through `make`, failing with the file and line."""
    out: list[_T] = []
    for line, row in _rows(path):
        try:
            out.append(make(row))
        except KeyError as exc:
            raise ReferenceDataError(f"{path.name} 第{line}行：缺少列{exc}") from exc
        except ValueError as exc:  # AmountError and bad dates included
            raise ReferenceDataError(f"{path.name} 第{line}行：{exc}") from exc
    return tuple(out)


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _institution(r: dict[str, str]) -> Institution:
    return Institution(
        fixmedins_code=r["fixmedins_code"],
        fixmedins_name=r["fixmedins_name"],
        fixmedins_type=r["fixmedins_type"],
        hosp_lv=int(r["hosp_lv"]) if r["hosp_lv"] else 1,  # pharmacies have none: level 1
        admdvs=r["admdvs"],
    )


def _person(r: dict[str, str]) -> tuple[Person, int]:
    """The person and the account balance (acct_balc, fen)."""
    person = Person(
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
        # one registered disease code, or several separated by ';'
        chronic_dise_codg=tuple(
            c.strip() for c in r.get("chronic_dise_codg", "").split(";") if c.strip()
        ),
        mdtrt_cert_no_card=r.get("mdtrt_cert_no_card", ""),
    )
    return person, to_fen(r.get("acct_balc") or "0", "acct_balc")


def _entry(r: dict[str, str]) -> CatalogEntry:
    return CatalogEntry(
        med_list_codg=r["med_list_codg"],
        med_list_name=r["med_list_name"],
        list_type=r["list_type"],
        med_chrgitm_type=r["med_chrgitm_type"],
        chrgitm_lv=r["chrgitm_lv"],
        lmt_used_flag=r["lmt_used_flag"] or "0",
        begndate=_date(r["begndate"]),
        enddate=_date(r["enddate"]),
    )


def _mapping(r: dict[str, str]) -> Mapping:
    return Mapping(
        fixmedins_code=r["fixmedins_code"],
        medins_list_codg=r["medins_list_codg"],
        fixmedins_hilist_name=r["fixmedins_hilist_name"],
        list_type=r["list_type"],
        med_list_codg=r["med_list_codg"],
        begndate=_date(r["begndate"]),
        enddate=_date(r["enddate"]),
    )


def _ratio(r: dict[str, str]) -> SelfpayRatio:
    return SelfpayRatio(
        med_list_codg=r["med_list_codg"],
        insu_admdvs=r["insu_admdvs"],
        selfpay_bp=to_bp(r["selfpay_prop"], "selfpay_prop"),
        begndate=_date(r["begndate"]),
        enddate=_date(r["enddate"]),
    )


def _cap(r: dict[str, str]) -> PriceCap:
    return PriceCap(
        med_list_codg=r["med_list_codg"],
        insu_admdvs=r["insu_admdvs"],
        cap_micro=to_micro(r["hilist_pric_uplmt_amt"], "hilist_pric_uplmt_amt"),
        begndate=_date(r["begndate"]),
        enddate=_date(r["enddate"]),
    )


# --------------------------------------------------------------------------- policies.toml


def _int(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    """An integer setting (fen or bp); a float would hide a unit mistake, so it is refused."""
    value = doc.get(key, default)
    if value is None:
        raise ReferenceDataError(f"policies.toml：缺少{key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReferenceDataError(f"policies.toml：{key}须为整数（分或基点），实际为{value!r}")
    return value


def _bool(doc: dict[str, Any], key: str) -> bool:
    """A true/false setting; the string "false" must not read as true."""
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ReferenceDataError(f"policies.toml：{key}须为true或false，实际为{value!r}")
    return value


def _cap_fen(doc: dict[str, Any]) -> int | None:
    """An annual cap; absent means none."""
    return _int(doc, "cap_fen") if "cap_fen" in doc else None


def _levels(doc: dict[str, Any], key: str) -> tuple[int, int, int]:
    values = doc.get(key)
    if not isinstance(values, list) or len(values) != 3:
        raise ReferenceDataError(f"policies.toml：{key}须为三个整数（一、二、三级）")
    a, b, c = (_int({key: v}, key) for v in values)
    return (a, b, c)


def _outpatient(doc: dict[str, Any]) -> OutpatientPolicy:
    return OutpatientPolicy(
        dedc_fen=_int(doc, "dedc_fen", 0),
        ratio_by_level_bp=_levels(doc, "ratio_by_level_bp"),
        cap_fen=_cap_fen(doc),
    )


def _side(doc: dict[str, Any]) -> SidePolicy:
    ip = doc["inpatient"]
    ph = doc.get("pharmacy", {})
    return SidePolicy(
        outpatient=_outpatient(doc["outpatient"]),
        inpatient=InpatientPolicy(
            dedc_by_level_fen=_levels(ip, "dedc_by_level_fen"),
            repeat_dedc_bp=_int(ip, "repeat_dedc_bp", 10000),
            ratio_by_level_bp=_levels(ip, "ratio_by_level_bp"),
            cap_fen=_cap_fen(ip),
        ),
        chronic=_outpatient(doc["chronic"]),
        pharmacy=PharmacyPolicy(ratio_bp=_int(ph, "ratio_bp", 0), cap_fen=_cap_fen(ph)),
        retiree_bonus_bp=_int(doc, "retiree_bonus_bp", 0),
        cvlserv_ratio_bp=_int(doc, "cvlserv_ratio_bp", 0),
        ob_ratio_bp=_int(doc, "ob_ratio_bp", 0),
        ob_cap_fen=_int(doc, "ob_cap_fen", 0),
        mi_threshold_fen=_int(doc, "mi_threshold_fen", 0),
        # segments bound the amount above the threshold; upto_fen = 0 leaves the last one open
        mi_segments=tuple(
            MiSegment(upto_fen=_int(s, "upto_fen"), ratio_bp=_int(s, "ratio_bp"))
            for s in doc.get("mi_segments", [])
        ),
        mi_cap_fen=_int(doc, "mi_cap_fen", 0),
    )


def _policy(p: dict[str, Any]) -> Policy:
    a = p["assistance"]
    return Policy(
        admdvs=str(p["admdvs"]),
        name=str(p.get("name", "")),
        begndate=_date(str(p["begndate"])),
        enddate=_date(str(p["enddate"])),
        acct_usable_remote=_bool(p, "acct_usable_remote"),
        employee=_side(p["employee"]),
        resident=_side(p["resident"]),
        assistance=AssistancePolicy(
            dibao_bp=_int(a, "dibao_bp"),
            tekun_bp=_int(a, "tekun_bp"),
            cap_fen=_int(a, "cap_fen"),
        ),
    )


def parse_policies(text: str) -> tuple[tuple[Policy, ...], int]:
    """policies.toml -> the policy versions and the default class-B self-pay ratio."""
    doc = tomllib.loads(text)
    policies = []
    for i, p in enumerate(doc.get("policy", []), start=1):
        try:
            policies.append(_policy(p))
        except KeyError as exc:
            raise ReferenceDataError(f"policies.toml 第{i}个[[policy]]：缺少{exc}") from exc
        except ValueError as exc:
            raise ReferenceDataError(f"policies.toml 第{i}个[[policy]]：{exc}") from exc
    default_bp = _int(doc.get("defaults", {}), "class_b_selfpay_bp", 1000)
    return tuple(policies), default_bp


# --------------------------------------------------------------------------- the directory


def load_reference(directory: Path) -> Reference:
    """Read every reference file of a region's directory."""
    persons = _read(directory / "persons.csv", _person)
    policies, default_bp = parse_policies((directory / "policies.toml").read_text(encoding="utf-8"))
    return Reference(
        institutions=_read(directory / "institutions.csv", _institution),
        persons=tuple(p for p, _ in persons),
        balances={p.psn_no: balance for p, balance in persons},
        catalog=_read(directory / "catalog.csv", _entry),
        mappings=_read(directory / "mappings.csv", _mapping),
        ratios=_read(directory / "selfpay_props.csv", _ratio),
        caps=_read(directory / "price_caps.csv", _cap),
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
