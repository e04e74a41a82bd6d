"""Pharmacy load under attack: do the other institutions keep their latency?

    python benchmarks/adversity_load.py [--duration 20] [--rounds 3] [--rate R]
                                        [--attacks bombs,logins,unsigned|none]
                                        [--results benchmarks/RESULTS.md] [--profile DIR]

One gateway worker (signing on, config/bench.toml) over a fresh database on the local
PostgreSQL, 2101 pre-settlements and durable 2102 sales from three pharmacies (four terminals
each, synthetic persons of their own regions), open loop at a fixed rate: half of what the same
mix reaches closed-loop on this machine, measured first, unless --rate is given. Rounds
alternate quiet (load only) and attacked (the same load while another institution posts hostile
9101 detail files in a loop, 16 clients flood the console log-in with wrong passwords, and
unsigned 4 MB bodies arrive twice a second; `--attacks none` is the control: the same phases
with an idle attacker). Phases run in ABBA order (quiet first in odd rounds, attacked first in
even ones) so a drift of the box over the run falls on both sides; the attack process runs at
nice 19, standing for another machine's CPU (--attacker-nice). /metrics is scraped every 0.5 s: any
sgw_breaker_state other than 0 fails the run.

The load and the attack run as processes of their own (this file with --role load / attack),
so the attack's client work never delays the measuring loop more than the machine does.
Latency is measured from each request's scheduled start, so a late start counts against it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import io
import json
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import aiohttp  # noqa: E402
import uvloop  # noqa: E402
from http_harness import (  # noqa: E402
    Profiler,
    add_server_arg,
    cpu_seconds,
    create_db,
    drop_db,
    free_port,
    gateway_cli,
    start_gateway,
    tree,
    with_db,
)

from loadtest import envelopes as env  # noqa: E402

PY = sys.executable
MB = 1024 * 1024
# The victims: a pharmacy in each demo region, selling to that region's synthetic persons.
PHARMACIES = [("P44180000001", "441800"), ("P52050000001", "520500"), ("P33030000001", "330300")]
TERMINALS_PER_PHARMACY = 4
# The attacker: a hospital of the first region, signing its uploads with its own secret.
ATTACKER = "H44180000002"
LOGIN = "/api/console/login"
LOGIN_CLIENTS = 16
ATTACKS = "bombs,logins,unsigned"
UNSIGNED_PER_SECOND = 2.0
BUSY_WORDS = ("繁忙", "稍候")
BUDGET_WORDS = ("大文件上传已达", "超出流量限额")
LINE = b"DF1\tMZ1\t441800000000000001\t10.00\t6.00\t0.00\t0\n"


# ------------------------------------------------------------------------------ the bombs


def _zeros(megabytes: int) -> Iterator[bytes]:
    block = bytes(MB)
    for _ in range(megabytes):
        yield block


def _zip(members: Sequence[tuple[str, Iterator[bytes] | bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in members:
            with zf.open(name, "w") as member:
                for chunk in [data] if isinstance(data, bytes) else data:
                    member.write(chunk)
    return out.getvalue()


def _lying(packed: bytes, declared: int) -> bytes:
    raw = bytearray(packed)
    struct.pack_into("<L", raw, raw.find(b"PK\x03\x04") + 22, declared)
    struct.pack_into("<L", raw, raw.find(b"PK\x01\x02") + 24, declared)
    return bytes(raw)


def build_bombs() -> list[dict[str, str]]:
    """The hostile detail files of tests/adversity/test_upload_bombs.py that unpack big or nest:
    built once, before the first round, so building them costs no round any CPU."""
    bomb = _zip([("detail.txt", _zeros(300))])
    files: list[tuple[str, bytes, str]] = [
        ("deflate bomb 300 MiB", bomb, "detail.zip"),
        ("lying sizes", _lying(bomb, 100), "detail.zip"),
        ("nested zip", _zip([("inner.zip", bomb)]), "detail.zip"),
        ("nested zip, renamed", _zip([("detail.txt", bomb)]), "detail.zip"),
        (
            "5,000 members",
            _zip([("detail.txt", LINE)] + [(f"x{n}.txt", b"") for n in range(5000)]),
            "detail.zip",
        ),
        ("30 MiB line", _zip([("detail.txt", (b"7" * MB for _ in range(30)))]), "detail.zip"),
        ("gzip 50 MB", gzip.compress(bytes(50 * MB)), "detail.gz"),
    ]
    return [
        {"name": name, "in": base64.b64encode(packed).decode(), "filename": filename}
        for name, packed, filename in files
    ]


# ------------------------------------------------------------------------------ statistics


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def pooled_p99(phases: list[dict[str, Any]]) -> float:
    every = [x for p in phases for x in p["load"].get("latencies_ms", [])]
    return pct(every, 0.99) / 1000  # pct scales seconds to ms; these are ms already


def wait_until(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def is_busy(text: str) -> bool:
    return any(w in text for w in BUSY_WORDS)


def is_over_budget(text: str) -> bool:
    """The institution's upload budget refused it (gateway.pipeline.overload.UploadBudget)."""
    return any(w in text for w in BUDGET_WORDS)


