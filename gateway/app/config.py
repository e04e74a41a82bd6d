"""config/gateway.toml as typed sections, and what a process starts from.

Every table of the file is a msgspec Struct below (or, where the code that reads it lives in a
module of its own, that module's Struct: `Limits`, `BreakerConfig`, `EdgeConfig`, `LoginPolicy`,
`DateRules`, `FileLimits`). Each default is written once, in its Struct; a missing table or key
takes it. An unknown table or key, or a value of the wrong type, stops start-up with one line
naming the file, the key and its table (`ConfigError`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.core.dates import DateRules
from gateway.emergency.breaker import BreakerConfig
from gateway.emergency.operators import LoginPolicy
from gateway.emergency.plan.rules import Action
from gateway.jobs.reconcile import FileLimits
from gateway.pipeline.edge import EdgeConfig
from gateway.pipeline.ratelimit import Limits

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "gateway.toml"
DEFAULT_REFERENCE = ROOT / "config" / "demo"
DEFAULT_CREDENTIALS = DEFAULT_REFERENCE / "credentials.toml"
DEFAULT_OPERATORS = DEFAULT_REFERENCE / "operators.toml"
# The retention R2 asks for: a msgid answer is kept at least this many days.
MIN_KEEP_DAYS = 7


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the key and its table."""


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table of gateway.toml: immutable, and a key it does not know is an error."""


class Idempotency(Section, frozen=True):
    """`[idempotency]`."""

    keep_days: int = 8  # msgid answers are kept at least this long

    def __post_init__(self) -> None:
        # Enforced here, at start-up, rather than clamped where answers are purged: a file
        # asking for less than R2 allows is a mistake to be told about, not silently corrected.
        if self.keep_days < MIN_KEEP_DAYS:
            raise ValueError(
                f"keep_days = {self.keep_days}: msgid answers are kept at least"
                f" {MIN_KEEP_DAYS} days (R2)"
            )


class Deadlines(Section, frozen=True):
    """`[deadlines]`."""

    call_seconds: float = 5.0  # a request not answered by then is answered "unavailable"


class LedgerBreaker(BreakerConfig, frozen=True, forbid_unknown_fields=True):
    """`[breakers.postgres]`: a dependency's breaker that also opens on a run of failed writes
    from two institutions (a table the settlements write hung while reads answer)."""

    write_run_institutions: int = 2


class Breakers(Section, frozen=True):
    """`[breakers.<dependency>]`: when each dependency's breaker opens and what the plan does.
    A table for another name is refused (a misspelt dependency would otherwise go unwatched)."""

    postgres: LedgerBreaker = msgspec.field(default_factory=LedgerBreaker)
    redis: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    legacy: BreakerConfig = msgspec.field(default_factory=BreakerConfig)


class InstitutionTrigger(BreakerConfig, frozen=True, forbid_unknown_fields=True):
    """`[triggers.institution]`: the breaker thresholds over one institution's calls, whose
    defaults differ from a dependency's; tripping sets a plan rule for that institution
    (visible to every process, cleared by a person or after `healthy_seconds`)."""

    min_calls: int = 20
    recover: Literal["auto", "manual"] = "manual"


class Triggers(Section, frozen=True):
    """`[triggers.*]`."""

    institution: InstitutionTrigger = msgspec.field(default_factory=InstitutionTrigger)


class Legacy(Section, frozen=True):
    """`[legacy]`: route_legacy forwards envelopes here unchanged."""

    url: str = ""
    timeout_seconds: float = 10.0


class Shadow(Section, frozen=True):
    """`[shadow]`: the parallel run's second pricing (gateway.emergency.shadow), for scopes whose
    plan rule is `shadow` or `route_legacy_shadow`."""

    # Of the settlements under a shadow rule, the share priced by the other system too (basis
    # points, 10000 = all); chosen by msgid, so a retry is sampled as its first try was.
    sample_bp: int = 10000
    # Settlements waiting to be priced; past it one is dropped (counted), the counter never waits.
    queue_size: int = 1000
    workers: int = 4  # pricings in flight at once, per process
    timeout_seconds: float = 5.0  # one shadow pricing, the old system's or this gateway's
    # The automatic protective action: when more than `protect_rate_bp` of an institution's
    # settlements answered here differ from the old system's (at least `protect_min_compared`
    # of them in `protect_window_seconds`), this action becomes a plan rule for that
    # institution's settlements (operator trigger:shadow, audited); a person clears it. "":
    # off, the alerts only. route_legacy_shadow hands the counter back to the old system and
    # keeps measuring.
    protect_action: str = ""
    # Where the protective rule is set and its rate counted: "institution" (each institution's
    # settlements) or "region" (its region's, `region:<admdvs>`); with `protect_by_category`
    # counted per medical category and set at `<scope>:<category>` (清远 1.2.2 names 普通门诊,
    # 门特门慢, 普通住院 apart: only the category that differs goes back to the old system).
    protect_scope: Literal["institution", "region"] = "institution"
    protect_by_category: bool = False
    protect_rate_bp: int = 200
    protect_min_compared: int = 20
    protect_window_seconds: float = 900.0
    # Visit mirroring (gateway.emergency.mirror): encounter calls answered at the counter and
    # waiting to be written to the ledger's outbox; past it one is dropped (counted, and its
    # visit known as not mirrored).
    mirror_queue_size: int = 1000
    mirror_workers: int = 2  # outbox deliveries in flight at once, per process
    # A call is delivered only this long after the counter received it, so that an earlier call
    # of its visit answered by another process (still on its way to the outbox) comes first.
    mirror_grace_seconds: float = 1.0
    mirror_attempts: int = 3  # deliveries of one call before it fails (the shadow down, slow)
    # How long a visit's pricing waits for the visit's earlier calls to be mirrored.
    mirror_wait_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.sample_bp <= 10000:
            raise ValueError(f"sample_bp = {self.sample_bp}: between 0 and 10000 basis points")
        if self.queue_size < 1 or self.workers < 1:
            raise ValueError("queue_size and workers: at least 1")
        if self.mirror_queue_size < 1 or self.mirror_workers < 1 or self.mirror_attempts < 1:
            raise ValueError("mirror_queue_size, mirror_workers and mirror_attempts: at least 1")
        allowed = (
            "",
            Action.ROUTE_LEGACY.value,
            Action.ROUTE_LEGACY_SHADOW.value,
            Action.REJECT.value,
        )
        if self.protect_action not in allowed:
            raise ValueError(f"protect_action {self.protect_action!r}: one of {allowed}")
        if self.protect_rate_bp < 0 or self.protect_min_compared < 1:
            raise ValueError("protect_rate_bp: at least 0; protect_min_compared: at least 1")


class JournalConfig(Section, frozen=True):
    """`[journal]`: deferred claims while the ledger is down (fsynced)."""

    dir: str = "var/journal"
    # While the ledger's breaker is open, how long a retry's msgid look-up may take before the
    # plan answers it from the local journal alone.
    ledger_lookup_seconds: float = 0.3
    # Answers the ledger committed that each process keeps, newest first, for a retry that
    # comes while the ledger is out of reach (gateway.pipeline.recent_answers): about 1.6 KB
    # each, so 20,000 are ~32 MB, 10 s of a worker's busiest rate, minutes of a normal day, and
    # ~12 µs of gateway CPU a settlement (benchmarks/RESULTS.md); 0 keeps none.
    recent_answers: int = 20_000


class PlanConfig(Section, frozen=True):
    """`[plan]`."""

    poll_seconds: float = 1.0  # besides the Redis announcement


class GroupCommitConfig(Section, frozen=True):
    """`[group_commit]` (gateway.pipeline.group_commit): writer tasks per process, settlements per
    batch; 0 writers: every settlement commits on its own."""

    writers: int = 4
    max_batch: int = 128


class GroupReadConfig(Section, frozen=True):
    """`[group_read]` (gateway.pipeline.group_read): reader tasks per kind of read and ledger
    database in each process, reads per batch (pre-settlements, msgid look-ups); 0 readers:
    each reads on its own connection."""

    readers: int = 2
    max_batch: int = 128


class LedgerPool(Section, frozen=True):
    """`[ledger_pool]`: the share, in percent, of the ledger pool's connections and of the group
    commit's writers one institution may hold at once (gateway.pipeline.ledger_shares); 0: no limit."""

    institution_share_percent: int = 50


