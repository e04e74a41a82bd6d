"""The state a settlement is built from, read once for every path that settles.

A settlement is a Job (gateway.pipeline.grouped): whom and which visit to lock, and a pure build from
that state. The group commit reads the state of a whole batch here, the single path a batch of
one (`settle_alone`), a pre-settlement the same state without locks (`preview`), and replay and
bulk corrections go through `settle_alone` too: one read, one build, whatever the entry.

Locks are taken visits first (mdtrt_id order), then persons (psn_no order), the order every
path that takes more than one lock follows (gateway.ledger.settlements). What depends on other
settlements of the person (another stay in force this year) is read after the person's lock:
read before it, a settlement committing meanwhile would not be seen.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from adapters.national import deferral
from gateway.core.model import Accumulators, Person
from gateway.ledger import db, deferred, encounters, fees, manual_claims, persons, settlements
from gateway.ledger.encounters import Encounter
from gateway.ledger.writes import Writes
from gateway.pipeline.grouped import Built, Held, Job, VisitHeld
from gateway.protocol.errors import GatewayError


@dataclass(slots=True)
class Locked:
    """What a batch holds: its visits and persons locked, their accumulators, the ids drawn;
    each build sees the state the builds before it left (one person, one chain)."""

    visits: dict[str, VisitHeld]
    persons: dict[str, tuple[Person, int]]
    balances: dict[str, int]
    year_of: dict[int, int]  # id(job) -> the year its accumulators are of
    years: dict[tuple[str, int], Accumulators]  # of the jobs that settle
    serials: dict[int, tuple[int, int]]  # id(job) -> (就诊ID serial, 结算ID serial), if it draws

    @classmethod
    async def take(
        cls,
        conn: asyncpg.Connection,
        jobs: list[Job],
        drawn: dict[int, tuple[int, int]] | None = None,
    ) -> Locked:
        """`drawn`: the serials of the jobs that draw, by id(job), where the caller drew them
        already (the group commit, with its claim); otherwise drawn here."""
        visits = await _visits(
            conn,
            sorted({j.mdtrt_id for j in jobs if j.mdtrt_id}),
            settling={j.mdtrt_id for j in jobs if j.mdtrt_id and j.settles},
            batches={j.mdtrt_id for j in jobs if j.mdtrt_id and (j.settles or j.reads_batches)},
        )
        held = await persons.lock_many(conn, sorted({j.psn_no for j in jobs}))
        # Under the persons' locks, which the agency's 结算 of a manual claim takes too: read
        # before, a claim of the same bill settled while this waited for the person was not
        # seen, and the funds paid the bill twice (found from outside).
        await _note_reimbursed(conn, visits, {j.mdtrt_id for j in jobs if j.settles})
        await _note_claims(
            conn,
            visits,
            {j.mdtrt_id for j in jobs if j.mdtrt_id and j.reads_claims and not j.settles},
        )
        await _other_stays(conn, visits)
        year_of = {id(j): _year(j, visits) for j in jobs}
        keys = sorted({(j.psn_no, year_of[id(j)]) for j in jobs if j.settles})
        years = await persons.accumulators_many(conn, keys) if keys else {}
        if drawn is None:
            drawing = [j for j in jobs if j.draws]
            pairs = await settlements.draw_serials(conn, len(drawing)) if drawing else []
            drawn = {id(j): pair for j, pair in zip(drawing, pairs, strict=True)}
        return cls(
            visits=visits,
            persons=held,
            balances={psn: balance for psn, (_, balance) in held.items()},
            year_of=year_of,
            years=years,
            serials=drawn,
        )

    def build(self, job: Job) -> Built:
        """The job's build against the state so far; a success moves the state on."""
        found = self.persons.get(job.psn_no)
        key = (job.psn_no, self.year_of[id(job)])
        held = Held(
            found[0] if found else None,
            self.balances.get(job.psn_no, 0),
            self.years[key] if job.settles else Accumulators(),
            self.visits.get(job.mdtrt_id) if job.mdtrt_id else None,
        )
        built = job.build(held, *self.serials.get(id(job), (0, 0)))
        self.balances[job.psn_no] = built.balance
        if job.settles:
            self.years[key] = built.year
        return built


async def settle_alone(conn: asyncpg.Connection, job: Job) -> Built:
    """A job on the caller's own transaction (the single path, replay, corrections): a batch of
    one, the same reads and build, its writes flushed. The caller holds the transaction."""
    built = (await Locked.take(conn, [job])).build(job)
    await built.writes.flush(conn)
    return built


