"""Reference data in PostgreSQL: loading a region's files, and reading them back as a snapshot."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import sys
from collections.abc import Iterable, Sequence
from typing import TypeVar

import asyncpg

from gateway.app import heap
from gateway.app.reference import Reference
from gateway.core.catalog import Snapshot
from gateway.core.model import CatalogEntry, Institution, Mapping, PriceCap, SelfpayRatio
from gateway.protocol.errors import RuleRejected

# Everything a demo reload resets, children first: the ledger and everything that reads it
# (found from outside: a reload kept pending deferred claims, which a replay then settled into
# the fresh ledger, and manual claims, payouts and clearing built on settlements no longer
# there). Kept: the number counters (a running gateway holds blocks of them; restarting them
# would hand out ids it already gave), the plan and its audit trail, the console's operators,
# and the institutions' bank accounts, which staff enter by hand.
# The columns an account is loaded with (its opening balance is set from the balance).
ACCOUNT_COLUMNS = ["psn_no", "balance_fen"]
_ALL_TABLES = (
    "payout_returns",
    "payout_files",
    "payout_approvals",
    "payout_items",
    "payout_batches",
    "owed_lines",
    "clearing_gathered",
    "clearing_recoveries",
    "manual_claim_lines",
    "manual_claim_invoices",
    "manual_claims",
    "invoice_registry",
    "deferred",
    "presettlements",
    "legacy_settlements",
    "shadow_mirror_calls",
    "shadow_mirror_visits",
    "shadow_differences",
    "shadow_comparisons",
    "correction_items",
    "reconciliations",
    "exchange_files",
    "settlement_events",
    "settlement_funds",
    "settlements",
    "fee_lines",
    "encounters",
    "accumulators",
    "idempotency",
    "sign_ins",
    "accounts",
    "persons",
    "person_directory",
    "catalog_mappings",
    "catalog_entries",
    "selfpay_ratios",
    "price_caps",
    "institutions",
)


async def is_empty(conn: asyncpg.Connection) -> bool:
    """No institutions loaded yet."""
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM institutions)")


async def load(conn: asyncpg.Connection, ref: Reference) -> None:
    """Replace all reference data, persons and the ledger with the given set (demo load)."""
    async with conn.transaction():
        await conn.execute(f"TRUNCATE {', '.join(_ALL_TABLES)}")
        await conn.copy_records_to_table(
            "institutions",
            records=[
                (i.fixmedins_code, i.fixmedins_name, i.fixmedins_type, i.hosp_lv, i.admdvs)
                for i in ref.institutions
            ],
        )
        await conn.copy_records_to_table(
            "catalog_entries",
            records=[
                (
                    c.med_list_codg,
                    c.med_list_name,
                    c.list_type,
                    c.med_chrgitm_type,
                    c.chrgitm_lv,
                    c.lmt_used_flag,
                    c.begndate,
                    c.enddate,
                )
                for c in ref.catalog
            ],
        )
        await copy_mappings(conn, ref.mappings)
        await conn.copy_records_to_table(
            "selfpay_ratios",
            records=[
                (r.med_list_codg, r.insu_admdvs, r.selfpay_bp, r.begndate, r.enddate)
                for r in ref.ratios
            ],
        )
        await conn.copy_records_to_table(
            "price_caps",
            records=[
                (c.med_list_codg, c.insu_admdvs, c.cap_micro, c.begndate, c.enddate)
                for c in ref.caps
            ],
        )
        await conn.copy_records_to_table(
            "persons",
            records=[
                (
                    p.psn_no,
                    p.psn_name,
                    p.psn_cert_type,
                    p.certno,
                    p.gend,
                    p.brdy,
                    p.insuplc_admdvs,
                    p.insutype,
                    p.psn_type,
                    p.psn_insu_stas,
                    p.cvlserv_flag,
                    p.maf_class,
                    list(p.chronic_dise_codg),
                    p.mdtrt_cert_no_card,
                )
                for p in ref.persons
            ],
        )
        await conn.copy_records_to_table(
            "accounts",
            records=[(p.psn_no, ref.balances.get(p.psn_no, 0)) for p in ref.persons],
            columns=ACCOUNT_COLUMNS,  # the opening balance is set from it (migration 041)
        )
        await conn.copy_records_to_table(
            "person_directory",
            records=[
                (p.psn_no, p.certno, p.mdtrt_cert_no_card, p.insuplc_admdvs) for p in ref.persons
            ],
        )
        await bump_version(conn)


async def copy_mappings(conn: asyncpg.Connection, mappings: Iterable[Mapping]) -> None:
    """Bulk-load mappings (COPY); the caller bumps the version."""
    await conn.copy_records_to_table(
        "catalog_mappings",
        columns=list(Mapping.__struct_fields__),
        records=(tuple(getattr(m, f) for f in Mapping.__struct_fields__) for m in mappings),
    )


async def bump_version(conn: asyncpg.Connection) -> int:
    """Every reference change bumps the version so each process rebuilds its snapshot."""
    v = await conn.fetchval("UPDATE catalog_version SET version = version + 1 RETURNING version")
    return int(v)


async def current_version(conn: asyncpg.Connection) -> int:
    """The reference data's version."""
    return int(await conn.fetchval("SELECT version FROM catalog_version"))


