"""`python -m gateway plan|deferred|audit|encounter …`: the emergency team's commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import json
import os
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import uvloop

from gateway.app.cli_args import config_arg, local_time_arg
from gateway.app.cli_database import (
    NOT_UTF8,
    OUTPUT_CLOSED,
    UNREACHABLE,
    cluster_partitions,
    database_url,
    output_closed,
    unreachable,
)
from gateway.app.config import (
    DEFAULT_CONFIG,
    DEFAULT_REFERENCE,
    ConfigError,
    Settings,
    load_config,
)
from gateway.app.redis_link import close_redis, open_redis
from gateway.core.money import fen_text
from gateway.core.timestamps import as_beijing
from gateway.emergency.plan import status, store
from gateway.ledger import db, deferred, inflight
from gateway.ledger import plan as ledger_plan
from gateway.ops import audit
from gateway.ops.keys import PLAN_CHANNEL
from gateway.protocol.errors import BadRequest, GatewayError
from gateway.services import conversion

if TYPE_CHECKING:
    from gateway.app.runtime import Gateway

PROGRESS_EVERY = 100  # claims between progress lines when stderr is not a terminal
WINDOWS_EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "plan" / "windows.toml"


def _operator(args: argparse.Namespace) -> str:
    """Who made the change, for the audit log: --operator, else the login name."""
    return str(args.operator or f"cli:{getpass.getuser()}")


def _run(args: argparse.Namespace, work: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    """Open the database, run one command; a refusal prints its message and exits 2."""

    async def go() -> int:
        pool = await db.create_pool(database_url(args), min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await db.migrate(conn)
                return await work(conn)
        finally:
            await pool.close()

    try:
        # uvloop, as the server runs: `deferred replay` spent a quarter of its samples in the
        # pure-Python event loop's socket writes (a dozen round trips a claim, four lanes).
        return int(uvloop.run(go()))
    except GatewayError as exc:
        print(f"refused: {exc.err_msg}", file=sys.stderr)
        return 2
    except UNREACHABLE as exc:
        if output_closed(exc):
            return OUTPUT_CLOSED
        print(f"refused: {unreachable(exc)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"refused: {NOT_UTF8}", file=sys.stderr)
        return 2


async def _announce(args: argparse.Namespace, version: int) -> None:
    """Running gateways poll every second anyway; Redis makes it immediate. The Redis is the
    gateways' own: `[redis] sentinels` of --config when listed, else --redis-url."""
    url = getattr(args, "redis_url", None) or os.environ.get("GATEWAY_REDIS_URL")
    try:
        redis = load_config(Path(getattr(args, "config", DEFAULT_CONFIG))).redis
    except ConfigError as exc:
        # The change is written already: a bad file costs the announcement, not the change.
        print(f"warning: {exc}; gateways pick the change up by polling", file=sys.stderr)
        return
    client = open_redis(redis, url, timeout=0.5)
    if client is None:
        return
    try:
        await client.publish(PLAN_CHANNEL, str(version))
    except Exception:
        print(
            "warning: Redis announcement failed; gateways pick the change up by polling",
            file=sys.stderr,
        )
    finally:
        await close_redis(client)


@contextlib.asynccontextmanager
async def _clusters(
    args: argparse.Namespace,
) -> AsyncIterator[list[tuple[str, asyncpg.Connection]]]:
    """A connection to each ledger cluster `--config` names, with its name (none unless the
    ledger is split): deferred claims, open visits and desks' audit rows live in their region's
    database."""
    async with (
        cluster_partitions(Path(args.config)) as clusters,
        contextlib.AsyncExitStack() as stack,
    ):
        yield [(c.name, await stack.enter_async_context(c.pool.acquire())) for c in clusters]


