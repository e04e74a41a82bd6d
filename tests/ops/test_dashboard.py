"""The operations configuration names only metrics the gateway exports, and promtool accepts it.

Every PromQL expression in the Grafana dashboard (config/grafana/gateway.json) and every rule in
config/prometheus/rules/ must name a metric registered in gateway/ops/metrics.py, or one listed
in PLANNED_METRICS (metrics the emergency-plan work will add). When a planned metric lands in
gateway/ops/metrics.py, remove it from PLANNED_METRICS.

The promtool tests run `promtool check rules` and `promtool test rules` when promtool is on PATH
(`make system-deps` installs it: Debian package `prometheus`) and are skipped otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from gateway.ops import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "gateway.json"
# The ledger clusters' own board: Patroni's series, and the gateway's breaker per database.
CLUSTER_DASHBOARD = ROOT / "config" / "grafana" / "ledger-clusters.json"
RULES_DIR = ROOT / "config" / "prometheus" / "rules"
RULE_TESTS_DIR = ROOT / "config" / "prometheus" / "tests"
DATASOURCE = "${DS_PROMETHEUS}"

# Metrics the alert rules and the dashboard already use but the gateway does not export yet:
# family name (as passed to prometheus-client) -> type.
PLANNED_METRICS: dict[str, str] = {}

# Rules files over another exporter's series, and the sample names that exporter gives: the
# ledger clusters' rules read Patroni's own GET /metrics (tests/cluster/test_failover.py scrapes
# a real member and finds every one of these names there).
PATRONI_METRICS = frozenset(
    {
        "patroni_primary",
        "patroni_replica",
        "patroni_sync_standby",
        "patroni_postgres_timeline",
        "patroni_xlog_location",
        "patroni_xlog_replayed_location",
    }
)
OTHER_EXPORTERS: dict[str, frozenset[str]] = {"ledger-cluster.yml": PATRONI_METRICS}
# Prometheus's own series of each scrape (no exporter's), which the gateway nodes' liveness
# rules read beside the gateway's.
SCRAPE_METRICS = frozenset({"up"})

# Sample names each metric type puts in the exposition (what PromQL can select).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}

PROMQL_WORDS = frozenset(
    {
        # keywords and operators
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        # aggregations and functions written with a space before "(" are caught here too
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    }
)

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
COMMENT = re.compile(r"#[^\n]*")
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?=\s*(\(?))")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana variables allowed).

    Label matchers, ranges, grouping label lists, strings and comments are removed first; what
    is left that looks like an identifier and is neither followed by "(" (a function or an
    aggregation) nor a PromQL keyword is a metric name.
    """
    text = STRING.sub('""', expr)
    text = COMMENT.sub("", text)
    text = MATCHERS.sub("{}", text)
    text = RANGES.sub("[]", text)
    text = GROUPING.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, paren = match.group(1), match.group(2)
        if paren or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def exposed(family: str, kind: str) -> set[str]:
    """The sample names a metric family of this type is selected by."""
    return {family + suffix for suffix in SUFFIXES[kind]}


def known_metrics() -> set[str]:
    """Sample names of every metric object in gateway/ops/metrics.py, plus the planned ones."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names |= exposed(family.name, family.type)
    for family, kind in PLANNED_METRICS.items():
        names |= exposed(family, kind)
    return names


def rule_exprs(path: Path) -> list[tuple[str, str]]:
    """(rule name, expr) of every rule in a Prometheus rules file.

    A small reader for the shapes the rules files use (no YAML library in the dependencies):
    `expr:` with a plain or quoted scalar on the same line, or a block scalar (| or >) below.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[str, str]] = []
    name = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        named = re.match(r"^\s*-?\s*(?:alert|record):\s*(\S+)", line)
        if named:
            name = named.group(1).strip("'\"")
        found = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        i += 1
        if not found:
            continue
        indent, value = len(found.group(1)), found.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i])
                i += 1
            value = "\n".join(block).strip()
        elif value[:1] == '"':
            value = json.loads(value)
        elif value[:1] == "'":
            value = value[1:-1].replace("''", "'")
        out.append((name, value))
    return out


