"""What a group commit's write costs PostgreSQL, replayed: schema changes measured exactly.

    python benchmarks/write_replay.py [--seconds 6] [--rounds 4] \
        [--variant 'NAME=SQL' ...] [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Through HTTP a settlement's cost drifts with the box by more than a tenth between rows of one
run (benchmarks/RESULTS.md), so a change worth a tenth of PostgreSQL's time on the write cannot
be shown there. This script takes the write itself out:

1. record: a fresh ledger (the demo set and 20,000 synthetic persons), a gateway started by this
   script with the staged rows of each combined write recorded as they are flushed
   (`gateway.ledger.writes._execute_run`: the rows, not the SQL), and `wrk` sending durable 2102
   sales for `--seconds`;
2. the settlements of the writes to be replayed are removed again (their answers too; the rest
   stay, so that the tables and their plans are a serving ledger's) and the ledger copied once per
   variant (`CREATE DATABASE … TEMPLATE`): the ledger as the migrations leave it (`head`), and
   each `--variant NAME=SQL` with its SQL applied (a key put back, a column's compression);
3. replay: each recorded write is sent again as the code sends it today (`Statement.arguments`,
   `combined`), inside a transaction that is rolled back, to every variant in turn, batch by
   batch (the order flips every batch) so that the box's drift falls on all alike; the tables are
   vacuumed before each round so that rolled-back rows do not pile up in the indexes.

Printed per variant: the client's CPU (this process) and the backend's (its /proc entry, so run
this on the database's machine) per settlement, summed over every batch of every round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from http_harness import create_db, drop_db, free_port, gateway_cli, wait_ready, with_db

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Imported for the statements they declare: a recording names each by its one-row SQL.
import gateway.ledger.encounters  # noqa: E402
import gateway.ledger.fees  # noqa: E402
import gateway.ledger.idempotency  # noqa: E402
import gateway.ledger.persons  # noqa: E402
import gateway.ledger.settlements  # noqa: E402, F401
from gateway.ledger import db, writes  # noqa: E402

PY = sys.executable
VACUUMED = "settlements, settlement_funds, settlement_events, fee_lines, encounters, idempotency, accumulators, accounts"
Run = list[tuple[str, str, list[tuple[object, ...]]]]  # (one-row SQL, table, rows) per statement


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dump(path: Path, value: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(value, f)


def recording_gateway(out: Path, limit: int, argv: list[str]) -> int:
    """The gateway, each combined write's staged rows pickled into `out` (at most `limit`)."""
    from gateway.app import cli

    original = writes._execute_run
    seen = [0]

    async def recorded(conn: asyncpg.Connection, run: Any) -> None:
        if len(run) > 1 and seen[0] < limit:
            seen[0] += 1
            _dump(out / f"{seen[0]:06d}.pkl", [(form.one, form.table, rows) for form, rows in run])
        await original(conn, run)

    writes._execute_run = recorded
    return cli.main(argv)


