"""A fresh gateway already exports every series the dashboard and the alert rules select.

A labelled family has no sample until a label set is used, and a panel over a family without
samples shows "no data" rather than 0; so the names are taken from the PromQL in config/grafana/
and config/prometheus/rules/ and looked up among the sample names of a real scrape (histograms
are selected by their _bucket, _count and _sum samples, counters by _total). Both shapes of the
gateway are scraped: one process, and `serve --workers 2`, where prometheus-client's
multiprocess files are what /metrics aggregates.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import demo_client
from tests.ops.test_dashboard import (
    SCRAPE_METRICS,
    dashboard_exprs,
    metric_names,
    rule_exprs,
    rule_files,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def selected_names() -> set[str]:
    """Every metric name the dashboard and the rules select."""
    exprs = [expr for _, expr in dashboard_exprs()]
    exprs += [expr for path in rule_files() for _, expr in rule_exprs(path)]
    names: set[str] = set()
    for expr in exprs:
        names |= metric_names(expr)
    return names - SCRAPE_METRICS  # Prometheus's own, not in an exposition


def samples(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → (labels, value) of each sample in a text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def missing(exposition: str) -> list[str]:
    return sorted(selected_names() - set(samples(exposition)))


def test_the_selected_names_include_the_families_without_events() -> None:
    names = selected_names()
    assert {
        "sgw_plan_changes_total",
        "sgw_terminal_identity_failures_total",
        "sgw_request_duration_seconds_bucket",
        "sgw_request_duration_seconds_count",
        "sgw_group_commit_batch_size_sum",
    } <= names


def test_an_exposition_without_a_family_is_found_wanting() -> None:
    partial = (
        "# HELP sgw_plan_changes_total x\n# TYPE sgw_plan_changes_total counter\n"
        "# HELP sgw_requests_total x\n# TYPE sgw_requests_total counter\n"
        'sgw_requests_total{infno="1101",outcome="ok"} 0.0\n'
    )
    gaps = missing(partial)
    assert "sgw_plan_changes_total" in gaps  # described but without a sample: "no data"
    assert "sgw_requests_total" not in gaps


def _zero_series(found: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    """The primed series are there, at 0, with the label values known in advance."""
    changes = {
        (labels["scope"], labels["class"], labels["action"]): value
        for labels, value in found["sgw_plan_changes_total"]
    }
    assert changes[("global", "settlement", "reject")] == 0
    assert changes[("global", "reconcile", "normal")] == 0
    assert changes[("breaker:postgres", "*", "open")] == 0
    identity = {
        (labels["fixmedins_code"], labels["terminal"]): value
        for labels, value in found["sgw_terminal_identity_failures_total"]
    }
    assert identity[("H44180000001", "other")] == 0
    assert identity[("P44180000001", "other")] == 0
    latency = {
        labels["infno"]
        for labels, _ in found["sgw_request_duration_seconds_bucket"]
        if labels["le"] == "0.025"
    }
    assert {"2102", "2207", "2304", "1101"} <= latency


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _scrapes(url: str, n: int) -> list[str]:
    """n scrapes, each on a connection of its own, so both workers answer some."""
    texts = []
    for _ in range(n):
        async with aiohttp.ClientSession() as fresh, fresh.get(url + "/metrics") as resp:
            assert resp.status == 200
            texts.append(await resp.text())
    return texts


@asynccontextmanager
async def _serving(
    new_database: Callable[..., Any], tmp_path: Path, *, workers: int
) -> AsyncIterator[str]:
    """`python -m gateway serve` in a fresh process (or processes), ready; yields its URL."""
    made = new_database("metrics")
    dsn = await made if inspect.isawaitable(made) else made
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Its own working directory: the multiprocess files live under ./var/.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("GATEWAY_REDIS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--database-url",
        str(dsn),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, "the gateway exited"
                await asyncio.sleep(0.1)
        if workers > 1:
            # Each worker loads and primes independently; give the others their start-up too.
            await asyncio.sleep(1.0)
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert not (tmp_path / "var" / f"prometheus-{proc.pid}").exists()


async def test_two_workers_export_every_selected_name_before_and_after_settlements(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    async with _serving(new_database, tmp_path, workers=2) as url:
        for text in await _scrapes(url, 6):
            assert missing(text) == []
            _zero_series(samples(text))

        async with aiohttp.ClientSession() as session:
            pos = demo_client.DemoClient(session, url, demo_client.PHARMACY)
            for _ in range(3):
                await demo_client.pharmacy(pos, lambda _: None)
        for text in await _scrapes(url, 6):
            assert missing(text) == []
            found = samples(text)
            _zero_series(found)
            ok = {
                labels["infno"]: value
                for labels, value in found["sgw_requests_total"]
                if labels["outcome"] == "ok"
            }
            # Whichever worker answers, the counts are the whole gateway's.
            assert ok["2102"] == ok["2103"] == 3
            assert ok["2207"] == 0