_T = TypeVar("_T")
# How long the build's thread may hold the interpreter while the loop waits for it, while it
# builds: half the serving process's 1 ms (gateway.app.runtime), which left the loop's longest
# wait over a reload at 10-22 ms against 8-9 ms with this (P7's bound is 10 ms).
BUILD_SWITCH_SECONDS = 0.0005
# Rows per cursor fetch: each chunk decodes and converts on the loop, in 1-2 ms at 500 (2,000
# took 4-9 ms a chunk on this box, the reload's p99 wait of the loop 5 ms).
MAPPING_CHUNK = 500


class _Shared:
    """One object per distinct value: 500,000 mappings repeat a few thousand codes and dates, and
    asyncpg gives each row its own copies (a tenth of the snapshot's memory, P8)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[object, object] = {}

    def __call__(self, value: _T) -> _T:
        return self._seen.setdefault(value, value)  # type: ignore[return-value]


async def read_snapshot(conn: asyncpg.Connection, ref: Reference) -> Snapshot:
    """Build a snapshot from the database (policies come from the reference files).

    A reload must not stall settlements (P7: no loop block over 10 ms with 500,000 mappings):
    the mappings arrive through a cursor in small chunks, converted between awaits, and the
    indexes are built in a thread with the cyclic GC paused, because a full collection over
    half a million new objects would hold the interpreter for a hundred milliseconds. A
    serving process freezes the new snapshot before the collector resumes (heap.settle_built):
    otherwise its first young collection walked it all, on the loop.
    """
    shared = _Shared()
    mappings: list[Mapping] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await current_version(conn)
        institutions = await conn.fetch(
            "SELECT fixmedins_code, fixmedins_name, fixmedins_type, hosp_lv, admdvs FROM institutions"
        )
        catalog = await conn.fetch(
            "SELECT med_list_codg, med_list_name, list_type, med_chrgitm_type, chrgitm_lv,"
            " lmt_used_flag, begndate, enddate FROM catalog_entries"
        )
        cursor = await conn.cursor(
            "SELECT fixmedins_code, medins_list_codg, fixmedins_hilist_name, list_type,"
            " med_list_codg, begndate, enddate FROM catalog_mappings WHERE revoked_at IS NULL"
            " ORDER BY mapping_id"  # upload order: on equal begndates the snapshot keeps the later row
        )
        while rows := await cursor.fetch(MAPPING_CHUNK):
            mappings.extend(
                Mapping(
                    fixmedins_code=shared(r[0]),
                    medins_list_codg=r[1],
                    fixmedins_hilist_name=shared(r[2]),
                    list_type=shared(r[3]),
                    med_list_codg=shared(r[4]),
                    begndate=shared(r[5]),
                    enddate=shared(r[6]),
                )
                for r in rows
            )
        ratios = await conn.fetch(
            "SELECT med_list_codg, insu_admdvs, selfpay_bp, begndate, enddate FROM selfpay_ratios"
        )
        caps = await conn.fetch(
            "SELECT med_list_codg, insu_admdvs, cap_micro, begndate, enddate FROM price_caps"
        )

    def build() -> Snapshot:
        snapshot = Snapshot.build(
            version=version,
            institutions=[Institution(**dict(r)) for r in institutions],
            catalog=[CatalogEntry(**dict(r)) for r in catalog],
            mappings=mappings,
            ratios=[SelfpayRatio(**dict(r)) for r in ratios],
            caps=[PriceCap(**dict(r)) for r in caps],
            policies=ref.policies,
            class_b_default_bp=ref.class_b_default_bp,
        )
        # The list the snapshot copied, let go here in pieces: dropped whole when this
        # function's caller returned, on the loop, it held it for 7-8 ms (P7).
        while mappings:
            del mappings[-MAPPING_CHUNK:]
        return snapshot

    paused = gc.isenabled()
    gc.disable()
    # The build's Python holds the interpreter for up to the switch interval each time the
    # event loop asks for it back: shorter while the build runs, then as it was.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, BUILD_SWITCH_SECONDS))
    try:
        return await asyncio.to_thread(build)
    finally:
        sys.setswitchinterval(interval)
        heap.settle_built()
        if paused:
            gc.enable()


class UnknownRegion(Exception):
    """A region no institution is in and no person insured in."""


async def synthesize(
    conn: asyncpg.Connection, persons: int, region: str, balance_fen: int = 100_000
) -> tuple[int, int]:
    """The region's insured employees for load tests (psn_no = certno = "S" + region + 12
    digits) made up to N: those already there are kept, the missing indexes added.

    Counted in the directory, which knows every person: a ledger cluster's persons leave the
    main database's `persons` (found from outside: a second synth for a split region started
    again at 1 and failed on the directory's key). Returns (added, how many there are now).
    A region the reference data does not know is refused (found from outside: persons of a
    region with no policy were made, then refused at every counter).
    """
    known = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM institutions WHERE admdvs = $1)"
        " OR EXISTS (SELECT 1 FROM person_directory WHERE insuplc_admdvs = $1)",
        region,
    )
    if not known:
        raise UnknownRegion(region)
    start = int(
        await conn.fetchval(
            "SELECT count(*) FROM person_directory WHERE psn_no LIKE $1", f"S{region}%"
        )
    )
    rows = [f"S{region}{i:012d}" for i in range(start + 1, persons + 1)]
    if not rows:
        return 0, start
    async with conn.transaction():
        await conn.copy_records_to_table(
            "persons",
            columns=[
                "psn_no",
                "psn_name",
                "psn_cert_type",
                "certno",
                "gend",
                "brdy",
                "insuplc_admdvs",
                "insutype",
                "psn_type",
                "psn_insu_stas",
                "cvlserv_flag",
                "mdtrt_cert_no_card",
            ],
            records=[
                (
                    p,
                    "合成参保人",
                    "01",
                    p,
                    "1",
                    dt.date(1980, 1, 1),
                    region,
                    "310",
                    "1101",
                    "1",
                    "0",
                    p,
                )
                for p in rows
            ],
        )
        await conn.copy_records_to_table(
            "accounts", records=[(p, balance_fen) for p in rows], columns=ACCOUNT_COLUMNS
        )
        await conn.copy_records_to_table(
            "person_directory", records=[(p, p, p, region) for p in rows]
        )
    return len(rows), persons


async def upload_mappings(conn: asyncpg.Connection, rows: list[Mapping]) -> int:
    """3301: add mapping rows (a row for an item already mapped supersedes it from its begndate)."""
    codes = sorted({m.med_list_codg for m in rows})
    known: dict[str, set[str]] = {}
    for r in await conn.fetch(
        "SELECT DISTINCT med_list_codg, list_type FROM catalog_entries"
        " WHERE med_list_codg = ANY($1::text[])",
        codes,
    ):
        known.setdefault(r["med_list_codg"], set()).add(r["list_type"])
    missing = [c for c in codes if c not in known]
    if missing:
        raise RuleRejected(f"医保目录编码{missing[0]}不存在，请核对后重新上传对照")
    for m in rows:
        # Found from outside: a drug's code mapped as a service item (201 for a 101 code) was
        # taken, and 1317 showed the item under a category its national code is not.
        if m.list_type not in known[m.med_list_codg]:
            kinds = "、".join(sorted(known[m.med_list_codg]))
            raise RuleRejected(
                f"项目{m.medins_list_codg}的目录类别list_type{m.list_type}与医保目录编码"
                f"{m.med_list_codg}的目录类别{kinds}不一致，请核对后重新上传对照"
            )
    await conn.executemany(
        "INSERT INTO catalog_mappings (fixmedins_code, medins_list_codg, fixmedins_hilist_name, list_type,"
        " med_list_codg, begndate, enddate) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                m.fixmedins_code,
                m.medins_list_codg,
                m.fixmedins_hilist_name,
                m.list_type,
                m.med_list_codg,
                m.begndate,
                m.enddate,
            )
            for m in rows
        ],
    )
    await bump_version(conn)
    return len(rows)


async def ever_mapped(
    conn: asyncpg.Connection, fixmedins_code: str, items: Sequence[str]
) -> set[tuple[str, str]]:
    """(item code, national code) of every mapping the institution ever uploaded for these
    items, superseded and revoked ones included: which national codes a client could have sent
    with an item in good faith."""
    rows = await conn.fetch(
        "SELECT DISTINCT medins_list_codg, med_list_codg FROM catalog_mappings"
        " WHERE fixmedins_code = $1 AND medins_list_codg = ANY($2::text[])",
        fixmedins_code,
        list(items),
    )
    return {(r["medins_list_codg"], r["med_list_codg"]) for r in rows}


async def revoke_mapping(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    medins_list_codg: str,
    list_type: str,
    med_list_codg: str,
) -> list[tuple[dt.date, dt.date]]:
    """3302: revoke the item's active mapping rows to that national code; the periods (begndate,
    enddate) of the rows revoked."""
    rows = await conn.fetch(
        "UPDATE catalog_mappings SET revoked_at = now() WHERE fixmedins_code = $1 AND medins_list_codg = $2"
        " AND med_list_codg = $3 AND ($4 = '' OR list_type = $4) AND revoked_at IS NULL"
        " RETURNING begndate, enddate",
        fixmedins_code,
        medins_list_codg,
        med_list_codg,
        list_type,
    )
    if rows:
        await bump_version(conn)
    return [(r["begndate"], r["enddate"]) for r in rows]


async def mappings_in_force(
    conn: asyncpg.Connection, fixmedins_code: str, items: list[str]
) -> list[asyncpg.Record]:
    """The items' mapping rows not revoked, the latest upload first."""
    return list(
        await conn.fetch(
            "SELECT medins_list_codg, med_list_codg, begndate, enddate FROM catalog_mappings"
            " WHERE fixmedins_code = $1 AND medins_list_codg = ANY($2::text[])"
            " AND revoked_at IS NULL ORDER BY mapping_id DESC",
            fixmedins_code,
            items,
        )
    )


async def institution_known(conn: asyncpg.Connection, fixmedins_code: str) -> bool:
    """Whether the reference data holds the institution."""
    return await institution_type(conn, fixmedins_code) is not None


async def institution_type(conn: asyncpg.Connection, fixmedins_code: str) -> str | None:
    """The institution's fixmedins_type (1 hospital, 2 pharmacy); None when not registered."""
    found = await conn.fetchval(
        "SELECT fixmedins_type FROM institutions WHERE fixmedins_code = $1", fixmedins_code
    )
    return None if found is None else str(found)


async def region_known(conn: asyncpg.Connection, admdvs: str) -> bool:
    """Whether the reference data holds an institution of the region."""
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM institutions WHERE admdvs = $1)", admdvs)
    )
