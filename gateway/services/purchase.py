"""The settlement of a pharmacy purchase (2101 priced ahead, 2102 settled).

A purchase has no registration or upload step: its settlement opens the visit, stores the lines
and settles them in one build over the person's state. The group commit and the single path run
a 2102's, `preview` a 2101's (final=False: the same split, nothing written), so a purchase
settles the same way alone, in a batch or priced ahead. The POS adapter decodes the national
shapes into a `PurchaseAsk` and encodes the answer (`Encode`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.core import eligibility
from gateway.core.catalog import Snapshot
from gateway.core.dates import DateRules, within_visit
from gateway.core.model import Institution, Person, PersonState, Settlement, Visit
from gateway.core.settle import settle
from gateway.ledger import encounters, fees, persons, settlements
from gateway.ledger.fees import StoredLine as StoredLine
from gateway.ledger.settlements import Context as Context
from gateway.ledger.settlements import Declared as Declared
from gateway.ledger.settlements import Record as Record
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job
from gateway.protocol.origin import Origin

PHARMACY_MED_TYPE = "41"


class PurchaseAsk(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2101/2102 as the rules read it (validated by the adapter); its lines get their 就诊ID
    when it is drawn."""

    psn_no: str
    cert: persons.Certificate
    cert_type: str
    begntime: dt.datetime
    acct_used: bool
    insutype: str
    dise_codg: str
    dise_name: str
    declared: settlements.Declared
    lines: tuple[fees.StoredLine, ...]
    stored: dict[str, Any]  # what the visit keeps of the request (its druginfo, the device)


# The answer a built purchase is encoded into; final=False: a pre-settlement's.
Encode = Callable[[settlements.Record, Settlement, settlements.Context, PurchaseAsk, bool], Any]


def check_dates(
    rules: DateRules, institution: Institution, p: PurchaseAsk, now: dt.datetime
) -> None:
    """The sale and each line dated between the late-billing bound and now, lines on the sale's
    day or after it (gateway.core.dates)."""
    rules.check("购药时间begntime", p.begntime, admdvs=institution.admdvs, now=now)
    rules.check_lines(p.lines, admdvs=institution.admdvs, now=now)
    for ln in p.lines:
        within_visit(
            ln.feedetl_sn, ln.fee_ocur_time, begntime=p.begntime, endtime=None, start="购药"
        )


def context(
    origin: Origin, institution: Institution, p: PurchaseAsk, person: Person, mdtrt_id: str
) -> settlements.Context:
    """The purchase as a visit of its own; refuses a person not insured, or another insutype."""
    persons.require_insured(person)
    eligibility.require_insutype(p.insutype, person.insutype)
    enc = encounters.Encounter(
        mdtrt_id=mdtrt_id,
        fixmedins_code=origin.fixmedins_code,
        psn_no=p.psn_no,
        insutype=person.insutype,
        kind="pharmacy",
        med_type=PHARMACY_MED_TYPE,
        begntime=p.begntime,
        ipt_otp_no=origin.msgid,
        dise_codg=p.dise_codg,
        dise_name=p.dise_name,
        insuplc_admdvs=person.insuplc_admdvs,
    )
    return settlements.Context(
        institution=institution,
        encounter=enc,
        visit=Visit(
            fixmedins_code=origin.fixmedins_code,
            mdtrt_id=mdtrt_id,
            med_type=PHARMACY_MED_TYPE,
            service_date=p.begntime.date(),
            acct_used_flag=p.acct_used,
            dise_codg=enc.dise_codg,
        ),
        infno=origin.infno,
        msgid=origin.msgid,
        dev_no=origin.dev_no,
        opter=origin.opter,
        mdtrtarea_admvs=origin.mdtrtarea_admvs,
        mdtrt_cert_type=p.cert_type,
    )


def purchase_job(
    snapshot: Snapshot,
    dates: DateRules,
    origin: Origin,
    institution: Institution,
    now: dt.datetime,
    p: PurchaseAsk,
    encode: Encode,
    *,
    final: bool = True,
) -> Job:
    """2101/2102 as one pure build over the person's state: the visit, its lines, the
    settlement and everything it changes, staged. Its dates are judged first, as the request
    is taken."""
    check_dates(dates, institution, p, now)
    # Judged here too, before any person is read: the total needs only the lines, and a sale
    # taken as a claim while the ledger is away must be refused as the sale would be.
    settlements.check_total(p.declared.medfee_sumamt, sum(ln.det_item_fee_sumamt for ln in p.lines))

    def build(held: Held, mdtrt_serial: int, setl_serial: int) -> Built:
        if held.person is None:
            raise persons.unknown(p.psn_no)
        persons.require_certificate(held.person, p.cert)
        mdtrt_id = encounters.ledger_id(institution.admdvs, now, mdtrt_serial) if final else ""
        ctx = context(origin, institution, p, held.person, mdtrt_id)
        lines = [msgspec.structs.replace(ln, mdtrt_id=mdtrt_id) for ln in p.lines]
        state = PersonState(person=held.person, balance_fen=held.balance, year=held.year)
        s = settle(snapshot, ctx.visit, state, lines, use_account=True)
        settlements.check_declared(s, p.declared)
        writes = Writes()
        if not final:
            rec = settlements.record_of(s, ctx, held.person, setl_id=None, setl_time=None)
            return Built(encode(rec, s, ctx, p, False), writes, held.balance, held.year)
        writes.add(encounters.INSERT, *encounters.row(ctx.encounter, origin.msgid, p.stored))
        setl_id = encounters.ledger_id(institution.admdvs, now, setl_serial)
        writes.extend(fees.INSERT, fees.rows(lines, origin.msgid, setl_id))
        rec = settlements.stage(
            writes,
            snapshot,
            ctx,
            lines,
            s,
            state,
            now,
            setl_id=setl_id,
            replaces=None,  # a fresh visit has no refunded settlement to remake
            lines_stored_settled=True,
        )
        return Built.settled(s, held, encode(rec, s, ctx, p, True), writes)

    return Job(psn_no=p.psn_no, year=p.begntime.year, build=build)
