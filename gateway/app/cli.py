"""`python -m gateway …`: serve, and the operators' commands."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from gateway.app import agency_cli, demo_client, heap, plan_cli, shadow_cli, supervisor
from gateway.app.cli_args import config_arg, count_arg, date_arg, month_arg, port_arg
from gateway.app.cli_database import (
    CONNECTING,
    NOT_UTF8,
    OUTPUT_CLOSED,
    add_database,
    cluster_partitions,
    cluster_pools,
    database_named,
    database_url,
    output_closed,
    unreachable,
)
from gateway.app.cli_output import patient_stdout
from gateway.app.config import (
    DEFAULT_CONFIG,
    DEFAULT_CREDENTIALS,
    DEFAULT_REFERENCE,
    MIN_KEEP_DAYS,
    ConfigError,
    Settings,
    load_config,
)
from gateway.app.reference import load_reference
from gateway.app.server import prepare_database
from gateway.app.server import serve as serve_app
from gateway.core.timestamps import beijing_all_year, local_offset
from gateway.emergency.console import commands as console_commands
from gateway.jobs import clearing, corrections
from gateway.ledger import checker, db, idempotency, partitions, reference_store
from gateway.ops import logs, metrics, orphans
from gateway.protocol.errors import BadRequest, GatewayError


def _serve_one(
    settings: Settings, host: str, port: int, supervisor: int | None, worker: int = 0
) -> None:
    """One serving process: alone, or worker `worker` of `serve --workers N` (its supervisor's
    pid given), which share the port through SO_REUSEPORT."""
    if supervisor is not None:
        # A worker of `serve --workers N`: stopped (gracefully) when its supervisor is gone,
        # not left answering on the shared port with settings nobody runs any more.
        orphans.end_with_parent(supervisor, orphans.stop_gracefully)
    if worker:
        metrics.leave_plan_changes_to_the_first_worker()
    logs.configure()
    uvloop.install()
    heap.enable()  # this process only serves: its long-lived heap is frozen once loaded
    # Not web.run_app: the edge's connection guard (request-head deadline, connections per
    # address) lives in the runner; graceful stop gives in-flight requests 10 s.
    try:
        serve_app(settings, host, port, reuse_port=supervisor is not None)
    except _START_FAILURES as exc:
        # Found from outside: a worker started again while the ledger was away (its supervisor
        # replaces one that died) wrote a forty-line traceback each time, in a log of one JSON
        # object a line. One line, and the supervisor's own says when the next one starts.
        logging.getLogger("gateway").error(
            "serving process stopped: the database is out of reach (%s: %s)",
            type(exc).__name__,
            exc,
        )
        raise SystemExit(2) from None


def _port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on, or None. Found from outside: a gateway left running
    on the port (an earlier one, or another program) made `serve` die in a traceback, and with
    `--workers N` its workers were restarted every 30 s for good, each failing the same way. A
    plain bind fails on any listener there, workers' shared (SO_REUSEPORT) sockets included."""
    try:
        probe = socket.create_server((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            return exc.strerror or str(exc)
        return None  # anything else is the server's own start to report
    probe.close()
    return None


def _remove_dead_metrics(var: Path) -> None:
    """The metrics folders of gateways no longer running (found from outside: one was left per
    `kill -9`, holding the files of every worker it had, for good). A folder is named after its
    supervisor's pid; one whose process is alive (another gateway here) is left alone."""
    for folder in var.glob("prometheus-*"):
        pid = folder.name.removeprefix("prometheus-")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _journal_unwritable(folder: Path) -> str | None:
    """Why the emergency journal's folder cannot take a segment, or None. Found from outside: a
    folder that could not be written was found out only when the ledger went away, and the
    plan's deferrals then failed as "unavailable", the plan silently off."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def serve(args: argparse.Namespace) -> int:
    """Migrate, load the demo set into an empty database, and serve."""
    taken = _port_taken(args.host, args.port)
    if taken is not None:
        print(
            f"gateway: 无法在{args.host}:{args.port}上监听（{taken}）：该端口可能已有网关或其他程序"
            "在运行，请先停止它或用 --port 换一个端口",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        database_url(args, say_embedded=False),
        reference_dir=Path(args.reference_dir),
        region=args.region,
        pool_max=args.pool_max,
        pool_min=args.pool_max,
        redis_url=args.redis_url,
        config_path=Path(args.config),
        auth=args.auth == "on",
        credentials_path=Path(args.credentials),
    )
    unwritable = _journal_unwritable(settings.journal_dir)
    if unwritable is not None:
        print(
            f"gateway: 应急暂存目录{settings.journal_dir}不可写（{unwritable}）：数据库中断时将无法"
            "按应急预案暂存结算；请修改配置 [journal] dir 或该目录的权限后重新启动",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(_prepared(settings, args.start_timeout))
    except _START_FAILURES as exc:
        # Found from outside: started while the database was out of reach (a restart during an
        # outage), the process waited without a deadline, listened nowhere, and died with a
        # traceback the moment the database came back. It needs the database for its catalog
        # and plan, so it says so in one line and stops; a supervisor starts it again.
        why = "无应答" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        print(
            f"gateway: 无法连接数据库，网关未启动（{args.start_timeout:g}秒内{why}）；"
            "数据库恢复后重新启动，或由进程管理器自动重启",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("gateway").info(
        "serving on %s:%s with %s worker(s)", args.host, args.port, args.workers
    )
    print(
        f"gateway listening on http://{args.host}:{args.port} ({args.workers} worker(s));"
        f" database: {database_named(args)}",
        flush=True,
    )
    if args.workers <= 1:
        _serve_one(settings, args.host, args.port, supervisor=None)
        return 0
    # Several processes share the port through SO_REUSEPORT; the kernel spreads connections.
    # Their metrics meet in prometheus-client's multiprocess files, so any worker's /metrics
    # reports the whole gateway.
    _remove_dead_metrics(Path("var"))
    metrics_dir = Path("var") / f"prometheus-{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    supervisor.run(
        multiprocessing.get_context("spawn"),
        _serve_one,
        (settings, args.host, args.port, os.getpid()),
        args.workers,
    )
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


# How long `serve` waits for its database at start: it cannot answer without the catalog and
# the plan it reads there.
START_DATABASE_SECONDS = 30.0


_START_FAILURES: tuple[type[Exception], ...] = (TimeoutError, *db.UNAVAILABLE)
START_RETRY_SECONDS = 0.5
URL_HELP = f"the gateway to call (default {demo_client.DEFAULT_URL}, as make run serves)"


async def _prepared(settings: Settings, within: float) -> None:
    """The database prepared, trying again until `within` seconds have passed: found from
    outside, a refused connection (a database restarting) ended the start at once, though the
    message said it had waited, and a gateway started seconds before its database stayed down."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await prepare_database(settings)
            return
        except db.UNAVAILABLE:
            if loop.time() + START_RETRY_SECONDS >= deadline:
                raise
            await asyncio.sleep(START_RETRY_SECONDS)


async def _demo_load(url: str, reference_dir: Path) -> None:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            await reference_store.load(conn, load_reference(reference_dir))
    finally:
        await pool.close()


def demo(args: argparse.Namespace) -> int:
    """demo load: reset the database to the demo data set."""
    asyncio.run(_demo_load(database_url(args), Path(args.reference_dir)))
    print("demo data loaded")
    return 0


async def _synth(url: str, persons: int, region: str, config_path: Path) -> tuple[int, int]:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            made = await reference_store.synthesize(conn, persons, region)
            # A region of a ledger cluster: its persons go there (the directory stays here).
            await partitions.prepare_clusters(conn, load_config(config_path).ledger_clusters)
            return made
    finally:
        await pool.close()


def synth(args: argparse.Namespace) -> int:
    """demo synth: add synthetic insured employees so load spreads over many people."""
    try:
        added, there = asyncio.run(
            _synth(database_url(args), args.persons, args.region, Path(args.config))
        )
    except reference_store.UnknownRegion:
        print(
            f"refused: region {args.region} is not one the reference data knows"
            " (no institution in it, no person insured in it)",
            file=sys.stderr,
        )
        return 2
    print(f"added {added} synthetic persons in region {args.region} ({there} there now)")
    return 0


async def _clearing(
    url: str, month: str, institution: str | None, config: Path
) -> clearing.MonthlyReport:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with cluster_pools(config) as others, pool.acquire() as conn:
            return await clearing.monthly(conn, month, institution, others)
    finally:
        await pool.close()


def clearing_monthly(args: argparse.Namespace) -> int:
    """clearing monthly: the month's clearing table (JSON, CSV, printable HTML)."""
    try:
        report = asyncio.run(
            _clearing(database_url(args), args.month, args.institution, Path(args.config))
        )
    except GatewayError as exc:
        print(f"refused: {exc.err_msg}", file=sys.stderr)
        return 2
    if args.csv:
        Path(args.csv).write_text(clearing.to_csv(report), encoding="utf-8")
    if args.html:
        Path(args.html).write_text(clearing.to_html(report), encoding="utf-8")
    if args.json:
        print(json.dumps(clearing.to_json(report), ensure_ascii=False, indent=2))
    else:
        print("\n".join(clearing.to_text(report)))
    return 0


async def _corrections(
    args: argparse.Namespace, apply_it: bool
) -> tuple[corrections.Summary, int, list[tuple[str, str]]]:
    """Over every ledger database (the main one, then each cluster of a ledger split by region),
    with the main database's catalog: a wrong mapping was applied wherever the patients' money is."""
    url = database_url(args)
    pool = await db.create_pool(url, min_size=1, max_size=1)
    summary = corrections.Summary()
    failed: list[tuple[str, str]] = []
    found_in_all = 0
    try:
        async with cluster_pools(Path(args.config)) as others:
            reference = await asyncio.to_thread(load_reference, Path(args.reference_dir))
            async with pool.acquire() as conn:
                snapshot = await reference_store.read_snapshot(conn, reference)
            begn, end = args.date_from, args.date_to
            if snapshot.institution(args.institution) is None:
                # Found from outside: a mistyped code was told there was nothing to correct.
                raise BadRequest(f"定点医药机构{args.institution}不存在")
            if begn and end and end < begn:
                raise BadRequest(f"--to {end}早于--from {begn}")
            run_id = dt.datetime.now().strftime("%Y%m%d%H%M%S")
            left = getattr(args, "limit", None)
            for ledger in [pool, *others]:
                async with ledger.acquire() as here:
                    found = await corrections.targets(
                        here, snapshot, args.institution, args.item, begn, end
                    )
                    found_in_all += len(found)
                    if apply_it:
                        bar = None if args.json else corrections.progress_bar()
                        done, failing = await corrections.apply(
                            here,
                            snapshot,
                            found,
                            args.item,
                            run_id,
                            limit=left,
                            progress=bar,
                            committed=_json_line if args.json else None,
                        )
                        if done.elsewhere and left is None:
                            # Replaced by a run beside this one: a replacement that still
                            # resolved the item the old way is a target again.
                            again = await corrections.targets(
                                here, snapshot, args.institution, args.item, begn, end
                            )
                            tried = {setl_id for setl_id, _ in failing}
                            more, failing_more = await corrections.apply(
                                here,
                                snapshot,
                                [t for t in again if t.setl_id not in tried],
                                args.item,
                                run_id,
                                committed=_json_line if args.json else None,
                            )
                            done.items += more.items
                            failing += failing_more
                        if left is not None:
                            left = max(0, left - len(done.items))
                    else:
                        done, failing = await corrections.plan(
                            here, snapshot, found, args.item, dt.datetime.now()
                        )
                    summary.items += done.items
                    summary.elsewhere += done.elsewhere
                    summary.undone += done.undone
                    failed += failing
    finally:
        await pool.close()
    # What the JSON document and the CSV carry (found from outside: `failed` was [] and the CSV
    # had no `not_corrected` row, where stderr named the settlement the rules refused).
    summary.failed = failed
    return summary, found_in_all, failed


def _json_line(item: corrections.Item) -> None:
    """One applied correction as its JSON line, written out at once: found from outside, a run
    killed after 39 of 44 corrections had committed left its `--json` output empty (buffered),
    the run's own account of what it did lost."""
    print(json.dumps(item.row(), ensure_ascii=False), flush=True)


def _report_corrections(args: argparse.Namespace, apply_it: bool) -> int:
    # uvloop, as the server and `deferred replay` run (a bulk re-settlement is its round trips).
    try:
        summary, found, failed = uvloop.run(_corrections(args, apply_it))
    except GatewayError as exc:
        print(f"refused: {exc.err_msg}", file=sys.stderr)
        return 2
    if args.csv:
        Path(args.csv).write_text(summary.to_csv(), encoding="utf-8")
    if args.json:
        if not apply_it:  # apply's lines were written as each correction committed
            print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    else:
        verb = "re-settled" if apply_it else "would re-settle"
        print("\n".join(summary.to_text(verb, found, args.item)))
    for old, new in summary.elsewhere:
        print(f"re-settled meanwhile by another run: {old} → {new}", file=sys.stderr)
    for setl_id in summary.undone:
        print(f"undone at the counter meanwhile, nothing to correct: {setl_id}", file=sys.stderr)
    for setl_id, why in failed:
        print(f"{'failed' if apply_it else 'would fail'} {setl_id}: {why}", file=sys.stderr)
    return 1 if failed else 0


def corrections_plan(args: argparse.Namespace) -> int:
    """corrections plan: list what a correction would change, changing nothing."""
    return _report_corrections(args, apply_it=False)


def corrections_apply(args: argparse.Namespace) -> int:
    """corrections apply: re-settle, one transaction per settlement, resumable."""
    return _report_corrections(args, apply_it=True)


async def _purge(url: str, keep_days: int) -> int:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await idempotency.purge(conn, keep_days)
    finally:
        await pool.close()


def purge(args: argparse.Namespace) -> int:
    """idempotency purge: drop msgid answers older than the retention (never under 7 days)."""
    keep = (
        args.keep_days
        if args.keep_days is not None
        else load_config(Path(args.config)).idempotency.keep_days
    )
    if keep < MIN_KEEP_DAYS:
        # Found from outside: the floor was applied without a word.
        print(
            f"note: --keep-days {keep} is below the {MIN_KEEP_DAYS}-day floor (a till may retry"
            f" a message for days); keeping {MIN_KEEP_DAYS} days",
            file=sys.stderr,
        )
    removed = asyncio.run(_purge(database_url(args), keep))
    print(f"removed {removed} msgid answers older than {max(keep, MIN_KEEP_DAYS)} days")
    return 0


async def _check(url: str, config: Path) -> list[tuple[str, str]]:
    """(database, finding) over the main ledger database and each cluster's."""
    pool = await db.create_pool(url, min_size=1, max_size=1)
    found: list[tuple[str, str]] = []
    try:
        async with cluster_partitions(config) as clusters:
            # The rules from the main database, the reference data's home: a cluster's own
            # institutions table is empty (found from outside: every settlement of a split
            # ledger was reported refused, "定点医药机构…未登记").
            async with pool.acquire() as conn:
                rules = await checker.core_rules(conn)
            # Each by its configured name (found from outside: "cluster 1").
            ledgers = [("main", pool), *((f"cluster {c.name}", c.pool) for c in clusters)]
            for name, ledger in ledgers:
                async with ledger.acquire() as conn:
                    found += [(name, p) for p in await checker.check(conn, rules=rules)]
    finally:
        await pool.close()
    return found


def check_ledger(args: argparse.Namespace) -> int:
    """ledger check: the bank-style checker (every settlement's identities, fund rows, lines,
    accumulators and balances against the settlements, replayed with the rules); after a load
    test or a drill. Exit status 1 when anything is found."""
    found = asyncio.run(_check(database_url(args), Path(args.config)))
    for where, problem in found:
        print(f"{where}: {problem}")
    if found:
        print(f"{len(found)} findings", file=sys.stderr)
        return 1
    # Which databases that covers (found from outside: without --config the clusters went
    # unchecked, unsaid).
    clusters = load_config(Path(args.config)).ledger_clusters
    covered = "the main database" + "".join(f", cluster {c.name}" for c in clusters)
    print(f"the ledger balances: no finding ({covered})")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command tree."""
    p = argparse.ArgumentParser(
        prog="python -m gateway", description="Medical-insurance settlement gateway"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve", help="apply migrations, load demo data into an empty database, serve"
    )
    s.add_argument("--host", default="127.0.0.1")
    # Found from outside: --port 99999 and --pool-max 0 died in tracebacks, --workers -1 served.
    s.add_argument("--port", type=port_arg, default=8080)
    s.add_argument("--workers", type=count_arg, default=1)
    s.add_argument("--redis-url", default=os.environ.get("GATEWAY_REDIS_URL"))
    s.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))
    s.add_argument("--region", default="441800", help="receiver region in inf_refmsgid")
    s.add_argument(
        "--pool-max",
        type=count_arg,
        default=16,
        help="PostgreSQL connections each worker opens at start and keeps (default 16)",
    )
    s.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        type=config_arg,
        help="gateway.toml (limits, retention)",
    )
    s.add_argument(
        "--auth",
        choices=("on", "off"),
        default="on",
        help="x-tif signed requests (off: local benchmarks only)",
    )
    s.add_argument(
        "--credentials", default=str(DEFAULT_CREDENTIALS), help="institution secrets (TOML)"
    )
    s.add_argument(
        "--start-timeout",
        type=float,
        default=START_DATABASE_SECONDS,
        help="seconds to reach the database at start before giving up (exit status 2)",
    )
    add_database(s)
    s.set_defaults(func=serve)

    d = sub.add_parser("demo", help="demo data set, and signed demo calls against a gateway")
    dsub = d.add_subparsers(dest="demo_command", required=True)
    dl = dsub.add_parser("load", help="(re)load the demo data set — resets the ledger")
    dl.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))
    add_database(dl)
    dl.set_defaults(func=demo)
    ds = dsub.add_parser(
        "synth",
        help="the region's synthetic employees (psn_no S<region><12 digits>) made up to N,"
        " those already there kept",
    )
    ds.add_argument("--persons", type=count_arg, required=True)
    ds.add_argument("--region", default="441800")
    ds.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        type=config_arg,
        help="gateway.toml: its [[ledger_clusters]]",
    )
    add_database(ds)
    ds.set_defaults(func=synth)
    dc = dsub.add_parser(
        "call", help="send one transaction signed with the demo credentials; print the answer"
    )
    dc.add_argument("infno", help="transaction number, e.g. 1101")
    dc.add_argument("--input", required=True, help="the input node as JSON text, or @file")
    dc.add_argument(
        "--institution", help="fixmedins_code (default: the demo hospital, or pharmacy for 210x)"
    )
    dc.add_argument("--url", default=demo_client.DEFAULT_URL, help=URL_HELP)
    dc.set_defaults(func=lambda a: demo_client.call_command(a.infno, a.input, a.institution, a.url))
    for flow, helptext in (
        ("visit", "a whole outpatient visit, 1101 to 2207 and 9002"),
        ("stay", "an inpatient stay: admission, fees, discharge, settlement"),
        ("pharmacy", "a pharmacy sale and its cancellation"),
    ):
        df = dsub.add_parser(flow, help=helptext + ", each call shown by its infno")
        df.add_argument("--url", default=demo_client.DEFAULT_URL, help=URL_HELP)
        df.set_defaults(func=lambda a, flow=flow: demo_client.flow_command(flow, a.url))
    i = sub.add_parser("idempotency", help="the msgid journal")
    isub = i.add_subparsers(dest="idempotency_command", required=True)
    ip = isub.add_parser("purge", help="drop answers older than the retention (at least 7 days)")
    ip.add_argument("--keep-days", type=int)
    ip.add_argument("--config", default=str(DEFAULT_CONFIG), type=config_arg)
    add_database(ip)
    ip.set_defaults(func=purge)
    lg = sub.add_parser("ledger", help="the ledger's own checks")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    lc = lsub.add_parser(
        "check", help="every settlement, accumulator and balance checked (exit 1 on a finding)"
    )
    lc.add_argument("--config", default=str(DEFAULT_CONFIG), type=config_arg)
    add_database(lc)
    lc.set_defaults(func=check_ledger)

    c = sub.add_parser("clearing", help="monthly clearing reports")
    csub = c.add_subparsers(dest="clearing_command", required=True)
    cm = csub.add_parser("monthly", help="the month's 月结算 table per institution")
    cm.add_argument("--month", required=True, type=month_arg, help="YYYY-MM")
    cm.add_argument("--institution")
    cm.add_argument("--json", action="store_true")
    cm.add_argument("--csv")
    cm.add_argument("--html")
    cm.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        type=config_arg,
        help="gateway.toml: its [[ledger_clusters]]",
    )
    add_database(cm)
    cm.set_defaults(func=clearing_monthly)
    k = sub.add_parser("corrections", help="catalog-mapping corrections in bulk")
    ksub = k.add_subparsers(dest="corrections_command", required=True)
    for name, func, helptext in (
        (
            "plan",
            corrections_plan,
            "list the settlements that used the item's old mapping, with deltas",
        ),
        ("apply", corrections_apply, "re-settle them in their original order (resumable)"),
    ):
        kp = ksub.add_parser(name, help=helptext)
        kp.add_argument("--institution", required=True)
        kp.add_argument(
            "--item", required=True, help="the institution's own item code (medins_list_codg)"
        )
        kp.add_argument(
            "--from",
            dest="date_from",
            type=date_arg,
            help="only settlements made on or after this day (YYYY-MM-DD; the settlement's date,"
            " not the service date: the mapping's begndate already picks the lines)",
        )
        kp.add_argument(
            "--to",
            dest="date_to",
            type=date_arg,
            help="only settlements made on or before this day (the settlement's date)",
        )
        kp.add_argument("--json", action="store_true")
        kp.add_argument("--csv", help="write the agency's CSV report here")
        kp.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))
        kp.add_argument(
            "--config",
            default=str(DEFAULT_CONFIG),
            type=config_arg,
            help="gateway.toml: its [[ledger_clusters]]",
        )
        if name == "apply":
            kp.add_argument(
                "--limit", type=count_arg, help="stop after N settlements (work in batches)"
            )
        add_database(kp)
        kp.set_defaults(func=func)
    plan_cli.add_commands(sub, add_database)
    agency_cli.add_commands(sub, add_database)
    shadow_cli.add_commands(sub, add_database)
    console_commands.add_commands(sub.choices["operators"], add_database)
    return p


def in_beijing_time() -> str | None:
    """Run this process, and the workers and commands it starts, in Beijing time where its
    local time is another zone; what to tell the team, or None where it already was. The
    national interface's times are Beijing time and the gateway dates everything in its local
    time. Found from outside (three times): on a host kept in UTC a HIS's Beijing-time
    begntime was refused as in the future, settlement days turned at 08:00, and a cut-over
    window began 8 hours late, a settlement taken during the stop; a warning at start was
    printed and the gateway served on. `CST-8` needs no zone files."""
    offset = local_offset()
    if beijing_all_year():
        return None
    os.environ["TZ"] = "CST-8"
    time.tzset()
    return (
        f"this process's local time was not Beijing time (UTC{offset.total_seconds() / 3600:+g}"
        " now; Beijing time is UTC+8 all year), the national interface's: it runs in Beijing"
        " time (TZ=CST-8)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    switched = in_beijing_time()
    patient_stdout()
    logs.configure()
    args = parser().parse_args(argv)
    if switched is not None:
        print(f"gateway: note: {switched}", file=sys.stderr, flush=True)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # A configuration the gateway cannot use stops it before anything is touched, in one
        # line naming the file, the key and its table.
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except CONNECTING as exc:
        if output_closed(exc):
            return OUTPUT_CLOSED
        print(f"refused: {unreachable(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if output_closed(exc):
            return OUTPUT_CLOSED
        if exc.filename is None:
            raise
        print(f"gateway: {unreachable(exc)}", file=sys.stderr)  # a file the command was given
        return 2
    except UnicodeDecodeError:
        print(f"gateway: {NOT_UTF8}", file=sys.stderr)
        return 2
    return result