# ------------------------------------------------------------------------------ the victims


class Victims:
    """Counters of three pharmacies, signing every request with a fresh msgid and nonce."""

    def __init__(self, session: aiohttp.ClientSession, url: str, persons: int) -> None:
        self.session = session
        self.url = url + env.PATH
        self.persons = persons
        self.terminals = [
            env.Terminal(code, f"POS{k:04d}", region)
            for code, region in PHARMACIES
            for k in range(1, TERMINALS_PER_PHARMACY + 1)
        ]
        self.latency: dict[str, list[float]] = {"2101": [], "2102": []}
        self.ok_latency: list[float] = []
        self.lag: list[float] = []
        self.counts: Counter[str] = Counter()
        self.first_refusal = ""
        self.t0 = 0.0  # the phase's start: latencies by the second they were scheduled in
        self.by_second: dict[int, list[float]] = {}
        self.by_tenth: dict[int, list[float]] = {}  # the first 3 s: where an onset's tail is

    async def one(self, n: int, scheduled: float) -> None:
        terminal = self.terminals[n % len(self.terminals)]
        infno = "2101" if n % 2 == 0 else "2102"
        psn = env.synthetic_person(random.randint(1, self.persons), terminal.region)
        body = terminal.envelope(infno, env.drug_input(psn))
        measured = scheduled >= self.t0
        if measured:
            self.lag.append(time.perf_counter() - scheduled)
        try:
            async with self.session.post(self.url, data=body, headers=terminal.headers()) as r:
                raw = await r.read()
        except (aiohttp.ClientError, TimeoutError):
            self.counts["failed"] += 1
            return
        if not measured:
            return  # the warm-up: connections opened, pools and caches at their steady state
        seconds = time.perf_counter() - scheduled
        self.latency[infno].append(seconds)
        self.by_second.setdefault(int(scheduled - self.t0), []).append(seconds)
        if scheduled - self.t0 < 3.0:
            self.by_tenth.setdefault(int((scheduled - self.t0) * 10), []).append(seconds)
        if b'"infcode":0' in raw:
            self.counts["ok"] += 1
            self.ok_latency.append(seconds)
        elif is_busy(raw.decode(errors="replace")):
            self.counts["busy"] += 1
        else:
            self.counts["refused"] += 1
            if not self.first_refusal:
                self.first_refusal = raw.decode(errors="replace")[:300]


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        victims = Victims(session, args.url, args.persons)
        warm = args.warm if args.rate else 0.0
        await asyncio.to_thread(wait_until, args.start_at - warm)
        started = time.perf_counter()
        victims.t0 = started + warm  # what is scheduled before it is not measured
        deadline = victims.t0 + args.duration
        n = 0
        if args.rate:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / args.rate
            while (now := time.perf_counter()) < deadline:
                while started + n * interval <= now:
                    task = asyncio.ensure_future(victims.one(n, started + n * interval))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                await asyncio.sleep(max(0.0, started + n * interval - time.perf_counter()))
            if tasks:
                await asyncio.wait(tasks, timeout=35)
        else:  # closed loop: the saturation this mix reaches on this machine
            counter = iter(range(10**9))

            async def loop() -> None:
                while time.perf_counter() < deadline:
                    await victims.one(next(counter), time.perf_counter())

            await asyncio.gather(*(loop() for _ in range(args.concurrency)))
            n = sum(victims.counts.values())
        elapsed = time.perf_counter() - victims.t0
        n -= round(warm * args.rate) if args.rate else 0  # the warm-up's requests
    every = victims.latency["2101"] + victims.latency["2102"]
    return {
        "offered_rate": n / args.duration,
        "requests": len(every),
        "rate": len(every) / elapsed,
        "ok_rate": victims.counts["ok"] / elapsed,
        **{k: victims.counts[k] for k in ("ok", "busy", "refused", "failed")},
        "p50_ms": pct(every, 0.5),
        "p99_ms": pct(every, 0.99),
        # Every measured latency, for the p99 of all phases of a kind taken together.
        "latencies_ms": [round(x * 1000, 2) for x in every],
        "p999_ms": pct(every, 0.999),
        "max_ms": pct(every, 1.0),
        "ok_p99_ms": pct(victims.ok_latency, 0.99),
        "per_infno": {
            k: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)}
            for k, v in victims.latency.items()
        },
        "start_lag_p99_ms": pct(victims.lag, 0.99),
        # Per second of the phase: requests, p50, p99 (ms): where in the phase the tail is.
        "timeline": [
            [second, len(v), round(pct(v, 0.5), 1), round(pct(v, 0.99), 1)]
            for second, v in sorted(victims.by_second.items())
        ],
        # The first three seconds by the tenth: requests and their slowest (ms).
        "onset": [
            [tenth, len(v), round(max(v) * 1000, 1)]
            for tenth, v in sorted(victims.by_tenth.items())
        ],
        "first_refusal": victims.first_refusal,
        "cpu_s": time.process_time(),
    }


