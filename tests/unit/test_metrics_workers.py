"""A worker that died leaves no gauge behind in the aggregate of `serve --workers N`.

Found from outside: a worker killed while a plan rule applied kept `sgw_plan_degraded` at 1 after
the rule was cleared (the live workers said 0, the aggregate took the maximum of every file,
the dead one's included), and the pool gauge counted the dead worker's connections. The gauges
aggregate over live processes only; the supervisor marks a dead worker's files as dead."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    def worker():
        from gateway.ops import metrics
        metrics.PLAN_DEGRADED.labels("institution:H44180000002", "encounter").set(1)
        metrics.DB_POOL_SIZE.labels("total").set(16)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        dead = ctx.Process(target=worker)
        dead.start()
        dead.join()
        multiprocess.mark_process_dead(dead.pid)  # what the supervisor does
        from gateway.ops import metrics
        metrics.PLAN_DEGRADED.labels("institution:H44180000002", "encounter").set(0)
        metrics.DB_POOL_SIZE.labels("total").set(16)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        sys.stdout.write(generate_latest(registry).decode())
    """
)


def test_a_dead_workers_gauges_leave_the_aggregate(tmp_path: Path) -> None:
    script = tmp_path / "workers.py"
    script.write_text(SCRIPT, encoding="utf-8")
    files = tmp_path / "prometheus"
    files.mkdir()
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PROMETHEUS_MULTIPROC_DIR": str(files), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    degraded = [ln for ln in lines if ln.startswith("sgw_plan_degraded{")]
    assert degraded and all(ln.endswith(" 0.0") for ln in degraded), degraded
    pool = [ln for ln in lines if ln.startswith('sgw_db_pool_connections{state="total"}')]
    assert pool == ['sgw_db_pool_connections{state="total"} 16.0'], pool
