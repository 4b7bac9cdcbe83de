"""The Litestar application factory. The lifespan opens the runtime and closes it in reverse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State

from service import __version__
from service.api.auth import AuthController
from service.api.collector import DataCollectorController
from service.api.configs import ConfigsController
from service.api.console import ConsoleController, console_assets_router
from service.api.coverage import CoverageController
from service.api.deps import dependencies
from service.api.errors import exception_handlers
from service.api.events import EventsController
from service.api.exchanges import ExchangesController
from service.api.execution_logs import ExecutionLogsController
from service.api.health import HealthController
from service.api.klines import KlinesController
from service.api.live import LiveController
from service.api.metrics import HttpMetricsMiddleware, MetricsController
from service.api.middleware import REQUEST_ID_HEADER, JsonBodyCheck, RequestIdMiddleware, add_response_headers
from service.api.openapi import DocumentedSchemaPlugin, docs_assets_router, openapi_config
from service.api.startup import require_started
from service.auth.guards import document_read_access
from service.auth.tokens import build_jwt_auth
from service.process.runtime import open_runtime
from service.settings import Settings, SettingsError

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    dsn: str,
    *,
    on_shutdown: Sequence[Callable[[], None]] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Litestar:
    """Build the app for the database at `dsn`, which may be down, or behind on migrations, at start-up:
    /api routes answer 503 until the runtime's background start has reached it (service/api/startup.py).

    `on_shutdown` callbacks run after everything else has closed (the CLI stops the embedded
    PostgreSQL there: under uvicorn, atexit handlers never run on SIGTERM). `clock` and `sleep`
    drive every time decision of the collection; tests inject their own. `settings.secret_key`
    must be set (the CLI fills it in embedded mode: service/auth/secret_key.py).
    """
    if settings.secret_key is None:
        raise SettingsError("SECRET_KEY: required to sign the login tokens")
    jwt_auth = build_jwt_auth(secret_key=settings.secret_key, expire_minutes=settings.access_token_expire_minutes)

    @asynccontextmanager
    async def runtime_lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_runtime(
            settings, dsn, runs_tasks=settings.web_runs_tasks, kind="web", clock=clock, sleep=sleep
        ) as runtime:
            app.state.runtime = runtime
            yield

    app = Litestar(
        route_handlers=[
            HealthController, AuthController, DataCollectorController, KlinesController, CoverageController,
            ConfigsController, ExchangesController, LiveController,
            ExecutionLogsController, EventsController, MetricsController, docs_assets_router(),
            ConsoleController, console_assets_router(),
        ],
        dependencies=dependencies,
        guards=[require_started],
        # JWTAuth's middleware and scheme only: its on_app_init would mark every operation, public
        # ones included, as needing the token; the protected routes declare it themselves.
        # The request id first, so every log line of the request carries it (auth failures too).
        # Request timing outermost but for the request id: a 401 from the auth middleware is timed too.
        middleware=[RequestIdMiddleware(), HttpMetricsMiddleware(), jwt_auth.middleware],
        # Bodies are read and checked strictly only after the guards have let the caller in.
        before_request=JsonBodyCheck(),
        before_send=[add_response_headers],
        request_max_body_size=settings.max_body_bytes,
        cors_config=_cors(settings),
        state=State({"jwt_auth": jwt_auth}),
        exception_handlers=exception_handlers,
        lifespan=[runtime_lifespan],
        on_shutdown=list(on_shutdown),
        openapi_config=openapi_config(version=__version__, components=[jwt_auth.openapi_components]),
        plugins=[DocumentedSchemaPlugin()],
        logging_config=None,  # structlog is configured by the CLI
    )
    document_read_access(app, public_reads=settings.public_reads)
    return app


def _cors(settings: Settings) -> CORSConfig | None:
    """Browsers on CORS_ORIGINS may call the API (tokens travel in a header, not cookies); unset: CORS off."""
    if not settings.cors_origin_list:
        return None
    return CORSConfig(allow_origins=list(settings.cors_origin_list), expose_headers=[REQUEST_ID_HEADER], max_age=600)