# ------------------------------------------------------------------------------ the attack


class Attack:
    def __init__(self, url: str, bombs: list[dict[str, str]], block: int) -> None:
        self.url = url
        self.bombs = bombs
        self.block = block  # second octet of this round's loopback addresses: no lock carries over
        self.stop = asyncio.Event()
        self.uploads: Counter[str] = Counter()
        self.upload_kinds: Counter[str] = Counter()
        self.logins: Counter[str] = Counter()
        self.addresses = 0
        self.unsigned: Counter[str] = Counter()

    async def upload(self, session: aiohttp.ClientSession, slot: int) -> None:
        """A hospital sending hostile 9101 files back to back, each signed, each a fresh msgid."""
        terminal = env.Terminal(ATTACKER, f"HIS{slot:04d}")
        for n in range(10**9):
            if self.stop.is_set():
                return
            bomb = self.bombs[(n + slot) % len(self.bombs)]
            body = terminal.envelope(
                "9101",
                {
                    "fsUploadIn": {
                        "in": bomb["in"],
                        "filename": bomb["filename"],
                        "fixmedins_code": ATTACKER,
                    }
                },
            )
            try:
                async with session.post(
                    self.url + env.PATH, data=body, headers=terminal.headers()
                ) as r:
                    answer = json.loads(await r.read())
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.uploads["error"] += 1
                continue
            if answer.get("infcode") == 0:
                self.uploads["accepted"] += 1  # a bomb taken in: the hardening failed
            elif is_over_budget(answer.get("err_msg", "")):
                self.uploads["over budget"] += 1  # refused from its headers, nothing read
            elif is_busy(answer.get("err_msg", "")):
                self.uploads["busy"] += 1
            else:
                self.uploads["refused"] += 1
                self.upload_kinds[bomb["name"]] += 1

    def _session(self, client: int) -> aiohttp.ClientSession:
        self.addresses += 1
        third, fourth = divmod(self.addresses, 250)
        address = f"127.{self.block}.{third}.{fourth + 1}"
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=1),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def guess(self, client: int) -> None:
        """Wrong passwords for unknown names without pause; a locked address is left for a fresh
        one, as a many-address attacker would, so every guess can cost a hash."""
        session = self._session(client)
        try:
            while not self.stop.is_set():
                guess = {"operator": f"u{uuid.uuid4().hex[:12]}", "password": uuid.uuid4().hex}
                try:
                    async with session.post(self.url + LOGIN, json=guess) as r:
                        status, text = r.status, await r.text()
                except (aiohttp.ClientError, TimeoutError):
                    self.logins["error"] += 1
                    continue
                if status == 429 and "锁定" in text:
                    self.logins["429 locked"] += 1
                    await session.close()
                    session = self._session(client)
                elif status == 429:
                    self.logins["429 busy"] += 1
                else:
                    self.logins[str(status)] += 1
        finally:
            await session.close()

    async def unsigned_bodies(self) -> None:
        """4 MB bodies with no x-tif headers: refused from the headers, the body never kept."""
        body = b'{"infno":"9101","input":"' + b"A" * (4 * MB) + b'"}'
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not self.stop.is_set():
                sent = time.perf_counter()
                try:
                    async with session.post(
                        self.url + env.PATH,
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        raw = await r.read()
                    ok = b'"infcode":0' in raw
                    self.unsigned["accepted" if ok else "refused"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    # The gateway answers from the headers and closes: the client may still be
                    # sending when the socket goes.
                    self.unsigned["cut off"] += 1
                await asyncio.sleep(
                    max(0.0, 1 / UNSIGNED_PER_SECOND - (time.perf_counter() - sent))
                )


async def run_attack(args: argparse.Namespace) -> dict[str, Any]:
    bombs = json.loads(await asyncio.to_thread(Path(args.bombs).read_text))
    attack = Attack(args.url, bombs, args.block)
    await asyncio.to_thread(wait_until, args.start_at)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        kinds = args.attacks.split(",")
        tasks = []
        if "bombs" in kinds:
            tasks += [asyncio.create_task(attack.upload(session, slot)) for slot in (1, 2)]
        if "logins" in kinds:
            tasks += [asyncio.create_task(attack.guess(c)) for c in range(LOGIN_CLIENTS)]
        if "unsigned" in kinds:
            tasks.append(asyncio.create_task(attack.unsigned_bodies()))
        # The attack's own CPU in its first second: on a shared box its onset is load too.
        started = time.process_time()
        await asyncio.sleep(1.0)
        first_second = time.process_time() - started
        await asyncio.sleep(args.duration - 1.0)
        attack.stop.set()
        if tasks:  # --attacks none: the attacked phase with an idle attacker (the control)
            await asyncio.wait(tasks, timeout=35)
    return {
        "uploads": dict(attack.uploads),
        "refused_by_kind": dict(attack.upload_kinds),
        "logins": dict(attack.logins),
        "login_addresses": attack.addresses,
        "unsigned": dict(attack.unsigned),
        "cpu_s": time.process_time(),
        "cpu_first_second_s": first_second,
    }


# ------------------------------------------------------------------------------ the rounds


def backends(database: str) -> list[int]:
    """The PostgreSQL backends serving this run's database: the server is shared, and backends
    of other databases come and go during a phase."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True)
    return [
        int(pid)
        for pid, _, cmd in (line.strip().partition(" ") for line in out.stdout.splitlines())
        if cmd.startswith("postgres: ") and f" {database} " in cmd
    ]


def loop_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes' main threads (each worker's event loop), apart
    from their other threads (scrypt, file parsers, asyncio's executor)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


class MachineCpu:
    """Busy share of all cores from /proc/stat: what everybody on the machine used, and the
    share the hypervisor gave to other machines (steal: on a shared host a phase can lose a
    tenth of its CPU to neighbours, and its p99 with it)."""

    def __init__(self) -> None:
        self.start = self.read()

    @staticmethod
    def read() -> tuple[int, int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else 0
        return sum(fields) - idle, sum(fields), steal

    def busy(self) -> float:
        busy, total, _ = self.read()
        return (busy - self.start[0]) / max(total - self.start[1], 1)

    def steal(self) -> float:
        _, total, steal = self.read()
        return (steal - self.start[2]) / max(total - self.start[1], 1)


async def scrape(url: str, until: float, samples: list[dict[str, float]]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.time() < until:
            sample: dict[str, float] = {}
            try:
                async with session.get(url + "/metrics") as r:
                    text = await r.text()
                for line in text.splitlines():
                    if line.startswith(("sgw_breaker_state{", "sgw_shed_requests_total")):
                        name, value = line.rsplit(" ", 1)
                        sample[name] = float(value)
            except (aiohttp.ClientError, TimeoutError):
                sample["scrape failed"] = 1.0
            samples.append(sample)
            await asyncio.sleep(0.5)


def role_cmd(role: str, url: str, args: argparse.Namespace, start_at: float) -> list[str]:
    return [
        PY, __file__, "--role", role, "--url", url, "--duration", str(args.duration),
        "--start-at", f"{start_at:.3f}", "--persons", str(args.persons),
        "--attacker-nice", str(args.attacker_nice), "--warm", str(args.warm),
    ]  # fmt: skip


async def phase(
    url: str,
    gateway_pid: int,
    args: argparse.Namespace,
    *,
    rate: float,
    attacked: bool,
    block: int,
    profiler: Profiler | None = None,
    label: str = "",
) -> dict[str, Any]:
    # Both processes have imported by then, and the load has run its warm-up: a phase measures
    # the victims at their steady state from its first second, attacked or not (a load that
    # starts cold opens its connections in the first second, and that onset was in both).
    start_at = time.time() + 2.0 + args.warm
    load_cmd = [*role_cmd("load", url, args, start_at), "--rate", f"{rate:.0f}"]
    procs = [await asyncio.create_subprocess_exec(*load_cmd, stdout=subprocess.PIPE)]
    if attacked:
        attack_cmd = role_cmd("attack", url, args, start_at)
        attack_cmd += ["--bombs", args.bombs_file, "--block", str(block), "--attacks", args.attacks]
        procs.append(await asyncio.create_subprocess_exec(*attack_cmd, stdout=subprocess.PIPE))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    if profiler is not None:
        profiler.start(label, args.duration + 1)
    gw_pids, pg_pids = tree(gateway_pid), backends(args.db_name)
    cpu = MachineCpu()
    before = cpu_seconds(gw_pids), cpu_seconds(pg_pids), loop_cpu_seconds(gw_pids)
    samples: list[dict[str, float]] = []
    scraper = asyncio.create_task(scrape(url, start_at + args.duration, samples))
    outs = [await p.communicate() for p in procs]
    await scraper
    if profiler is not None:
        await asyncio.to_thread(profiler.stop)
    gateway_cpu = cpu_seconds(gw_pids) - before[0]
    postgres_cpu = cpu_seconds(pg_pids) - before[1]
    loop_cpu = loop_cpu_seconds(gw_pids) - before[2]
    busy, steal = cpu.busy(), cpu.steal()
    if any(p.returncode for p in procs):
        raise SystemExit(f"a role failed: {[p.returncode for p in procs]}")
    result: dict[str, Any] = {
        "attacked": attacked,
        "load": json.loads(outs[0][0].decode().strip().splitlines()[-1]),
        "attack": json.loads(outs[1][0].decode().strip().splitlines()[-1]) if attacked else None,
        "gateway_cpu_s": gateway_cpu,
        "gateway_loop_cpu_s": loop_cpu,
        "postgres_cpu_s": postgres_cpu,
        "machine_busy": busy,
        "machine_steal": steal,
        "loadavg": os.getloadavg(),
        "breaker_samples": len(samples),
        "breaker_open": sorted(
            {k for s in samples for k, v in s.items() if k.startswith("sgw_breaker") and v != 0}
        ),
        "breakers_seen": sorted({k for s in samples for k in s if k.startswith("sgw_breaker")}),
        "scrapes_failed": sum(1 for s in samples if "scrape failed" in s),
        "shed": _shed(samples),
    }
    await asyncio.sleep(3.0)  # the hash queue and the parser threads drain before the next phase
    return result


class ThreadProfiler(Profiler):
    """The harness's py-spy recording with each stack under its thread, so the event loop's
    share is told apart from the scrypt and parser threads'."""

    def start(self, label: str, seconds: float) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.proc = subprocess.Popen(
            [
                str(Path(PY).parent / "py-spy"), "record", "--pid", str(self.pid),
                "--duration", str(max(1, int(seconds) - 1)), "--format", "raw", "--threads",
                "--nonblocking", "--output", str(self.out_dir / f"{label}.collapsed"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip


def _shed(samples: list[dict[str, float]]) -> float:
    totals = [sum(v for k, v in s.items() if k.startswith("sgw_shed")) for s in samples if s]
    return totals[-1] - totals[0] if totals else 0.0


async def saturate(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The same mix closed-loop with 64 connections: what this machine reaches now."""
    cmd = role_cmd("load", url, args, time.time() + 1.5)
    cmd += ["--concurrency", "64", "--duration", str(args.saturation_seconds)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    await asyncio.sleep(2.0)
    return result


async def orchestrate(url: str, gateway_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    warm = argparse.Namespace(**{**vars(args), "duration": 5.0})
    await phase(url, gateway_pid, warm, rate=100, attacked=False, block=0)
    sat = await saturate(url, args)
    rate = args.rate or max(50.0, round(sat["rate"] * 0.5 / 10) * 10)
    phases: list[dict[str, Any]] = []
    # py-spy samples without stopping the gateway (--nonblocking), but still takes a core's share:
    # a profiled run answers what the attack costs, not the figure.
    profiler = ThreadProfiler(args.profile, gateway_pid)
    for r in range(args.rounds):
        # ABBA: quiet first in odd rounds, attacked first in even ones, so that a drift of the
        # box over the run (tables growing, autovacuum, other work) does not always land on
        # the attacked side of a pair.
        for attacked in (False, True) if r % 2 == 0 else (True, False):
            label = f"round {r + 1} {'attacked' if attacked else 'quiet'}"
            print(f"{label} at {rate:.0f}/s …", file=sys.stderr, flush=True)
            result = await phase(
                url, gateway_pid, args, rate=rate, attacked=attacked, block=100 + r,
                profiler=profiler, label=f"round{r + 1}-{'attacked' if attacked else 'quiet'}",
            )  # fmt: skip
            result["round"] = r + 1
            phases.append(result)
            load = result["load"]
            print(
                f"  p50 {load['p50_ms']:.1f} p99 {load['p99_ms']:.1f} ms, ok {load['ok']},"
                f" breakers open {result['breaker_open']}",
                file=sys.stderr,
                flush=True,
            )
    return {"saturation": sat, "rate": rate, "phases": phases}


# ------------------------------------------------------------------------------ the report


def verdict(run: dict[str, Any]) -> dict[str, Any]:
    quiet = [p for p in run["phases"] if not p["attacked"]]
    attacked = [p for p in run["phases"] if p["attacked"]]
    ratios = [
        a["load"]["p99_ms"] / q["load"]["p99_ms"] for q, a in zip(quiet, attacked, strict=True)
    ]
    ratio = statistics.median(ratios)
    opened = sorted({k for p in run["phases"] for k in p["breaker_open"]})
    victims_ok = all(
        p["load"]["busy"] == p["load"]["refused"] == p["load"]["failed"] == 0 for p in run["phases"]
    )
    accepted = sum((p["attack"] or {}).get("uploads", {}).get("accepted", 0) for p in attacked)
    logged_in = sum((p["attack"] or {}).get("logins", {}).get("200", 0) for p in attacked)
    return {
        "ratios": ratios,
        "ratio": ratio,
        "ratio_of_medians": statistics.median(a["load"]["p99_ms"] for a in attacked)
        / statistics.median(q["load"]["p99_ms"] for q in quiet),
        # The p99 of every attacked phase's requests together over the quiet phases': the
        # estimate with the least noise of "the victims' p99 under attack against quiet".
        "pooled": pooled_p99(attacked) / max(pooled_p99(quiet), 1e-9),
        "breakers_opened": opened,
        "victims_all_ok": victims_ok,
        "bombs_accepted": accepted,
        "logins_accepted": logged_in,
        "holds": ratio <= 1.10 and not opened and victims_ok and not accepted and not logged_in,
    }


def render(run: dict[str, Any], args: argparse.Namespace, commit: str) -> str:
    v = run["verdict"]
    sat = run["saturation"]
    lines = [
        f"Command: `python benchmarks/adversity_load.py --duration {args.duration:g}"
        f" --rounds {args.rounds}{f' --rate {args.rate:g}' if args.rate else ''}"
        f"{f' --attacks {args.attacks}' if args.attacks != ATTACKS else ''}"
        f"{f' --config {args.config}' if args.config != 'bench.toml' else ''}"
        f"{f' --attacker-nice {args.attacker_nice}' if args.attacker_nice != 19 else ''}`,"
        f" {time.strftime('%Y-%m-%d %H:%M')}, commit {commit}.  ",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python"
        f" {platform.python_version()}; gateway, PostgreSQL, load and attack processes on the"
        f" same cores (the attack at nice {args.attacker_nice}; phases in ABBA order), shared with"
        f" other work (load average {run['loadavg_before']} before the"
        " run; the machine's busy share per phase is in the table).  ",
        f"Saturation first, same mix closed-loop with 64 connections for"
        f" {args.saturation_seconds:g} s: {sat['rate']:,.0f} answers/s (p99 {sat['p99_ms']:.1f}"
        f" ms); offered in every phase: **{run['rate']:,.0f}/s** open loop"
        f" ({run['rate'] / max(sat['rate'], 1):.0%} of it).",
        "",
        "| round | phase | offered/s | answers/s | ok/s | p50 ms | p99 ms | p99.9 ms | busy /"
        " refused / failed | breaker samples ≠ 0 | 9101 bombs refused / over budget / busy /"
        " accepted | log-ins"
        " 401 / 429 busy / 429 locked (addresses) | unsigned 4 MB refused / cut off | CPU s:"
        " gateway (its event loop), PostgreSQL, attack | machine busy (of it stolen) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in run["phases"]:
        load, attack = p["load"], p["attack"] or {}
        ups, logins, unsigned = (
            attack.get("uploads", {}),
            attack.get("logins", {}),
            attack.get("unsigned", {}),
        )
        attack_cols = (
            f"{ups.get('refused', 0):,} / {ups.get('over budget', 0):,} /"
            f" {ups.get('busy', 0):,} / {ups.get('accepted', 0)} |"
            f" {logins.get('401', 0):,} / {logins.get('429 busy', 0):,} /"
            f" {logins.get('429 locked', 0):,} ({attack.get('login_addresses', 0)}) |"
            f" {unsigned.get('refused', 0)} / {unsigned.get('cut off', 0)}"
            if p["attacked"]
            else "– | – | –"
        )
        lines.append(
            f"| {p['round']} | {'attacked' if p['attacked'] else 'quiet'} |"
            f" {load['offered_rate']:,.0f} | {load['rate']:,.0f} | {load['ok_rate']:,.0f} |"
            f" {load['p50_ms']:.1f} | **{load['p99_ms']:.1f}** | {load['p999_ms']:.1f} |"
            f" {load['busy']} / {load['refused']} / {load['failed']} |"
            f" {len(p['breaker_open'])} of {p['breaker_samples']} | {attack_cols} |"
            f" {p['gateway_cpu_s']:.1f} ({p.get('gateway_loop_cpu_s', 0):.1f}),"
            f" {p['postgres_cpu_s']:.1f},"
            f" {attack.get('cpu_s', 0):.1f} | {p['machine_busy']:.0%} ({p.get('machine_steal', 0):.0%}) |"
        )
    ratios = ", ".join(f"{r:.2f}" for r in v["ratios"])
    lines += [
        "",
        f"attacked p99 / quiet p99 per round: {ratios}; **median {v['ratio']:.2f}**"
        f" (ratio of the medians {v['ratio_of_medians']:.2f}; the p99 of all attacked phases'"
        f" requests together over the quiet phases' {v['pooled']:.2f}). Breakers"
        f" {'opened: ' + ', '.join(v['breakers_opened']) if v['breakers_opened'] else 'never left 0'}"
        f" ({', '.join(run['breakers_seen'])} sampled every 0.5 s);"
        f" bombs accepted {v['bombs_accepted']}, log-ins accepted {v['logins_accepted']};"
        f" every victim request answered infcode 0: {'yes' if v['victims_all_ok'] else 'no'}."
        f" **{'Holds' if v['holds'] else 'Does not hold'}** (bound: ratio ≤ 1.10, no breaker"
        " open).",
    ]
    return "\n".join(lines)


BEGIN, END = "<!-- adversity_load:begin -->", "<!-- adversity_load:end -->"


def write_results(path: Path, report: str) -> None:
    """Replace this benchmark's block in RESULTS.md, or add its section at the end."""
    text = path.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{BEGIN}\n{report}\n{END}{tail}", encoding="utf-8")
        return
    section = f"\n## Pharmacy load under attack\n\n{BEGIN}\n{report}\n{END}\n"
    path.write_text(text.rstrip("\n") + "\n" + section, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=0.0, help="open-loop rate; 0: half of saturation")
    p.add_argument("--saturation-seconds", type=float, default=8)
    p.add_argument("--persons", type=int, default=5000, help="synthetic persons per region")
    add_server_arg(p)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--profile", type=Path, help="py-spy the gateway per phase into this folder")
    p.add_argument(
        "--attacks",
        default=ATTACKS,
        help=f"which attacks run in the attacked rounds (default {ATTACKS}): to tell their costs apart",
    )
    p.add_argument(
        "--warm",
        type=float,
        default=2.0,
        help="seconds the load runs before each phase is measured (default 2)",
    )
    p.add_argument(
        "--attacker-nice",
        type=int,
        default=19,
        help="the attack process's nice value (default 19: its client work stands for another box)",
    )
    p.add_argument("--results", type=Path, help="rewrite this benchmark's block of RESULTS.md")
    p.add_argument(
        "--config",
        default="bench.toml",
        help="the gateway's settings: a file in config/ or a path (default bench.toml)",
    )
    # The roles this file plays as a child process.
    p.add_argument("--role", choices=("load", "attack"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--bombs", help=argparse.SUPPRESS)
    p.add_argument("--block", type=int, default=100, help=argparse.SUPPRESS)
    args = p.parse_args()
    uvloop.install()
    if args.role == "load":
        print(json.dumps(asyncio.run(run_load(args)), ensure_ascii=False))
        return
    if args.role == "attack":
        # The attacker's own client work stands for another machine's: on this one box it runs
        # at the lowest priority, so that what is measured is what the attack costs the
        # gateway, not what sending it costs (--attacker-nice 0 to charge it too).
        with contextlib.suppress(OSError):
            os.nice(args.attacker_nice)
        print(json.dumps(asyncio.run(run_attack(args)), ensure_ascii=False))
        return

    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    name = f"gwadv_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_db(args.database_url, name))
    dsn = with_db(args.database_url, name)
    args.db_name = name
    gateway: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            print("building the bombs …", file=sys.stderr, flush=True)
            args.bombs_file = str(Path(scratch) / "bombs.json")
            Path(args.bombs_file).write_text(json.dumps(build_bombs()))
            gateway_cli(dsn, "demo", "load")
            for _, region in PHARMACIES:
                gateway_cli(
                    dsn, "demo", "synth", "--persons", str(args.persons), "--region", region
                )
            port = free_port()
            gateway = start_gateway(dsn, port, 1, args.config)
            run = asyncio.run(orchestrate(f"http://127.0.0.1:{port}", gateway.pid, args))
        finally:
            if gateway is not None:
                gateway.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    gateway.wait(timeout=30)
            asyncio.run(drop_db(args.database_url, name))
    run["loadavg_before"] = loadavg
    run["breakers_seen"] = sorted({k for p in run["phases"] for k in p["breakers_seen"]})
    run["verdict"] = verdict(run)
    if args.json:
        args.json.write_text(json.dumps(run, ensure_ascii=False, indent=2))
    report = render(run, args, commit)
    print(report)
    if args.results:
        write_results(args.results, report)
    if not run["verdict"]["holds"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