def record(dsn: str, out: Path, seconds: float, persons: int) -> None:
    gateway_cli(dsn, "demo", "load")
    gateway_cli(dsn, "demo", "synth", "--persons", str(persons))
    port = free_port()
    proc = subprocess.Popen(
        [PY, __file__, "--recording-gateway", str(out), "--", "serve", "--port", str(port),
         "--database-url", dsn, "--config", str(ROOT / "config" / "bench.toml"),
         "--pool-max", "32", "--auth", "on"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        subprocess.run(
            ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--timeout", "10s",
             "-s", str(ROOT / "benchmarks" / "wrk" / "pharmacy.lua"),
             f"http://127.0.0.1:{port}", "--", "infno=2102", f"persons={persons}"],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def prepare(
    server: str, name: str, runs: list[Run], variants: list[tuple[str, str]]
) -> dict[str, str]:
    """The recorded ledger without the rows of the writes to be replayed (the rest stays, so
    that the tables are as large as a serving ledger's and keep their plans), and one copy per
    variant."""
    visits = [r[0] for run in runs for _, t, rows in run if t == "encounters" for r in rows]
    setl_ids = [r[0] for run in runs for _, t, rows in run if t == "settlements" for r in rows]
    answered = [r[:2] for run in runs for _, t, rows in run if t == "idempotency" for r in rows]
    conn = await asyncpg.connect(with_db(server, name))
    try:
        for table in ("settlement_events", "settlement_funds", "settlements"):
            await conn.execute(f"DELETE FROM {table} WHERE setl_id = ANY($1::text[])", setl_ids)
        for table in ("fee_lines", "presettlements", "encounters"):
            await conn.execute(f"DELETE FROM {table} WHERE mdtrt_id = ANY($1::text[])", visits)
        await conn.executemany(
            "UPDATE idempotency SET answer = NULL WHERE fixmedins_code = $1 AND msgid = $2",
            answered,
        )
        await conn.execute(f"VACUUM ANALYZE {VACUUMED}")
    finally:
        await conn.close()
    admin = await asyncpg.connect(server)
    copies = {"head": name}
    try:
        for label, sql in variants:
            copy = f"{name}_{len(copies)}"
            await admin.execute(f"CREATE DATABASE {copy} TEMPLATE {name}")
            conn = await asyncpg.connect(with_db(server, copy))
            try:
                await conn.execute(sql)
                await conn.execute(f"ANALYZE {VACUUMED}")
            finally:
                await conn.close()
            copies[label] = copy
    finally:
        await admin.close()
    return copies


def statement(one: str, table: str) -> writes.Statement:
    form = writes.many_form(one)
    if form is None:
        raise SystemExit(f"the recording's statement on {table} is no longer declared")
    return form


async def replay(server: str, copies: dict[str, str], runs: list[Run], rounds: int) -> None:
    sent = []
    for run in runs:
        forms = tuple(statement(one, table) for one, table, _ in run)
        args = [
            a for form, (_, _, rows) in zip(forms, run, strict=True) for a in form.arguments(rows)
        ]
        settled = next((len(rows) for _, table, rows in run if table == "settlements"), 0)
        sent.append((writes.combined(forms), args, settled))
    settlements = sum(s for *_, s in sent) * rounds
    conns: dict[str, tuple[asyncpg.Connection, int]] = {}
    pools = []
    for label, name in copies.items():
        # The gateway's own pool: its connections' codecs are what the write is sent with.
        pools.append(await db.create_pool(with_db(server, name), min_size=1, max_size=1))
        conn = await pools[-1].acquire()
        conns[label] = (conn, await conn.fetchval("SELECT pg_backend_pid()"))
    spent = {label: [0.0, 0.0] for label in copies}
    order = list(copies)
    try:
        for _ in range(rounds):
            for conn, _pid in conns.values():
                await conn.execute(f"VACUUM {VACUUMED}")
            for i, (sql, args, _) in enumerate(sent):
                for label in order if i % 2 == 0 else reversed(order):
                    conn, pid = conns[label]
                    client, backend = time.process_time(), _cpu(pid)
                    tx = conn.transaction()
                    await tx.start()
                    await conn.execute(sql, *args)
                    await tx.rollback()
                    spent[label][0] += time.process_time() - client
                    spent[label][1] += _cpu(pid) - backend
    finally:
        for pool, (conn, _pid) in zip(pools, conns.values(), strict=True):
            await pool.release(conn)
            await pool.close()
    print(f"{len(sent)} recorded writes, {settlements // rounds} settlements, {rounds} rounds")
    print("| ledger | client µs a settlement | PostgreSQL µs a settlement |")
    print("|---|---|---|")
    for label, (client, backend) in spent.items():
        print(f"| {label} | {1e6 * client / settlements:.1f} | {1e6 * backend / settlements:.1f} |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--recording-gateway":
        out, argv = Path(sys.argv[2]), sys.argv[4:]
        sys.exit(recording_gateway(out, 400, argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--skip", type=int, default=50, help="recorded writes left out at the start")
    p.add_argument("--variant", action="append", default=[], help="NAME=SQL")
    args = p.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variant]
    name = f"gwreplay_{uuid.uuid4().hex[:8]}"
    out = Path(tempfile.mkdtemp(prefix="write-replay-"))
    asyncio.run(create_db(args.database_url, name))
    copies: dict[str, str] = {"head": name}
    try:
        record(with_db(args.database_url, name), out, args.seconds, args.persons)
        runs: list[Run] = []
        for path in sorted(out.glob("*.pkl"))[args.skip :]:
            with open(path, "rb") as f:
                runs.append(pickle.load(f))
        copies = asyncio.run(prepare(args.database_url, name, runs, variants))  # type: ignore[arg-type]
        asyncio.run(replay(args.database_url, copies, runs, args.rounds))
    finally:
        for copy in copies.values():
            asyncio.run(drop_db(args.database_url, copy))
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
