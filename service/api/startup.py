"""The API waits for start-up: /api routes answer 503 until the work that needs the database is done.

/health and the documentation answer from the start: a platform probing the port must see the
process alive (and the database down) while it waits for the database.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from service.process.runtime import Runtime

__all__ = ["require_started"]

_API_PREFIX = "/api/"


async def require_started(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: 503 (Retry-After) on /api routes until start-up has reached the database.

    Async on purpose: Litestar runs a sync guard in a worker thread.
    """
    if connection.scope["path"].startswith(_API_PREFIX):
        runtime: Runtime = connection.app.state.runtime
        runtime.database_start.check()
