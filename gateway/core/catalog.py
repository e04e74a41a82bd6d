"""The catalog snapshot: reference data indexed for the hot path, immutable once built.

Each process holds one snapshot and swaps it whole when the reference data changes, so a
settlement sees one consistent version from start to end and records which one it used.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TypeVar

from gateway.core.model import (
    CatalogEntry,
    Institution,
    Mapping,
    Policy,
    PriceCap,
    SelfpayRatio,
)

_Dated = TypeVar("_Dated", CatalogEntry, Mapping, SelfpayRatio, PriceCap, Policy)


def _valid(rows: tuple[_Dated, ...] | None, on: dt.date) -> _Dated | None:
    """The row valid on the date; with several, the latest begndate wins (it supersedes)."""
    if rows is None:
        return None
    for row in rows:  # sorted newest first
        if row.begndate <= on <= row.enddate:
            return row
    return None


_K = TypeVar("_K")


def _index(rows: Iterable[_Dated], key: Callable[[_Dated], _K]) -> dict[_K, tuple[_Dated, ...]]:
    """Rows grouped by key, each group newest begndate first."""
    grouped: defaultdict[_K, list[_Dated]] = defaultdict(list)
    for row in rows:
        grouped[key(row)].append(row)
    return {k: tuple(sorted(v, key=lambda r: r.begndate, reverse=True)) for k, v in grouped.items()}


def _by_code(row: CatalogEntry) -> str:
    return row.med_list_codg


def _by_item(row: Mapping) -> tuple[str, str]:
    return (row.fixmedins_code, row.medins_list_codg)


def _by_region(row: SelfpayRatio | PriceCap) -> tuple[str, str]:
    return (row.med_list_codg, row.insu_admdvs)


def _by_admdvs(row: Policy) -> str:
    return row.admdvs


class Snapshot:
    """Reference data for one version, with dictionary lookups by key and date."""

    __slots__ = (
        "_caps",
        "_entries",
        "_institutions",
        "_mappings",
        "_policies",
        "_ratios",
        "caps",
        "catalog",
        "class_b_default_bp",
        "institutions",
        "mappings",
        "policies",
        "ratios",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        institutions: tuple[Institution, ...],
        catalog: tuple[CatalogEntry, ...],
        mappings: tuple[Mapping, ...],
        ratios: tuple[SelfpayRatio, ...],
        caps: tuple[PriceCap, ...],
        policies: tuple[Policy, ...],
        class_b_default_bp: int,
    ) -> None:
        self.version = version
        self.class_b_default_bp = class_b_default_bp
        self.institutions = institutions
        self.catalog = catalog
        self.mappings = mappings
        self.ratios = ratios
        self.caps = caps
        self.policies = policies
        self._institutions = {i.fixmedins_code: i for i in institutions}
        self._entries: dict[str, tuple[CatalogEntry, ...]] = _index(catalog, _by_code)
        self._mappings: dict[tuple[str, str], tuple[Mapping, ...]] = _index(mappings, _by_item)
        self._ratios: dict[tuple[str, str], tuple[SelfpayRatio, ...]] = _index(ratios, _by_region)
        self._caps: dict[tuple[str, str], tuple[PriceCap, ...]] = _index(caps, _by_region)
        self._policies: dict[str, tuple[Policy, ...]] = _index(policies, _by_admdvs)

    @classmethod
    def build(
        cls,
        *,
        version: int,
        institutions: Iterable[Institution],
        catalog: Iterable[CatalogEntry],
        mappings: Iterable[Mapping],
        ratios: Iterable[SelfpayRatio],
        caps: Iterable[PriceCap],
        policies: Iterable[Policy],
        class_b_default_bp: int,
    ) -> Snapshot:
        """Index everything once; lookups afterwards are dictionary hits."""
        return cls(
            version=version,
            institutions=tuple(institutions),
            catalog=tuple(catalog),
            mappings=tuple(mappings),
            ratios=tuple(ratios),
            caps=tuple(caps),
            policies=tuple(policies),
            class_b_default_bp=class_b_default_bp,
        )

    def institution(self, code: str) -> Institution | None:
        """The registered institution."""
        return self._institutions.get(code)

    def mapping(self, fixmedins_code: str, medins_list_codg: str, on: dt.date) -> Mapping | None:
        """The institution's mapping of its item code valid on the date."""
        return _valid(self._mappings.get((fixmedins_code, medins_list_codg)), on)

    def entry(self, med_list_codg: str, on: dt.date) -> CatalogEntry | None:
        """The national catalog entry valid on the date."""
        return _valid(self._entries.get(med_list_codg), on)

    def selfpay_bp(self, med_list_codg: str, insu_admdvs: str, on: dt.date) -> int | None:
        """The region's class-B first self-pay ratio (1319), if it has one."""
        row = _valid(self._ratios.get((med_list_codg, insu_admdvs)), on)
        return None if row is None else row.selfpay_bp

    def cap_micro(self, med_list_codg: str, insu_admdvs: str, on: dt.date) -> int | None:
        """The region's unit price cap (1318) in micro-yuan, if it has one."""
        row = _valid(self._caps.get((med_list_codg, insu_admdvs)), on)
        return None if row is None else row.cap_micro

    def policy(self, admdvs: str, on: dt.date) -> Policy | None:
        """The insured region's policy version in force on the service date."""
        return _valid(self._policies.get(admdvs), on)
