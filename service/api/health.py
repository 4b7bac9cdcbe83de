"""GET /health: 200 when the database answers, 503 otherwise."""

from __future__ import annotations

from typing import Literal

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec

from service.api.deps import HealthProbeDep
from service.api.errors import RETRY_AFTER
from service.api.openapi import ERROR_DESCRIPTIONS
from service.api.schemas import ErrorBody, Schema
from service.errors import ServiceUnavailableError

__all__ = ["HealthController"]


class Health(Schema):
    status: Literal["ok", "unavailable"]
    database: str
    """`ok`, or `error: ...` saying why the database did not answer."""


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        operation_id="health", summary="Liveness and database reachability",
        responses={
            503: ResponseSpec(
                Health, generate_examples=False,
                description="The database is not answering (`status: unavailable`); try again after `Retry-After`",
            ),
            500: ResponseSpec(ErrorBody, description=ERROR_DESCRIPTIONS[500], generate_examples=False),
        },
    )
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
