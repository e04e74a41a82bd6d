"""Operators: password hashes, the demo operators file, the CLI that makes hashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.operators import check_password, hash_password, load_operators

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo" / "operators.toml"


def test_hashes_verify_only_the_right_password() -> None:
    stored = hash_password("duty-2026")
    assert stored != hash_password("duty-2026")  # salted
    assert check_password(stored, "duty-2026")
    assert not check_password(stored, "duty-2027")
    assert not check_password("plain-text", "plain-text")


def test_demo_operators_and_the_hash_command() -> None:
    ops = load_operators(DEMO)
    assert {(o.login, o.role) for o in ops.values()} == {("duty", "operator"), ("watch", "viewer")}
    assert check_password(ops["duty"].password, "duty-2026")
    assert check_password(ops["watch"].password, "watch-2026")
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "operators", "hash"],
        input="a-long-password\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert check_password(made.stdout.strip(), "a-long-password")
