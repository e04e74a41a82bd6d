"""The catalog snapshot: reference data indexed for the hot path, immutable once built.

Each process holds one snapshot and swaps it whole when the reference data changes, so a
settlement sees one consistent version from start to end and records which one it used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Protocol, TypeAlias, TypeVar, cast

from gateway.core.model import (
    CatalogEntry,
    Institution,
    LineSplit,
    Mapping,
    Policy,
    PriceCap,
    Record,
    SelfpayRatio,
)
from gateway.core.money import BP


class _HasDates(Protocol):
    @property
    def begndate(self) -> dt.date: ...
    @property
    def enddate(self) -> dt.date: ...


_Dated = TypeVar("_Dated", bound=_HasDates)
_K = TypeVar("_K")
_DAY = dt.timedelta(days=1)

CLASS_A, CLASS_B, CLASS_C = "01", "02", "03"
UNMAPPED_MEMO = "未对照"
NOT_LISTED_MEMO = "医保目录无效"
_OTHER_FEE = "14"  # med_chrgitm_type 其他费, for a code the national catalog does not know


class ItemRule(Record, frozen=True, gc=False, kw_only=True):
    """What an institution's item code is on a date in its region (rules §1.2–1.3).

    The two LineSplit templates carry everything that depends on the item only; the split
    fills in the line's own amounts, so building a result line copies a handful of fields.
    """

    med_list_codg: str  # the registered national code, "" when unmapped
    listed: bool  # mapped and in the national catalog on the date
    never_covered: bool  # unmapped, not listed, or class 03 (丙类): self-pay whatever the approval
    restricted: bool  # lmt_used_flag 1: covered only with the hospital's approval
    cap_micro: int | None  # the treatment region's unit price cap (1318)
    split: LineSplit  # template of a split line: selfpay_bp is the class-B ratio, else 0
    selfpay: LineSplit  # template of a whole-line self-pay line: selfpay_bp 10000


def _template(
    *,
    codg: str,
    medins_list_codg: str,
    lv: str,
    ctype: str,
    lmt: str,
    list_type: str,
    cap: int | None,
    bp: int,
    memo: str = "",
) -> LineSplit:
    return LineSplit(
        feedetl_sn="",
        det_item_fee_sumamt=0,
        cnt=0,
        pric_micro=0,
        pric_uplmt_micro=cap,
        selfpay_bp=bp,
        fulamt_ownpay_amt=0,
        overlmt_amt=0,
        preselfpay_amt=0,
        inscp_scp_amt=0,
        chrgitm_lv=lv,
        med_chrgitm_type=ctype,
        lmt_used_flag=lmt,
        list_type=list_type,
        medins_list_codg=medins_list_codg,
        med_list_codg=codg,
        memo=memo,
    )


def _unlisted(codg: str, medins_list_codg: str, list_type: str, memo: str) -> ItemRule:
    """An item the catalog does not cover: the whole line is self-pay, shown as class 03."""
    tpl = _template(
        codg=codg,
        medins_list_codg=medins_list_codg,
        lv=CLASS_C,
        ctype=_OTHER_FEE,
        lmt="0",
        list_type=list_type,
        cap=None,
        bp=BP,
        memo=memo,
    )
    return ItemRule(
        med_list_codg=codg,
        listed=False,
        never_covered=True,
        restricted=False,
        cap_micro=None,
        split=tpl,
        selfpay=tpl,
    )


# Shared by every unmapped code; the split sets the line's own medins_list_codg.
UNMAPPED = _unlisted("", "", "", UNMAPPED_MEMO)


# One version of a key is kept bare and several as a tuple, newest begndate first: nearly
# every key has one version, and 500,000 mappings then cost no tuple (and no sort) each.
_Versions: TypeAlias = _Dated | tuple[_Dated, ...]


def _valid(versions: _Versions[_Dated] | None, on: dt.date) -> _Dated | None:
    """The version valid on the date; with several, the latest begndate wins (it supersedes)."""
    if versions is None:
        return None
    if isinstance(versions, tuple):
        for row in versions:  # newest begndate first
            if row.begndate <= on <= row.enddate:
                return row
        return None
    return versions if versions.begndate <= on <= versions.enddate else None


def _all(versions: _Versions[_Dated] | None) -> tuple[_Dated, ...]:
    if versions is None:
        return ()
    return versions if isinstance(versions, tuple) else (versions,)


def _begndate(row: _HasDates) -> dt.date:
    return row.begndate


def _index(
    rows: Iterable[_Dated], key: Callable[[_Dated], _K], *, by_begndate: bool = True
) -> dict[_K, _Versions[_Dated]]:
    """Rows by key; a key's several versions newest begndate first, the later row first on a tie
    (`by_begndate` False: the later row first, whatever its begndate)."""
    out: dict[_K, _Versions[_Dated]] = {}
    several: dict[_K, list[_Dated]] = {}
    for row in rows:
        k = key(row)
        first = out.setdefault(k, row)
        if first is not row:
            group = several.get(k)
            if group is None:
                several[k] = [cast(_Dated, first), row]  # a bare row until now
            else:
                group.append(row)
    for k, group in several.items():
        # A stable ascending sort reversed: on equal begndate the later upload comes first.
        if by_begndate:
            group.sort(key=_begndate)
        group.reverse()
        out[k] = tuple(group)
    return out


# C-level key functions: a Python function call per row would dominate a large build.
_BY_CODE = attrgetter("med_list_codg")
_BY_ITEM_CODE = attrgetter("medins_list_codg")
_BY_REGION = attrgetter("med_list_codg", "insu_admdvs")
_BY_ADMDVS = attrgetter("admdvs")


def _index_mappings(rows: Iterable[Mapping]) -> dict[str, dict[str, _Versions[Mapping]]]:
    """Mappings by institution, then by the institution's item code (no tuple key per row)."""
    by_institution: dict[str, list[Mapping]] = {}
    for row in rows:
        group = by_institution.get(row.fixmedins_code)
        if group is None:
            by_institution[row.fixmedins_code] = [row]
        else:
            group.append(row)
    # An institution's upload supersedes its earlier ones from its own begndate (3301), even
    # when it begins before them: a correction dated back replaces the mistake it corrects.
    # The rows come in upload order, so the later upload is tried first on every date.
    # Each group is let go as soon as it is indexed: dropped all at once on return, half a
    # million references scattered over the heap held the interpreter for 6-8 ms (P7).
    out: dict[str, dict[str, _Versions[Mapping]]] = {}
    for code in list(by_institution):
        out[code] = _index(by_institution.pop(code), _BY_ITEM_CODE, by_begndate=False)
    return out


