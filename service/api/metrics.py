"""GET /metrics (Prometheus text format) and the middleware that times every HTTP request.

The route is left out of the OpenAPI document: it is for Prometheus, not API clients. It is public
unless METRICS_TOKEN is set. The database's share of the scrape (tasks, execution runs, freshness)
is read with short timeouts; when the database does not answer, those series are left out,
`kline_database_up` is 0, and the process's own metrics are still served.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import CONTENT_TYPE, Metrics
from service.process.runtime import Runtime
from service.process.scrape import bearer_matches, scrape

__all__ = ["HttpMetricsMiddleware", "MetricsController"]

class MetricsController(Controller):
    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        token = runtime.settings.metrics_token
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return Response(
                b"METRICS_TOKEN required: send Authorization: Bearer <token>\n", status_code=401,
                media_type="text/plain; charset=utf-8", headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return Response(await scrape(runtime), media_type=CONTENT_TYPE)


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
