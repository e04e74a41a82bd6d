"""The database every command works on: the `--database-url` option and where it points by
default.

Apart from `gateway.app.cli` so that the command groups it gathers (the emergency team's, the
console's operators) can open the same database without importing the CLI that imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg

if TYPE_CHECKING:
    from gateway.ledger.partitions import Partition, Partitions


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


# The same, narrowed to what only a connection raises: what any command that met no handler of
# its own says in one line (found from outside: `idempotency purge`, `clearing monthly`,
# `corrections plan`, `shadow report` and `demo load` printed a traceback).
CONNECTING = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    *(e for e in UNREACHABLE if issubclass(e, asyncpg.PostgresError | asyncpg.InterfaceError)),
)


def unreachable(exc: BaseException) -> str:
    """The words for a database a command cannot reach, or for a file it cannot read or write
    (an OSError naming a file: found from outside, a missing input file was reported as a
    database that could not be reached)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"文件{exc.filename}无法读写：{exc.strerror or type(exc).__name__}"
    return f"无法连接数据库，请稍后再试或联系运维（{type(exc).__name__}: {exc}）"


# The exit status of a command whose reader went away (`… | head -1`), as a shell reports one
# that SIGPIPE ended: 128 + 13.
OUTPUT_CLOSED = 141


def output_closed(exc: BaseException) -> bool:
    """Whether `exc` is the command's own output closed under it (found from outside: `deferred
    list --json | head -1` said the database could not be reached). Then nothing more is
    written: stdout goes to /dev/null, so the interpreter's last flush does not fail again."""
    if not isinstance(exc, BrokenPipeError):
        return False
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    if not any(ev & select.POLLERR for _, ev in events):
        return False  # stdout is fine: the broken pipe was a socket's
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


NOT_UTF8 = "文件不是UTF-8编码的文本（Excel等导出的GBK文件请另存为UTF-8后再读入）"


def _given_url(args: argparse.Namespace) -> str | None:
    """--database-url, else GATEWAY_DATABASE_URL; None: the embedded server."""
    url: str | None = args.database_url or os.environ.get("GATEWAY_DATABASE_URL")
    return url


def database_named(args: argparse.Namespace) -> str:
    """Which database `database_url` gives, in words for the start-up line, without a password
    (found from outside: `make run` never said it used the embedded server, or where)."""
    url = _given_url(args)
    if not url:
        return "the embedded PostgreSQL in var/pg (no --database-url or GATEWAY_DATABASE_URL)"
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2] or "the local socket"
    return f"PostgreSQL at {where}{parts.path}"


def database_url(args: argparse.Namespace, *, say_embedded: bool = True) -> str:
    """--database-url, else GATEWAY_DATABASE_URL, else the embedded PostgreSQL under ./var/,
    which an operator's command says it uses (`say_embedded`; `serve` names its database in its
    start-up line): found from outside, a `plan set` run without the variable refused an
    institution "not registered", having asked an empty embedded database."""
    url = _given_url(args)
    if url:
        return url
    # Imported here: the embedded server's wheel is loaded only when no URL is given.
    from gateway.app.embedded import embedded_database_url

    if say_embedded:
        print(
            "gateway: no --database-url or GATEWAY_DATABASE_URL: using the embedded PostgreSQL"
            " in var/pg",
            file=sys.stderr,
            flush=True,
        )
    return embedded_database_url()


@contextlib.asynccontextmanager
async def cluster_partitions(config: Path, max_size: int = 1) -> AsyncIterator[list[Partition]]:
    """A small pool to each ledger cluster the configuration names, with its name and regions
    (none unless the ledger is split by region), for the commands that read every ledger
    database."""
    from gateway.app.config import load_config
    from gateway.ledger import db
    from gateway.ledger.partitions import Partition

    clusters: list[Partition] = []
    try:
        for cluster in load_config(config).ledger_clusters:
            pool = await db.create_pool(cluster.dsn, min_size=1, max_size=max_size)
            clusters.append(Partition(cluster.name, pool, frozenset(cluster.regions)))
        yield clusters
    finally:
        for c in clusters:
            await c.pool.close()


@contextlib.asynccontextmanager
async def cluster_pools(config: Path) -> AsyncIterator[list[asyncpg.Pool]]:
    """The clusters' pools alone (`cluster_partitions`)."""
    async with cluster_partitions(config) as clusters:
        yield [c.pool for c in clusters]


@contextlib.asynccontextmanager
async def ledger_databases(main: asyncpg.Pool, config: Path) -> AsyncIterator[Partitions]:
    """The main database's pool and the clusters', as the gateway routes them (for the agency's
    commands, which find a claim, a batch or a person's money wherever it lives)."""
    from gateway.ledger.partitions import MAIN, Partition, Partitions

    async with cluster_partitions(config, max_size=2) as clusters:
        yield Partitions(Partition(MAIN, main), clusters)


def add_database(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url", help="PostgreSQL DSN (default: $GATEWAY_DATABASE_URL or embedded)"
    )
