"""The plan's overall state as `plan show` and the console give it: "recovering" only while a
replay has something to recover (found from outside: said just after a clear with nothing
waiting, the gateways' own sweep holding the replay lock for a moment)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.app.config import Settings
from gateway.app.server import build_app
from gateway.ledger import deferred
from tests.integration.conftest import GENEROUS, running_gateway
from tests.integration.emergency_helpers import cli

pytestmark = pytest.mark.integration


def _state(dsn: str) -> str:
    shown = cli("plan", "show", "--json", "--database-url", dsn)
    return str(json.loads(shown.stdout)["state"])


async def test_recovering_only_while_something_waits_for_the_replay(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        sweep = await asyncpg.connect(srv.dsn)
        try:
            assert await deferred.try_lock_replay(sweep)  # a replay, or the sweep, looking
            assert _state(srv.dsn) == "normal"  # nothing deferred: nothing to recover
            await srv.fetch(
                "INSERT INTO deferred (kind, fixmedins_code, msgid, infno, psn_no, mdtrt_id,"
                " service_date, medfee_sumamt, body, received_at, source)"
                " VALUES ('call', 'H44180000001', 'M1', '2201', '', '', current_date, 0,"
                " convert_to('{}', 'UTF8'), now(), 'journal')"
            )
            assert _state(srv.dsn) == "recovering"
        finally:
            await sweep.close()


async def test_the_text_gives_each_rule_when_it_was_set(new_database: Callable[..., Any]) -> None:
    """Found from outside: `plan show` said who set a rule and why, not when (--json and the
    console did)."""
    async with running_gateway(new_database) as srv:
        cli("plan", "set", "--scope", "institution:P44180000001", "--class", "settlement",
            "--action", "reject", "--reason", "演练", "--operator", "duty",
            "--database-url", srv.dsn)  # fmt: skip
        shown = json.loads(cli("plan", "show", "--json", "--database-url", srv.dsn).stdout)
        (rule,) = shown["rules"]
        at = dt.datetime.fromisoformat(rule["set_at"]).astimezone()
        text = cli("plan", "show", "--database-url", srv.dsn).stdout
        (line,) = [ln for ln in text.splitlines() if "P44180000001" in ln]
        assert f"{at:%Y-%m-%d %H:%M:%S}" in line and "duty" in line and "演练" in line


def _changes(scope: str, action: str) -> float:
    labels = {"scope": scope, "class": "settlement", "action": action}
    return REGISTRY.get_sample_value("sgw_plan_changes_total", labels) or 0.0


async def test_a_rule_set_while_no_gateway_ran_is_counted_by_the_next_to_start(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Found from outside: a rule set while the gateway restarted never paged (no process saw
    it change); its clearing did. A process that starts counts a rule set within the page's
    window (15 minutes) as a change; an older one it does not."""
    async with running_gateway(new_database) as srv:
        dsn = srv.dsn
    cli("plan", "set", "--scope", "institution:P44180000001", "--class", "settlement",
        "--action", "reject", "--reason", "重启期间设置", "--database-url", dsn)  # fmt: skip
    cli("plan", "set", "--scope", "institution:P52050000001", "--class", "settlement",
        "--action", "reject", "--reason", "早已设置", "--database-url", dsn)  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE plan_rules SET set_at = now() - interval '1 hour'"
            " WHERE scope = 'institution:P52050000001'"
        )
    finally:
        await conn.close()
    recent, old = (
        _changes("institution:P44180000001", "reject"),
        _changes("institution:P52050000001", "reject"),
    )
    settings = Settings(dsn, pool_max=4, pool_min=1, config=GENEROUS, journal_dir=tmp_path)
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        assert _changes("institution:P44180000001", "reject") == recent + 1
        assert _changes("institution:P52050000001", "reject") == old
    finally:
        await runner.cleanup()
