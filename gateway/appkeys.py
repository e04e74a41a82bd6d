"""The application's state that modules besides gateway.app read, as typed aiohttp keys."""

from __future__ import annotations

from aiohttp import web

from gateway.runtime import Gateway

# Set by gateway.app's start-up, once the ledger's pool and the reference data are loaded.
GATEWAY = web.AppKey("gateway", Gateway)