class Uploads(Section, frozen=True):
    """`[uploads]`: unsettled fee lines one visit may hold. Every pre-settlement and settlement
    reads them all, so an upload past it is refused (settle, mid-way for a stay, then upload
    the rest)."""

    max_unsettled_lines_per_visit: int = 20000


class Overload(Section, frozen=True):
    """`[overload]` (gateway.pipeline.overload)."""

    # Requests in flight per process past which new ones are answered busy at once (0: no
    # limit), so latency stays bounded instead of growing with the backlog.
    max_in_flight: int = 0
    # With a target, the bound moves below max_in_flight to keep 99 in 100 admitted requests
    # answered within it (gateway.pipeline.overload.Admission); 0: the bound is max_in_flight.
    latency_target_ms: float = 0.0
    # Of that bound, the requests still receiving their body that one client address or one
    # institution may hold: slow bodies cannot stall everyone else.
    share: float = 0.25

    def __post_init__(self) -> None:
        # A target moves the bound below max_in_flight; with no bound it would do nothing.
        if self.latency_target_ms and not self.max_in_flight:
            raise ValueError(
                f"latency_target_ms = {self.latency_target_ms:g}: needs max_in_flight, the bound"
                " it moves under (0 admits everything)"
            )


class RedisConfig(Section, frozen=True):
    """`[redis]`: Redis behind Sentinel. With `sentinels` listed, the gateway asks them for the
    master named `master_name` and follows it across a failover (gateway.app.redis_link);
    without, `--redis-url` / GATEWAY_REDIS_URL names one server, or there is none."""

    sentinels: tuple[str, ...] = ()  # "host:port" of each sentinel
    master_name: str = "gateway"
    db: int = 0

    def __post_init__(self) -> None:
        for address in self.sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel {address!r}: expected host:port")


