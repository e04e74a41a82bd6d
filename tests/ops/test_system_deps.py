"""scripts/system-deps.sh asks apt-get for exactly the packages whose tool is missing.

The script runs against a stub machine: a PATH holding only the shell utilities it needs and
stand-ins for apt-get and fc-list, so what it would install is recorded and nothing is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "system-deps.sh"
UTILITIES = ("bash", "cat", "cut", "grep", "tr", "id")
EVERY_PACKAGE = [
    "redis-server",
    "chromium",
    "chromium-driver",
    "fonts-noto-cjk",
    "prometheus",
    "wrk",
    "patroni",
    "etcd-server",
    "haproxy",
    "redis-sentinel",
]
# Every tool whose presence the script checks with `command -v`.
EVERY_TOOL = (
    "redis-server",
    "chromium",
    "chromedriver",
    "promtool",
    "wrk",
    "patroni",
    "etcd",
    "haproxy",
    "redis-sentinel",
)


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)


def _machine(tmp_path: Path, *, tools: tuple[str, ...], fonts: str) -> Path:
    """A bin directory: real utilities, apt-get recording its arguments, the given tools, and
    fc-list printing `fonts`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in UTILITIES:
        real = shutil.which(name)
        assert real is not None, name
        (bin_dir / name).symlink_to(real)
    _stub(bin_dir / "apt-get", f'echo "$*" >> {tmp_path / "apt.log"}')
    # The prometheus guard writes /usr/sbin/policy-rc.d; on the stub machine it writes nothing.
    for name in ("sudo", "tee", "chmod", "rm"):
        _stub(bin_dir / name, 'case "$0" in */sudo) exec "$@" ;; esac; cat >/dev/null')
    for name in tools:
        _stub(bin_dir / name, "exit 0")
    _stub(bin_dir / "fc-list", f"printf '%s\\n' '{fonts}'")
    return bin_dir


def _run(tmp_path: Path, bin_dir: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    log = tmp_path / "apt.log"
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return done, calls


@pytest.fixture(autouse=True)
def _posix_only() -> None:
    if os.name != "posix" or shutil.which("bash") is None:
        pytest.skip("the script is bash")


def test_a_bare_machine_gets_every_package_including_the_cjk_fonts(tmp_path: Path) -> None:
    bin_dir = _machine(tmp_path, tools=(), fonts="/usr/share/fonts/dejavu.ttf: DejaVu Sans")
    done, calls = _run(tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    installs = [c for c in calls if c.startswith("install")]
    assert len(installs) == 1, calls
    assert installs[0].split()[-len(EVERY_PACKAGE) :] == EVERY_PACKAGE


def test_only_the_missing_font_is_installed(tmp_path: Path) -> None:
    bin_dir = _machine(tmp_path, tools=EVERY_TOOL, fonts="")
    _, calls = _run(tmp_path, bin_dir)
    installs = [c for c in calls if c.startswith("install")]
    assert len(installs) == 1 and installs[0].split()[-1] == "fonts-noto-cjk", calls
    assert "prometheus" not in installs[0].split()


def test_a_ready_machine_installs_nothing(tmp_path: Path) -> None:
    fonts = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc: Noto Sans CJK SC:style=Regular"
    bin_dir = _machine(tmp_path, tools=EVERY_TOOL, fonts=fonts)
    done, calls = _run(tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls == []


def test_a_ready_machine_with_many_fonts_installs_nothing(tmp_path: Path) -> None:
    """A machine with the CJK fonts listed first among many: a check that stops reading at the
    first match cuts fc-list off mid-write, and under pipefail that SIGPIPE read as "missing"
    (seen on a fresh machine: "still missing fonts-noto-cjk" right after installing it)."""
    cjk = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc: Noto Sans CJK SC:style=Regular"
    bin_dir = _machine(tmp_path, tools=EVERY_TOOL, fonts=cjk)
    # fc-list writes the match, then far more than a pipe holds.
    other = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf: DejaVu Sans:style=Book"
    _stub(
        bin_dir / "fc-list",
        f"printf '%s\\n' '{cjk}'; i=0; while [ $i -lt 4000 ]; do printf '%s\\n' '{other}'; i=$((i+1)); done",
    )
    done, calls = _run(tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls == [], calls
    assert "still missing" not in done.stderr
