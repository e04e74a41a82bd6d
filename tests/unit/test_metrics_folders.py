"""`serve --workers N` removes the metrics folders of gateways no longer running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.app.cli import _remove_dead_metrics


def test_a_dead_gateways_metrics_folder_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    """Found from outside: each `kill -9` of a gateway left its folder, with every worker's
    files, for good."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, alive = (
        tmp_path / f"prometheus-{gone.stdout.strip()}",
        tmp_path / f"prometheus-{os.getpid()}",
    )
    other = tmp_path / "prometheus-notes"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    _remove_dead_metrics(tmp_path)
    assert not dead.exists()
    assert alive.exists() and other.exists()