def plan_show(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        plan = await ledger_plan.load(conn)
        async with _clusters(args) as clusters:
            view = await status.overview(
                conn, plan, [], dt.datetime.now(), [c for _, c in clusters]
            )
        view.pop("breakers")  # per process: see the console or sgw_breaker_state
        if args.json:
            print(json.dumps(view, ensure_ascii=False, indent=2))
            return 0
        print(f"plan version {view['version']}: {view['state']}")
        for r in view["rules"]:
            # When it was set, as the console and --json say (found from outside: the text
            # gave who and why, not when).
            at = as_beijing(dt.datetime.fromisoformat(str(r["set_at"])))
            print(
                f"  {r['scope']:<28} {r['class']:<11} {r['action']:<13} {at:%Y-%m-%d %H:%M:%S}"
                f"  {r['operator']}  {r['reason']}"
            )
        for w in view["windows_active"]:
            print(
                f"  window (active) {w['name']}: {w['scope']} {','.join(w['classes'])} {w['action']} until {w['ends']}"
            )
        for w in view["windows_coming"]:
            print(
                f"  window (coming) {w['name']}: {w['scope']} {','.join(w['classes'])} {w['action']} {w['begins']} – {w['ends']}"
            )
        d = view["deferred"]
        print(
            f"  deferred claims: {d['claims_pending']} waiting, {d['claims_settled']} settled,"
            f" {d['claims_failed']} failed, {d['claims_withdrawn']} withdrawn;"
            # Found from outside: the visit calls a rule kept were in the console only.
            f" deferred visit calls: {d['calls_pending']} waiting, {d['calls_failed']} failed"
        )
        return 0

    return _run(args, work)


def plan_set(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        store.check_routable(args.action, load_config(Path(args.config)).legacy.url, args.klass)
        version = await store.set_rule(
            conn,
            scope=args.scope,
            klass=args.klass,
            action=args.action,
            reason=args.reason,
            operator=_operator(args),
        )
        await _announce(args, version)
        print(f"{args.scope}/{args.klass}: {args.action} (plan version {version})")
        return 0

    return _run(args, work)


def plan_clear(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        version = await store.clear_rule(
            conn, scope=args.scope, klass=args.klass, reason=args.reason, operator=_operator(args)
        )
        await _announce(args, version)
        print(f"{args.scope}/{args.klass}: normal (plan version {version})")
        return 0

    return _run(args, work)


def plan_windows(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        version = 0
        if args.load:
            if not args.reason:
                print("refused: --load needs --reason", file=sys.stderr)
                return 2
            # The reason is the command's, not a window's: checked before them, so a short one
            # is not told as the file's first window's fault (found from outside).
            audit.reason_given(args.reason, "请填写变更原因")
            timetable = await asyncio.to_thread(_timetable, args.load)
            # As `plan set` refuses it (found from outside: a route_legacy window was loaded
            # without the old system's address).
            legacy_url = load_config(Path(args.config)).legacy.url
            for n, w in enumerate(timetable, 1):
                try:
                    store.check_routable(w["action"], legacy_url)
                except BadRequest as exc:
                    raise BadRequest(f"第{n}个时间窗：{exc.err_msg}") from None
            # All or none: a refused window leaves the file's earlier ones unwritten too.
            async with conn.transaction():
                for n, w in enumerate(timetable, 1):
                    try:
                        version = await store.add_window(
                            conn, **w, operator=_operator(args), reason=args.reason
                        )
                    except BadRequest as exc:
                        # The refusal names its window, as the file's checks do (found from
                        # outside: ends-before-begins named none).
                        raise BadRequest(f"第{n}个时间窗：{exc.err_msg}") from None
        if args.remove is not None:
            version = await store.remove_window(
                conn, window_id=args.remove, operator=_operator(args), reason=args.reason or ""
            )
        if version:
            await _announce(args, version)
        plan = await ledger_plan.load(conn)
        now = dt.datetime.now()
        rows = [{**store.window_dict(w), "active": w.active(now)} for w in plan.windows]
        if args.load:
            # Found from outside: a window wholly past (a wrong year or month) loaded without a
            # word, and no stop would ever come of it.
            for n, w in enumerate(timetable, 1):
                if w["ends"] <= now:
                    print(
                        f"warning: 第{n}个时间窗（{w['name']}）已于{w['ends']:%Y-%m-%d %H:%M}结束，"
                        "不会生效：请核对年份和日期",
                        file=sys.stderr,
                    )
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        elif not rows:
            print("no cut-over window")
        else:
            for w in rows:
                flag = "ACTIVE" if w["active"] else ""
                print(
                    f"{w['window_id']:>4} {w['name']:<20} {w['scope']:<20} {','.join(w['classes']):<30}"
                    f" {w['action']:<12} {w['begins']} – {w['ends']} {flag}"
                )
        return 0

    return _run(args, work)


_WINDOW_TEXTS = ("name", "scope", "action")
_WINDOW_TIMES = ("begins", "ends")


def _timetable(path: str) -> list[dict[str, Any]]:
    """The windows of a timetable file (`[[window]]` tables), each field of the kind
    `store.add_window` takes; anything else is refused in words before one is written (found
    from outside: a missing field, a date without its time, an offset or a file that is not
    TOML ended in tracebacks)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequest(f"找不到时间窗文件{path}") from None
    except OSError as exc:
        raise BadRequest(f"无法读取时间窗文件{path}：{exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The notices write a day's end as 24:00 ("7月9日24:00"), which no date-time holds
        # (found from outside: refused with the parser's words alone).
        hint = (
            "；24:00请写作次日00:00（如2021-07-09 24:00写作2021-07-10T00:00:00）"
            if "T24:00" in text or " 24:00" in text
            else ""
        )
        raise BadRequest(f"时间窗文件{path}不是有效的TOML：{exc}{hint}") from None
    windows = doc.get("window", [])
    if not isinstance(windows, list) or not windows:
        raise BadRequest(f"时间窗文件{path}中没有时间窗（每个写作一个[[window]]表）")
    found = []
    for n, w in enumerate(windows, 1):
        at = f"第{n}个时间窗"
        missing = [k for k in (*_WINDOW_TEXTS, "classes", *_WINDOW_TIMES) if k not in w]
        if missing:
            raise BadRequest(f"{at}缺少{'、'.join(missing)}")
        for key in _WINDOW_TEXTS:
            if not isinstance(w[key], str):
                raise BadRequest(f"{at}的{key}应为文字")
        classes = w["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise BadRequest(f'{at}的classes应为交易类别的列表，如["settlement"]')
        for key in _WINDOW_TIMES:
            if not isinstance(w[key], dt.datetime):
                # What is missing, in the clerk's words (found from outside: a bare time was
                # told it was a date).
                lacks = (
                    "只写时间不知是哪一天"
                    if isinstance(w[key], dt.time)
                    else "只写日期不知从几点起"
                    if isinstance(w[key], dt.date)
                    else "应写日期和时间"
                )
                raise BadRequest(f"{at}的{key}应为日期和时间，如2022-03-04T00:00:00（{lacks}）")
        found.append(
            {
                **{key: w[key] for key in _WINDOW_TEXTS},
                "classes": list(classes),
                **{key: as_beijing(w[key]) for key in _WINDOW_TIMES},
            }
        )
    return found


def plan_inflight(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        before = args.before
        async with _clusters(args) as clusters:
            found = inflight.merged(
                [
                    await inflight.report(c, before, args.institution)
                    for c in (conn, *(c for _, c in clusters))
                ]
            )
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
            return 0
        if not found:
            print(f"nothing in flight before {before:%Y-%m-%d %H:%M}")
        for code, parts in found.items():
            print(f"{code}:")
            print(f"  admitted, not settled:    {len(parts['admitted_not_settled'])}")
            for r in parts["admitted_not_settled"]:
                print(f"    {r['mdtrt_id']} {r['ipt_no']} since {r['begntime']} ({r['status']})")
            print(f"  uploaded, not settled:    {len(parts['uploaded_not_settled'])}")
            for r in parts["uploaded_not_settled"]:
                print(f"    {r['mdtrt_id']} {r['lines']} lines {fen_text(r['amount_fen'])}")
            print(f"  pre-settled, not settled: {len(parts['presettled_not_settled'])}")
            for r in parts["presettled_not_settled"]:
                print(f"    {r['mdtrt_id']} {r['infno']} at {r['at']}")
        return 0

    return _run(args, work)


async def _gateway(args: argparse.Namespace) -> Gateway:
    """A gateway runtime over its own pool, to run the online handlers for replay; its journal
    is --journal-dir when given (segments left there are drained first)."""
    import adapters.his.transactions
    import adapters.pos.pharmacy  # noqa: F401 - the handlers replay runs
    from gateway.app.runtime import Gateway
    from gateway.emergency.deferred.replay import REPLAY_LANES

    settings = Settings(
        database_url(args),
        reference_dir=Path(args.reference_dir) if args.reference_dir else DEFAULT_REFERENCE,
        region=args.region,
        # The replay lock, and a connection for each of replay's lanes.
        pool_max=1 + REPLAY_LANES,
        config_path=Path(args.config),
        journal_dir=Path(args.journal_dir) if args.journal_dir else None,
    )
    return await Gateway.start(settings)


def deferred_replay(args: argparse.Namespace) -> int:
    from gateway.emergency.deferred import replay

    if args.journal_dir and not Path(args.journal_dir).is_dir():
        configured = load_config(Path(args.config)).journal.dir
        if Path(args.journal_dir).resolve() != Path(configured).resolve():
            # Found from outside: a mistyped folder drained nothing and said "settled 0 of 0".
            print(f"refused: 找不到目录{args.journal_dir}", file=sys.stderr)
            return 2
        # The gateway's own journal folder, never made: no outage wrote to it (found from
        # outside: the documented command failed on a box that had had none).
        print(
            f"no journal folder {args.journal_dir} yet (no outage wrote to it): nothing to drain",
            file=sys.stderr,
        )
        args.journal_dir = None
    interactive = sys.stderr.isatty()
    # The folder serving gateways journal into: the one given, else the configuration's.
    watched = Path(args.journal_dir or load_config(Path(args.config)).journal.dir)

    async def work(conn: asyncpg.Connection) -> int:
        await replay.wait_for_journals(watched, args.wait)
        gw = await _gateway(args)
        try:
            drained: list[dict[str, Any]] = []  # claims failed as their calls were applied
            if args.journal_dir:
                # Segments left by gateways that are gone are drained before the replay.
                await replay.drain(gw, gw.journal, claims_failed=drained)

            def show(p: replay.Progress) -> None:
                if args.json:
                    return
                done = p.settled + len(p.failed)
                line = f"replayed {done}/{p.total} ({len(p.failed)} failed)"
                if interactive:
                    print(f"\r{line}", end="", file=sys.stderr, flush=True)
                elif done % PROGRESS_EVERY == 0 or done == p.total:
                    # Redirected to a file: a line now and then, not one line of every count
                    # overwritten by carriage returns (found from outside: 60 KB on one line).
                    print(line, file=sys.stderr, flush=True)

            progress = await replay.replay(gw, show, args.wait, drained)
            kept = replay.kept_segments(gw.journal) if args.journal_dir else []
        finally:
            await gw.close()
        if not args.json and interactive:
            print(file=sys.stderr)
        summary = {
            "total": progress.total,
            "settled": progress.settled,
            "failed": progress.failed,
            "waiting": progress.waiting,
            "owed": progress.owed,
            "damaged_segments": [str(p) for p in kept],
        }
        if args.json:
            print(json.dumps(summary, ensure_ascii=False, indent=2))
        else:
            print(f"settled {progress.settled} of {progress.total} deferred claims")
            if progress.owed:
                print(f"recorded {progress.owed} reimbursements owed to patients (payouts owed)")
            for f in progress.failed:
                print(f"failed {f['claim_id']} ({f['mdtrt_id']}): {f['reason']}")
            for w in progress.waiting:
                print(f"waiting {w['claim_id']} ({w['mdtrt_id']}): {w['reason']}")
        for p in kept:
            print(
                f"journal segment {p} holds records that could not be read: kept for the "
                "emergency team; their msgids, where legible, are refused on retry",
                file=sys.stderr,
            )
        return 1 if progress.failed or kept else 0

    return _run(args, work)


def deferred_list(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        async with _clusters(args) as clusters:
            every = (conn, *(c for _, c in clusters))
            read = deferred.calls if args.calls else deferred.claims
            rows = [r for c in every for r in await read(c)]
        if args.status:
            rows = [r for r in rows if r["status"] == args.status]
        if args.json:
            for r in rows:
                if not args.calls:
                    # The national field's name, so its unit: yuan text, as in `setlinfo` (found
                    # from outside: fen here beside yuan there); the `_fen` fields stay fen.
                    r = {**r, "medfee_sumamt": fen_text(r["medfee_sumamt"])}
                print(json.dumps(r, ensure_ascii=False))
            return 0
        if not rows:
            # Found from outside: an empty list printed nothing, as if the command had not run;
            # and with a --status filter it said there were none at all.
            if args.status:
                what = "暂存就诊调用" if args.calls else "暂存结算（主动报）"
                print(f"没有状态为{args.status}的{what}")
            else:
                print("没有暂存的就诊调用" if args.calls else "没有暂存的结算（主动报）")
            return 0
        if args.calls:
            for r in rows:
                visit = r["provisional_id"] or r["mdtrt_id"] or "-"
                print(
                    f"{r['infno']} {r['fixmedins_code']} {r['msgid']} {r['psn_no'] or '-'}"
                    f" {visit}{' → ' + r['applied_as'] if r['applied_as'] else ''}"
                    f" {r['received_at']} {r['status']}"
                    + (f" ({r['fail_reason']})" if r["fail_reason"] else "")
                )
            return 0
        for r in rows:
            if r["settlement_status"] == "cancelled":
                owed = " (settlement cancelled: nothing owed)"
            elif r["owed_fen"] is None:
                owed = ""
            else:
                owed = f" reimburse {fen_text(r['owed_fen'])}"
            print(
                f"{r['claim_id']} {r['fixmedins_code']} {r['psn_no']} {r['mdtrt_id'] or '-'}"
                f" {r['service_date']} {fen_text(r['medfee_sumamt'])} {r['status']}{owed}"
                + (f" ({r['fail_reason']})" if r["fail_reason"] else "")
            )
        return 0

    return _run(args, work)


def _not_failed(claim_id: str, status: str, setl_id: str | None) -> str:
    """Why `deferred retry` does not take a claim that did not fail, by where it stands."""
    if status == "settled":
        return f"暂存结算{claim_id}已补结算（结算ID{setl_id}），无需重新补结算"
    if status == "withdrawn":
        return f"暂存结算{claim_id}已由医药机构撤销，不能补结算"
    if status == "pending":
        return f"暂存结算{claim_id}正待补结算，`deferred replay`即会结算，无需重试"
    return f"暂存结算{claim_id}当前状态为{status}，只有补结算未成功（failed）的才能重新补结算"


def deferred_retry(args: argparse.Namespace) -> int:
    """A claim replay could not settle, pending again once its cause is mended (found from
    outside: every sale's claim of an outage filed failed by a replay run in the wrong time
    zone, and nothing but a withdrawal at each counter left to do)."""
    try:
        reason = audit.reason_given(args.reason, "请填写重新补结算的原因")
    except BadRequest as exc:
        print(f"refused: {exc.err_msg}", file=sys.stderr)
        return 2

    async def work(conn: asyncpg.Connection) -> int:
        async with _clusters(args) as clusters:
            for here in (conn, *(c for _, c in clusters)):
                async with here.transaction():
                    was = await deferred.reopen(here, args.claim_id)
                    if was is None:
                        continue
                    await audit.append(
                        here,
                        operator=_operator(args),
                        action="deferred.retry",
                        target=f"{was['fixmedins_code']}/{args.claim_id}",
                        reason=reason,
                        before={"status": "failed", "fail_reason": was["fail_reason"]},
                        after={"status": "pending"},
                    )
                print(
                    f"{args.claim_id} is pending again (was failed: {was['fail_reason']});"
                    " `deferred replay` settles it"
                )
                return 0
            # Found from outside: a settled claim and a withdrawn one were told alike that no
            # failed claim has the number; the clerk is told where it stands.
            for here in (conn, *(c for _, c in clusters)):
                found = await deferred.claim_standing(here, args.claim_id)
                if found is not None:
                    raise BadRequest(_not_failed(args.claim_id, *found))
        raise BadRequest(f"暂存结算{args.claim_id}不存在，请核对暂存结算单号（DF开头）")

    return _run(args, work)


def audit_verify(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        # Each ledger database keeps its own chain (a desk's step is audited where it ran).
        async with _clusters(args) as clusters:
            broken = 0
            named = [("main", conn), *clusters]
            for name, c in named:
                verdict = await audit.verify(c)
                if verdict.broken_at is None:
                    print(f"audit log intact ({name}): {verdict.rows} rows")
                    continue
                broken += 1
                print(
                    f"audit log BROKEN ({name}) at row {verdict.broken_at}: {verdict.problem}",
                    file=sys.stderr,
                )
        return 1 if broken else 0

    return _run(args, work)


def encounter_convert(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection) -> int:
        psn_no = await conversion.convert(
            conn, args.mdtrt_id, operator=_operator(args), reason=args.reason
        )
        print(
            f"{args.mdtrt_id}: converted to insured ({psn_no}); settle it with 2303/2304, or, if"
            " its 2304 was taken as a claim under the plan, `deferred replay` settles the claim"
        )
        return 0

    return _run(args, work)


def operators_hash(args: argparse.Namespace) -> int:
    """Print the scrypt hash of a password for config/…/operators.toml (read without echo)."""
    from gateway.emergency.operators import hash_password

    password = (
        getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    )
    if len(password) < 8:
        print("refused: a password needs at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def add_commands(sub: Any, add_database: Callable[[argparse.ArgumentParser], None]) -> None:
    """The plan, deferred, audit and encounter command groups."""
    from gateway.emergency.plan.rules import ACTIONS, CLASSES

    # The values, not the members: argparse names a wrong choice by the choices' repr.
    classes = [c.value for c in CLASSES]

    def common(p: argparse.ArgumentParser, *, changes: bool = False, ledgers: bool = False) -> None:
        add_database(p)
        if ledgers:
            p.add_argument(
                "--config",
                default=str(DEFAULT_CONFIG),
                type=config_arg,
                help="gateway.toml: its [[ledger_clusters]] are read as well",
            )
        if changes:
            p.add_argument("--operator", help="recorded in the audit log (default cli:<login>)")
            p.add_argument("--redis-url", default=os.environ.get("GATEWAY_REDIS_URL"))
            p.add_argument(
                "--config",
                default=str(DEFAULT_CONFIG),
                type=config_arg,
                help="gateway.toml: the change is announced on its [redis] sentinels' master",
            )

    p = sub.add_parser("plan", help="the emergency plan: rules, windows, in-flight work")
    psub = p.add_subparsers(dest="plan_command", required=True)
    ps = psub.add_parser("show", help="every rule in force, windows, deferred claims")
    ps.add_argument("--json", action="store_true")
    common(ps, ledgers=True)
    ps.set_defaults(func=plan_show)
    pset = psub.add_parser("set", help="put a scope/class into degraded mode")
    pset.add_argument(
        "--scope", required=True, help="global | region:<admdvs> | institution:<code>"
    )
    pset.add_argument("--class", dest="klass", required=True, choices=classes)
    pset.add_argument("--action", required=True, choices=[a.value for a in ACTIONS])
    pset.add_argument("--reason", required=True)
    common(pset, changes=True)
    pset.set_defaults(func=plan_set)
    pc = psub.add_parser("clear", help="back to normal for a scope/class")
    pc.add_argument("--scope", required=True)
    pc.add_argument("--class", dest="klass", required=True, choices=classes)
    pc.add_argument("--reason", required=True)
    common(pc, changes=True)
    pc.set_defaults(func=plan_clear)
    pw = psub.add_parser("windows", help="list cut-over windows; --load a timetable file")
    pw.add_argument("--load", help=f"TOML timetable (example: {WINDOWS_EXAMPLE})")
    pw.add_argument("--remove", type=int, help="window_id to remove")
    pw.add_argument("--reason")
    pw.add_argument("--json", action="store_true")
    common(pw, changes=True)
    pw.set_defaults(func=plan_windows)
    pi = psub.add_parser("inflight", help="open work per institution before a window")
    pi.add_argument(
        "--before", required=True, type=local_time_arg, help="window start, e.g. 2022-03-04T00:00"
    )
    pi.add_argument("--institution")
    pi.add_argument("--json", action="store_true")
    common(pi, ledgers=True)
    pi.set_defaults(func=plan_inflight)

    d = sub.add_parser("deferred", help="deferred claims (主动报)")
    dsub = d.add_subparsers(dest="deferred_command", required=True)
    dr = dsub.add_parser("replay", help="settle pending claims in service-date order")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--config", default=str(DEFAULT_CONFIG), type=config_arg)
    dr.add_argument("--reference-dir")
    dr.add_argument("--region", default="441800")
    dr.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for another replay, a gateway applying deferred calls, or a"
        " serving gateway's journal to drain",
    )
    dr.add_argument(
        "--journal-dir",
        help="drain journal segments left here first ([journal] dir of --config may not exist yet)",
    )
    common(dr)
    dr.set_defaults(func=deferred_replay)
    dt_ = dsub.add_parser("retry", help="a claim replay could not settle, pending again")
    dt_.add_argument("--claim-id", required=True)
    dt_.add_argument("--reason", required=True)
    dt_.add_argument("--operator", help="recorded in the audit log (default cli:<login>)")
    common(dt_, ledgers=True)
    dt_.set_defaults(func=deferred_retry)
    dl = dsub.add_parser("list", help="every claim, its status, setlinfo and reimbursement")
    dl.add_argument("--json", action="store_true", help="one JSON object per line")
    dl.add_argument("--status", choices=("pending", "settled", "applied", "failed", "withdrawn"))
    dl.add_argument(
        "--calls",
        action="store_true",
        help="the visit calls kept instead (2201, 2203, 2204, 2401, …): applied, pending or failed",
    )
    common(dl, ledgers=True)
    dl.set_defaults(func=deferred_list)

    a = sub.add_parser("audit", help="the hash-chained audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="recompute the chain; exit 1 when broken")
    common(av, ledgers=True)
    av.set_defaults(func=audit_verify)

    o = sub.add_parser("operators", help="the console's operators")
    osub = o.add_subparsers(dest="operators_command", required=True)
    oh = osub.add_parser("hash", help="hash a password (stdin) for operators.toml")
    oh.set_defaults(func=operators_hash)

    e = sub.add_parser("encounter", help="visit operations")
    esub = e.add_subparsers(dest="encounter_command", required=True)
    ec = esub.add_parser("convert", help="自费转医保: a self-pay admission becomes insured")
    ec.add_argument("--mdtrt-id", required=True)
    ec.add_argument("--reason", required=True)
    common(ec, changes=True)
    ec.set_defaults(func=encounter_convert)