async def preview(conn: asyncpg.Connection, job: Job, *, note: bool = True) -> Built:
    """A job's build over the state as it is, nothing locked or drawn (a pre-settlement: the
    answer a settlement would give now), nothing written but what a pre-settlement's build
    stages (a visit's pre-settlement noted; `note=False`: not even that, a check only). A
    refusal is raised."""
    (got,) = await preview_many(conn, [job], note=note)
    if isinstance(got, GatewayError):
        raise got
    return got


async def preview_many(
    conn: asyncpg.Connection,
    jobs: list[Job],
    *,
    note_wait: float | None = None,
    note: bool = True,
    claims: bool = True,
) -> list[Built | GatewayError]:
    """Each job's build over the state as it is, read for all of them at once (the group read,
    gateway.pipeline.group_read; `preview` is a batch of one); a refusal is that job's own.

    `note_wait`: how long the notes may wait for a row lock before the whole call fails
    (LockNotAvailable). A batch mixes institutions, so one visit's row held by a long
    transaction must not hold everyone's pre-settlements: the group read gives up at once and
    each request takes the single path, where the waiting is that institution's own, within
    its share of the connections. None: wait as any statement waits.

    `claims=False`: the ledger was last seen holding no claim, so none is read (a round trip
    per batch, an eighth of the pre-settlements' rate when measured); a claim taken since is
    refused by the settlement, which reads them under its locks."""
    visits = await _visits(
        conn, sorted({j.mdtrt_id for j in jobs if j.mdtrt_id}), lock=False, claims=claims
    )
    year_of = [_year(job, visits) for job in jobs]
    found = await persons.read_with_year_many(
        conn, sorted({(job.psn_no, year) for job, year in zip(jobs, year_of, strict=True)})
    )
    await _other_stays(conn, visits)
    out: list[Built | GatewayError] = []
    noted = Writes()
    for job, year in zip(jobs, year_of, strict=True):
        # An unknown person: the build refuses them, after what it checks of the visit first.
        person, balance, acc = found.get((job.psn_no, year)) or (None, 0, Accumulators())
        visit = visits.get(job.mdtrt_id) if job.mdtrt_id else None
        try:
            built = job.build(Held(person, balance, acc, visit), 0, 0)
        except GatewayError as exc:
            out.append(exc)
            continue
        out.append(built)
        noted.merge(built.writes)
    # A preview's build stages only what a pre-settlement writes (a visit's pre-settlement
    # noted): one statement for the batch, committed on its own.
    if not note:
        return out  # a check only: the caller keeps the verdicts, writes nothing
    if note_wait is None:
        await noted.flush(conn)
    elif noted:
        async with conn.transaction():
            await db.wait_for_locks_at_most(conn, note_wait)
            await noted.flush(conn)
    return out


def _year(job: Job, visits: dict[str, VisitHeld]) -> int:
    if job.year is not None:
        return job.year
    visit = visits.get(job.mdtrt_id or "")
    # An unknown visit is refused by the build; any year serves for the read before it.
    return visit.encounter.begntime.year if visit else 0


async def _visits(
    conn: asyncpg.Connection,
    mdtrt_ids: list[str],
    *,
    lock: bool = True,
    settling: set[str] | None = None,
    batches: set[str] | None = None,
    claims: bool = True,
) -> dict[str, VisitHeld]:
    """The visits (locked in mdtrt_id order unless a preview) and what their settlements need:
    `settling` names the visits a job settles (None: all of them); the others (a preview's, a
    diagnosis's, an upload's) need only their unsettled lines, and `batches` (None: those
    settling) the visits whose settled charge batches are read too (an outpatient upload's)."""
    if not mdtrt_ids:
        return {}
    found = await encounters.lock_many(conn, mdtrt_ids, lock=lock)
    if not found:
        return {}
    ids = sorted(found)
    lines = await fees.unsettled_many(conn, ids)
    if lock:
        ids = [m for m in ids if settling is None or m in settling]
    if not lock:
        paid = await _reimbursed(conn, [found[m] for m in ids])
        stays_paid = await _stays_reimbursed(conn, [found[m] for m in ids])
        # A pre-settlement is refused as its settlement would be for lines a claim holds
        # (found from outside: a stay's 2303 priced the claim's lines, which its 2304 refuses).
        held = await deferred.pending_on_visits(conn, ids) if claims else []
        closings = await _closings(conn, found, ids)
        return {
            m: VisitHeld(
                encounter=enc,
                unsettled=lines.get(m, []),
                settled_batches=set(),
                refunded={},
                claimed=_held(held, m, enc.fixmedins_code),
                reimbursed=paid.get(m, []),
                stay_reimbursed=stays_paid.get(m, []),
                closing=closings.get(m),
            )
            for m, enc in found.items()
        }
    wanted = sorted(set(ids) | ((batches or set()) & found.keys()))
    settled = await fees.settled_batches(conn, wanted) if wanted else {}
    if not ids:
        return {
            m: VisitHeld(
                encounter=enc,
                unsettled=lines.get(m, []),
                settled_batches=settled.get(m, set()),
                refunded={},
            )
            for m, enc in found.items()
        }
    refunded = await settlements.refunded_predecessors(conn, ids)
    pending = await deferred.pending_on_visits(conn, ids)
    closings = await _closings(conn, found, ids)
    return {
        m: VisitHeld(
            encounter=enc,
            unsettled=lines.get(m, []),
            settled_batches=settled.get(m, set()),
            refunded=refunded.get(m, {}),
            claimed=_held(pending, m, enc.fixmedins_code),
            closing=closings.get(m),
        )
        for m, enc in found.items()
    }


