"""5203 结算信息查询 and 5204 费用明细查询: an institution reads back one of its own settlements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
import msgspec

from gateway.core.catalog import Snapshot
from gateway.core.settle import split_lines
from gateway.ledger import db, deferred, encounters, fees, settlements
from gateway.ledger.settlements import Record as Record
from gateway.ledger.settlements import SettledLine as SettledLine
from gateway.protocol.errors import BadRequest, NotFound
from gateway.services import cancellation, fee_uploads

ELSEWHERE_WAIT = 2.0  # seconds for a connection to another ledger database
T = TypeVar("T")


async def here_or_elsewhere(
    conn: asyncpg.Connection,
    elsewhere: Sequence[asyncpg.Pool],
    read: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """What `read` finds in the caller's database or, found nothing there, in the first of
    `elsewhere` (the ledger databases of a ledger split by region) where it finds something."""
    found = await read(conn)
    for pool in elsewhere:
        if found:
            break
        async with db.elsewhere(pool, ELSEWHERE_WAIT) as other:
            found = await read(other)
    return found


class SettlementQuery(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 5203: by setl_id or mdtrt_id, psn_no narrowing, or by psn_no alone (the person's
    latest settlement here); "" where not sent."""

    setl_id: str
    mdtrt_id: str
    psn_no: str


async def settlement_info(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    a: SettlementQuery,
    elsewhere: Sequence[asyncpg.Pool] = (),
) -> Record:
    """The institution's settlement the query names (cancelled ones included). Not in the
    caller's database, it is looked for in `elsewhere`: the ledger databases of a ledger split by
    region, for a query that named neither the insured region nor the person."""
    if not (a.setl_id or a.mdtrt_id or a.psn_no):
        raise BadRequest("结算ID setl_id、就诊ID mdtrt_id与人员编号psn_no至少填写一项")

    async def find(db_conn: asyncpg.Connection) -> list[Record]:
        return await settlements.find(
            db_conn,
            fixmedins_code,
            setl_id=a.setl_id,
            mdtrt_id=a.mdtrt_id,
            psn_no=a.psn_no,
            limit=1,
        )

    found = await here_or_elsewhere(conn, elsewhere, find)
    if found:
        return found[0]
    if not (a.setl_id or a.mdtrt_id):
        # By the person alone (protocol §6.2: a till whose sale timed out knows the person and
        # its msgid, to match `medins_setl_id`, not the ids its answer would have carried;
        # found from outside: refused). Their latest settlement here, in force first.
        raise NotFound("未查询到本机构该人员的结算信息")
    # Not a settlement: a claim the emergency plan deferred (主动报) under the number the
    # counter was given, or on this visit? Answered "not found", the counter would take an
    # acknowledged sale for one that never happened (found from outside).
    claim = await here_or_elsewhere(
        conn,
        elsewhere,
        lambda c: deferred.claim_named(c, fixmedins_code, a.setl_id, a.mdtrt_id),
    )
    if claim is None and a.setl_id and a.mdtrt_id:
        # The settlement replay made, with the 就诊ID the claim's answer gave (a pharmacy
        # claim's own number; found from outside: 5204 of that pair was "not corresponding").
        by_visit = await here_or_elsewhere(
            conn,
            elsewhere,
            lambda c: deferred.claim_named(c, fixmedins_code, "", a.mdtrt_id),
        )
        if by_visit is not None and by_visit["setl_id"] == a.setl_id:
            claim = by_visit
    if claim is None:
        if (a.mdtrt_id or a.psn_no) and a.setl_id:
            alone: list[Record] = await here_or_elsewhere(
                conn,
                elsewhere,
                lambda c: settlements.find(c, fixmedins_code, setl_id=a.setl_id, limit=1),
            )
            if alone:
                # Found from outside: a 结算ID with another visit's 就诊ID was "not found",
                # which reads as "no such settlement" when only the pair is wrong.
                raise NotFound(f"结算ID{a.setl_id}与就诊ID、人员编号不对应，请核对后查询")
        raise NotFound("未查询到本机构的结算信息")
    if claim["status"] == "settled" and claim["setl_id"]:
        replayed = SettlementQuery(setl_id=claim["setl_id"], mdtrt_id="", psn_no=a.psn_no)
        return await settlement_info(conn, fixmedins_code, replayed, elsewhere)
    raise NotFound(
        deferred.unsettled_words(claim["status"], claim["claim_id"], claim["fail_reason"])
    )


