"""The catalog snapshot: reference data indexed for the hot path, immutable once built.

Each process holds one snapshot and swaps it whole when the reference data changes, so a
settlement sees one consistent version from start to end and records which one it used.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
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


def _index(rows: Iterable[_Dated], key: object) -> dict[object, tuple[_Dated, ...]]:
    grouped: defaultdict[object, list[_Dated]] = defaultdict(list)
    for row in rows:
        grouped[key(row)].append(row)  # type: ignore[operator]
    return {k: tuple(sorted(v, key=lambda r: r.begndate, reverse=True)) for k, v in grouped.items()}


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

    def __init__(self) -> None:  # use Snapshot.build
        self.version = 0

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
        s = cls()
        s.version = version
        s.class_b_default_bp = class_b_default_bp
        s.institutions = tuple(institutions)
        s.catalog = tuple(catalog)
        s.mappings = tuple(mappings)
        s.ratios = tuple(ratios)
        s.caps = tuple(caps)
        s.policies = tuple(policies)
        s._institutions = {i.fixmedins_code: i for i in s.institutions}
        s._entries = _index(s.catalog, lambda r: r.med_list_codg)
        s._mappings = _index(s.mappings, lambda r: (r.fixmedins_code, r.medins_list_codg))
        s._ratios = _index(s.ratios, lambda r: (r.med_list_codg, r.insu_admdvs))
        s._caps = _index(s.caps, lambda r: (r.med_list_codg, r.insu_admdvs))
        s._policies = _index(s.policies, lambda r: r.admdvs)
        return s

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
