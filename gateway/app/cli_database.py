"""The database every command works on: the `--database-url` option and where it points by
default.

Apart from `gateway.app.cli` so that the command groups it gathers (the emergency team's, the
console's operators) can open the same database without importing the CLI that imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from gateway.ledger.partitions import Partitions


# A database a command cannot reach (down, full, unknown): said in words, not a traceback
# (found from outside: `deferred replay` against a server out of connections).
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.ConnectionDoesNotExistError,
)


def unreachable(exc: BaseException) -> str:
    return f"无法连接数据库，请稍后再试或联系运维（{type(exc).__name__}: {exc}）"


def database_url(args: argparse.Namespace) -> str:
    """--database-url, else GATEWAY_DATABASE_URL, else the embedded PostgreSQL under ./var/."""
    url: str | None = args.database_url or os.environ.get("GATEWAY_DATABASE_URL")
    if url:
        return url
    # Imported here: the embedded server's wheel is loaded only when no URL is given.
    from gateway.app.embedded import embedded_database_url

    return embedded_database_url()


@contextlib.asynccontextmanager
async def cluster_pools(config: Path) -> AsyncIterator[list[asyncpg.Pool]]:
    """A small pool to each ledger cluster the configuration names (none unless the ledger is
    split by region), for the commands that read every ledger database."""
    from gateway.app.config import load_config
    from gateway.ledger import db

    pools: list[asyncpg.Pool] = []
    try:
        for cluster in load_config(config).ledger_clusters:
            pools.append(await db.create_pool(cluster.dsn, min_size=1, max_size=1))
        yield pools
    finally:
        for pool in pools:
            await pool.close()


@contextlib.asynccontextmanager
async def ledger_databases(main: asyncpg.Pool, config: Path) -> AsyncIterator[Partitions]:
    """The main database's pool and a small one to each ledger cluster the configuration names,
    as the gateway routes them (for the agency's commands, which find a claim, a batch or a
    person's money wherever it lives)."""
    from gateway.app.config import load_config
    from gateway.ledger import db
    from gateway.ledger.partitions import Partition, Partitions

    clusters: list[Partition] = []
    try:
        for cluster in load_config(config).ledger_clusters:
            pool = await db.create_pool(cluster.dsn, min_size=1, max_size=2)
            clusters.append(Partition(cluster.name, pool, frozenset(cluster.regions)))
        yield Partitions(Partition("main", main), clusters)
    finally:
        for c in clusters:
            await c.pool.close()


def add_database(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url", help="PostgreSQL DSN (default: $GATEWAY_DATABASE_URL or embedded)"
    )
