"""Fuzzing the national endpoint: generated and mutated envelopes against a real gateway process.

Every answer must be HTTP 200 and a well-formed envelope; every refusal (`infcode -1`) must carry
a clear err_msg and leave the ledger untouched. FUZZ_EXAMPLES sets how many envelopes (CI runs a
few hundred; `make fuzz` runs 100,000 and records the result in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app.openapi import input_types
from gateway.pipeline.auth import load_credentials, sign_headers

INPUT_TYPES = input_types()

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = load_credentials(ROOT / "config" / "demo" / "credentials.toml")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
TABLES = (
    "encounters",
    "fee_lines",
    "settlements",
    "settlement_funds",
    "accumulators",
    "accounts",
    "sign_ins",
    "catalog_mappings",
    "correction_items",
    "exchange_files",
    "reconciliations",
)
T = TypeVar("T")
# Hypothesis warns when a generated example's repr is large; for a fuzzer that is expected.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
STATS: dict[str, int] = {"sent": 0, "refused": 0, "accepted": 0}


class LoopThread:
    """An event loop in a thread, so the synchronous fuzzer can query PostgreSQL."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(new_database: Any) -> Iterator[tuple[int, Callable[[], tuple[int, ...]]]]:
    runner = LoopThread()
    made = new_database("fuzz")
    dsn: str = runner.run(lambda: made) if asyncio.iscoroutine(made) else made
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(port),
            "--database-url",
            dsn,
            "--config",
            str(ROOT / "config" / "bench.toml"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = None
    try:
        deadline = time.monotonic() + 60
        while True:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                c.close()
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.2)
        conn = runner.run(lambda: asyncpg.connect(dsn))

        def fingerprint() -> tuple[int, ...]:
            sql = " UNION ALL ".join(f"SELECT count(*) FROM {t}" for t in TABLES)
            sql += " UNION ALL SELECT coalesce(sum(balance_fen), 0) FROM accounts"
            rows = runner.run(lambda: conn.fetch(sql))
            return tuple(int(r[0]) for r in rows)

        yield port, fingerprint
    finally:
        if conn is not None:
            runner.run(conn.close)
        proc.terminate()
        proc.wait(30)
        runner.stop()


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(
        ["", "0", "-1", "0000", "1e999", "NaN", "12.345", "9" * 40, "2026-13-45 25:61:61"]
    ),
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=20,
)


def _template(infno: str, code: str) -> dict[str, Any]:
    """A plausible envelope for the transaction, with an input node of the right shape."""
    schema = INPUT_TYPES[infno]
    fields = {name: "1" for name in getattr(schema, "__struct_fields__", ())}
    return {
        "infno": infno,
        "msgid": f"{code}{uuid.uuid4().hex[:18]}",
        "fixmedins_code": code,
        "infver": "V1.0",
        "mdtrtarea_admvs": "441800",
        "insuplc_admdvs": "441800",
        "opter": "FUZZ",
        "opter_name": "fuzz",
        "opter_type": "1",
        "input": fields,
    }


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "bytes", "mutated", "mutated", "mutated"]))
    if kind == "random":
        return json.dumps(draw(json_value)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    env = _template(draw(st.sampled_from(sorted(INPUT_TYPES))), "H44180000001")
    for _ in range(draw(st.integers(1, 6))):
        action = draw(
            st.sampled_from(["drop", "replace", "add", "input_value", "input_string", "truncate"])
        )
        keys = sorted(env)
        if action == "drop" and keys:
            env.pop(draw(st.sampled_from(keys)), None)
        elif action == "replace" and keys:
            env[draw(st.sampled_from(keys))] = draw(json_value)
        elif action == "add":
            env[draw(st.text(max_size=10))] = draw(json_value)
        elif action == "input_value" and isinstance(env.get("input"), dict) and env["input"]:
            env["input"][draw(st.sampled_from(sorted(env["input"])))] = draw(json_value)
        elif action == "input_string":
            env["input"] = json.dumps(env.get("input"))
        elif action == "truncate":
            raw = json.dumps(env).encode()
            return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    return json.dumps(env, ensure_ascii=draw(st.booleans())).encode()


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
)
@given(body=envelopes())
def test_no_envelope_breaks_the_gateway(
    gateway: tuple[int, Callable[[], tuple[int, ...]]], body: bytes
) -> None:
    port, fingerprint = gateway
    before = fingerprint()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "Content-Type": "application/json",
        **sign_headers("H44180000001", CREDENTIALS["H44180000001"], uuid.uuid4().hex),
    }
    conn.request("POST", "/fsi/api/rsfComIfsService/callService", body=body, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    STATS["sent"] += 1
    assert resp.status == 200, (resp.status, raw[:200])
    answer = json.loads(raw)
    assert {"infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output"} <= set(
        answer
    )
    assert answer["infcode"] in (0, -1)
    if answer["infcode"] == -1:
        STATS["refused"] += 1
        assert isinstance(answer["err_msg"], str) and answer["err_msg"].strip()
        assert "Traceback" not in answer["err_msg"]
        assert fingerprint() == before, answer["err_msg"]
    else:
        STATS["accepted"] += 1


def test_report_fuzz_statistics() -> None:
    """Prints what the fuzzer sent (recorded in docs/reliability.md by `make fuzz`)."""
    out = os.environ.get("FUZZ_REPORT")
    if out and STATS["sent"]:
        Path(out).write_text(json.dumps(STATS), encoding="utf-8")
    assert STATS["sent"] == 0 or STATS["refused"] + STATS["accepted"] == STATS["sent"]
