"""Bulk catalog corrections: re-settle every settlement that used an item's wrong mapping.

For each affected settlement, in the original settlement order and in one transaction: cancel it
(exactly what it applied comes off), settle the same fee lines again with the corrected mapping
against the person's accumulators at that moment, link the new settlement to the old, and record
the money that moves (a refund and recovery record). `plan` runs the very same steps inside one
transaction it rolls back, so its figures are what `apply` will do. `apply` is idempotent: a
settlement already corrected has a record and is skipped, so an interrupted run is simply resumed.
"""

from __future__ import annotations

import datetime as dt
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import asyncpg
from msgspec.structs import replace

from gateway.core.catalog import Snapshot
from gateway.core.money import fen_text
from gateway.core.settle import ACCOUNT
from gateway.ledger import corrections, fees, persons, settlements
from gateway.ledger.settlements import AMOUNT_FIELDS, Record
from gateway.ops import spreadsheet
from gateway.pipeline.grouped import Built, Held, Job
from gateway.protocol.errors import GatewayError, NotFound
from gateway.protocol.origin import Origin
from gateway.services import visit_settlement
from gateway.services.settlement_state import settle_alone

FUND_CODES = ("310100", "390100", "320100", "330100", "390200", "610100", "310200")


@dataclass(frozen=True, slots=True)
class Target:
    setl_id: str
    psn_no: str
    mdtrt_id: str
    setl_time: dt.datetime
    used: str  # the national code the item was resolved to then ("" when unmapped)
    now: str  # the national code it resolves to today


@dataclass(slots=True)
class Item:
    """One corrected settlement and the money it moves (new minus old)."""

    old_setl_id: str
    new_setl_id: str
    psn_no: str
    mdtrt_id: str
    old: dict[str, int]
    new: dict[str, int]
    fund_deltas: dict[str, int]
    # Per re-mapped line: (feedetl_sn, medins_list_codg, national code used then, code now).
    codes: list[tuple[str, str, str, str]] = field(default_factory=list)
    skipped: bool = False

    @property
    def patient_cash_delta(self) -> int:
        """Positive: the patient owes this; negative: money back to the patient."""
        return self.new["psn_cash_pay"] - self.old["psn_cash_pay"]

    @property
    def patient_collect(self) -> int:
        """What the counter collects from the patient (0 when it refunds)."""
        return max(0, self.patient_cash_delta)

    @property
    def patient_refund(self) -> int:
        """What the counter pays back to the patient (0 when it collects)."""
        return max(0, -self.patient_cash_delta)

    @property
    def acct_delta(self) -> int:
        return self.new["acct_pay"] - self.old["acct_pay"]

    @property
    def fund_delta(self) -> int:
        return self.new["fund_pay_sumamt"] - self.old["fund_pay_sumamt"]

    def row(self) -> dict[str, Any]:
        return {
            "old_setl_id": self.old_setl_id,
            "new_setl_id": self.new_setl_id,
            "psn_no": self.psn_no,
            "mdtrt_id": self.mdtrt_id,
            "old_setlinfo": {k: fen_text(v) for k, v in self.old.items()},
            "new_setlinfo": {k: fen_text(v) for k, v in self.new.items()},
            "patient_owes": fen_text(self.patient_cash_delta),
            # Found from outside: a refund read as a negative "owes", easily misread.
            "patient_collect": fen_text(self.patient_collect),
            "patient_refund": fen_text(self.patient_refund),
            "account_delta": fen_text(self.acct_delta),
            "fund_delta": fen_text(self.fund_delta),
            "fund_deltas": {k: fen_text(v) for k, v in self.fund_deltas.items()},
            "lines": [
                {
                    "feedetl_sn": sn,
                    "medins_list_codg": item,
                    "old_med_list_codg": old,
                    "new_med_list_codg": new,
                }
                for sn, item, old, new in self.codes
            ],
        }


