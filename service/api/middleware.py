"""What every request goes through before its handler: a request id, JSON bodies checked strictly,
and the headers every response carries (errors included).

- Request id: a sane incoming `X-Request-ID` (as Heroku's router sends) is kept, anything else is
  replaced by a new UUID; it is bound into structlog's contextvars for the request, so every log
  line of the request carries it, and returned in the `X-Request-ID` header.
- JSON bodies: a route that takes a JSON body refuses another media type (415) and decodes the
  body strictly against its schema (a string where an integer belongs is a 400 naming the field;
  Litestar's own decoding is lax). The body-size limit (413) is Litestar's `request_max_body_size`,
  applied while the body is read here.
- Security headers on every response: no MIME sniffing, no referrer, no framing.
- Access log: one structured line per response (`http_request`: method, path, status, duration_ms,
  client, request_id) when its headers are sent, in place of uvicorn's text line. For a stream
  (the event stream, a CSV export) the duration is the time to its first byte.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import msgspec
import structlog
from litestar import Request
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import ClientException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.params import BodyKwarg
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import get_logger

__all__ = [
    "REQUEST_ID_HEADER",
    "SECURITY_HEADERS",
    "JsonBodyCheck",
    "RequestIdMiddleware",
    "add_response_headers",
    "request_id_of",
]

log = get_logger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: An incoming id is kept only if it is short and plain enough to put in a log line as it is.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
_STATE_KEY = "request_id"
_STARTED_KEY = "request_started"

#: Sent on every response. Only `frame-ancestors` in the CSP: a script or style policy would break
#: the Swagger UI page at /docs, and the API's own bodies are JSON or CSV.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
)
_ENCODED_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS]

_JSON = RequestEncodingType.JSON.value
# Bodies of these methods are never read (no route here takes one), so they are not checked.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def request_id_of(scope: Scope) -> str:
    """This request's id: the sane incoming X-Request-ID, or a new UUID (the same on every call)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id: str | None = state.get(_STATE_KEY)
    if request_id is None:
        incoming = next(
            (value for name, value in scope.get("headers", ()) if name == b"x-request-id"), b""
        ).decode("latin-1")
        request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        state[_STATE_KEY] = request_id
        state[_STARTED_KEY] = time.perf_counter()
    return request_id


def _log_access(scope: Scope, status: int) -> None:
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id = request_id_of(scope)
    started: float | None = state.get(_STARTED_KEY)
    client = scope.get("client")
    log.info(
        "http_request",
        method=scope.get("method", ""),
        path=scope.get("path", ""),
        status=status,
        duration_ms=None if started is None else round((time.perf_counter() - started) * 1000, 2),
        client=client[0] if client else None,
        request_id=request_id,
    )


async def add_response_headers(message: Message, scope: Scope) -> None:
    """`before_send` hook: the request id and the security headers on every response.

    A hook rather than a middleware, so that answers Litestar gives before any middleware runs
    (404 and 405 from the router, CORS preflights) carry them too.
    """
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    headers.extend(header for header in _ENCODED_HEADERS if header[0] not in present)
    if b"x-request-id" not in present:
        headers.append((b"x-request-id", request_id_of(scope).encode()))
    message["headers"] = headers
    _log_access(scope, message["status"])


class RequestIdMiddleware(ASGIMiddleware):
    """Binds the request id into structlog's contextvars while the request is handled."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request_id_of(scope)):
            await next_app(scope, receive, send)


class JsonBodyCheck:
    """`before_request` hook of routes with a JSON body: 415 for another media type, then a strict
    decode naming the bad field.

    A hook, not a middleware: Litestar calls it after the route's guards (a caller without the
    right gets 401 or 403, never the body's schema) and before it parses the body itself.
    """

    def __init__(self) -> None:
        # One strict decoder per route handler, built on its first request (None: no JSON body).
        self._decoders: dict[HTTPRouteHandler, msgspec.json.Decoder[Any] | None] = {}

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        handler = request.route_handler
        if request.method in _BODYLESS or not isinstance(handler, HTTPRouteHandler):
            return
        if handler not in self._decoders:
            self._decoders[handler] = _strict_decoder(handler)
        decoder = self._decoders[handler]
        if decoder is not None:
            # Reading here caches the body on the request; the handler's parsing reuses it.
            await _check(request, decoder)


def _strict_decoder(handler: HTTPRouteHandler) -> msgspec.json.Decoder[Any] | None:
    """A strict decoder of the handler's JSON `data` type; None if it takes no JSON body."""
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None or handler.resolve_data_dto() is not None:
        return None
    kwarg = field.kwarg_definition
    if isinstance(kwarg, BodyKwarg) and kwarg.media_type != RequestEncodingType.JSON:
        return None
    try:
        return msgspec.json.Decoder(field.annotation, strict=True)
    except TypeError:  # not a type msgspec decodes: leave it to Litestar
        return None


def _is_json(media_type: str) -> bool:
    return media_type == _JSON or (media_type.startswith("application/") and media_type.endswith("+json"))


async def _check(request: Request[Any, Any, Any], decoder: msgspec.json.Decoder[Any]) -> None:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    # No Content-Type at all is read as JSON; a declared other type is refused.
    if media_type and not _is_json(media_type):
        raise ClientException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"this route takes a JSON body: send Content-Type: {_JSON}, not {media_type}",
            extra={"expected": _JSON, "received": media_type},
        )
    body = await request.body()  # RequestEntityTooLarge past the limit
    try:
        decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$")
        if not message:  # about the body as a whole
            raise _invalid_body(str(exc)) from None
        raise _invalid_body(message, key=where.rstrip("`").removeprefix(".")) from None
    except msgspec.DecodeError as exc:
        if (key := _lone_surrogate_at(body)) is not None:
            raise _invalid_body("must not contain an unpaired UTF-16 surrogate (not a character)", key=key) from None
        raise _invalid_body(f"not valid JSON: {exc}") from None


def _invalid_body(message: str, *, key: str | None = None) -> ValidationException:
    """The shape of Litestar's own validation errors (api/errors.py words the detail from it)."""
    error = {"message": message, "source": "body"}
    if key is not None:
        error["key"] = key
    return ValidationException(detail=f"invalid request body: {message}", extra=[error])


def _lone_surrogate_at(body: bytes) -> str | None:
    """Where an unpaired surrogate escape sits in an otherwise valid JSON body (`a.b[2]`), if it does.

    msgspec refuses such a body as malformed without saying where; Python's json module accepts
    the escape, so the body is read again with it (only on this error path) to name the field.
    """
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _find_surrogate(value, "")


def _find_surrogate(value: object, path: str) -> str | None:
    if isinstance(value, str):
        return path or "(body)" if any("\ud800" <= ch <= "\udfff" for ch in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if (found := _find_surrogate(key, where)) is not None or (
                found := _find_surrogate(item, where)
            ) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _find_surrogate(item, f"{path}[{index}]")) is not None:
                return found
    return None
