"""One mapping from errors to HTTP responses, all in the ErrorBody shape."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from service.api.schemas import ErrorBody
from service.errors import ConflictError, DomainError, InvalidInputError, NotFoundError, ServiceUnavailableError
from service.logging import get_logger

__all__ = ["RETRY_AFTER", "exception_handlers"]

log = get_logger(__name__)

_STATUS: dict[type[DomainError], int] = {
    InvalidInputError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    ServiceUnavailableError: 503,
}


#: Seconds a client is asked to wait before trying again after a 503 (the database restarting,
#: a connection being replaced); clients and probes that honour it back off instead of hammering.
RETRY_AFTER = "5"


def _response(status: int, detail: str, extra: object = None) -> Response[ErrorBody]:
    # Always JSON, also on routes that answer text/csv.
    return Response(
        ErrorBody(status_code=status, detail=detail, extra=extra),  # type: ignore[arg-type]
        status_code=status,
        media_type=MediaType.JSON,
        headers={"Retry-After": RETRY_AFTER} if status == 503 else None,
    )


def _domain(_: Request[Any, Any, Any], exc: DomainError) -> Response[ErrorBody]:
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    return _response(status, exc.detail, exc.extra or None)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return _response(exc.status_code, exc.detail, exc.extra or None)


def _database(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.error("database_unavailable", error=str(exc))
    return _response(503, "the database is not answering; try again shortly")


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled_error", exc_info=exc)
    return _response(500, "internal error; the log has the details")


exception_handlers: ExceptionHandlersMap = {
    DomainError: _domain,
    HTTPException: _http,
    # The database is unreachable, restarting, or gone: the client can retry later.
    asyncpg.InterfaceError: _database,
    asyncpg.PostgresConnectionError: _database,
    asyncpg.OperatorInterventionError: _database,
    asyncpg.InvalidCatalogNameError: _database,
    OSError: _database,
    Exception: _unexpected,
}
