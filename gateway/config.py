"""Settings from config/gateway.toml (rate limits, retention); thresholds live there, not in code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from gateway.breaker import BreakerConfig
from gateway.core.dates import DateRules
from gateway.edge import EdgeConfig
from gateway.operators import LoginPolicy
from gateway.ratelimit import Limits
from gateway.reconcile import FileLimits

_S = TypeVar("_S", EdgeConfig, LoginPolicy)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    limits: Limits = field(default_factory=Limits)
    idempotency_keep_days: int = 8
    call_deadline_seconds: float = 5.0  # a request not answered by then is answered "unavailable"
    # Per dependency (postgres, redis, legacy): when its breaker opens and what the plan does.
    breakers: dict[str, BreakerConfig] = field(default_factory=dict)
    # Per institution: the same thresholds over that institution's calls; tripping sets a plan
    # rule for it (visible to every process, cleared by a person or after `healthy_seconds`).
    institution_trigger: BreakerConfig = field(
        default_factory=lambda: BreakerConfig(min_calls=20, recover="manual")
    )
    legacy_url: str = ""  # route_legacy forwards envelopes here unchanged
    legacy_timeout_seconds: float = 10.0
    journal_dir: str = "var/journal"  # deferred claims while the ledger is down (fsynced)
    # While the ledger's breaker is open, how long a retry's msgid look-up may take before the
    # plan answers it from the local journal alone.
    ledger_lookup_seconds: float = 0.3
    # Bounds on reconciliation files (9101/3202): bytes, members, rows, parse time, parsers.
    files: FileLimits = field(default_factory=FileLimits)
    plan_poll_seconds: float = 1.0
    # Group commit (gateway.group_commit): writer tasks per process and settlements per batch.
    group_writers: int = 4
    group_max_batch: int = 128
    # The share, in percent, of the ledger pool's connections and of the group commit's writers
    # one institution may hold at once (gateway.ledger_shares); 0: no limit.
    ledger_share_percent: int = 50
    # Unsettled fee lines one visit may hold: every pre-settlement and settlement reads them all,
    # so an upload past it is refused (settle, mid-way for a stay, then upload the rest).
    max_unsettled_lines_per_visit: int = 20000
    # Overload: requests in flight per process past which new ones are answered busy at once
    # (0: no limit), so latency stays bounded instead of growing with the backlog.
    max_in_flight: int = 0
    # Of that bound, the requests still receiving their body that one client address or one
    # institution may hold (gateway.overload): slow bodies cannot stall everyone else.
    in_flight_share: float = 0.25
    # The HTTP edge (gateway.edge): body limits per transaction, read deadlines, connections
    # per client address; the console's log-in throttle (gateway.operators).
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    login: LoginPolicy = field(default_factory=LoginPolicy)
    # Service dates: how far ahead of now a counter's clock may be, how late a visit may be billed
    # (gateway.core.dates).
    dates: DateRules = field(default_factory=DateRules)


def _breaker(doc: dict[str, object], base: BreakerConfig) -> BreakerConfig:
    """A [breakers.X] table over the defaults; unknown keys are an error, not ignored."""
    known = set(BreakerConfig.__dataclass_fields__)
    unknown = set(doc) - known
    if unknown:
        raise ValueError(f"unknown breaker settings: {sorted(unknown)}")
    values = {k: getattr(base, k) for k in known}
    for key, value in doc.items():
        values[key] = type(getattr(base, key))(value)
    return BreakerConfig(**values)


def _dates(doc: object) -> DateRules:
    """[dates] over the defaults; unknown keys are an error, not ignored."""
    if not isinstance(doc, dict):
        raise ValueError("[dates] must be a table")
    unknown = set(doc) - set(DateRules.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown dates settings: {sorted(unknown)}")
    base = DateRules()
    regions = doc.get("late_years_by_region", {})
    return DateRules(
        future_tolerance_seconds=int(
            doc.get("future_tolerance_seconds", base.future_tolerance_seconds)
        ),
        late_years=int(doc.get("late_years", base.late_years)),
        late_years_by_region={str(k): int(v) for k, v in regions.items()},
    )


def _settings(doc: dict[str, Any], base: _S) -> _S:
    """A TOML table over a settings dataclass's defaults; unknown keys are an error."""
    known = {f.name for f in fields(base)}
    unknown = set(doc) - known
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        current = getattr(base, key)
        if isinstance(current, dict):
            values[key] = {str(k): int(v) for k, v in value.items()}
        elif isinstance(current, tuple):
            if not isinstance(value, list):
                raise ValueError(f"{key} must be a list")
            values[key] = tuple(str(v) for v in value)
        else:
            values[key] = type(current)(value)
    return replace(base, **values)


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
    defaults_cfg = GatewayConfig()
    breakers = {
        name: _breaker(table, BreakerConfig()) for name, table in doc.get("breakers", {}).items()
    }
    trigger = _breaker(
        doc.get("triggers", {}).get("institution", {}), defaults_cfg.institution_trigger
    )
    legacy = doc.get("legacy", {})
    journal = doc.get("journal", {})
    file_doc = doc.get("reconcile_files", {})
    unknown = set(file_doc) - set(FileLimits.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown reconcile_files settings: {sorted(unknown)}")
    base_files = FileLimits()
    files = FileLimits(**{k: type(getattr(base_files, k))(v) for k, v in file_doc.items()})
    return GatewayConfig(
        limits=limits,
        idempotency_keep_days=max(keep, 7),
        call_deadline_seconds=deadline,
        breakers=breakers,
        institution_trigger=trigger,
        legacy_url=str(legacy.get("url", "")),
        legacy_timeout_seconds=float(legacy.get("timeout_seconds", 10.0)),
        journal_dir=str(journal.get("dir", defaults_cfg.journal_dir)),
        ledger_lookup_seconds=float(
            journal.get("ledger_lookup_seconds", defaults_cfg.ledger_lookup_seconds)
        ),
        files=files,
        plan_poll_seconds=float(doc.get("plan", {}).get("poll_seconds", 1.0)),
        group_writers=int(doc.get("group_commit", {}).get("writers", defaults_cfg.group_writers)),
        group_max_batch=int(
            doc.get("group_commit", {}).get("max_batch", defaults_cfg.group_max_batch)
        ),
        ledger_share_percent=int(
            doc.get("ledger_pool", {}).get(
                "institution_share_percent", defaults_cfg.ledger_share_percent
            )
        ),
        max_unsettled_lines_per_visit=int(
            doc.get("uploads", {}).get(
                "max_unsettled_lines_per_visit", defaults_cfg.max_unsettled_lines_per_visit
            )
        ),
        max_in_flight=int(doc.get("overload", {}).get("max_in_flight", 0)),
        in_flight_share=float(doc.get("overload", {}).get("share", defaults_cfg.in_flight_share)),
        edge=_settings(doc.get("http", {}), EdgeConfig()),
        login=_settings(doc.get("console", {}), LoginPolicy()),
        dates=_dates(doc.get("dates", {})),
    )