class VisitLine(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A line of a visit's fee detail: the settlement in force that holds it ("" for a line
    not settled yet, split as its upload was answered)."""

    setl_id: str
    line: settlements.SettledLine


async def visit_fee_detail(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    fixmedins_code: str,
    mdtrt_id: str,
    psn_no: str,
) -> tuple[encounters.Encounter, list[VisitLine]]:
    """5204 by 就诊ID alone: every line of the institution's visit, those of its settlements in
    force (each split as settled) and those not settled (split as a settlement of them would
    split them now, by the catalog in use: as their upload was answered unless a mapping changed
    since; a pharmacy's sale has none such). Found from outside: a HIS whose 5204 names the visit, the
    settlement optional (binzhe `In5204`: mdtrt_id required, setl_id not), was refused."""
    enc = await encounters.get(conn, mdtrt_id, fixmedins_code, psn_no=psn_no or None)
    out: list[VisitLine] = []
    for rec in reversed(await settlements.find(conn, fixmedins_code, mdtrt_id=enc.mdtrt_id)):
        if rec.status != "settled" or not rec.setl_id:
            continue
        setl_id = rec.setl_id
        out += [
            VisitLine(setl_id=setl_id, line=ln)
            for ln in await settlements.settled_lines(conn, setl_id)
        ]
    # A pharmacy's sale has no lines of its own outside its settlement: those of a cancelled
    # sale can never be settled, and are not the visit's fees to settle (found from outside:
    # listed as waiting, a phantom bill of the refunded amount).
    waiting = [] if enc.kind == "pharmacy" else await fees.unsettled(conn, enc.mdtrt_id)
    if waiting:
        visit = fee_uploads.upload_visit(fixmedins_code, enc.mdtrt_id, enc)
        for ln, split in zip(waiting, split_lines(snapshot, visit, waiting), strict=True):
            line = settlements.SettledLine(
                split=split,
                fee_ocur_time=ln.fee_ocur_time,
                chrg_bchno=ln.chrg_bchno,
                hosp_appr_flag=ln.hosp_appr_flag,
            )
            out.append(VisitLine(setl_id="", line=line))
    return enc, out


async def replayed_from(
    conn: asyncpg.Connection, setl_id: str | None, elsewhere: Sequence[asyncpg.Pool] = ()
) -> cancellation.Replayed | None:
    """The deferred claim the settlement `setl_id` was made from by replay, or None."""
    if not setl_id:
        return None
    return await here_or_elsewhere(
        conn, await _holding(conn, setl_id, elsewhere), lambda c: cancellation.replayed(c, setl_id)
    )


async def _holding(
    conn: asyncpg.Connection, setl_id: str, elsewhere: Sequence[asyncpg.Pool]
) -> Sequence[asyncpg.Pool]:
    """Where else to look for what goes with a settlement found already: nowhere when the
    caller's database holds it (its claim and lines are beside it). Found from outside: every
    5203 looked for a claim in every other database, and with one region's down none was
    answered, of any region."""
    if not elsewhere or await settlements.exists(conn, setl_id):
        return ()
    return elsewhere


async def fee_detail(
    conn: asyncpg.Connection,
    fixmedins_code: str,
    a: SettlementQuery,
    elsewhere: Sequence[asyncpg.Pool] = (),
) -> tuple[Record, list[settlements.SettledLine]]:
    """5204 费用明细查询: the settlement the query names, as 5203 finds it (a deferred claim's
    number included, once replayed), and its lines as it settled them. Found from outside: a
    HIS that reads every settlement's lines back after 2207/2304 (nhis-web) was refused 5204
    and cancelled each settlement it had just made."""
    if not a.setl_id:
        raise BadRequest("结算ID setl_id与就诊ID mdtrt_id至少填写一项")
    rec = await settlement_info(conn, fixmedins_code, a, elsewhere)
    assert rec.setl_id is not None  # read back from the ledger
    setl_id = rec.setl_id
    lines = await here_or_elsewhere(
        conn,
        await _holding(conn, setl_id, elsewhere),
        lambda c: settlements.settled_lines(c, setl_id),
    )
    return rec, lines
