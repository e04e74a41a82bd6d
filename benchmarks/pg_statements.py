"""PostgreSQL's side of a profile: where the database's time went, statement by statement.

py-spy shows the gateway's samples; the database's CPU per answer is only a total in the harness.
When the server loads `pg_stat_statements` (`shared_preload_libraries`), the harness run with
`--profile DIR` also writes `DIR/<scenario>.pg.txt`: the scenario's top-level statements in its
scratch database by execution time, with calls, rows and µs per answer. Statements fired inside
others (foreign-key checks, triggers) are listed apart, since their time is already inside the
statement that fired them. Without the extension the files are simply not written.

A server of one's own for this, beside the machine's (PostgreSQL refuses to run as root):

    runuser -u postgres -- initdb -D /tmp/pgs -A trust
    echo "shared_preload_libraries = 'pg_stat_statements'
    pg_stat_statements.track = all
    port = 5499" >> /tmp/pgs/postgresql.conf
    runuser -u postgres -- pg_ctl -D /tmp/pgs -l /tmp/pgs/log start
    python benchmarks/wrk_harness.py --database-url postgresql://postgres@127.0.0.1:5499/postgres \\
        --profile benchmarks/profiles --scenarios 2102,visit --sweep ''
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg

_STATS = """
SELECT s.toplevel, s.calls, s.rows, s.total_exec_time, s.query
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = $1
ORDER BY s.total_exec_time DESC
"""


class StatementProfile:
    """pg_stat_statements over one scenario at a time, written beside py-spy's profile."""

    def __init__(self, out_dir: Path | None, server: str, database: str) -> None:
        self.out_dir = out_dir
        self.server = server
        self.database = database
        self.available = out_dir is not None and asyncio.run(self._prepare())
        self.label = ""

    async def _prepare(self) -> bool:
        conn = await asyncpg.connect(self.server)
        try:
            loaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
            if "pg_stat_statements" not in str(loaded):
                return False
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return True
        finally:
            await conn.close()

    async def _run(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.server)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def start(self, label: str) -> None:
        if self.available:
            self.label = label
            asyncio.run(self._run("SELECT pg_stat_statements_reset()"))

    def stop(self, answers: int) -> None:
        if not self.available or self.out_dir is None:
            return
        rows = asyncio.run(self._run(_STATS, self.database))
        text = render(self.label, rows, answers)
        (self.out_dir / f"{self.label}.pg.txt").write_text(text)


def _shape(query: str, width: int = 110) -> str:
    one = re.sub(r"\s+", " ", query).strip()
    return one if len(one) <= width else one[: width - 1] + "…"


def render(label: str, rows: list[asyncpg.Record], answers: int, top: int = 20) -> str:
    """The statements by execution time: the top-level ones, then those fired inside them."""
    answers = max(answers, 1)  # a scenario that got no answer still shows where the time went
    top_level = [r for r in rows if r["toplevel"]]
    total_ms = sum(float(r["total_exec_time"]) for r in top_level) or 1.0
    lines = [
        f"{label}: {answers} answers; PostgreSQL's execution time {total_ms:,.0f} ms in all,"
        f" {total_ms * 1000 / answers:,.0f} µs per answer (planning, commits and the WAL writer"
        " are not in it)",
        "",
        "share    calls     rows  µs/call  µs/answer  statement",
    ]
    for section, picked in (("top level", top_level), ("fired inside them", rows)):
        if section != "top level":
            picked = [r for r in rows if not r["toplevel"]]
            if not picked:
                continue
            lines += ["", f"{section} (their time is inside the statements above):"]
        for r in picked[:top]:
            ms = float(r["total_exec_time"])
            lines.append(
                f"{ms / total_ms:6.1%} {r['calls']:7d} {r['rows']:8d} {ms * 1000 / r['calls']:8.1f}"
                f" {ms * 1000 / answers:10.1f}  {_shape(r['query'])}"
            )
    return "\n".join(lines) + "\n"
