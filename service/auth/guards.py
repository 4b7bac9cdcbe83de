"""Route guards: who may call a route, declared on the route (`guards=`), and its OpenAPI security.

- `requires_admin`: every /api/v1/admin route and every state-changing /api/v1/data-collector route;
- `requires_user`: any logged-in account (GET /api/v1/auth/me);
- `requires_reader`: the reads (GETs of /api/v1/data-collector and /api/v1/klines), public unless
  PUBLIC_READS=false.

The guards are coroutines: Litestar runs a plain function guard on a worker thread.

No token: 401 (the error mapping adds `WWW-Authenticate: Bearer`); a token that is malformed,
expired, signed with another key, or whose account is gone or disabled: 401 from the middleware;
a valid token without the admin flag on an admin route: 403.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.openapi.spec import SecurityRequirement

from service.auth.tokens import BEARER_SCHEME
from service.auth.users import User

__all__ = ["BEARER_SECURITY", "document_read_access", "requires_admin", "requires_reader", "requires_user"]

#: `security=` of a route that needs a token: the OpenAPI document shows the bearer scheme on it.
BEARER_SECURITY: list[SecurityRequirement] = [{BEARER_SCHEME: []}]

_LOG_IN = "log in with POST /api/v1/auth/login and send Authorization: Bearer <access_token>"


def _user(connection: ASGIConnection[Any, Any, Any, Any]) -> User:
    user: User | None = connection.scope.get("user")
    if user is None:
        raise NotAuthorizedException(f"this needs an access token: {_LOG_IN}")
    return user


async def requires_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _user(connection)


async def requires_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not _user(connection).is_admin:
        raise PermissionDeniedException("this needs an admin account")


async def requires_reader(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not connection.app.state.runtime.settings.public_reads:
        _user(connection)


def document_read_access(app: Litestar, *, public_reads: bool) -> None:
    """With PUBLIC_READS=false, make the document say that the reads need the bearer token too.

    Reads are declared without security (they are public by default); whether they are depends on
    this app's settings, and each app has its own copies of the route handlers, set here before
    the document is first built.
    """
    if public_reads:
        return
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            # The layers' own lists: resolve_guards() hands back wrapped copies of the guards.
            layers = handler.ownership_layers if isinstance(handler, HTTPRouteHandler) else []
            if any(requires_reader in (layer.guards or ()) for layer in layers):
                handler.security = list(BEARER_SECURITY)