async def _closings(
    conn: asyncpg.Connection, found: dict[str, Encounter], ids: list[str]
) -> dict[str, str]:
    """The closing settlement in force of each stay among `ids` (an outpatient batch reads
    nothing for it)."""
    stays = [m for m in ids if found[m].kind == "inpatient"]
    return await settlements.finals_of(conn, stays) if stays else {}


async def _note_claims(
    conn: asyncpg.Connection, visits: dict[str, VisitHeld], reading: set[str]
) -> None:
    """The deferred claims holding the lines of the visits a job reads them for (a settling
    visit has them already); one query, only for a batch that holds such a job."""
    ids = sorted(m for m in reading if m in visits)
    if not ids:
        return
    pending = await deferred.pending_on_visits(conn, ids)
    for m in ids:
        visits[m].claimed = _held(pending, m, visits[m].encounter.fixmedins_code)


async def _note_reimbursed(
    conn: asyncpg.Connection, visits: dict[str, VisitHeld], settling: set[str | None]
) -> None:
    """The manual claims reimbursing the bills of the visits a batch settles, on each visit."""
    settled = [v.encounter for m, v in visits.items() if m in settling]
    paid = await _reimbursed(conn, settled)
    for mdtrt_id, claims in paid.items():
        visits[mdtrt_id].reimbursed = claims
    for mdtrt_id, stays in (await _stays_reimbursed(conn, settled)).items():
        visits[mdtrt_id].stay_reimbursed = stays


async def _reimbursed(
    conn: asyncpg.Connection, visits: list[Encounter]
) -> dict[str, list[tuple[str, int]]]:
    """For each visit to settle (a pharmacy sale is no manual claim's), the manual claims that
    reimbursed a bill of its person at its institution on its day (found from outside: a bill
    the agency had reimbursed was settled again at the counter, the funds paying it twice)."""
    wanted = [e for e in visits if e.kind != "pharmacy"]
    found = await manual_claims.reimbursed_on(
        conn, [(e.psn_no, e.fixmedins_code, e.begntime.date()) for e in wanted]
    )
    return {
        e.mdtrt_id: paid
        for e in wanted
        if (paid := found.get((e.psn_no, e.fixmedins_code, e.begntime.date())))
    }


async def _stays_reimbursed(
    conn: asyncpg.Connection, visits: list[Encounter]
) -> dict[str, list[tuple[str, dt.datetime, dt.datetime]]]:
    """For each stay to settle, the agency's inpatient manual claims in force for a stay of its
    person at its institution overlapping it (found from outside: a bill of one more line than
    the claim's settled again, the funds paying the stay twice)."""
    stays = [e for e in visits if e.kind == "inpatient"]
    if not stays:
        return {}
    found = await manual_claims.stays_reimbursed(
        conn, [(e.psn_no, e.fixmedins_code, e.begntime, e.endtime) for e in stays]
    )
    return {
        e.mdtrt_id: claims
        for e in stays
        if (claims := found.get((e.psn_no, e.fixmedins_code, e.begntime)))
    }


def _held(
    claims: list[deferred.PendingClaim], mdtrt_id: str, fixmedins_code: str
) -> list[deferred.Held]:
    return deferral.held_lines([c for c in claims if c.mdtrt_id == mdtrt_id], fixmedins_code)


async def _other_stays(conn: asyncpg.Connection, visits: dict[str, VisitHeld]) -> None:
    """Mark the stays whose person has another stay settled in force in the same year."""
    stays = [m for m, v in visits.items() if v.encounter.kind == "inpatient"]
    if stays:
        for m in await settlements.stays_with_another_in_force(conn, stays):
            visits[m].other_inpatient_in_force = True
