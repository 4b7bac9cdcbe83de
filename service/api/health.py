"""GET /health: 200 when the database answers, 503 otherwise."""

from __future__ import annotations

from litestar import Controller, Response, get

from service.api.deps import HealthProbeDep
from service.api.errors import RETRY_AFTER
from service.api.schemas import Schema
from service.errors import ServiceUnavailableError

__all__ = ["HealthController"]


class Health(Schema):
    status: str
    database: str


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(operation_id="health", summary="Liveness and database reachability")
    async def health(self, health_probe: HealthProbeDep) -> Response[Health]:
        # The probe has its own connection: a busy pool never turns into a 503 here.
        try:
            await health_probe.ping()
        except ServiceUnavailableError as exc:
            return Response(
                Health(status="unavailable", database=f"error: {exc.extra.get('error', 'unknown')}"),
                status_code=503,
                headers={"Retry-After": RETRY_AFTER},
            )
        return Response(Health(status="ok", database="ok"), status_code=200)