_Segment = tuple[dt.date, dt.date, ItemRule]
_NONE: dict[str, object] = {}


class Snapshot:
    """Reference data for one version, with dictionary lookups by key and date."""

    __slots__ = (
        "_caps",
        "_entries",
        "_institutions",
        "_items",
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
        self._entries: dict[str, _Versions[CatalogEntry]] = _index(catalog, _BY_CODE)
        self._mappings = _index_mappings(mappings)
        self._ratios: dict[tuple[str, str], _Versions[SelfpayRatio]] = _index(ratios, _BY_REGION)
        self._caps: dict[tuple[str, str], _Versions[PriceCap]] = _index(caps, _BY_REGION)
        self._policies: dict[str, _Versions[Policy]] = _index(policies, _BY_ADMDVS)
        # Item rules are derived on first use, per institution and item code: deriving all of
        # them up front would make a reload of 500,000 mappings cost seconds for codes never
        # billed. The dict only memoizes values fixed by this snapshot's data; it is bounded
        # by the number of mapped codes, and a lost race computes the same value twice.
        self._items: dict[str, dict[str, tuple[_Segment, ...]]] = {}  # set last: seals

    def __setattr__(self, name: str, value: object) -> None:
        # Sealed once built: every settlement that holds this snapshot must see the same data.
        if hasattr(self, "_items"):
            raise AttributeError(f"a catalog snapshot is immutable (setting {name})")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a catalog snapshot is immutable (deleting {name})")

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

    def dismantle(self) -> list[Mapping]:
        """Empty the indexes and hand back the mappings as a list, so a retired snapshot can be
        freed piece by piece instead of in one 25 ms cascade on the event loop (P7). Only for
        a snapshot nothing else holds any more: afterwards every lookup misses."""
        pieces = list(self.mappings)
        for index in (self._mappings, self._items):
            while index:
                index.popitem()
        return pieces

    def institution(self, code: str) -> Institution | None:
        """The registered institution."""
        return self._institutions.get(code)

    def mapping(self, fixmedins_code: str, medins_list_codg: str, on: dt.date) -> Mapping | None:
        """The institution's mapping of its item code valid on the date."""
        items = self._mappings.get(fixmedins_code)
        return None if items is None else _valid(items.get(medins_list_codg), on)

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

    def item(self, fixmedins_code: str, medins_list_codg: str, on: dt.date) -> ItemRule:
        """The institution's item code resolved on the date, in the institution's region."""
        items = self._items.get(fixmedins_code)
        segments = None if items is None else items.get(medins_list_codg)
        if segments is None:
            if medins_list_codg not in self._mappings.get(fixmedins_code, _NONE):
                return UNMAPPED  # not memoized: codes a client makes up must not grow memory
            segments = self._segments(fixmedins_code, medins_list_codg)
            self._items.setdefault(fixmedins_code, {})[medins_list_codg] = segments
        for begin, end, rule in segments:
            if begin <= on <= end:
                return rule
        return UNMAPPED

    def resolve(self, fixmedins_code: str, medins_list_codg: str, on: dt.date) -> ItemRule:
        """The item rule computed straight from the rows (what `item` memoizes)."""
        mapping = self.mapping(fixmedins_code, medins_list_codg, on)
        if mapping is None:
            return UNMAPPED
        codg = mapping.med_list_codg
        entry = self.entry(codg, on)
        if entry is None:
            return _unlisted(codg, medins_list_codg, mapping.list_type, NOT_LISTED_MEMO)
        inst = self._institutions.get(fixmedins_code)
        region = "" if inst is None else inst.admdvs  # the treatment region supplies both
        cap = self.cap_micro(codg, region, on)
        bp = 0
        if entry.chrgitm_lv == CLASS_B:
            ratio = self.selfpay_bp(codg, region, on)
            bp = self.class_b_default_bp if ratio is None else ratio

        def template(bp: int) -> LineSplit:
            return _template(
                codg=codg,
                medins_list_codg=medins_list_codg,
                lv=entry.chrgitm_lv,
                ctype=entry.med_chrgitm_type,
                lmt=entry.lmt_used_flag,
                list_type=entry.list_type,
                cap=cap,
                bp=bp,
            )

        return ItemRule(
            med_list_codg=codg,
            listed=True,
            never_covered=entry.chrgitm_lv == CLASS_C,
            restricted=entry.lmt_used_flag == "1",
            cap_micro=cap,
            split=template(bp),
            selfpay=template(BP),
        )

    def _segments(self, fixmedins_code: str, medins_list_codg: str) -> tuple[_Segment, ...]:
        """The item's rules over time: one per stretch of dates where no input row changes."""
        inst = self._institutions.get(fixmedins_code)
        region = "" if inst is None else inst.admdvs
        rows: list[CatalogEntry | Mapping | SelfpayRatio | PriceCap] = []
        for m in _all(self._mappings[fixmedins_code][medins_list_codg]):
            rows.append(m)
            rows.extend(_all(self._entries.get(m.med_list_codg)))
            rows.extend(_all(self._ratios.get((m.med_list_codg, region))))
            rows.extend(_all(self._caps.get((m.med_list_codg, region))))
        starts = {r.begndate for r in rows}
        starts.update(r.enddate + _DAY for r in rows if r.enddate < dt.date.max)
        bounds = sorted(starts)
        segments: list[_Segment] = []
        for i, begin in enumerate(bounds):
            end = bounds[i + 1] - _DAY if i + 1 < len(bounds) else dt.date.max
            rule = self.resolve(fixmedins_code, medins_list_codg, begin)
            if segments and segments[-1][2] == rule and segments[-1][1] + _DAY == begin:
                segments[-1] = (segments[-1][0], end, rule)
            elif rule is not UNMAPPED:
                segments.append((begin, end, rule))
        # The likeliest stretch (the current one, usually the only one) is tried first.
        segments.reverse()
        return tuple(segments)
