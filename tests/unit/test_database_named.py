"""The start-up line names the database the gateway uses (found from outside: `make run` never
said it used the embedded server, or where), and never its password."""

from __future__ import annotations

import argparse

import pytest

from gateway.app.cli_database import database_named


def test_the_embedded_server_is_named_with_where_it_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    said = database_named(argparse.Namespace(database_url=None))
    assert "embedded PostgreSQL" in said and "var/pg" in said


def test_a_server_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw:s3cret@db1:5432/ledger")
    said = database_named(argparse.Namespace(database_url=None))
    assert said == "PostgreSQL at db1:5432/ledger" and "s3cret" not in said
    several = "postgresql://gateway@pg1:5432,pg2:5432/gateway?target_session_attrs=read-write"
    said = database_named(argparse.Namespace(database_url=several))
    assert said == "PostgreSQL at pg1:5432,pg2:5432/gateway"
