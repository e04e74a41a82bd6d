"""config/gateway.toml decoded into typed sections (gateway.app.config): what is refused, and the
defaults the shipped file states."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.app.config import (
    ConfigError,
    GatewayConfig,
    Idempotency,
    Settings,
    decode_config,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "config").glob("*.toml"))
GATEWAY_TOML = ROOT / "config" / "gateway.toml"


def _struct(t: object) -> type[msgspec.Struct] | None:
    return t if isinstance(t, type) and issubclass(t, msgspec.Struct) else None


def _tables(struct: type[msgspec.Struct], prefix: str = "") -> Iterator[str]:
    """Every table the types define, as its TOML header (`breakers.postgres`)."""
    for f in msgspec.structs.fields(struct):
        inner = _struct(f.type)
        if inner is not None:
            path = f"{prefix}{f.encode_name}"
            yield path
            yield from _tables(inner, path + ".")


TABLES = list(_tables(GatewayConfig))


def _leaves(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every setting in a TOML document; a table the types define is
    walked into, a map (`[http.body_limits]`) is one setting."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path in TABLES:
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _plain(config: GatewayConfig) -> Any:
    """The configuration as TOML gives it: tables, lists, numbers and text."""
    return msgspec.json.decode(msgspec.json.encode(config))


def _at(builtins: Any, path: str) -> Any:
    for key in path.split("."):
        builtins = builtins[key]
    return builtins


# Settings the shipped file tunes away from the built-in default, each with the reason. Every
# other value the file states must equal its default, so that the two cannot drift apart.
TUNED_IN_THE_FILE = {
    "overload.max_in_flight": "sized per deployment (throughput x latency); off when unset",
    "breakers.postgres.latency_target_seconds": "the ledger's own latency target",
    "breakers.redis.min_calls": "Redis answers rate-limit checks only: judged sooner",
    "breakers.redis.consecutive_failures": "likewise",
    "breakers.redis.action": "settlement never waits for Redis: no plan action",
    "breakers.legacy.window_seconds": "the old system is slow to come back",
    "breakers.legacy.min_calls": "likewise",
    "breakers.legacy.min_open_seconds": "likewise",
    "breakers.legacy.healthy_seconds": "likewise",
    "breakers.legacy.action": "route_legacy refuses while the old system is down",
    "triggers.institution.window_seconds": "an institution is judged over a minute",
    "triggers.institution.consecutive_failures": "likewise",
    "triggers.institution.min_open_seconds": "likewise",
}


def test_the_shipped_file_has_every_table_the_types_define_and_no_other() -> None:
    doc = tomllib.loads(GATEWAY_TOML.read_text(encoding="utf-8"))

    def tables(d: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in d.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and path in TABLES:
                yield path
                yield from tables(value, path + ".")

    assert sorted(tables(doc)) == sorted(TABLES)
    assert len(TABLES) == 23  # 19 top-level tables, breakers.* (3), triggers.institution


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_decodes_with_the_values_it_states(path: Path) -> None:
    config = load_config(path)
    decoded = _plain(config)
    for key, value in _leaves(tomllib.loads(path.read_text(encoding="utf-8"))):
        assert _at(decoded, key) == value, key


def test_every_default_is_the_value_the_shipped_file_states_but_the_tuned_ones() -> None:
    shipped = _plain(load_config(GATEWAY_TOML))
    defaults = _plain(GatewayConfig())
    stated = dict(_leaves(tomllib.loads(GATEWAY_TOML.read_text(encoding="utf-8"))))
    differing = {key for key in stated if _at(shipped, key) != _at(defaults, key)}
    assert differing == set(TUNED_IN_THE_FILE)
    # The defaults written twice before the types, once each now.
    assert GatewayConfig().idempotency.keep_days == 8
    assert GatewayConfig().deadlines.call_seconds == 5.0
    assert GatewayConfig().legacy.timeout_seconds == 10.0
    assert GatewayConfig().plan.poll_seconds == 1.0
    assert GatewayConfig().overload.max_in_flight == 0


def test_a_missing_file_means_every_default(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml") == GatewayConfig()


@pytest.mark.parametrize("table", TABLES)
def test_an_unknown_key_is_refused_naming_it_and_its_table(table: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_config(f"[{table}]\nno_such_setting = 1\n", "gateway.toml")
    message = str(caught.value)
    assert message.startswith("gateway.toml: ") and "\n" not in message
    assert "unknown field `no_such_setting`" in message
    assert message.endswith(f"at `$.{table}`")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[ratelimit]\nterminal_rate = 1.0\n", "unknown field `ratelimit`"),
        ("[breakers.postgress]\nmin_calls = 3\n", "unknown field `postgress` - at `$.breakers`"),
        ("[triggers.institutions]\nmin_calls = 3\n", "unknown field `institutions`"),
    ],
)
def test_an_unknown_table_is_refused_naming_it(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("$", r"\$").replace(".", r"\.")):
        decode_config(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[deadlines]\ncall_seconds = "5"\n', "Expected `float`, got `str` - at `$.deadlines.call_seconds`"),
        ("[rate_limit]\nterminal_burst = 1.5\n", "Expected `int`, got `float` - at `$.rate_limit.terminal_burst`"),
        ('[http]\nupload_transactions = "9101"\n', "Expected `array`, got `str` - at `$.http.upload_transactions`"),
        ('[http.body_limits]\n"2204" = "8 MiB"\n', "Expected `int`, got `str` - at `$.http.body_limits[...]`"),
        ('[breakers.postgres]\nrecover = "later"\n', "Invalid enum value 'later' - at `$.breakers.postgres.recover`"),
        ('[console]\nhash_threads = "one"\n', "Expected `int`, got `str` - at `$.console.hash_threads`"),
        ("breakers = 1\n", "Expected `object`, got `int` - at `$.breakers`"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_config(text, "gateway.toml")
    assert str(caught.value) == f"gateway.toml: {message}"


def test_an_integer_is_taken_where_a_fraction_is_expected() -> None:
    assert decode_config("[rate_limit]\nterminal_rate = 50\n").rate_limit.terminal_rate == 50.0


def test_a_retention_under_seven_days_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"keep_days = 6: .* at least 7 days .* `\$\.idempotency`"
    ):
        decode_config("[idempotency]\nkeep_days = 6\n")
    assert decode_config("[idempotency]\nkeep_days = 7\n").idempotency.keep_days == 7
    with pytest.raises(ValueError, match="at least 7 days"):
        Idempotency(keep_days=3)


def test_a_table_given_in_part_keeps_its_own_defaults_for_the_rest() -> None:
    config = decode_config("[triggers.institution]\nwindow_seconds = 30.0\n")
    trigger = config.triggers.institution
    # The trigger's defaults, not a dependency breaker's.
    assert (trigger.window_seconds, trigger.min_calls, trigger.recover) == (30.0, 20, "manual")
    config = decode_config("[breakers.postgres]\nmin_calls = 3\n")
    assert config.breakers.postgres.min_calls == 3
    assert config.breakers.postgres.error_ratio == config.breakers.redis.error_ratio == 0.5


def test_settings_refuse_a_bad_file_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text("[http]\nbody_second = 30.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown field `body_second`"):
        Settings("postgresql://127.0.0.1:1/none", config_path=bad)


def test_serve_with_a_bad_file_stops_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text("[overload]\nmax_in_flight = 256\nshares = 0.25\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad),
         "--database-url", "postgresql://127.0.0.1:1/none"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gateway: {bad}: Object contains unknown field `shares` - at `$.overload`"
    ]


def test_the_parallel_run_settings_are_checked() -> None:
    from gateway.app.config import Shadow

    assert Shadow().protect_action == ""  # off unless asked for
    for bad in ({"sample_bp": 10001}, {"queue_size": 0}, {"protect_action": "shadow"}):
        with pytest.raises(ValueError):
            Shadow(**bad)
    assert Shadow(protect_action="route_legacy_shadow").protect_action == "route_legacy_shadow"


def test_the_protective_action_scope_and_category_are_checked() -> None:
    shadow = decode_config('[shadow]\nprotect_action = "route_legacy"\n').shadow
    # Today's behaviour unless asked: per institution, all categories together.
    assert (shadow.protect_scope, shadow.protect_by_category) == ("institution", False)
    text = '[shadow]\nprotect_scope = "region"\nprotect_by_category = true\n'
    shadow = decode_config(text).shadow
    assert (shadow.protect_scope, shadow.protect_by_category) == ("region", True)
    with pytest.raises(ConfigError) as caught:
        decode_config('[shadow]\nprotect_scope = "hospital"\n', "gateway.toml")
    assert str(caught.value) == (
        "gateway.toml: Invalid enum value 'hospital' - at `$.shadow.protect_scope`"
    )
    with pytest.raises(ConfigError, match=r"Expected `bool`, got `str` - at `\$\.shadow"):
        decode_config('[shadow]\nprotect_by_category = "yes"\n')
    with pytest.raises(ConfigError, match="protect_min_compared: at least 1"):
        decode_config("[shadow]\nprotect_min_compared = 0\n")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # Found from outside: each was taken, and the gateway then answered every request
        # busy, rate-limited or timed out while /readyz said ok.
        ("[overload]\nmax_in_flight = -5\n", "overload.max_in_flight = -5"),
        ("[rate_limit]\nterminal_rate = -1.0\n", "rate_limit.terminal_rate = -1.0"),
        ("[deadlines]\ncall_seconds = -1.0\n", "deadlines.call_seconds = -1.0"),
        ("[deadlines]\ncall_seconds = 0\n", "deadlines.call_seconds = 0.0: must be above zero"),
        ("[breakers.postgres]\nerror_ratio = 5.0\n", "breakers.postgres.error_ratio = 5.0"),
        ("[group_commit]\nmax_batch = -1\n", "group_commit.max_batch = -1"),
        # Found from outside: taken, and every comparison with them meaningless.
        (
            "[overload]\nmax_in_flight = 8\nlatency_target_ms = nan\n",
            "overload.latency_target_ms = nan",
        ),
        (
            "[overload]\nmax_in_flight = 8\nlatency_target_ms = inf\n",
            "overload.latency_target_ms = inf",
        ),
        ("[rate_limit]\nterminal_rate = nan\n", "rate_limit.terminal_rate = nan"),
    ],
)
def test_a_number_no_setting_can_mean_is_refused_naming_it(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        decode_config(text)


def test_a_latency_target_without_a_bound_is_refused_naming_both() -> None:
    """A target moves the in-flight bound below max_in_flight; with none it would do nothing."""
    with pytest.raises(ConfigError, match="latency_target_ms = 30: needs max_in_flight"):
        decode_config("[overload]\nlatency_target_ms = 30.0\n")
    with pytest.raises(ConfigError, match=re.escape("overload.latency_target_ms = -5.0")):
        decode_config("[overload]\nmax_in_flight = 10\nlatency_target_ms = -5.0\n")
    taken = decode_config("[overload]\nmax_in_flight = 10\nlatency_target_ms = 30.0\n")
    assert taken.overload.latency_target_ms == 30.0


def test_zero_where_it_means_off_is_taken() -> None:
    """`max_in_flight = 0` turns shedding off, as the shipped file says."""
    assert decode_config("[overload]\nmax_in_flight = 0\n").overload.max_in_flight == 0
