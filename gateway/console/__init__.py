"""The emergency team's console (placeholder until the console lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web


def install(app: web.Application, gateway_key: Any, operators_path: Path) -> None:
    """Add the console's routes to the application."""