def rule_files() -> list[Path]:
    """The rules files over the gateway's own metrics."""
    return [p for p in sorted(RULES_DIR.glob("*.yml")) if p.name not in OTHER_EXPORTERS]


def all_rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def alert_names(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^\s*-\s*alert:\s*(\S+)", text, flags=re.MULTILINE)


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and variable query in the dashboard."""
    data = dashboard(path)
    out: list[tuple[str, str]] = []
    for panel in walk(data.get("panels", [])):
        for target in panel.get("targets", []) if "gridPos" in panel else []:
            out.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for annotation in data["annotations"]["list"]:
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in data["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        selector = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        out.append((f"variable {variable['name']!r}", selector.group(1) if selector else query))
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables so that promtool can parse the expression."""
    for variable, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
    ):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH (`make system-deps` installs Debian's prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


# ---------------------------------------------------------------------- the extractor itself


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (infno) (rate(sgw_requests_total{outcome="error"}[5m]))', {"sgw_requests_total"}),
        (
            "histogram_quantile(0.99, sum by (infno, le) "
            '(rate(sgw_request_duration_seconds_bucket{infno=~"2102|2207"}[$__rate_interval])))',
            {"sgw_request_duration_seconds_bucket"},
        ),
        ("max by (dependency) (sgw_breaker_state) == 2", {"sgw_breaker_state"}),
        ("a_total unless last_over_time(a_total[1d] offset 30m) > bool 0", {"a_total"}),
        ("sum(x) by (le) / on (le) group_left (infno) y", {"x", "y"}),
        ('count_values("v", sgw_catalog_version)', {"sgw_catalog_version"}),
        ("up # a comment naming not_a_metric", {"up"}),
    ],
)
def test_metric_names_are_extracted(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "rate(sgw_request_total[5m])",  # misspelled: the counter is sgw_requests
        "sgw_requests",  # a counter is selected by its _total name
        "rate(sgw_request_duration_seconds[5m])",  # a histogram has no bare series
        "sgw_breaker_state_total",  # a gauge has no _total
        "sum(rate(process_cpu_seconds_total[5m]))",  # not a gateway metric
    ],
)
def test_unknown_names_are_caught(expr: str) -> None:
    assert metric_names(expr) - known_metrics()


def test_known_metrics_come_from_the_gateway() -> None:
    known = known_metrics()
    for name in (
        "sgw_requests_total",
        "sgw_request_duration_seconds_bucket",
        "sgw_request_duration_seconds_count",
        "sgw_fund_paid_fen_total",
        "sgw_catalog_version",
        "sgw_db_pool_connections",
    ):
        assert name in known


# ---------------------------------------------------------------------- the configuration


def test_rules_files_are_read_whole() -> None:
    files = all_rule_files()
    assert files, f"no rules files under {RULES_DIR}"
    for path in files:
        text = path.read_text(encoding="utf-8")
        rules = len(re.findall(r"^\s*-\s*(?:alert|record):", text, flags=re.MULTILINE))
        exprs = rule_exprs(path)
        assert len(exprs) == rules, f"{path.name}: {rules} rules but {len(exprs)} exprs read"
        assert all(expr for _, expr in exprs), f"{path.name}: an empty expr"


def test_rules_name_only_exported_metrics() -> None:
    unknown = []
    for path in all_rule_files():
        known = OTHER_EXPORTERS.get(path.name) or known_metrics() | SCRAPE_METRICS
        for name, expr in rule_exprs(path):
            found = metric_names(expr)
            assert found, f"{path.name} {name}: no metric in {expr!r}"
            unknown += [f"{path.name} {name}: {metric}" for metric in sorted(found - known)]
    assert not unknown, "metrics neither in gateway/ops/metrics.py nor planned:\n" + "\n".join(
        unknown
    )


