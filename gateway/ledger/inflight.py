"""Before a cut-over window: the work still open per institution (清远 医院端 1, 毕节 (二), 温州 (三)).

Admitted and not settled (discharge and settle, or turn self-pay), uploaded and not settled
(cancel and upload again later), pre-settled and not settled (settle or abandon). A pharmacy's
sale stores its lines settled; they are unsettled again only by the sale's cancellation, which
leaves nothing open (found from outside: cancelled sales were listed as uploads to finish).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import asyncpg

_ADMITTED = """
SELECT e.fixmedins_code, e.mdtrt_id, e.psn_no, e.ipt_otp_no, e.begntime, e.status
FROM encounters e
WHERE e.kind = 'inpatient' AND e.status <> 'cancelled' AND e.begntime < $1
  AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.mdtrt_id = e.mdtrt_id
                  AND s.status = 'settled' AND s.mid_setl_flag = '0')
ORDER BY e.fixmedins_code, e.begntime
"""

_UPLOADED = """
SELECT e.fixmedins_code, f.mdtrt_id, e.psn_no, count(*) AS lines, sum(f.amount_fen) AS amount_fen,
       min(f.fee_ocur_time) AS first_fee
FROM fee_lines f JOIN encounters e USING (mdtrt_id)
WHERE f.setl_id IS NULL AND f.fee_ocur_time < $1 AND e.status <> 'cancelled'
  AND e.kind <> 'pharmacy'
GROUP BY e.fixmedins_code, f.mdtrt_id, e.psn_no
ORDER BY e.fixmedins_code, f.mdtrt_id
"""

_PRESETTLED = """
SELECT p.fixmedins_code, p.mdtrt_id, e.psn_no, p.infno, p.at
FROM presettlements p JOIN encounters e USING (mdtrt_id)
WHERE p.at < $1 AND e.status <> 'cancelled'
  AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.mdtrt_id = p.mdtrt_id
                  AND s.status = 'settled' AND s.setl_time >= p.at)
ORDER BY p.fixmedins_code, p.at
"""


async def report(
    conn: asyncpg.Connection, before: dt.datetime, institution: str | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Reads the visits, uploads and pre-settlements still open before `before`, per institution."""
    # {fixmedins_code: {admitted_not_settled, uploaded_not_settled, presettled_not_settled}}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def bucket(code: str) -> dict[str, list[dict[str, Any]]]:
        return out.setdefault(
            code,
            {"admitted_not_settled": [], "uploaded_not_settled": [], "presettled_not_settled": []},
        )

    for r in await conn.fetch(_ADMITTED, before):
        bucket(r["fixmedins_code"])["admitted_not_settled"].append(
            {
                "mdtrt_id": r["mdtrt_id"],
                "psn_no": r["psn_no"],
                "ipt_no": r["ipt_otp_no"],
                "begntime": r["begntime"].isoformat(sep=" "),
                "status": r["status"],
            }
        )
    for r in await conn.fetch(_UPLOADED, before):
        bucket(r["fixmedins_code"])["uploaded_not_settled"].append(
            {
                "mdtrt_id": r["mdtrt_id"],
                "psn_no": r["psn_no"],
                "lines": int(r["lines"]),
                "amount_fen": int(r["amount_fen"]),
                "first_fee": r["first_fee"].isoformat(sep=" "),
            }
        )
    for r in await conn.fetch(_PRESETTLED, before):
        bucket(r["fixmedins_code"])["presettled_not_settled"].append(
            {
                "mdtrt_id": r["mdtrt_id"],
                "psn_no": r["psn_no"],
                "infno": r["infno"],
                "at": r["at"].isoformat(sep=" "),
            }
        )
    if institution is not None:
        return {k: v for k, v in out.items() if k == institution}
    return out


def merged(
    reports: Iterable[dict[str, dict[str, list[dict[str, Any]]]]],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Reports of several ledger databases (a split ledger's) as one, per institution: an
    institution's patients of several region groups are open in several databases."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for report in reports:
        for code, parts in report.items():
            mine = out.setdefault(code, {part: [] for part in parts})
            for part, rows in parts.items():
                mine[part] += rows
    return dict(sorted(out.items()))