class LedgerCluster(Section, frozen=True):
    """`[[ledger_clusters]]`: a ledger database (a Patroni cluster behind its DSN) holding the
    persons, accounts, visits, settlements and msgid journal of the pooling regions it lists
    (gateway.ledger.partitions). Regions no cluster lists stay in the main database, which also
    holds every region's reference data; no clusters: one database holds everything."""

    name: str
    dsn: str
    regions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name or self.name == "main" or not self.name.replace("-", "").isalnum():
            raise ValueError(f"ledger cluster {self.name!r}: a name of letters, digits and -")
        if not self.regions:
            raise ValueError(f"ledger cluster {self.name}: no regions listed")
        for region in self.regions:
            if len(region) != 6 or not region.isdigit():
                raise ValueError(f"ledger cluster {self.name}: {region!r} is not a 6-digit region")


class GatewayConfig(Section, frozen=True):
    """The whole file, one field per table, named as the table is."""

    rate_limit: Limits = msgspec.field(default_factory=Limits)
    idempotency: Idempotency = msgspec.field(default_factory=Idempotency)
    deadlines: Deadlines = msgspec.field(default_factory=Deadlines)
    breakers: Breakers = msgspec.field(default_factory=Breakers)
    triggers: Triggers = msgspec.field(default_factory=Triggers)
    legacy: Legacy = msgspec.field(default_factory=Legacy)
    shadow: Shadow = msgspec.field(default_factory=Shadow)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    reconcile_files: FileLimits = msgspec.field(default_factory=FileLimits)
    plan: PlanConfig = msgspec.field(default_factory=PlanConfig)
    group_commit: GroupCommitConfig = msgspec.field(default_factory=GroupCommitConfig)
    group_read: GroupReadConfig = msgspec.field(default_factory=GroupReadConfig)
    ledger_pool: LedgerPool = msgspec.field(default_factory=LedgerPool)
    uploads: Uploads = msgspec.field(default_factory=Uploads)
    overload: Overload = msgspec.field(default_factory=Overload)
    http: EdgeConfig = msgspec.field(default_factory=EdgeConfig)
    # [console] is the console's log-in policy; read as `config.login` by gateway.emergency.console.
    login: LoginPolicy = msgspec.field(default_factory=LoginPolicy, name="console")
    dates: DateRules = msgspec.field(default_factory=DateRules)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    ledger_clusters: tuple[LedgerCluster, ...] = ()

    def __post_init__(self) -> None:
        names: set[str] = set()
        owner: dict[str, str] = {}
        for cluster in self.ledger_clusters:
            if cluster.name in names:
                raise ValueError(f"ledger cluster {cluster.name} is listed twice")
            names.add(cluster.name)
            for region in cluster.regions:
                if region in owner:
                    raise ValueError(
                        f"region {region} is in two ledger clusters: {owner[region]}, {cluster.name}"
                    )
                owner[region] = cluster.name


