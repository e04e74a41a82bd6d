"""The command line: `demo load` and `serve` as real processes."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from gateway.pipeline.auth import sign_headers
from tests.integration.his_client import CREDENTIALS, HisClient

ROOT_ENV = {"PYTHONUNBUFFERED": "1"}


async def _fresh(new_database: Callable[..., Any], prefix: str) -> str:
    made = new_database(prefix)
    dsn = await made if inspect.isawaitable(made) else made
    assert isinstance(dsn, str)
    return dsn


async def _gateway(*argv: str) -> tuple[int | None, str, str]:
    """`python -m gateway ARGV` as a process: its exit status, output and error output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode(), err.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_demo_load_resets_to_the_demo_set(new_database: Callable[..., Any]) -> None:
    dsn = await _fresh(new_database, "cli")
    for _ in range(2):  # a reload replaces, it does not duplicate
        code, out, err = await _gateway("demo", "load", "--database-url", dsn)
        assert code == 0, out + err
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM persons") == 11
        assert await conn.fetchval("SELECT count(*) FROM institutions") == 9
        assert await conn.fetchval("SELECT count(*) FROM catalog_mappings") == 195
        assert (
            await conn.fetchval(
                "SELECT balance_fen FROM accounts WHERE psn_no = '441800000000000002'"
            )
            == 500000
        )
    finally:
        await conn.close()


