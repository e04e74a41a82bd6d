"""The wrk scripts of the honest harness (benchmarks/wrk/), each for about two seconds against a
real gateway with signed requests: every answer infcode 0, whole visit chains, the 2206 visits
opened by wrk itself, paced (open-loop) load held to its rate, the pure-Lua SHA-256 accepted by
the gateway as well as libcrypto's, and one settlement row per settled msgid (msgids unique)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import running_gateway

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk is not installed (Debian package wrk; `make system-deps` installs it)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "benchmarks" / "wrk"
SECONDS = 2
PERSONS = 300
PACED_RATE = 20  # requests/s: far below what 8 unpaced connections get from this gateway


_RUNS = itertools.count(1)


async def wrk(
    url: str,
    script: str,
    threads: int,
    connections: int,
    *options: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    # Each process its own run token: wrk processes started in the same second would otherwise
    # share thread numbers and serials, and so nonces and msgids.
    run = f"run=w{next(_RUNS):02d}"
    proc = await asyncio.create_subprocess_exec(
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{SECONDS}s", "--timeout", "10s",
        "-s", str(SCRIPTS / script), url, "--", f"persons={PERSONS}", run, *options,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("WRK_JSON ")]
    assert proc.returncode == 0 and lines, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(lines[0].removeprefix("WRK_JSON "))
    return result


def all_answered_ok(r: dict[str, Any]) -> None:
    assert r["ok"] > 0, r
    assert r["refused"] == 0 and r["busy"] == 0, r["first_refusal"]
    assert r["answers"] == r["ok"] and not any(r["errors"].values()), r


async def test_every_wrk_script_gets_infcode_0_answers(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    async with running_gateway(new_database) as server:
        synth = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "demo", "synth", "--persons", str(PERSONS),
            "--database-url", server.dsn, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await synth.wait() == 0
        opened = tmp_path / "visits.txt"
        presettle, settle, pure_lua, visits, _ = await asyncio.gather(
            wrk(server.url, "pharmacy.lua", 1, 4, "infno=2101"),
            wrk(server.url, "pharmacy.lua", 1, 4, "infno=2102"),
            wrk(server.url, "pharmacy.lua", 1, 2, "infno=2101",
                env={"GW_WRK_PURE_LUA_SHA256": "1"}),
            wrk(server.url, "visit.lua", 3, 3),
            wrk(server.url, "visit.lua", 2, 2, "stop_after=2204", "visits=4", f"out={opened}"),
        )  # fmt: skip
        for r in (presettle, settle, pure_lua, visits):
            all_answered_ok(r)
        assert settle["sha256"] == "libcrypto" and pure_lua["sha256"] == "lua"
        # Whole chains: five answers a visit, give or take the visits cut off by the end.
        assert visits["visits"] > 0 and visits["lost"] == 0
        assert 5 * visits["visits"] <= visits["ok"] < 5 * (visits["visits"] + 3)

        rows = opened.read_text().splitlines()
        assert len(rows) == 8 and all(len(row.split()) == 4 for row in rows), rows
        prepared, paced = await asyncio.gather(
            wrk(server.url, "presettle.lua", 1, 4, f"visits={opened}"),
            wrk(server.url, "pharmacy.lua", 1, 8, "infno=2102", f"rate={PACED_RATE}", "threads=1"),
        )
        all_answered_ok(prepared)
        all_answered_ok(paced)
        assert paced["answers"] <= PACED_RATE * SECONDS * 1.5 + 8, paced

        # Every settled msgid made its own settlement: none was a replay of another's msgid. A
        # request in flight when wrk stopped may have settled unseen, hence the margin.
        sold = await server.fetchval(
            "SELECT count(*) FROM settlements WHERE fixmedins_code LIKE 'P%'"
        )
        answered = settle["ok"] + paced["ok"]
        assert answered <= sold <= answered + 4 + 8
        settled_visits = await server.fetchval(
            "SELECT count(*) FROM settlements WHERE fixmedins_code LIKE 'H%'"
        )
        assert visits["visits"] <= settled_visits <= visits["visits"] + 3


def test_the_harness_counts_deferred_answers_apart_from_settlements(
    pg_server_url: str, tmp_path: Path
) -> None:
    """The harness itself, briefly: a 2102 row counts settlements, not the infcode-0 answers of
    claims the plan deferred; the `defer` row counts its claims; each row has the bare handler
    measured just before it; the overload row has its accepted requests' latencies from the
    gateway's own histogram; --also-workers runs a scenario again on a gateway of two workers,
    against the bare handler in two processes."""
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "wrk_harness.py"), "--duration", "1",
         "--connections", "8", "--persons", "300", "--sweep", "", "--bare-each", "1",
         "--scenarios", "2102,defer,overload", "--also-workers", "2", "--also-scenarios", "2101",
         "--database-url", pg_server_url, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(json.loads(out.read_text())["rows"])
    settled, deferred = rows["2102"], rows["defer"]
    assert settled["ok"] > 0 and settled["deferred"] == 0
    assert deferred["ok"] > 0 and deferred["deferred"] >= deferred["ok"]
    assert settled["bare"]["rate"] > 0 and deferred["bare"]["rate"] > 0
    assert "| 2102 pharmacy settlement, durable (bare just before:" in done.stdout
    accepted = rows["overload"]["accepted"]
    assert rows["overload"]["ok"] > 0
    assert 0 < accepted["p50_ms"] <= accepted["p99_ms"]
    assert 0 <= accepted["within_25ms"] <= accepted["within_50ms"] <= 1
    assert "accepted 2102s by the gateway's own histogram" in done.stdout
    two = rows["2101@2"]
    assert two["ok"] > 0 and two["answers"] == two["ok"], two["first_refusal"]
    assert two["bare"]["processes"] == 2 and two["bare"]["rate"] > 0
    assert (
        "| 2 workers: 2101 pharmacy pre-settlement (no write) (bare in 2 processes" in done.stdout
    )