def decode_config(text: str | bytes, source: str = "the configuration") -> GatewayConfig:
    """The TOML text as a GatewayConfig; ConfigError (one line) when it cannot be."""
    try:
        config = msgspec.toml.decode(text, type=GatewayConfig)
    except msgspec.ValidationError as exc:
        # msgspec names the key and where it sits: "Object contains unknown field `foo` - at
        # `$.http`", "Expected `float`, got `str` - at `$.deadlines.call_seconds`".
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    # Found from outside: a negative limit, rate or deadline was taken, and the gateway then
    # answered every request busy, rate-limited or timed out while /readyz said ok.
    wrong = _out_of_range(config, "")
    if wrong is not None:
        raise ConfigError(f"{source}: {wrong}")
    return config


# Numbers that must be above zero, not merely not negative: a zero would refuse everything.
_POSITIVE = {"deadlines.call_seconds"}
_AT_MOST_ONE = ("error_ratio", "timeout_ratio", "overload.share")  # shares


def _out_of_range(node: Any, at: str) -> str | None:
    """The first number of the configuration no setting can mean, in words; None when none."""
    if isinstance(node, msgspec.Struct):
        for name in node.__struct_fields__:
            wrong = _out_of_range(getattr(node, name), f"{at}.{name}" if at else name)
            if wrong is not None:
                return wrong
    elif isinstance(node, dict):
        for key, item in node.items():
            wrong = _out_of_range(item, f"{at}.{key}")
            if wrong is not None:
                return wrong
    elif isinstance(node, tuple | list):
        for i, item in enumerate(node):
            wrong = _out_of_range(item, f"{at}[{i}]")
            if wrong is not None:
                return wrong
    elif isinstance(node, int | float) and not isinstance(node, bool):
        if isinstance(node, float) and not math.isfinite(node):
            # Found from outside: nan and inf were taken (TOML has both), every comparison with
            # them meaningless.
            return f"{at} = {node}: not a number a setting can mean"
        if node < 0:
            return f"{at} = {node}: a negative value means nothing here"
        if node == 0 and at in _POSITIVE:
            return f"{at} = {node}: must be above zero"
        if node > 1 and at.endswith(_AT_MOST_ONE):
            return f"{at} = {node}: a share, at most 1"
    return None


def load_config(path: Path = DEFAULT_CONFIG) -> GatewayConfig:
    """Read and check the file; a missing file means every default."""
    if not path.exists():
        return GatewayConfig()
    return decode_config(path.read_bytes(), str(path))


class Settings:
    """What a process needs to start (Gateway.start); built by the CLI or by tests. The
    configuration file is read and checked here, so a bad one stops the command before it
    touches anything."""

    __slots__ = (
        "auth",
        "catalog_poll_seconds",
        "config",
        "credentials_path",
        "database_url",
        "journal_dir",
        "load_demo_if_empty",
        "operators_path",
        "pool_max",
        "pool_min",
        "redis_url",
        "reference_dir",
        "region",
    )

    def __init__(
        self,
        database_url: str,
        *,
        reference_dir: Path = DEFAULT_REFERENCE,
        region: str = "441800",
        load_demo_if_empty: bool = True,
        pool_max: int = 16,
        pool_min: int = 2,
        redis_url: str | None = None,
        config_path: Path = DEFAULT_CONFIG,
        config: GatewayConfig | None = None,
        catalog_poll_seconds: float = 1.0,
        auth: bool = True,
        credentials_path: Path = DEFAULT_CREDENTIALS,
        operators_path: Path = DEFAULT_OPERATORS,
        journal_dir: Path | None = None,
    ) -> None:
        self.database_url = database_url
        self.reference_dir = reference_dir
        self.region = region  # receiver region, the first six digits of inf_refmsgid
        self.load_demo_if_empty = load_demo_if_empty
        self.pool_max = pool_max
        # Connections opened at start and never closed for idleness. The server opens them all
        # (`serve`): a connection opened under load prepares every statement and introspects
        # the types again, which was a tenth of the gateway's CPU while a pool grew
        # (benchmarks/RESULTS.md); tests and the CLI keep a small floor.
        self.pool_min = min(pool_min, pool_max)
        self.redis_url = redis_url
        self.config = config if config is not None else load_config(config_path)
        # Polling the catalog version: a change reaches every process within ~2 s.
        self.catalog_poll_seconds = catalog_poll_seconds
        self.auth = auth
        self.credentials_path = credentials_path
        self.operators_path = operators_path
        # Where this process journals deferred claims; None: the configuration's [journal] dir.
        self.journal_dir = journal_dir if journal_dir is not None else Path(self.config.journal.dir)