async def test_serve_with_two_workers_answers(new_database: Callable[..., Any]) -> None:
    dsn = await _fresh(new_database, "serve")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        "--database-url",
        dsn,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _ready(port)
        async with aiohttp.ClientSession() as session:
            body = msgspec.json.encode(
                {
                    "infno": "1101",
                    "msgid": "H44180000001202611220000000001",
                    "fixmedins_code": "H44180000001",
                    "infver": "V1.0",
                    "input": {
                        "data": {
                            "mdtrt_cert_type": "03",
                            "mdtrt_cert_no": "QY0000000004",
                            "card_sn": "x",
                        }
                    },
                }
            )
            for _ in range(10):  # several connections, spread over both workers
                headers = sign_headers(
                    "H44180000001", CREDENTIALS["H44180000001"], uuid.uuid4().hex
                )
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.post(
                        f"http://127.0.0.1:{port}/fsi/api/rsfComIfsService/callService",
                        data=body,
                        headers=headers,
                    ) as r,
                ):
                    assert r.status == 200
                    answer = msgspec.json.decode(await r.read())
                    assert answer["infcode"] == 0
                    assert answer["output"]["baseinfo"]["psn_no"] == "441800000000000004"
            # Traffic that touches every family: a payment sent twice (a replay), a card that
            # identifies nobody, and a plan change made from the CLI that both workers pick up.
            pos = HisClient(session, f"http://127.0.0.1:{port}", "P44180000001")
            drug = pos.drug_input("441800000000000001", "2026-03-02 10:00:00", "80.00", [
                {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"}
            ])  # fmt: skip
            paid = msgspec.json.encode(pos.envelope("2102", drug))
            for _ in range(2):
                assert msgspec.json.decode((await pos.post_raw(paid))[1])["infcode"] == 0
            unknown = {
                "data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "NOSUCHCARD", "card_sn": "x"}
            }
            assert (await pos.call("1101", unknown))["infcode"] == -1
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway", "plan", "set", "--scope", "global", "--class",
                 "reconcile", "--action", "reject", "--reason", "演练", "--database-url", dsn],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            await asyncio.sleep(2.5)  # both workers poll the plan version every second
            # Whichever worker answers the scrape, the counts are the whole gateway's.
            families = (
                "sgw_requests_total",
                "sgw_request_duration_seconds_bucket",
                "sgw_catalog_version",
                "sgw_db_pool_connections",
                "sgw_fund_paid_fen_total",
                "sgw_idempotent_replays_total",
                "sgw_institution_errors_total",
                "sgw_terminal_identity_failures_total",
                "sgw_reconcile_mismatches_total",
                'sgw_plan_degraded{class="reconcile",scope="global"} 1.0',
                # One change, counted once: found from outside, each worker counted it.
                'sgw_plan_changes_total{action="reject",class="reconcile",scope="global"} 1.0',
                "sgw_deferred_claims",
                "sgw_deferred_claims_journaled",
                "sgw_deferred_claims_failed",
                'sgw_breaker_state{dependency="postgres"} 0.0',
            )
            for _ in range(4):
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(f"http://127.0.0.1:{port}/metrics") as r,
                ):
                    text = await r.text()
                for family in families:
                    assert family in text, family
                assert 'sgw_requests_total{infno="1101",outcome="ok"} 10.0' in text
                assert "sgw_idempotent_replays_total 1.0" in text
            async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                ready = await r.json()
                assert ready["database"] == "ok" and ready["redis"] == "not configured"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux's /proc children list)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except FileNotFoundError:
        return []


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        children = _children(todo.pop())
        found.update(children)
        todo.extend(children)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_stop_when_their_supervisor_is_killed(
    new_database: Callable[..., Any],
) -> None:
    """`serve --workers 2` killed outright (SIGKILL runs no handler): its workers, and their
    upload readers, notice and stop, and the port is free again; left running they went on
    answering on the shared port with the settings of a gateway nobody runs any more."""
    dsn = await _fresh(new_database, "orphans")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
        "--database-url", dsn,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            ready = 0
            for _ in range(600):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                        ready = r.status
                except aiohttp.ClientError:
                    pass
                # Both workers have started their upload readers.
                workers = [pid for pid in _children(proc.pid) if _children(pid)]
                if ready == 200 and len(workers) == 2:
                    break
                await asyncio.sleep(0.1)
        below = _descendants(proc.pid)
        assert ready == 200 and len(workers) == 2
        proc.kill()
        await proc.wait()
        for _ in range(300):
            if not any(_running(pid) for pid in below):
                break
            await asyncio.sleep(0.1)
        assert not [pid for pid in below if _running(pid)], "processes outlived the supervisor"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "something still answers on the port"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_worker_is_replaced(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """`serve --workers 2` with one worker killed outright: the supervisor starts another in
    its place (the gateway was left a process short until restarted), the port keeps
    answering, and SIGTERM still stops every process."""
    dsn = await _fresh(new_database, "replace")
    port = _free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stop the gateway
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
            "--database-url", dsn, stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip

    async def two_workers() -> list[int]:
        for _ in range(600):
            workers = [pid for pid in _children(proc.pid) if _children(pid)]
            if len(workers) == 2:
                return workers
            await asyncio.sleep(0.1)
        raise AssertionError(f"workers: {_children(proc.pid)}")

    try:
        first = await two_workers()
        readers = _children(first[0])  # the killed worker's: they must not outlive it
        os.kill(first[0], signal.SIGKILL)
        for _ in range(300):
            now = [pid for pid in _children(proc.pid) if _children(pid)]
            if len(now) == 2 and first[0] not in now:
                break
            await asyncio.sleep(0.1)
        replaced = await two_workers()
        assert first[0] not in replaced and first[1] in replaced
        async with aiohttp.ClientSession() as session:
            for _ in range(10):  # fresh connections, spread over both workers
                async with session.get(
                    f"http://127.0.0.1:{port}/readyz", headers={"Connection": "close"}
                ) as r:
                    assert r.status == 200
        below = _descendants(proc.pid)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0
        logged = log.read_text(errors="replace")
        assert f"worker {first[0]} exited" in logged and "another starts" in logged
        for _ in range(100):
            if not any(_running(pid) for pid in below):
                break
            await asyncio.sleep(0.1)
        assert not [pid for pid in [*below, *readers] if _running(pid)]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_serve_without_its_database_stops_in_one_line() -> None:
    """Found from outside: started while the database was out of reach (a restart during an
    outage, the network swallowing packets), `serve` waited without a deadline, listened
    nowhere, and died with a traceback when the database came back. It gives up after
    --start-timeout in one line, exit status 2, for a supervisor to start it again; a port that
    refuses is tried again until then (found from outside: it ended at once, its line saying it
    had waited)."""
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel and are never answered
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        for sock, within in ((silent, 30), (closed, 30)):
            port = sock.getsockname()[1]
            done = subprocess.run(
                [sys.executable, "-m", "gateway", "serve", "--port", "0",
                 "--database-url", f"postgresql://postgres@127.0.0.1:{port}/none",
                 "--start-timeout", "2"],
                capture_output=True, text=True, timeout=within, check=False,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "无法连接数据库，网关未启动" in lines[0], done.stderr
            if sock is silent:  # in the clerk's language throughout (found from outside)
                assert "2秒内无应答" in lines[0], lines[0]


async def test_serve_starts_once_its_database_answers_within_the_start_timeout(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: a gateway started five seconds before its database came back had
    already given up (a refused connection ended the start at once); without a process manager
    the site stayed down after the database recovered. It keeps trying until --start-timeout."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.adversity.proxy import Proxy

    dsn = await _fresh(new_database, "late")
    parts = urlsplit(dsn)
    if not parts.hostname or parts.hostname.startswith("/"):
        return  # reached by a Unix socket: nothing to put in between
    port = _free_port()  # nothing listens there yet: connections are refused
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    late = urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", parts.path, parts.query, ""))
    http = _free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(http),
            "--database-url", late, "--start-timeout", "20",
            stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    proxy = Proxy(parts.hostname, parts.port or 5432)
    try:
        await asyncio.sleep(2.0)
        assert proc.returncode is None, log.read_text(errors="replace")  # still trying
        await proxy.start(port)  # the database answers now
        await _ready(http, proc, log)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()


async def test_demo_load_resets_what_reads_the_ledger_too(new_database: Callable[..., Any]) -> None:
    """Found from outside: `demo load` reset the settlements but kept the deferred claims (and the
    manual claims, payouts and clearing built on settlements), so a replay after the reload
    settled a claim from before it into the fresh ledger."""
    from tests.integration.conftest import GENEROUS, running_gateway
    from tests.integration.emergency_helpers import clear_rule, set_rule
    from tests.integration.test_group_commit import basket

    pharmacy, person = "P44180000001", "441800000000000001"
    async with running_gateway(new_database, GENEROUS) as server:
        pos = server.client(pharmacy)
        await set_rule(server.dsn, f"institution:{pharmacy}", "settlement", "defer")
        for _ in range(50):
            answer = await pos.call(
                "2102", pos.drug_input(person, "2026-03-02 09:30:00", "9.90", basket("9.90"))
            )
            if str(answer["output"]["setlinfo"]["setl_id"]).startswith("DF"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the plan's defer never came into force")
        await clear_rule(server.dsn, f"institution:{pharmacy}", "settlement")
        assert await server.fetchval("SELECT count(*) FROM deferred") >= 1
        code, out, err = await _gateway("demo", "load", "--database-url", server.dsn)
        assert code == 0, out + err
        assert await server.fetchval("SELECT count(*) FROM deferred") == 0
        assert await server.fetchval("SELECT count(*) FROM settlements") == 0

        # An empty list says so in words (found from outside: it printed nothing); its JSON
        # lines are none.
        async def listed(*argv: str) -> str:
            code, out, err = await _gateway("deferred", "list", *argv, "--database-url", server.dsn)
            assert code == 0, err
            return out

        assert (await listed()).strip() == "没有暂存的结算（主动报）"
        assert (await listed("--calls")).strip() == "没有暂存的就诊调用"
        # Filtered, it says of which (found from outside: "none at all" with settled ones there).
        assert (
            await listed("--status", "failed")
        ).strip() == "没有状态为failed的暂存结算（主动报）"
        assert await listed("--json") == ""
        # The plan is the emergency team's, not the ledger's: a reload keeps it and its trail.
        assert await server.fetchval("SELECT count(*) FROM audit_log") >= 2


async def test_serve_on_a_port_in_use_says_so_and_stops(new_database: Callable[..., Any]) -> None:
    """Found from outside: a gateway left listening on the port made `serve` die in a traceback,
    and with `--workers 2` its workers were started again every 30 s for good."""
    dsn = await _fresh(new_database, "busyport")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for workers in ("1", "2"):
            code, _, words = await _gateway(
                "serve", "--port", str(port), "--workers", workers, "--database-url", dsn
            )
            assert code == 2, words
            assert f"无法在127.0.0.1:{port}上监听" in words and "Traceback" not in words, words


_WORKER_WITHOUT_LEDGER = """
import multiprocessing, os, sys
from gateway.app.cli import _serve_one
from gateway.app.config import Settings

if __name__ == "__main__":
    settings = Settings(sys.argv[1])
    worker = multiprocessing.get_context("spawn").Process(
        target=_serve_one, args=(settings, "127.0.0.1", int(sys.argv[2]), os.getpid())
    )
    worker.start()
    worker.join(60)
    print(worker.exitcode)
"""


async def test_a_worker_started_while_the_ledger_is_away_says_so_in_one_line() -> None:
    """Found from outside: each worker the supervisor started again during an outage wrote a
    multi-line traceback into a log of one JSON object a line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER_WITHOUT_LEDGER,
        f"postgresql://postgres@127.0.0.1:{closed}/none", str(_free_port()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert out.decode().strip() == "2", (out, err)
    lines = err.decode().splitlines()
    assert "Traceback" not in err.decode(), err.decode()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["msg"] for r in logged if r["level"] == "error"] == [
        next(r["msg"] for r in logged if "database is out of reach" in r["msg"])
    ], lines
    assert all(line.startswith("{") for line in lines if line.strip()), lines


async def _ready(
    port: int, proc: asyncio.subprocess.Process | None = None, log: Path | None = None
) -> None:
    """Until the gateway on `port` answers /readyz 200; a failure names its `log`, at once
    where its `proc` has exited."""

    def said() -> str:
        return log.read_text(errors="replace") if log else "the gateway never became ready"

    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert proc is None or proc.returncode is None, said()
            await asyncio.sleep(0.1)
    raise AssertionError(said())


async def test_a_stop_signal_answers_the_requests_in_flight(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: SIGTERM (and SIGINT) reset every request in flight at once, on every
    stop and deploy; the tills' retries then settled them afresh. The listening socket closes,
    and a sale waiting for the ledger at the signal is answered before the process ends."""
    dsn = await _fresh(new_database, "drain")
    code, out, err = await _gateway("demo", "load", "--database-url", dsn)
    assert code == 0, out + err
    person = "441800000000000001"
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--pool-max", "4",
            "--database-url", dsn,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await _ready(port)
            holder = await asyncpg.connect(dsn)
            held = holder.transaction()
            await held.start()
            # The sale waits on its person's account row, held here past the signal.
            await holder.execute("SELECT 1 FROM accounts WHERE psn_no = $1 FOR UPDATE", person)
            async with aiohttp.ClientSession() as session:
                pos = HisClient(session, f"http://127.0.0.1:{port}", "P44180000001")
                drug = pos.drug_input(person, "2026-03-02 10:00:00", "80.00", [
                    {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"}
                ])  # fmt: skip
                sale = asyncio.create_task(pos.call("2102", drug))
                for _ in range(200):
                    waiting = await holder.fetchval(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                        " WHERE NOT l.granted AND a.datname = current_database()"
                    )
                    if waiting:
                        break
                    await asyncio.sleep(0.05)
                else:
                    done = sale.result() if sale.done() else "still waiting"
                    raise AssertionError(f"the sale never reached the ledger: {done}")
                proc.send_signal(sig)
                await asyncio.sleep(1.0)
                await held.rollback()
                await holder.close()
                answer = await asyncio.wait_for(sale, timeout=30)
            assert answer["infcode"] == 0, answer
            assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
            assert proc.stderr is not None
            lines = (await proc.stderr.read()).decode().splitlines()
            said = [json.loads(x) for x in lines if x.startswith("{")]
            stops = [
                (x["msg"], x.get("signal")) for x in said if x.get("logger", "").endswith("server")
            ]
            assert stops == [
                ("stopping: the requests in flight are answered first", sig.name),
                ("stopped", sig.name),
            ], said[-5:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_serve_with_a_journal_folder_it_cannot_write_says_so_and_stops(
    tmp_path: Path,
) -> None:
    """Found from outside: a journal folder that could not be written was found out only when
    the ledger went away, the plan's deferrals then failing as "unavailable"."""
    config = tmp_path / "gateway.toml"
    config.write_text('[journal]\ndir = "/proc/no-such-folder/journal"\n', encoding="utf-8")
    code, _, err = await _gateway(
        "serve", "--config", str(config), "--port", str(_free_port()),
        "--database-url", "postgresql://postgres@127.0.0.1:1/none",
    )  # fmt: skip
    assert code == 2, err
    assert "应急暂存目录/proc/no-such-folder/journal不可写" in err and "Traceback" not in err


async def test_serve_started_in_another_zone_runs_in_beijing_time(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: a gateway started on a host kept in UTC warned and served in UTC:
    a till's sale dated by its Beijing clock was refused as in the future, the settlement it
    did take was stamped 8 hours back, and a cut-over window began 8 hours late. Started in
    another zone, it runs in Beijing time, the national interface's, and says so."""
    import datetime as dt

    dsn = await _fresh(new_database, "zone")
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--database-url", dsn,
            stdout=out, stderr=out, env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
    try:
        await _ready(port, proc, log)
        assert "it runs in Beijing time (TZ=CST-8)" in log.read_text(), log.read_text()
        beijing = dt.timezone(dt.timedelta(hours=8))
        now = dt.datetime.now(beijing).replace(tzinfo=None, microsecond=0)
        async with aiohttp.ClientSession() as session:
            pos = HisClient(session, f"http://127.0.0.1:{port}", "P44180000001")
            drug = pos.drug_input("441800000000000001", f"{now:%Y-%m-%d %H:%M:%S}", "80.00", [
                {"feedetl_sn": "1", "medins_list_codg": "YP0003", "pric": "40", "cnt": "2", "det_item_fee_sumamt": "80.00"}
            ])  # fmt: skip
            answer = await pos.call("2102", drug)
            assert answer["infcode"] == 0, answer["err_msg"]
            stamped = dt.datetime.strptime(
                answer["output"]["setlinfo"]["setl_time"], "%Y-%m-%d %H:%M:%S"
            )
            assert abs(stamped - now) < dt.timedelta(minutes=2), (stamped, now)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
