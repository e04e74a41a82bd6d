"""The application's state that modules besides gateway.app.server read, as typed aiohttp keys."""

from __future__ import annotations

from aiohttp import web

from gateway.app.runtime import Gateway

# Set by gateway.app.server's start-up, once the ledger's pool and the reference data are loaded.
GATEWAY = web.AppKey("gateway", Gateway)
