"""The Litestar application factory. The lifespan opens the runtime and closes it in reverse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from service import __version__
from service.api.collector import DataCollectorController
from service.api.configs import ConfigsController
from service.api.deps import dependencies
from service.api.errors import exception_handlers
from service.api.execution_logs import ExecutionLogsController
from service.api.health import HealthController
from service.api.klines import KlinesController
from service.collection.runtime import open_runtime
from service.settings import Settings

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    dsn: str,
    *,
    on_shutdown: Sequence[Callable[[], None]] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Litestar:
    """Build the app for an already migrated database at `dsn`.

    `on_shutdown` callbacks run after everything else has closed (the CLI stops the embedded
    PostgreSQL there: under uvicorn, atexit handlers never run on SIGTERM). `clock` and `sleep`
    drive every time decision of the collection; tests inject their own.
    """

    @asynccontextmanager
    async def runtime_lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_runtime(settings, dsn, clock=clock, sleep=sleep) as runtime:
            app.state.runtime = runtime
            yield

    return Litestar(
        route_handlers=[
            HealthController, DataCollectorController, KlinesController, ConfigsController, ExecutionLogsController,
        ],
        dependencies=dependencies,
        exception_handlers=exception_handlers,
        lifespan=[runtime_lifespan],
        on_shutdown=list(on_shutdown),
        openapi_config=OpenAPIConfig(
            title="kline-collector",
            version=__version__,
            description="Keeps exchange candles flowing into PostgreSQL.",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        logging_config=None,  # structlog is configured by the CLI
    )