@dataclass(slots=True)
class Summary:
    items: list[Item] = field(default_factory=list)
    # Targets another run replaced meanwhile: (old setl_id, its replacement).
    elsewhere: list[tuple[str, str]] = field(default_factory=list)
    # Targets the counter undid (cancelled, reversed) since they were read: nothing to correct.
    undone: list[str] = field(default_factory=list)
    # Targets the rules refused to re-settle: (setl_id, why). In the JSON and the CSV as in the
    # text (found from outside: the CSV held only its header where the text named a failure).
    failed: list[tuple[str, str]] = field(default_factory=list)

    def persons(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for it in self.items:
            p = out.setdefault(
                it.psn_no,
                dict.fromkeys(
                    ("settlements", "patient_owes", "collect", "refund", "account_delta"), 0
                ),
            )
            p["settlements"] += 1
            p["patient_owes"] += it.patient_cash_delta
            # Not netted: each visit's refund and charge is its own business at the counter.
            p["collect"] += it.patient_collect
            p["refund"] += it.patient_refund
            p["account_delta"] += it.acct_delta
        return out

    def funds(self) -> dict[str, int]:
        totals = dict.fromkeys(FUND_CODES, 0)
        for it in self.items:
            for code, delta in it.fund_deltas.items():
                totals[code] = totals.get(code, 0) + delta
        return {k: v for k, v in totals.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {
            "settlements": [it.row() for it in self.items],
            "persons": {
                k: {
                    "settlements": v["settlements"],
                    "patient_owes": fen_text(v["patient_owes"]),
                    "patient_collect": fen_text(v["collect"]),
                    "patient_refund": fen_text(v["refund"]),
                    "account_delta": fen_text(v["account_delta"]),
                }
                for k, v in self.persons().items()
            },
            "funds": {k: fen_text(v) for k, v in self.funds().items()},
            "failed": [{"setl_id": setl_id, "why": why} for setl_id, why in self.failed],
            "totals": {
                "settlements": len(self.items),
                "patient_owes": fen_text(sum(it.patient_cash_delta for it in self.items)),
                "patient_collect": fen_text(sum(it.patient_collect for it in self.items)),
                "patient_refund": fen_text(sum(it.patient_refund for it in self.items)),
                "account_delta": fen_text(sum(it.acct_delta for it in self.items)),
                "fund_delta": fen_text(sum(it.fund_delta for it in self.items)),
            },
        }

    def to_csv(self) -> str:
        """The agency's report: one row per corrected settlement."""
        buf = io.StringIO()
        w = spreadsheet.Writer(buf)
        header = [
            "old_setl_id",
            "new_setl_id",
            "psn_no",
            "mdtrt_id",
            "old_medfee_sumamt",
            "old_fund_pay_sumamt",
            "new_fund_pay_sumamt",
            "old_acct_pay",
            "new_acct_pay",
            "old_psn_cash_pay",
            "new_psn_cash_pay",
            "patient_owes",
            "patient_collect",
            "patient_refund",
            "fund_delta",
            *(f"delta_{c}" for c in FUND_CODES),
            "code_changes",
            "not_corrected",
        ]
        w.writerow(header)
        for it in self.items:
            w.writerow(
                [
                    it.old_setl_id,
                    it.new_setl_id,
                    it.psn_no,
                    it.mdtrt_id,
                    fen_text(it.old["medfee_sumamt"]),
                    fen_text(it.old["fund_pay_sumamt"]),
                    fen_text(it.new["fund_pay_sumamt"]),
                    fen_text(it.old["acct_pay"]),
                    fen_text(it.new["acct_pay"]),
                    fen_text(it.old["psn_cash_pay"]),
                    fen_text(it.new["psn_cash_pay"]),
                    fen_text(it.patient_cash_delta),
                    fen_text(it.patient_collect),
                    fen_text(it.patient_refund),
                    fen_text(it.fund_delta),
                    *(fen_text(it.fund_deltas.get(c, 0)) for c in FUND_CODES),
                    # A HIS's serial numbers and codes: the writer keeps a formula out (found
                    # from outside: an uploaded serial number "+SUM(1,1)" began the cell).
                    " ".join(
                        f"{sn}:{old or '未对照'}→{new or '未对照'}" for sn, _, old, new in it.codes
                    ),
                    "",
                ]
            )
        for setl_id, why in self.failed:
            w.writerow([setl_id, *[""] * (len(header) - 2), why])
        return buf.getvalue()

    def to_text(self, verb: str, found: int, item_code: str) -> list[str]:
        """The clerk's report: each settlement, each person, each fund, the totals."""
        # Of the settlements whose lines used a mapping of the item other than the one in force
        # (found from outside: "of 0 settlements using YP0003" read as if none had used the
        # item, where none had used it under another mapping).
        item = _plain(item_code)
        out = [
            f"{verb} {len(self.items)} of {found} settlements that used {item} under a mapping"
            " other than the one in force now"
        ]
        if not found:
            out.append(
                f"  nothing to correct: every settlement using {item} used the mapping in force;"
                " upload the corrected mapping first (3301), then plan again"
            )
        for it in self.items:
            new = it.new_setl_id or "(new number given when applied)"
            # The account is told apart (found from outside: listed among the funds, the
            # parenthesis netted to nothing under a fund figure of -227.04).
            funds = " ".join(
                f"{c} {fen_text(v)}" for c, v in it.fund_deltas.items() if v and c != ACCOUNT
            )
            out.append(f"  {it.old_setl_id} → {new}  person {it.psn_no}  visit {it.mdtrt_id}")
            out.append(
                f"    fund {fen_text(it.fund_delta)}{f' ({funds})' if funds else ''}"
                f"  {_account_words(it.acct_delta)}  {_patient_words(it.patient_cash_delta)}"
            )
            if it.codes:
                out.append(
                    "    lines "
                    + " ".join(
                        f"{_plain(sn)} {_plain(item)}: {_plain(old) or 'unmapped'}"
                        f" → {_plain(new_code) or 'unmapped'}"
                        for sn, item, old, new_code in it.codes
                    )
                )
        persons = self.persons()
        if persons:
            out.append("per person:")
        for psn_no, v in persons.items():
            out.append(
                f"  {psn_no}  {v['settlements']} settlements  collect {fen_text(v['collect'])}"
                f"  refund {fen_text(v['refund'])}  {_account_words(v['account_delta'])}"
            )
        by_fund = self.funds()
        if by_fund:
            out.append("per fund:")
        for code, amount in by_fund.items():
            out.append(
                f"  {code}{' (personal account)' if code == ACCOUNT else ''}: {fen_text(amount)}"
            )
        collect = sum(it.patient_collect for it in self.items)
        refund = sum(it.patient_refund for it in self.items)
        out.append(
            f"  patients: collect {fen_text(collect)} in total, refund {fen_text(refund)} in total"
        )
        return out


def _plain(text: str) -> str:
    """A HIS's text as the report prints it: found from outside, a line break in an uploaded
    serial number or item code printed lines of its own ("patients: refund 9999.00") in the
    clerk's report. Invisible characters are escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def _account_words(delta: int) -> str:
    """The personal account's change in words: found from outside, "account -2061.20" (the
    change in what the account pays) was readable as 2061.20 taken from the account."""
    if delta > 0:
        return f"account: pays {fen_text(delta)} more"
    if delta < 0:
        return f"account: pays {fen_text(-delta)} less, back to the account"
    return "account: unchanged"


def _patient_words(delta: int) -> str:
    if delta > 0:
        return f"patient: collect {fen_text(delta)}"
    if delta < 0:
        return f"patient: refund {fen_text(-delta)}"
    return "patient: nothing to collect or refund"


async def targets(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    fixmedins_code: str,
    item: str,
    begn: dt.date | None = None,
    end: dt.date | None = None,
) -> list[Target]:
    """Settlements in force whose line for the item resolved differently from today's mapping."""
    found: dict[str, Target] = {}
    for r in await corrections.uses(conn, fixmedins_code, item, begn, end):
        mapping = snapshot.mapping(fixmedins_code, item, r.fee_ocur_time.date())
        now = mapping.med_list_codg if mapping else ""
        used = r.used or ""
        if used != now and r.setl_id not in found:
            found[r.setl_id] = Target(r.setl_id, r.psn_no, r.mdtrt_id, r.setl_time, used, now)
    return list(found.values())


def _fund_amounts(rec: Record) -> dict[str, int]:
    return {f.fund_pay_type: f.fund_payamt for f in rec.funds}


async def resettle(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    setl_id: str,
    item_code: str,
    run_id: str,
    now: dt.datetime,
) -> Item:
    """Cancel one settlement and settle its lines again (the caller holds the transaction)."""
    row = await corrections.original(conn, setl_id)
    sns = await fees.of_settlement(conn, row.mdtrt_id, setl_id)
    old, _ = await settlements.cancel(
        conn,
        fixmedins_code=row.fixmedins_code,
        setl_id=setl_id,
        mdtrt_id=row.mdtrt_id,
        psn_no=row.psn_no,
        msgid=f"CORRECTION-{run_id}",
        now=now,
        categories=frozenset({row.category}),
        resettling=True,
    )
    institution = snapshot.institution(row.fixmedins_code)
    assert institution is not None
    used = await corrections.codes_used(conn, setl_id)
    wanted = set(sns)
    lines = [ln for ln in await fees.unsettled(conn, row.mdtrt_id) if ln.feedetl_sn in wanted]
    _, codes = await _remap(conn, snapshot, row.fixmedins_code, lines, used)
    # Same lines, so the same total: the declared check cannot fail on its own account.
    declared = settlements.Declared(medfee_sumamt=old.amounts["medfee_sumamt"])

    def build(held: Held, _mdtrt_serial: int, setl_serial: int) -> Built:
        # The visit and the person are those of a settlement in force a moment ago: what the
        # counter's checks would refuse now (a visit closed since, a batch settled) does not
        # stop the same lines from being settled again under the corrected mapping.
        assert held.visit is not None and held.person is not None
        enc = held.visit.encounter
        persons.require_insured(held.person)
        origin = Origin(
            fixmedins_code=row.fixmedins_code,
            infno=row.infno,
            msgid=row.medins_setl_id,
            dev_no=row.dev_no,
            opter=row.opter,
            mdtrtarea_admvs=row.mdtrtarea_admvs,
        )
        asked = visit_settlement.VisitAsk(
            psn_no=row.psn_no,
            mdtrt_id=row.mdtrt_id,
            med_type=row.med_type,
            acct_used=row.acct_used_flag,
            mid_setl_flag=row.mid_setl_flag,
            chrg_bchno=row.chrg_bchno,
            declared=declared,
            insutype="",
            cert_type=row.mdtrt_cert_type,  # as the settlement it replaces was made
            cert=None,
        )
        ctx = visit_settlement.context(origin, institution, enc, asked)
        again = [ln for ln in held.visit.unsettled if ln.feedetl_sn in wanted]
        if not again:
            raise NotFound("没有待结算的费用明细（可能已结算或未上传），请核对收费批次号")
        rec, s, writes = visit_settlement.settle_lines(
            snapshot,
            ctx,
            held,
            held.visit,
            again,
            declared,
            now,
            setl_serial=setl_serial,
            replaces=setl_id,
        )
        return Built.settled(s, held, rec, writes)

    job = Job(psn_no=row.psn_no, year=None, build=build, mdtrt_id=row.mdtrt_id)
    new = (await settle_alone(conn, job)).output
    assert new.setl_id is not None
    old_funds, new_funds = _fund_amounts(old), _fund_amounts(new)
    deltas = {c: new_funds.get(c, 0) - old_funds.get(c, 0) for c in FUND_CODES}
    it = Item(
        old_setl_id=setl_id,
        new_setl_id=new.setl_id,
        psn_no=row.psn_no,
        mdtrt_id=row.mdtrt_id,
        old={k: old.amounts[k] for k in AMOUNT_FIELDS},
        new={k: new.amounts[k] for k in AMOUNT_FIELDS},
        fund_deltas={k: v for k, v in deltas.items() if v},
        codes=codes,
    )
    await corrections.record(
        conn,
        old_setl_id=setl_id,
        new_setl_id=new.setl_id,
        run_id=run_id,
        fixmedins_code=row.fixmedins_code,
        medins_list_codg=item_code,
        psn_no=row.psn_no,
        mdtrt_id=row.mdtrt_id,
        applied_at=now,
        patient_cash_delta=it.patient_cash_delta,
        acct_delta=it.acct_delta,
        fund_delta=it.fund_delta,
        fund_deltas=it.fund_deltas,
        old_setlinfo=it.old,
        new_setlinfo=it.new,
    )
    return it


async def _remap(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    fixmedins_code: str,
    lines: list[fees.StoredLine],
    used: dict[str, str],
) -> tuple[list[fees.StoredLine], list[tuple[str, str, str, str]]]:
    """Resolve each line again by its own item code through today's mapping.

    The national code a client sent with the line (`med_list_codg`) named the mapping in force
    at upload; the correction exists because that mapping was wrong, so the stored code is
    replaced by the corrected one (and recorded on the line) instead of being checked against it.
    """
    out: list[fees.StoredLine] = []
    codes: list[tuple[str, str, str, str]] = []
    for ln in lines:
        mapping = snapshot.mapping(fixmedins_code, ln.medins_list_codg, ln.fee_date)
        now = mapping.med_list_codg if mapping is not None else ""
        if ln.med_list_codg and ln.med_list_codg != now:
            ln = replace(ln, med_list_codg=now or None)
            await fees.set_national_code(conn, ln.mdtrt_id, ln.feedetl_sn, now or None)
        then = used.get(ln.feedetl_sn, "")
        if then != now:
            codes.append((ln.feedetl_sn, ln.medins_list_codg, then, now))
        out.append(ln)
    return out, codes


class _Rollback(Exception):
    """Ends the plan's transaction without keeping anything."""


async def plan(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    found: list[Target],
    item_code: str,
    now: dt.datetime,
) -> tuple[Summary, list[tuple[str, str]]]:
    """What apply would do, computed by doing it in a transaction that is then rolled back;
    returns what would be re-settled and what would fail (why), as apply does.

    Each settlement has a savepoint of its own, as apply gives each a transaction: one the rules
    refuse (a netted refund that no longer fits, §6) is undone alone and listed, and the rest are
    computed after it exactly as apply will compute them.
    """
    summary = Summary()
    failed: list[tuple[str, str]] = []
    try:
        async with conn.transaction():
            for t in found:
                try:
                    async with conn.transaction():
                        it = await resettle(conn, snapshot, t.setl_id, item_code, "PLAN", now)
                    # The number it took is rolled back with the plan; apply draws its own
                    # (found from outside: a clerk noting the plan's number found no such
                    # settlement afterwards).
                    it.new_setl_id = ""
                    summary.items.append(it)
                except GatewayError as exc:
                    failed.append((t.setl_id, exc.err_msg))
            raise _Rollback
    except _Rollback:
        pass
    summary.failed = failed
    return summary, failed


Progress = Callable[[int, int], None]


def progress_bar(stream: TextIO = sys.stderr) -> Progress:
    """A terminal progress bar: [#####.....] 120/200."""

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


async def apply(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    found: list[Target],
    item_code: str,
    run_id: str,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    committed: Callable[[Item], None] | None = None,
) -> tuple[Summary, list[tuple[str, str]]]:
    """Correct each target in its own transaction; returns what was done and what failed (why).
    `committed(item)` is told each correction once its transaction has committed.

    `limit` bounds the corrections made, not the settlements tried: found from outside, a
    settlement the rules always refuse (a manual claim's, the oldest) used up `--limit 1` on
    every run, and a clerk working through a correction in slices never got past it."""
    summary = Summary()
    failed: list[tuple[str, str]] = []
    for i, t in enumerate(found, start=1):
        if limit is not None and len(summary.items) >= limit:
            if progress is not None:
                progress(i - 1, i - 1)  # this run's share is done: the bar ends where it stopped
            break
        try:
            async with conn.transaction():
                await corrections.hold(conn, t.setl_id)
                done = await corrections.corrected_by(conn, t.setl_id)
                # Undone at the counter since the targets were read (found from outside: a
                # 2601 landing mid-run made the run fail, exit 1, over nothing to correct).
                undone = done is None and await settlements.status_of(conn, t.setl_id) != "settled"
                if undone:
                    summary.undone.append(t.setl_id)
                elif done is None:
                    item = await resettle(
                        conn, snapshot, t.setl_id, item_code, run_id, dt.datetime.now()
                    )
                    summary.items.append(item)
                else:
                    # Another run replaced it since the targets were read: its replacement is
                    # judged again by `targets` (the caller's next pass), not re-settled blind.
                    summary.elsewhere.append((t.setl_id, done))
        except GatewayError as exc:
            failed.append((t.setl_id, exc.err_msg))
        else:
            if done is None and not undone and committed is not None:
                committed(item)
        if progress is not None:
            progress(i, len(found))
    summary.failed = failed
    return summary, failed
