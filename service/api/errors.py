"""One mapping from errors to HTTP responses, all in the ErrorBody shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from service.api.middleware import request_id_of
from service.api.schemas import NO_NUL_PATTERN, ErrorBody
from service.errors import (
    AuthenticationError,
    ConflictError,
    DatabaseUnavailableError,
    DomainError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from service.logging import get_logger

__all__ = ["RETRY_AFTER", "exception_handlers"]

log = get_logger(__name__)

_STATUS: dict[type[DomainError], int] = {
    InvalidInputError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    ServiceUnavailableError: 503,
    AuthenticationError: 401,
    TooManyAttemptsError: 429,
}


#: Seconds a client is asked to wait before trying again after a 503 (the database restarting,
#: a connection being replaced); clients and probes that honour it back off instead of hammering.
RETRY_AFTER = "5"


def _response(
    status: int,
    detail: str,
    extra: Mapping[str, Any] | None = None,
    *,
    retry_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[ErrorBody]:
    headers = dict(headers or {})  # e.g. Allow on a 405
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names the scheme to authenticate with
    # Always JSON, also on routes that answer text/csv.
    return Response(
        ErrorBody(status_code=status, detail=detail, extra=dict(extra or {})),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers or None,
    )


def _domain(_: Request[Any, Any, Any], exc: DomainError) -> Response[ErrorBody]:
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    retry_after = exc.retry_after if isinstance(exc, TooManyAttemptsError) else None
    return _response(status, exc.detail, exc.extra or None, retry_after=retry_after)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == HTTP_500_INTERNAL_SERVER_ERROR:  # Litestar's own: no more to say than ours
        return _unexpected(request, exc)
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [_explained(error) for error in exc.extra if isinstance(error, dict)]
        return _response(
            exc.status_code, "; ".join(map(_described, errors)) or exc.detail, {"errors": errors}, headers=exc.headers
        )
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        return _response(
            exc.status_code, f"the request body is larger than {limit} bytes (MAX_BODY_BYTES)",
            {"max_body_bytes": limit}, headers=exc.headers,
        )
    extra = exc.extra if isinstance(exc.extra, Mapping) else {"errors": exc.extra} if exc.extra else None
    return _response(exc.status_code, exc.detail, extra, headers=exc.headers)


def _explained(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error with the NUL rule's regex said in words."""
    if repr(NO_NUL_PATTERN) in str(error.get("message", "")):  # msgspec quotes the pattern with repr
        return {**error, "message": "must not contain NUL (U+0000) characters, which PostgreSQL text cannot hold"}
    return error


def _described(error: dict[str, Any]) -> str:
    """`invalid config_id (path): Expected `int` <= 2147483647`: the field first, then what is wrong."""
    source = error.get("source") or "request"
    source = getattr(source, "value", source)  # Litestar's ParamType enum for parameters
    where = f"{error['key']} ({source})" if error.get("key") else source
    return f"invalid {where}: {error.get('message', 'invalid value')}"


def _database(_: Request[Any, Any, Any], exc: DatabaseUnavailableError) -> Response[ErrorBody]:
    # The driver's words (host, port, error text) go to the log, not to the client.
    log.error("database_unavailable", error=exc.detail)
    return _response(503, "the database is not answering; try again shortly")


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # The body says only that something failed; the log line has the rest, under the same id.
    request_id = request_id_of(request.scope)
    log.error(
        "unhandled_error", method=request.method, path=request.url.path, request_id=request_id, exc_info=exc
    )
    return _response(
        500, "internal error; the log has the details under this request_id", {"request_id": request_id}
    )


exception_handlers: ExceptionHandlersMap = {
    DomainError: _domain,
    # The database is unreachable, restarting, or gone (service/db/ says so): the client can retry later.
    DatabaseUnavailableError: _database,
    HTTPException: _http,
    Exception: _unexpected,
}
