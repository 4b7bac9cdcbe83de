"""GET /metrics (Prometheus text format) and the middleware that times every HTTP request.

The route is left out of the OpenAPI document: it is for Prometheus, not API clients. It is public
unless METRICS_TOKEN is set. The database's share of the scrape (tasks, execution runs, freshness)
is read with short timeouts; when the database does not answer, those series are left out,
`kline_database_up` is 0, and the process's own metrics are still served.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.collection.runtime import Runtime
from service.db import metrics as metrics_db
from service.db.pool import connection
from service.errors import DatabaseUnavailableError
from service.logging import get_logger
from service.metrics import CONTENT_TYPE, DatabaseCounts, Metrics, PoolUsage, ScrapeState, SeriesFreshness

__all__ = ["HttpMetricsMiddleware", "MetricsController"]

log = get_logger(__name__)

#: Seconds a scrape waits for a pool connection, and for each statement, before leaving the database out.
_DB_TIMEOUT = 2.0
_BEARER = "bearer "


class MetricsController(Controller):
    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        token = runtime.settings.metrics_token
        if token is not None and not _bearer_matches(request.headers.get("authorization"), token):
            return Response(
                b"METRICS_TOKEN required: send Authorization: Bearer <token>\n", status_code=401,
                media_type="text/plain; charset=utf-8", headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        state = ScrapeState(
            database=await _read_database(runtime),
            limiters={name: client.limiter_state() for name, client in runtime.exchanges.items()},
            loop_lag=runtime.loop_monitor.lag(),
            pool=PoolUsage(
                size=runtime.pool.get_size(), idle=runtime.pool.get_idle_size(), max_size=runtime.pool.get_max_size()
            ),
        )
        return Response(runtime.metrics.render(state), media_type=CONTENT_TYPE)


def _bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison, so the answer's timing tells nothing about the token."""
    if header is None or not header.lower().startswith(_BEARER):
        return False
    return hmac.compare_digest(header[len(_BEARER):].strip().encode(), token.encode())


async def _read_database(runtime: Runtime) -> DatabaseCounts | None:
    try:
        async with connection(runtime.pool, acquire_timeout=_DB_TIMEOUT) as conn:
            tasks = await metrics_db.count_tasks(conn, timeout=_DB_TIMEOUT)
            runs = await metrics_db.count_execution_runs(conn, timeout=_DB_TIMEOUT)
            fresh = await metrics_db.series_freshness(
                conn, now_ms=int(runtime.clock() * 1000), timeout=_DB_TIMEOUT
            )
    except DatabaseUnavailableError as exc:
        log.info("metrics_database_unavailable", error=exc.detail)
        return None
    return DatabaseCounts(
        tasks={(row["task_type"], row["status"]): row["count"] for row in tasks},
        execution_runs={(row["job_type"], row["status"]): row["count"] for row in runs},
        freshness=[
            SeriesFreshness(row["exchange"], row["symbol"], row["timeframe"], float(row["lag_seconds"]))
            for row in fresh
        ],
    )


class HttpMetricsMiddleware(ASGIMiddleware):
    """Observes each HTTP request's duration by method, route template (never the raw path, so ids in
    paths cannot multiply the series) and status."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 by Litestar

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_noting_status)
        finally:
            metrics: Metrics | None = getattr(getattr(scope["app"].state, "runtime", None), "metrics", None)
            if metrics is not None:
                route = scope.get("path_template") or "unmatched"
                method = scope["method"] if scope["type"] == ScopeType.HTTP else "WEBSOCKET"
                metrics.http_request_duration.labels(method, route, str(status)).observe(
                    time.perf_counter() - started
                )
