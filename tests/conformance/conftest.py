"""The conformance suite replays public clients' request shapes against a real gateway over HTTP,
with the integration suite's fixtures (a gateway of the module's own over a fresh database)."""

from tests.integration.conftest import server

__all__ = ["server"]
