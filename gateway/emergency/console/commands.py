"""`python -m gateway operators lockouts | unlock`: the console's log-in locks from a shell.

The shell is where the duty team goes when the console itself refuses them: a lock cleared here
is audited like one cleared on the page (operator `cli:<login>` unless --operator says who).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from gateway.app.cli_database import (
    OUTPUT_CLOSED,
    UNREACHABLE,
    database_url,
    output_closed,
    unreachable,
)
from gateway.app.config import DEFAULT_CONFIG, load_config
from gateway.emergency import operators
from gateway.emergency.console.pages import local_time
from gateway.ledger import db


def _run(args: argparse.Namespace, work: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:

    async def go() -> int:
        pool = await db.create_pool(database_url(args), min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await db.migrate(conn)
                return await work(conn)
        finally:
            await pool.close()

    try:
        return asyncio.run(go())
    except UNREACHABLE as exc:
        # Found from outside: with the ledger stopped, `operators lockouts` printed a traceback
        # where every other command says it in one line.
        if output_closed(exc):
            return OUTPUT_CLOSED
        print(f"refused: {unreachable(exc)}", file=sys.stderr)
        return 2


def lockouts(args: argparse.Namespace) -> int:
    """Names and addresses locked now, or with failed log-ins in the current window."""
    policy = load_config(Path(args.config)).login

    async def work(conn: asyncpg.Connection) -> int:
        found = await operators.lockouts(conn, policy)
        if args.json:
            print(json.dumps([lock.as_json() for lock in found], ensure_ascii=False))
            return 0
        if not found:
            print("no lockouts")
        for lock in found:
            # In local time, as the console and the 429's words say it (found from outside: UTC
            # here, Beijing time in the refusal; and "locked until not locked").
            state = (
                f"locked until {local_time(lock.locked_until.isoformat())}"
                if lock.locked_until
                else "not locked"
            )
            print(f"{lock.kind:8} {lock.key:24} failures {lock.failures:3}  {state}")
        return 0

    return _run(args, work)


def unlock(args: argparse.Namespace) -> int:
    """Clear one operator name (its guard and its locks at every address) or one address's
    lock (audited)."""
    kind, key = ("operator", args.login) if args.login is not None else ("address", args.address)
    who = args.operator or f"cli:{getpass.getuser()}"

    async def work(conn: asyncpg.Connection) -> int:
        try:
            await operators.clear_lockout(conn, kind, key, operator=who, reason=args.reason)
        except operators.NoSuchLockout:
            print(f"refused: no lockout for {kind} {key}", file=sys.stderr)
            return 2
        print(f"{kind} {key} unlocked")
        return 0

    return _run(args, work)


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="operators_command", required=True)


def add_commands(
    operators_parser: argparse.ArgumentParser,
    add_database: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `lockouts` and `unlock` under the existing `operators` command."""
    sub = _subcommands(operators_parser)
    ls = sub.add_parser("lockouts", help="console log-in locks and recent failures")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--config", default=str(DEFAULT_CONFIG))
    add_database(ls)
    ls.set_defaults(func=lockouts)
    un = sub.add_parser("unlock", help="clear a console log-in lock (audited)")
    which = un.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--login", help="the operator name: its guard and its locks at every address"
    )
    which.add_argument("--address", help="the client address that is locked")
    un.add_argument("--reason", required=True)
    un.add_argument("--operator", help="recorded in the audit log (default cli:<login>)")
    add_database(un)
    un.set_defaults(func=unlock)
