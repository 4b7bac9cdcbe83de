"""GET /health: 200 when the database answers, 503 otherwise."""

from __future__ import annotations

import asyncio

import asyncpg
from litestar import Controller, Response, get

from service.api.deps import PoolDep
from service.api.schemas import Schema

__all__ = ["HealthController"]


class Health(Schema):
    status: str
    database: str


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(operation_id="health", summary="Liveness and database reachability")
    async def health(self, pool: PoolDep) -> Response[Health]:
        try:
            async with asyncio.timeout(2):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return Response(Health(status="unavailable", database=f"error: {exc.__class__.__name__}"), status_code=503)
        return Response(Health(status="ok", database="ok"), status_code=200)
