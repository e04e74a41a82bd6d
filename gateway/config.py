"""Settings from config/gateway.toml (rate limits, retention); thresholds live there, not in code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gateway.ratelimit import Limits

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    limits: Limits = field(default_factory=Limits)
    idempotency_keep_days: int = 8
    call_deadline_seconds: float = 5.0  # a request not answered by then is answered "unavailable"


def load_config(path: Path = DEFAULT_CONFIG) -> GatewayConfig:
    """Read the TOML file; missing sections keep their defaults."""
    if not path.exists():
        return GatewayConfig()
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    rl = doc.get("rate_limit", {})
    defaults = Limits()
    limits = Limits(
        terminal_rate=float(rl.get("terminal_rate", defaults.terminal_rate)),
        terminal_burst=int(rl.get("terminal_burst", defaults.terminal_burst)),
        institution_rate=float(rl.get("institution_rate", defaults.institution_rate)),
        institution_burst=int(rl.get("institution_burst", defaults.institution_burst)),
    )
    keep = int(doc.get("idempotency", {}).get("keep_days", 8))
    deadline = float(doc.get("deadlines", {}).get("call_seconds", 5.0))
    return GatewayConfig(
        limits=limits, idempotency_keep_days=max(keep, 7), call_deadline_seconds=deadline
    )