def test_dashboard_names_only_exported_metrics() -> None:
    known = known_metrics()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    unknown = []
    for where, expr in exprs:
        found = metric_names(expr)
        assert found, f"{where}: no metric in {expr!r}"
        unknown += [f"{where}: {metric}" for metric in sorted(found - known)]
    assert not unknown, "metrics neither in gateway/ops/metrics.py nor planned:\n" + "\n".join(
        unknown
    )


def test_dashboard_covers_every_metric() -> None:
    """Each gateway metric (and each planned one) is on the dashboard somewhere."""
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    families = {family.name for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)
                for family in obj.describe()} | set(PLANNED_METRICS)  # fmt: skip
    missing = [f for f in sorted(families) if not any(n.startswith(f) for n in used)]
    assert not missing, f"not on the dashboard: {missing}"


@pytest.mark.parametrize("path", [DASHBOARD, CLUSTER_DASHBOARD], ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    data = dashboard(path)
    assert data["schemaVersion"] == 39
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in walk(data["panels"]) if "gridPos" in p]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
    if path == DASHBOARD:
        latency = [e for _, e in dashboard_exprs() if "histogram_quantile" in e]
        assert any("histogram_quantile(0.5," in e for e in latency)
        assert any("histogram_quantile(0.99," in e for e in latency)


def test_the_cluster_dashboard_shows_what_its_alerts_watch() -> None:
    """Each Patroni series the ledger-cluster alerts read is on the clusters' board, beside the
    gateway's breaker per ledger database; nothing else is named."""
    used = {name for _, expr in dashboard_exprs(CLUSTER_DASHBOARD) for name in metric_names(expr)}
    assert used >= PATRONI_METRICS
    assert used - PATRONI_METRICS == {"sgw_breaker_state"}
    titles = {p.get("title") for p in walk(dashboard(CLUSTER_DASHBOARD)["panels"])}
    assert {"Replication lag of the slowest replica", "Failovers (timeline changes)"} <= titles


def test_every_alert_has_labels_annotations_and_both_test_cases() -> None:
    tests = "\n".join(p.read_text(encoding="utf-8") for p in sorted(RULE_TESTS_DIR.glob("*.yml")))
    # Each alert_rule_test entry: its alertname and whether exp_alerts is empty.
    cases = re.findall(
        r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", tests, flags=re.MULTILINE
    )
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    for path in all_rule_files():
        text = path.read_text(encoding="utf-8")
        blocks = re.split(r"^\s*-\s*alert:\s*", text, flags=re.MULTILINE)[1:]
        assert blocks
        for block in blocks:
            name = block.split()[0]
            assert re.search(r"^\s*severity:\s*(page|ticket)\s*$", block, re.MULTILINE), name
            for key in ("summary", "description", "summary_zh"):
                assert re.search(rf"^\s*{key}:", block, re.MULTILINE), f"{name}: no {key}"
            zh = re.search(r"^\s*summary_zh:\s*(.*)$", block, re.MULTILINE)
            assert zh and re.search(r"[\u4e00-\u9fff]", zh.group(1)), f"{name}: summary_zh"
            assert name in fires, f"{name}: no promtool test case where it fires"
            assert name in quiet, f"{name}: no promtool test case where it does not fire"


# ---------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    files = [str(p.relative_to(ROOT)) for p in all_rule_files()]
    result = run_promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    files = [str(p.relative_to(ROOT)) for p in sorted(RULE_TESTS_DIR.glob("*.yml"))]
    assert files
    result = run_promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


@pytest.mark.parametrize("board", [DASHBOARD, CLUSTER_DASHBOARD], ids=lambda p: p.name)
def test_dashboard_expressions_parse(tmp_path: Path, board: Path) -> None:
    """promtool parses every dashboard expression (as recording rules, variables replaced)."""
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs(board)):
        rules += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(grafana_to_promql(expr))}"]  # fmt: skip
    path = tmp_path / "dashboard.yml"
    path.write_text("\n".join(rules) + "\n", encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
