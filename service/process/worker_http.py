"""A worker's only HTTP: GET /metrics on METRICS_PORT (aiohttp, on the worker's own event loop).

A worker serves no API, but Prometheus scrapes it like a web process: its own counters (candles
written, exchange requests, 429/418 pauses) exist only in its memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from service.metrics import CONTENT_TYPE
from service.process.runtime import Runtime
from service.process.scrape import bearer_matches, scrape

__all__ = ["metrics_server"]


@asynccontextmanager
async def metrics_server(runtime: Runtime, *, host: str, port: int) -> AsyncIterator[None]:
    """Serve GET /metrics (METRICS_TOKEN applies as in `serve`) while the block runs."""

    async def metrics(request: web.Request) -> web.Response:
        token = runtime.settings.metrics_token
        if token is not None and not bearer_matches(request.headers.get("Authorization"), token):
            return web.Response(
                status=401, text="METRICS_TOKEN required: send Authorization: Bearer <token>\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return web.Response(body=await scrape(runtime), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
