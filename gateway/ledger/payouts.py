"""Payouts in the ledger: payout accounts, what is owed, batches, approvals, the bank files.

Lock order of the payout paths: the batch row, then its owed lines (owed_id order). Batch
creation takes owed lines alone, FOR UPDATE SKIP LOCKED: two creations at once take disjoint
lines, and the unique index payout_items_once refuses a line in two open batches whatever runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import msgspec

from gateway.protocol.errors import NotFound


class Account(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A person's payout account."""

    psn_no: str
    bank_code: str
    bank_name: str
    account_no: str
    holder: str


class Taken(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """An owed line taken into a batch, with the account it will be paid to."""

    owed_id: int
    psn_no: str
    amount_fen: int
    bank_code: str
    account_no: str
    holder: str


class Batch(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    batch_no: str
    status: str
    line_count: int
    total_fen: int
    created_by: str
    created_at: dt.datetime


class Approval(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    level: int
    operator: str
    decision: str
    reason: str
    at: dt.datetime


class Item(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    seq: int
    owed_id: int
    psn_no: str
    amount_fen: int
    bank_code: str
    account_no: str
    holder: str
    status: str
    bank_reason: str


# ------------------------------------------------------------------------------------ accounts


async def account(conn: asyncpg.Connection, psn_no: str, *, lock: bool = False) -> Account | None:
    """Reads the person's payout account, if any."""
    r = await conn.fetchrow(
        "SELECT psn_no, bank_code, bank_name, account_no, holder FROM payout_accounts"
        " WHERE psn_no = $1" + (" FOR UPDATE" if lock else ""),
        psn_no,
    )
    return None if r is None else Account(**{f: r[f] for f in Account.__struct_fields__})


async def put_account(conn: asyncpg.Connection, a: Account, operator: str) -> None:
    """Writes the person's payout account (new or changed)."""
    await conn.execute(
        "INSERT INTO payout_accounts (psn_no, bank_code, bank_name, account_no, holder,"
        " updated_by) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (psn_no) DO UPDATE SET"
        " bank_code = $2, bank_name = $3, account_no = $4, holder = $5, updated_by = $6,"
        " updated_at = now()",
        a.psn_no,
        a.bank_code,
        a.bank_name,
        a.account_no,
        a.holder,
        operator,
    )


async def institution_account(
    conn: asyncpg.Connection, fixmedins_code: str, *, lock: bool = False
) -> Account | None:
    """Reads the institution's account for its clearing amounts (psn_no: the institution's
    code, the payee), if any."""
    r = await conn.fetchrow(
        "SELECT fixmedins_code AS psn_no, bank_code, bank_name, account_no, holder"
        " FROM institution_accounts WHERE fixmedins_code = $1" + (" FOR UPDATE" if lock else ""),
        fixmedins_code,
    )
    return None if r is None else Account(**{f: r[f] for f in Account.__struct_fields__})


async def put_institution_account(conn: asyncpg.Connection, a: Account, operator: str) -> None:
    """Writes the institution's account (new or changed); a.psn_no is its code."""
    await conn.execute(
        "INSERT INTO institution_accounts (fixmedins_code, bank_code, bank_name, account_no,"
        " holder, updated_by) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (fixmedins_code) DO UPDATE"
        " SET bank_code = $2, bank_name = $3, account_no = $4, holder = $5, updated_by = $6,"
        " updated_at = now()",
        a.psn_no,
        a.bank_code,
        a.bank_name,
        a.account_no,
        a.holder,
        operator,
    )


async def institution_known(conn: asyncpg.Connection, fixmedins_code: str) -> bool:
    """Whether the reference data holds the institution."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM institutions WHERE fixmedins_code = $1)", fixmedins_code
        )
    )


async def person_known(conn: asyncpg.Connection, psn_no: str) -> bool:
    """Whether the reference data holds the person."""
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM persons WHERE psn_no = $1)", psn_no)
    )


# ---------------------------------------------------------------------------------- owed lines


async def add_owed(
    conn: asyncpg.Connection, source: str, source_ref: str, psn_no: str, amount_fen: int
) -> bool:
    """Writes what is owed for a source, once; False when it was recorded already."""
    got = await conn.fetchval(
        "INSERT INTO owed_lines (source, source_ref, psn_no, amount_fen) VALUES ($1,$2,$3,$4)"
        " ON CONFLICT (source, source_ref) DO NOTHING RETURNING true",
        source,
        source_ref,
        psn_no,
        amount_fen,
    )
    return bool(got)


async def copy_owed(conn: asyncpg.Connection, rows: Iterable[tuple[str, str, str, int]]) -> None:
    """Writes many owed lines at once, (source, source_ref, psn_no, amount_fen) each, by COPY:
    for loading and benchmarks (a source already recorded makes the whole COPY fail)."""
    await conn.copy_records_to_table(
        "owed_lines", records=rows, columns=("source", "source_ref", "psn_no", "amount_fen")
    )


async def hold_for_cancel(
    conn: asyncpg.Connection, setl_id: str, *, resettling: bool
) -> str | None:
    """Why a settlement whose reimbursement the agency pays may not be cancelled (2208/2305, a
    reversal, a bulk correction), or None. A manual claim's settlement is the agency's own. A
    replayed deferred claim's (主动报) may not be once its reimbursement is in a batch, paid, or
    was ever sent to the bank, nor be corrected at all (the claim's reimbursement would no
    longer be its settlement's); cancelled while merely owed, the owed line is withdrawn here
    (it comes back with the settlement, should the cancellation be reversed). A batch rejected
    before its export sent nothing to the bank: its released items do not hold the line.

    Called with the settlement's row locked FOR UPDATE (gateway.ledger.settlements.cancel):
    `gather_deferred` locks the same row FOR SHARE before it writes a line, so a gather and a
    cancellation of one settlement run one after the other, never across each other."""
    claim_no = await conn.fetchval("SELECT claim_no FROM manual_claims WHERE setl_id = $1", setl_id)
    if claim_no is not None:
        return (
            f"结算ID{setl_id}是零星报销{claim_no}的结算（报销款由经办机构支付给参保人），"
            "不能撤销或重结算"
        )
    claim = await conn.fetchrow(
        "SELECT d.claim_id, o.owed_id, o.status,"
        " (SELECT i.batch_no FROM payout_items i WHERE i.owed_id = o.owed_id"
        "   AND i.status <> 'released'"
        "   ORDER BY (i.status IN ('pending', 'paid')) DESC, i.batch_no DESC LIMIT 1) AS batch_no"
        " FROM deferred d LEFT JOIN owed_lines o"
        "  ON o.source = 'deferred' AND o.source_ref = d.claim_id"
        " WHERE d.kind = 'claim' AND d.setl_id = $1 AND d.reimbursement_fen > 0"
        " FOR UPDATE OF d",
        setl_id,
    )
    if claim is None:
        return None
    what = f"结算ID{setl_id}（暂存结算{claim['claim_id']}补结算）"
    if claim["status"] == "paid":
        return f"{what}的报销款已由支付批次{claim['batch_no']}支付给参保人，不能撤销或重结算"
    if claim["status"] == "batched":
        sent = "SELECT status = 'exported' FROM payout_batches WHERE batch_no = $1"
        if await conn.fetchval(sent, claim["batch_no"]):
            # Past its export no approver can return the batch (found from outside: the words
            # sent the counter to one, who was refused): what is left is the bank's answer.
            return (
                f"{what}的报销款已随支付批次{claim['batch_no']}报盘至银行，不能撤销或重结算；"
                "请待银行回盘后联系医保经办机构核实该笔报销款的支付结果后处理"
            )
        return (
            f"{what}的报销款已纳入支付批次{claim['batch_no']}，不能撤销或重结算；"
            "如确需撤销，请先由审批人退回该支付批次"
        )
    if claim["batch_no"] is not None:
        # Who can act, not only who cannot (found from outside): the money may have left.
        return (
            f"{what}的报销款曾报盘至银行（支付批次{claim['batch_no']}），不能在窗口撤销或重结算；"
            "请联系医保经办机构核实该笔报销款的支付结果后处理"
        )
    if resettling:
        return f"{what}的报销款由经办机构支付给参保人，不能批量纠错重结算"
    if claim["owed_id"] is not None:
        # A batch being made may take the line meanwhile: then it is no longer owed here.
        gone = await conn.fetchval(
            "UPDATE owed_lines SET status = 'withdrawn' WHERE owed_id = $1"
            " AND status IN ('owed', 'withdrawn') RETURNING true",
            claim["owed_id"],
        )
        if not gone:
            return f"{what}的报销款正被纳入支付批次，不能撤销或重结算"
    return None


class Gathered(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What recording a month's clearing did: owed lines written, and per institution what was
    kept back against earlier recoveries (`netted`) and what it owes back now (`owed_back`:
    every recovery outstanding once the month is recorded)."""

    recorded: int
    netted: dict[str, int]
    owed_back: dict[str, int]


async def gather_clearing(
    conn: asyncpg.Connection, month: str, amounts: Sequence[tuple[str, int]]
) -> Gathered:
    """Records each institution's clearing total of the month (fixmedins_code, fen), once per
    institution and month: a negative total as a recovery owed back; a positive one as owed,
    net of the recoveries outstanding, oldest first (each kept back recorded against its
    recovery). Run in the caller's transaction; institutions locked one by one in code order,
    so two gatherings never net one recovery twice."""
    recorded = 0
    netted: dict[str, int] = {}
    for code, fen in sorted(amounts):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('clearing:' || $1))", code)
        done = await conn.fetchval(
            "SELECT 1 FROM clearing_gathered WHERE fixmedins_code = $1 AND month = $2", code, month
        )
        if done:
            continue
        kept = 0
        if fen < 0:
            await conn.execute(
                "INSERT INTO clearing_recoveries (fixmedins_code, month, amount_fen)"
                " VALUES ($1, $2, $3)",
                code,
                month,
                -fen,
            )
        elif fen > 0:
            for r in await conn.fetch(
                "SELECT month, amount_fen - recovered_fen AS left FROM clearing_recoveries"
                " WHERE fixmedins_code = $1 AND recovered_fen < amount_fen ORDER BY month",
                code,
            ):
                take = min(int(r["left"]), fen - kept)
                if take <= 0:
                    break
                await conn.execute(
                    "UPDATE clearing_recoveries SET recovered_fen = recovered_fen + $3"
                    " WHERE fixmedins_code = $1 AND month = $2",
                    code,
                    r["month"],
                    take,
                )
                kept += take
        owed = max(fen, 0) - kept
        if owed > 0:
            await conn.execute(
                "INSERT INTO owed_lines (source, source_ref, psn_no, amount_fen)"
                " VALUES ('clearing', $1 || ':' || $2, $1, $3)",
                code,
                month,
                owed,
            )
            recorded += 1
        if kept:
            netted[code] = kept
        await conn.execute(
            "INSERT INTO clearing_gathered"
            " (fixmedins_code, month, declared_fen, netted_fen, owed_fen)"
            " VALUES ($1, $2, $3, $4, $5)",
            code,
            month,
            fen,
            kept,
            owed,
        )
    return Gathered(recorded=recorded, netted=netted, owed_back=await recoveries_left(conn))


async def recoveries_left(conn: asyncpg.Connection) -> dict[str, int]:
    """What each institution still owes back (fen), of every month's recovery."""
    rows = await conn.fetch(
        "SELECT fixmedins_code, sum(amount_fen - recovered_fen) AS left FROM clearing_recoveries"
        " WHERE recovered_fen < amount_fen GROUP BY fixmedins_code ORDER BY fixmedins_code"
    )
    return {r["fixmedins_code"]: int(r["left"]) for r in rows}


async def gather_deferred(conn: asyncpg.Connection) -> int:
    """Writes an owed line for every replayed deferred claim (主动报) with a reimbursement not
    recorded yet (or withdrawn with a cancellation since reversed), its settlement in force;
    returns how many.

    The settlements are locked FOR SHARE: a cancellation holding one (FOR UPDATE) is waited for,
    and its row read again once it commits (cancelled: left out). Reading the settlement's
    state from the statement's snapshot alone let a gather racing a cancellation owe, and pay,
    the reimbursement of a settlement cancelled meanwhile (found from outside).

    A line owed again (a 2601 undid the cancellation that withdrew it) keeps when it was first
    owed: the patient has waited since the replay, and the ageing alert counts from then (found
    from outside: owed again "now", the alert restarted its count at the reversal)."""
    status = await conn.execute(
        "WITH live AS (SELECT d.claim_id, d.psn_no, d.reimbursement_fen"
        "  FROM deferred d JOIN settlements s ON s.setl_id = d.setl_id"
        "  WHERE d.kind = 'claim' AND d.status = 'settled' AND d.reimbursement_fen > 0"
        "  AND d.claim_id IS NOT NULL AND s.status = 'settled'"
        "  AND NOT EXISTS (SELECT 1 FROM owed_lines o WHERE o.source = 'deferred'"
        "   AND o.source_ref = d.claim_id AND o.status <> 'withdrawn')"
        "  FOR SHARE OF s)"
        " INSERT INTO owed_lines (source, source_ref, psn_no, amount_fen)"
        " SELECT 'deferred', claim_id, psn_no, reimbursement_fen FROM live"
        " ON CONFLICT (source, source_ref) DO UPDATE SET status = 'owed'"
        " WHERE owed_lines.status = 'withdrawn'"
    )
    return int(status.rsplit(" ", 1)[-1])


# A payee whose account as it stands the bank already refused, for this line or any other (o:
# the owed line, a: the account; found from outside: a new line was batched to an account the
# bank had reported closed): their lines wait for the account to be corrected.
_REFUSED_BEFORE = (
    "EXISTS (SELECT 1 FROM payout_items f WHERE f.psn_no = o.psn_no AND f.status = 'failed'"
    " AND f.bank_code = a.bank_code AND f.account_no = a.account_no)"
)


async def make_batch(
    conn: asyncpg.Connection,
    batch_no: str,
    limit: int | None,
    source: str | None,
    operator: str,
) -> tuple[int, int]:
    """Writes a batch of the owed lines whose payee has an account, oldest first, in one
    statement (of one source, or, with none, of the patients' sources: an institution's clearing
    amounts go in batches of their own): the lines are locked FOR UPDATE SKIP LOCKED (a batch being made elsewhere keeps
    its own), numbered into items with the account as it stands, and marked batched. Returns
    (count, total); (0, 0) and nothing written when no line is free. The lines never travel
    through the gateway: a batch of 100,000 costs the event loop nothing."""
    r = await conn.fetchrow(
        "WITH taken AS MATERIALIZED ("
        "  SELECT o.owed_id, o.psn_no, o.amount_fen, a.bank_code, a.account_no, a.holder"
        "  FROM owed_lines o JOIN (SELECT psn_no AS payee, false AS institution, bank_code,"
        "   account_no, holder FROM payout_accounts UNION ALL SELECT fixmedins_code, true,"
        "   bank_code, account_no, holder FROM institution_accounts) a"
        "  ON a.payee = o.psn_no AND a.institution = (o.source = 'clearing')"
        "  WHERE o.status = 'owed'"
        "  AND CASE WHEN $2::text IS NULL THEN o.source <> 'clearing' ELSE o.source = $2 END"
        "  AND NOT " + _REFUSED_BEFORE + ""
        "  ORDER BY o.owed_id LIMIT $1 FOR UPDATE OF o SKIP LOCKED),"
        " made AS (INSERT INTO payout_batches (batch_no, status, line_count, total_fen, created_by)"
        "  SELECT $3, 'pending', count(*), sum(amount_fen), $4 FROM taken HAVING count(*) > 0"
        "  RETURNING line_count, total_fen),"
        " items AS (INSERT INTO payout_items"
        "  (batch_no, seq, owed_id, psn_no, amount_fen, bank_code, account_no, holder)"
        "  SELECT $3, row_number() OVER (ORDER BY owed_id), owed_id, psn_no, amount_fen,"
        "  bank_code, account_no, holder FROM taken),"
        " marked AS (UPDATE owed_lines SET status = 'batched'"
        "  WHERE owed_id IN (SELECT owed_id FROM taken))"
        " SELECT line_count, total_fen FROM made",
        limit,
        source,
        batch_no,
        operator,
    )
    return (0, 0) if r is None else (int(r["line_count"]), int(r["total_fen"]))


async def refused_since(conn: asyncpg.Connection, batch_no: str) -> list[str]:
    """The payees of a batch whose account in it the bank has refused for another line since
    the batch was made (a return file of another batch)."""
    rows = await conn.fetch(
        "SELECT DISTINCT i.psn_no FROM payout_items i WHERE i.batch_no = $1 AND EXISTS"
        " (SELECT 1 FROM payout_items f WHERE f.batch_no <> $1 AND f.status = 'failed'"
        " AND f.psn_no = i.psn_no AND f.bank_code = i.bank_code"
        " AND f.account_no = i.account_no) ORDER BY i.psn_no",
        batch_no,
    )
    return [r["psn_no"] for r in rows]


async def refused_by_bank(
    conn: asyncpg.Connection, payee: str, bank_code: str, account_no: str
) -> str | None:
    """The bank's reason, where it returned a payment to this payee's account failed; else
    None. Such an account is never paid again (`_REFUSED_BEFORE`)."""
    reason: str | None = await conn.fetchval(
        "SELECT bank_reason FROM payout_items WHERE psn_no = $1 AND status = 'failed'"
        " AND bank_code = $2 AND account_no = $3 ORDER BY batch_no DESC LIMIT 1",
        payee,
        bank_code,
        account_no,
    )
    return reason


async def owed_without_account(conn: asyncpg.Connection, source: str | None = None) -> list[str]:
    """Reads the payees owed something who have no account yet, or whose account as it stands
    the bank refused for a line they are owed (to be corrected): persons, or institutions for
    the clearing amounts."""
    if source == "clearing":
        accounts = "SELECT fixmedins_code AS payee, bank_code, account_no FROM institution_accounts"
        which = "o.source = 'clearing'"
    else:
        accounts = "SELECT psn_no AS payee, bank_code, account_no FROM payout_accounts"
        which = "o.source <> 'clearing'"
    sql = (
        f"SELECT DISTINCT o.psn_no FROM owed_lines o LEFT JOIN ({accounts}) a"
        f" ON a.payee = o.psn_no WHERE o.status = 'owed' AND {which}"
        f" AND (a.payee IS NULL OR {_REFUSED_BEFORE}) ORDER BY o.psn_no"
    )
    return [r["psn_no"] for r in await conn.fetch(sql)]


async def owed_rows(conn: asyncpg.Connection, status: str | None = None) -> list[dict[str, Any]]:
    """Reads the owed lines, oldest first."""
    rows = await conn.fetch(
        "SELECT owed_id, source, source_ref, psn_no, amount_fen, status, created_at"
        " FROM owed_lines WHERE ($1::text IS NULL OR status = $1) ORDER BY owed_id",
        status,
    )
    return [dict(r) for r in rows]


async def totals(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Reads (count, fen) of owed lines per state, and of failed payment attempts. Every
    state is named, with none in it as (0, 0): a gauge is set only for what is named, so a
    state left out kept its last figure (found from outside: a withdrawn line owed again was
    counted both withdrawn and owed)."""
    out = {state: (0, 0) for state in ("owed", "batched", "paid", "withdrawn", "failed")}
    for r in await conn.fetch(
        "SELECT status, count(*) AS n, coalesce(sum(amount_fen), 0) AS fen"
        " FROM owed_lines GROUP BY status"
    ):
        out[r["status"]] = (int(r["n"]), int(r["fen"]))
    r = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(amount_fen), 0) AS fen FROM payout_items"
        " WHERE status = 'failed'"
    )
    out["failed"] = (int(r["n"]), int(r["fen"]))
    return out


async def oldest_owed(conn: asyncpg.Connection) -> dt.datetime | None:
    """Reads when the oldest patient's line still owed (not paid) was recorded (the ageing
    alert is about claims; institutions' clearing amounts have their own calendar)."""
    at: dt.datetime | None = await conn.fetchval(
        "SELECT min(created_at) FROM owed_lines WHERE status IN ('owed', 'batched')"
        " AND source <> 'clearing'"
    )
    return at


# ------------------------------------------------------------------------------------- batches


async def new_batch_no(conn: asyncpg.Connection, on: dt.datetime) -> str:
    """A fresh 支付批次号: ZF + yyyyMMdd + a 6-digit serial."""
    serial = int(await conn.fetchval("SELECT nextval('payout_batch_seq')"))
    return f"ZF{on:%Y%m%d}{serial:06d}"


async def insert_batch(
    conn: asyncpg.Connection, batch_no: str, taken: Sequence[Taken], operator: str
) -> None:
    """Writes a batch and its items (seq from 1 in the order taken)."""
    await conn.execute(
        "INSERT INTO payout_batches (batch_no, status, line_count, total_fen, created_by)"
        " VALUES ($1, 'pending', $2, $3, $4)",
        batch_no,
        len(taken),
        sum(t.amount_fen for t in taken),
        operator,
    )
    await conn.copy_records_to_table(
        "payout_items",
        records=[
            (batch_no, n, t.owed_id, t.psn_no, t.amount_fen, t.bank_code, t.account_no, t.holder)
            for n, t in enumerate(taken, 1)
        ],
        columns=(
            "batch_no",
            "seq",
            "owed_id",
            "psn_no",
            "amount_fen",
            "bank_code",
            "account_no",
            "holder",
        ),
    )


def _batch_of(r: Any) -> Batch:
    return Batch(**{f: r[f] for f in Batch.__struct_fields__})


async def batch(conn: asyncpg.Connection, batch_no: str, *, lock: bool = False) -> Batch:
    """Reads a batch (locked for the step that changes it); unknown: NotFound."""
    r = await conn.fetchrow(
        "SELECT batch_no, status, line_count, total_fen, created_by, created_at"
        " FROM payout_batches WHERE batch_no = $1" + (" FOR UPDATE" if lock else ""),
        batch_no,
    )
    if r is None:
        raise NotFound(f"支付批次号{batch_no}不存在")
    return _batch_of(r)


async def batch_exists(conn: asyncpg.Connection, batch_no: str) -> bool:
    """Whether this database holds the batch."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM payout_batches WHERE batch_no = $1)", batch_no
        )
    )


async def batches(conn: asyncpg.Connection) -> list[Batch]:
    """Reads every batch, newest first."""
    rows = await conn.fetch(
        "SELECT batch_no, status, line_count, total_fen, created_by, created_at"
        " FROM payout_batches ORDER BY batch_no DESC"
    )
    return [_batch_of(r) for r in rows]


async def set_batch_status(conn: asyncpg.Connection, batch_no: str, status: str) -> None:
    """Writes a batch's state (the caller holds its lock)."""
    await conn.execute(
        "UPDATE payout_batches SET status = $2 WHERE batch_no = $1", batch_no, status
    )


async def approvals(conn: asyncpg.Connection, batch_no: str) -> list[Approval]:
    """Reads a batch's approval steps by level."""
    rows = await conn.fetch(
        "SELECT level, operator, decision, reason, at FROM payout_approvals"
        " WHERE batch_no = $1 ORDER BY level",
        batch_no,
    )
    return [Approval(**{f: r[f] for f in Approval.__struct_fields__}) for r in rows]


async def add_approval(
    conn: asyncpg.Connection, batch_no: str, level: int, operator: str, decision: str, reason: str
) -> None:
    """Writes one approval step (the caller holds the batch's lock)."""
    await conn.execute(
        "INSERT INTO payout_approvals (batch_no, level, operator, decision, reason)"
        " VALUES ($1,$2,$3,$4,$5)",
        batch_no,
        level,
        operator,
        decision,
        reason,
    )


async def set_approval_decision(
    conn: asyncpg.Connection, batch_no: str, level: int, decision: str, reason: str
) -> None:
    """Changes one level's decision (an approval withdrawn; the caller holds the batch's lock
    and writes the audit row that keeps what it was)."""
    await conn.execute(
        "UPDATE payout_approvals SET decision = $3, reason = $4, at = now()"
        " WHERE batch_no = $1 AND level = $2",
        batch_no,
        level,
        decision,
        reason,
    )


async def items(conn: asyncpg.Connection, batch_no: str) -> list[Item]:
    """Reads a batch's items in seq order."""
    rows = await conn.fetch(
        "SELECT seq, owed_id, psn_no, amount_fen, bank_code, account_no, holder, status,"
        " bank_reason FROM payout_items WHERE batch_no = $1 ORDER BY seq",
        batch_no,
    )
    return items_of(rows)


ITEM_CHUNK = 1000  # rows per round trip: the driver decodes one chunk at a time on the loop


async def items_chunked(conn: asyncpg.Connection, batch_no: str) -> list[Item]:
    """Reads a batch's items in seq order a chunk at a time (the caller holds a transaction):
    one fetch of a 100,000-line batch held the event loop ~240 ms while the driver decoded it.
    Each chunk's records become Items (not tracked by the garbage collector) at once, so the
    collector never walks 100,000 records either."""
    cursor = await conn.cursor(
        "SELECT seq, owed_id, psn_no, amount_fen, bank_code, account_no, holder, status,"
        " bank_reason FROM payout_items WHERE batch_no = $1 ORDER BY seq",
        batch_no,
    )
    out: list[Item] = []
    while chunk := await cursor.fetch(ITEM_CHUNK):
        out += items_of(chunk)
    return out


def items_of(records: Sequence[Any]) -> list[Item]:
    """Items from the driver's records."""
    return [
        Item(
            seq=r[0],
            owed_id=r[1],
            psn_no=r[2],
            amount_fen=r[3],
            bank_code=r[4],
            account_no=r[5],
            holder=r[6],
            status=r[7],
            bank_reason=r[8],
        )
        for r in records
    ]


async def release(conn: asyncpg.Connection, batch_no: str) -> None:
    """A rejected batch's lines go back to owed (the caller holds the batch's lock)."""
    await conn.execute(
        "UPDATE owed_lines SET status = 'owed' WHERE owed_id IN"
        " (SELECT owed_id FROM payout_items WHERE batch_no = $1 AND status = 'pending')",
        batch_no,
    )
    await conn.execute(
        "UPDATE payout_items SET status = 'released' WHERE batch_no = $1 AND status = 'pending'",
        batch_no,
    )


# -------------------------------------------------------------------------------- bank files


FILE_PIECE = 1 << 20


async def save_file(
    conn: asyncpg.Connection, batch_no: str, file_name: str, body: bytes, sha256: str, by: str
) -> None:
    """Writes the exported payment file of a batch (the caller holds a transaction). A large
    file is sent a megabyte at a time: the driver copies each parameter into its buffer on the
    event loop, ~10 ms for a 100,000-line file in one piece."""
    view = memoryview(body)
    await conn.execute(
        "INSERT INTO payout_files (batch_no, file_name, body, sha256, exported_by)"
        " VALUES ($1,$2,$3,$4,$5)",
        batch_no,
        file_name,
        bytes(view[:FILE_PIECE]),
        sha256,
        by,
    )
    for start in range(FILE_PIECE, len(body), FILE_PIECE):
        await conn.execute(
            "UPDATE payout_files SET body = body || $2 WHERE batch_no = $1",
            batch_no,
            bytes(view[start : start + FILE_PIECE]),
        )


async def file_of(conn: asyncpg.Connection, batch_no: str) -> tuple[str, bytes] | None:
    """Reads the payment file exported for a batch: (file name, bytes), a megabyte at a time
    (as it was written)."""
    r = await conn.fetchrow(
        "SELECT file_name, octet_length(body) AS size FROM payout_files WHERE batch_no = $1",
        batch_no,
    )
    if r is None:
        return None
    pieces = [
        await conn.fetchval(
            "SELECT substring(body FROM $2 FOR $3) FROM payout_files WHERE batch_no = $1",
            batch_no,
            start + 1,
            FILE_PIECE,
        )
        for start in range(0, int(r["size"]), FILE_PIECE)
    ]
    return str(r["file_name"]), b"".join(pieces)


async def return_totals(conn: asyncpg.Connection, batch_no: str) -> tuple[int, int, int, int]:
    """Reads what the batch's return file answered: (paid count, paid fen, failed count,
    failed fen)."""
    r = await conn.fetchrow(
        "SELECT paid_count, paid_fen, failed_count, failed_fen FROM payout_returns"
        " WHERE batch_no = $1",
        batch_no,
    )
    if r is None:
        raise NotFound(f"支付批次{batch_no}尚未导入回盘")
    return int(r[0]), int(r[1]), int(r[2]), int(r[3])


async def return_digest(conn: asyncpg.Connection, batch_no: str) -> str | None:
    """Reads the digest of the return file accepted for a batch, if one was."""
    got: str | None = await conn.fetchval(
        "SELECT sha256 FROM payout_returns WHERE batch_no = $1", batch_no
    )
    return got


async def apply_return(
    conn: asyncpg.Connection,
    batch_no: str,
    failed: dict[int, str],
    sha256: str,
    by: str,
) -> None:
    """Writes a return file's outcome: the failed items with the bank's reason and every other
    item of the batch paid (the caller checked that the file answers each item once and holds
    the batch's lock), their lines owed again or paid, and the file's record. Only the failed
    seqs travel: sending 100,000 paid ones held the event loop ~50 ms to encode."""
    await conn.execute(
        "UPDATE payout_items i SET status = 'failed', bank_reason = f.reason"
        " FROM unnest($2::int[], $3::text[]) AS f(seq, reason)"
        " WHERE i.batch_no = $1 AND i.seq = f.seq",
        batch_no,
        list(failed),
        list(failed.values()),
    )
    await conn.execute(
        "UPDATE payout_items SET status = 'paid' WHERE batch_no = $1 AND status = 'pending'",
        batch_no,
    )
    await conn.execute(
        "UPDATE owed_lines o SET status = CASE i.status WHEN 'paid' THEN 'paid' ELSE 'owed' END"
        " FROM payout_items i WHERE i.batch_no = $1 AND i.owed_id = o.owed_id",
        batch_no,
    )
    await conn.execute(
        "INSERT INTO payout_returns (batch_no, sha256, paid_count, paid_fen, failed_count,"
        " failed_fen, imported_by) SELECT $1, $2,"
        " count(*) FILTER (WHERE status = 'paid'),"
        " coalesce(sum(amount_fen) FILTER (WHERE status = 'paid'), 0),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " coalesce(sum(amount_fen) FILTER (WHERE status = 'failed'), 0), $3"
        " FROM payout_items WHERE batch_no = $1",
        batch_no,
        sha256,
        by,
    )
