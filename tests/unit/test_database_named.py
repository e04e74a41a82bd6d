"""The start-up line names the database the gateway uses (found from outside: `make run` never
said it used the embedded server, or where), and never its password."""

from __future__ import annotations

import argparse

import pytest

from gateway.app.cli_database import database_named, database_url


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


def test_an_operators_command_says_it_uses_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: `plan set` run without GATEWAY_DATABASE_URL asked an empty embedded
    database and refused an institution as not registered, never saying which database it was."""
    from gateway.app import embedded

    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    monkeypatch.setattr(embedded, "embedded_database_url", lambda: "postgresql:///embedded")
    none = argparse.Namespace(database_url=None)
    assert database_url(none) == "postgresql:///embedded"
    assert "using the embedded PostgreSQL in var/pg" in capsys.readouterr().err
    assert database_url(none, say_embedded=False) == "postgresql:///embedded"  # serve's own line
    given = argparse.Namespace(database_url="postgresql://db1/ledger")
    assert database_url(given) == "postgresql://db1/ledger"
    assert capsys.readouterr().err == ""
