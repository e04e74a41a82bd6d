"""The agency side's invariants, for the ledger checker (gateway.ledger.checker).

Every owed yuan is owed, in one open batch, or paid — once:
- an owed line marked owed (or withdrawn: its settlement cancelled while it was owed) has no
  item pending or paid; batched, exactly one item pending in a
  batch still open; paid, exactly one item paid (the unique index allows no more than one item
  pending or paid per line, this says the line's state agrees with it);
- each batch's count and total are its items'; an open batch's items are all pending, a
  rejected one's released, a returned one's paid or failed;
- a batch past approval has its four approvals, none by its maker;
- what is owed is what its source says: a manual claim after its 结算审核 is owed its
  reimbursement, which is its settlement's bill less the cash part, the settlement in force;
  a replayed deferred claim its recorded reimbursement, its settlement in force; an
  institution's clearing amount is '<its code>:<month>'.
"""

from __future__ import annotations

import asyncpg

_OPEN = "('pending', 'approved', 'exported')"


async def payout_problems(conn: asyncpg.Connection) -> list[str]:
    """Every violation found, in words."""
    problems: list[str] = []
    for r in await conn.fetch(
        "SELECT o.owed_id, o.status,"
        " count(i.*) FILTER (WHERE i.status = 'pending' AND b.status IN " + _OPEN + ") AS open,"
        " count(i.*) FILTER (WHERE i.status = 'pending') AS pending,"
        " count(i.*) FILTER (WHERE i.status = 'paid') AS paid"
        " FROM owed_lines o LEFT JOIN payout_items i USING (owed_id)"
        " LEFT JOIN payout_batches b ON b.batch_no = i.batch_no"
        " GROUP BY o.owed_id, o.status HAVING"
        " (o.status IN ('owed', 'withdrawn')"
        "  AND count(i.*) FILTER (WHERE i.status IN ('pending', 'paid')) > 0)"
        " OR (o.status = 'batched' AND (count(i.*) FILTER (WHERE i.status = 'pending') <> 1"
        "   OR count(i.*) FILTER (WHERE i.status = 'pending' AND b.status IN " + _OPEN + ") <> 1))"
        " OR (o.status = 'paid' AND (count(i.*) FILTER (WHERE i.status = 'paid') <> 1"
        "   OR count(i.*) FILTER (WHERE i.status = 'pending') > 0))"
    ):
        problems.append(
            f"owed line {r['owed_id']}: {r['status']} but {r['pending']} pending"
            f" ({r['open']} in an open batch) and {r['paid']} paid payments"
        )
    for r in await conn.fetch(
        "SELECT i.batch_no, i.seq FROM payout_items i JOIN owed_lines o USING (owed_id)"
        " WHERE i.amount_fen <> o.amount_fen OR i.psn_no <> o.psn_no"
    ):
        problems.append(f"payout batch {r['batch_no']} line {r['seq']}: not its owed line's")
    for r in await conn.fetch(
        "SELECT b.batch_no FROM payout_batches b LEFT JOIN ("
        " SELECT batch_no, count(*) AS n, sum(amount_fen) AS fen,"
        " count(*) FILTER (WHERE status = 'pending') AS pending,"
        " count(*) FILTER (WHERE status = 'released') AS released,"
        " count(*) FILTER (WHERE status IN ('paid', 'failed')) AS answered"
        " FROM payout_items GROUP BY batch_no) i USING (batch_no)"
        " WHERE coalesce(i.n, 0) <> b.line_count OR coalesce(i.fen, 0) <> b.total_fen"
        " OR (b.status IN " + _OPEN + " AND i.pending <> i.n)"
        " OR (b.status = 'rejected' AND i.released <> i.n)"
        " OR (b.status = 'returned' AND i.answered <> i.n)"
    ):
        problems.append(
            f"payout batch {r['batch_no']}: its lines disagree with its count, total or state"
        )
    for r in await conn.fetch(
        "SELECT b.batch_no FROM payout_batches b"
        " WHERE b.status IN ('approved', 'exported', 'returned') AND ("
        " SELECT count(DISTINCT a.operator) FILTER (WHERE a.decision = 'approved'"
        "  AND a.operator <> b.created_by) FROM payout_approvals a"
        "  WHERE a.batch_no = b.batch_no) <> 4"
    ):
        problems.append(f"payout batch {r['batch_no']}: approved without four distinct approvers")
    for r in await conn.fetch(
        "SELECT o.owed_id FROM owed_lines o"
        " LEFT JOIN manual_claims c ON o.source = 'manual' AND c.claim_no = o.source_ref"
        " LEFT JOIN deferred d ON o.source = 'deferred' AND d.claim_id = o.source_ref"
        " WHERE (o.source = 'manual' AND (c.claim_no IS NULL OR c.status <> 'batch_reviewed'"
        "   OR c.reimbursement_fen <> o.amount_fen OR c.psn_no <> o.psn_no))"
        " OR (o.source = 'deferred' AND (d.claim_id IS NULL OR d.status <> 'settled'"
        "   OR d.reimbursement_fen <> o.amount_fen OR d.psn_no <> o.psn_no"
        "   OR (o.status <> 'withdrawn' AND NOT EXISTS (SELECT 1 FROM settlements s"
        "    WHERE s.setl_id = d.setl_id AND s.status = 'settled'))))"
        " OR (o.source = 'clearing' AND (NOT starts_with(o.source_ref, o.psn_no || ':')"
        "   OR substr(o.source_ref, length(o.psn_no) + 2) !~ '^[0-9]{4}-[0-9]{2}$'))"
    ):
        problems.append(f"owed line {r['owed_id']}: differs from its claim")
    for r in await conn.fetch(
        "SELECT c.claim_no FROM manual_claims c"
        " LEFT JOIN settlements s ON s.setl_id = c.setl_id"
        " LEFT JOIN owed_lines o ON o.source = 'manual' AND o.source_ref = c.claim_no"
        " WHERE c.status IN ('settled', 'batch_reviewed') AND (s.setl_id IS NULL"
        "  OR s.status <> 'settled' OR s.psn_no <> c.psn_no"
        "  OR c.reimbursement_fen <> s.medfee_sumamt - s.psn_cash_pay"
        "  OR (c.status = 'batch_reviewed' AND c.reimbursement_fen > 0 AND o.owed_id IS NULL))"
    ):
        problems.append(
            f"manual claim {r['claim_no']}: its settlement, reimbursement or owed line is wrong"
        )
    return problems
