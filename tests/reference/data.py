"""The reference data set (institutions, persons, catalog, mappings, ratios, caps, policies).

Read straight from the CSV and TOML files the gateway loads (`config/demo/`), with nothing of the
gateway's own code: the model must not share a parser (or a bug) with what it checks.
"""

from __future__ import annotations

import csv
import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reference.money import prop_to_bp, yuan_to_fen

DEMO_DIR = Path(__file__).resolve().parents[2] / "config" / "demo"


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


@dataclass(frozen=True)
class Institution:
    code: str
    name: str
    kind: str  # fixmedins_type: 1 hospital, 2 pharmacy
    level: int  # hosp_lv; "pharmacies use 1"
    region: str

    @property
    def is_pharmacy(self) -> bool:
        return self.kind == "2"


@dataclass(frozen=True)
class Person:
    psn_no: str
    name: str
    certno: str
    region: str  # insuplc_admdvs
    insutype: str
    psn_type: str
    insured: bool  # psn_insu_stas == 1
    cvlserv: bool
    balance_fen: int
    maf_class: str  # "", "dibao", "tekun"
    chronic: frozenset[str]
    card: str

    @property
    def employee(self) -> bool:
        return self.insutype == "310"


@dataclass(frozen=True)
class CatalogItem:
    code: str
    name: str
    list_type: str
    chrgitm_type: str
    level: str  # chrgitm_lv 01/02/03
    restricted: bool
    begin: dt.date
    end: dt.date


@dataclass(frozen=True)
class Mapping:
    fixmedins_code: str
    medins_code: str
    name: str
    list_type: str
    national_code: str
    begin: dt.date
    end: dt.date
    seq: int  # load / upload order: a later row supersedes from its begndate


@dataclass(frozen=True)
class Dated:
    value: int  # basis points (ratio) or fen per unit in millionths of a yuan (cap)
    begin: dt.date
    end: dt.date


@dataclass
class ReferenceData:
    institutions: dict[str, Institution]
    persons: dict[str, Person]
    catalog: dict[str, list[CatalogItem]]
    mappings: dict[tuple[str, str], list[Mapping]]
    selfpay: dict[tuple[str, str], list[Dated]]
    caps: dict[tuple[str, str], list[tuple[str, dt.date, dt.date]]]
    policies: list[dict[str, Any]]
    default_class_b_bp: int
    _seq: int = field(default=0)

    # -------------------------------------------------------------- look-ups on a date

    def mapping(self, fixmedins_code: str, medins_code: str, on: dt.date) -> Mapping | None:
        """The registered mapping valid on `on`: of the rows whose range contains the date the
        latest upload wins ("a new row supersedes from its begndate", README 3301)."""
        rows = [
            m
            for m in self.mappings.get((fixmedins_code, medins_code), ())
            if m.begin <= on <= m.end
        ]
        if not rows:
            return None
        return max(rows, key=lambda m: m.seq)

    def item(self, national_code: str, on: dt.date) -> CatalogItem | None:
        for it in self.catalog.get(national_code, ()):
            if it.begin <= on <= it.end:
                return it
        return None

    def selfpay_bp(self, national_code: str, region: str, on: dt.date) -> int | None:
        for row in self.selfpay.get((national_code, region), ()):
            if row.begin <= on <= row.end:
                return row.value
        return None

    def cap_text(self, national_code: str, region: str, on: dt.date) -> str | None:
        for text, begin, end in self.caps.get((national_code, region), ()):
            if begin <= on <= end:
                return text
        return None

    def policy(self, region: str, on: dt.date) -> dict[str, Any]:
        for p in self.policies:
            if p["admdvs"] == region and _date(p["begndate"]) <= on <= _date(p["enddate"]):
                return p
        raise LookupError(f"no policy for {region} on {on}")

    def add_mapping(
        self,
        fixmedins_code: str,
        medins_code: str,
        national_code: str,
        begin: dt.date,
        end: dt.date,
        name: str = "",
        list_type: str = "",
    ) -> Mapping:
        """A 3301 upload: one more row for the key, newer than every row before it."""
        self._seq += 1
        row = Mapping(
            fixmedins_code, medins_code, name, list_type, national_code, begin, end, self._seq
        )
        self.mappings.setdefault((fixmedins_code, medins_code), []).append(row)
        return row


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load(directory: Path = DEMO_DIR) -> ReferenceData:
    institutions = {
        r["fixmedins_code"]: Institution(
            r["fixmedins_code"],
            r["fixmedins_name"],
            r["fixmedins_type"],
            int(r["hosp_lv"]) if r["hosp_lv"] else 1,
            r["admdvs"],
        )
        for r in _rows(directory / "institutions.csv")
    }
    persons = {
        r["psn_no"]: Person(
            psn_no=r["psn_no"],
            name=r["psn_name"],
            certno=r["certno"],
            region=r["insuplc_admdvs"],
            insutype=r["insutype"],
            psn_type=r["psn_type"],
            insured=r["psn_insu_stas"] == "1",
            cvlserv=r["cvlserv_flag"] == "1",
            balance_fen=yuan_to_fen(r["acct_balc"]),
            maf_class=r["maf_class"],
            chronic=frozenset(c for c in r["chronic_dise_codg"].split("|") if c),
            card=r["mdtrt_cert_no_card"],
        )
        for r in _rows(directory / "persons.csv")
    }
    catalog: dict[str, list[CatalogItem]] = {}
    for r in _rows(directory / "catalog.csv"):
        catalog.setdefault(r["med_list_codg"], []).append(
            CatalogItem(
                r["med_list_codg"],
                r["med_list_name"],
                r["list_type"],
                r["med_chrgitm_type"],
                r["chrgitm_lv"],
                r["lmt_used_flag"] == "1",
                _date(r["begndate"]),
                _date(r["enddate"]),
            )
        )
    data = ReferenceData(
        institutions=institutions,
        persons=persons,
        catalog=catalog,
        mappings={},
        selfpay={},
        caps={},
        policies=[],
        default_class_b_bp=0,
    )
    for r in _rows(directory / "mappings.csv"):
        data.add_mapping(
            r["fixmedins_code"],
            r["medins_list_codg"],
            r["med_list_codg"],
            _date(r["begndate"]),
            _date(r["enddate"]),
            r["fixmedins_hilist_name"],
            r["list_type"],
        )
    for r in _rows(directory / "selfpay_props.csv"):
        data.selfpay.setdefault((r["med_list_codg"], r["insu_admdvs"]), []).append(
            Dated(prop_to_bp(r["selfpay_prop"]), _date(r["begndate"]), _date(r["enddate"]))
        )
    for r in _rows(directory / "price_caps.csv"):
        data.caps.setdefault((r["med_list_codg"], r["insu_admdvs"]), []).append(
            (r["hilist_pric_uplmt_amt"], _date(r["begndate"]), _date(r["enddate"]))
        )
    with (directory / "policies.toml").open("rb") as f:
        policies = tomllib.load(f)
    data.policies = policies["policy"]
    data.default_class_b_bp = policies["defaults"]["class_b_selfpay_bp"]
    return data
