"""Bearer tokens through Litestar's own JWT security (`litestar.security.jwt.JWTAuth`), HS256 with SECRET_KEY.

A token's subject is the user id. Every request that carries a token is checked (signature,
expiry) and its user looked up: an unknown or disabled account gets 401 at once, and an admin who
lost the flag loses admin rights at once, without waiting for the token to expire. The lookup is
answered from memory in web processes: every change to an account, from any process or a psql
session, is announced when it commits and drops the account from every process's memory
(service/auth/users_cache.py), so "at once" means as soon as that notification arrives
(milliseconds), and never later than USER_CACHE_SECONDS.
A request without an Authorization header goes on anonymously; the route's guards decide
whether that is enough (service/auth/guards.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from service.auth.accounts import Accounts
from service.auth.users import User

__all__ = ["ALWAYS_PUBLIC_PATHS", "BEARER_SCHEME", "build_jwt_auth", "create_access_token"]

#: The OpenAPI security scheme the protected operations name.
BEARER_SCHEME = "BearerToken"
#: Never authenticated, whatever header comes with them (a stale token must not break a probe).
# /metrics checks its own token (METRICS_TOKEN), which is no login token.
ALWAYS_PUBLIC_PATHS = [r"^/health$", r"^/docs", r"^/metrics$"]
_INT4_MAX = 2**31 - 1


class _BearerAuthMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, except that a request with no Authorization header is anonymous
    (`user` None) instead of refused: public reads need no token (a token that is sent is always
    checked), and the routes' guards decide what an anonymous caller may do."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        if connection.headers.get(self.auth_header):
            result = await super().authenticate_request(connection)
        else:
            result = AuthenticationResult(user=None, auth=None)
        return result


async def _current_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    try:
        user_id = int(token.sub)
    except ValueError:
        return None
    if not 0 < user_id <= _INT4_MAX:
        return None
    accounts: Accounts = connection.app.state.runtime.accounts
    user = await accounts.get(user_id)
    # A disabled account's tokens stop working at once: 401, as for a token that is not valid.
    return user if user is not None and user.is_active else None


def build_jwt_auth(*, secret_key: str, expire_minutes: int) -> JWTAuth[User, Token]:
    """The app's JWT security: its middleware, its OpenAPI scheme, and the tokens it issues."""
    return JWTAuth[User, Token](
        token_secret=secret_key,
        retrieve_user_handler=_current_user,
        authentication_middleware_class=_BearerAuthMiddleware,
        default_token_expiration=timedelta(minutes=expire_minutes),
        exclude=ALWAYS_PUBLIC_PATHS,
        openapi_security_scheme_name=BEARER_SCHEME,
        description="Access token from POST /api/v1/auth/login, sent as `Authorization: Bearer <token>`.",
    )


def create_access_token(jwt_auth: JWTAuth[User, Token], user: User) -> str:
    """A signed token for `user`, valid for ACCESS_TOKEN_EXPIRE_MINUTES."""
    return jwt_auth.create_token(identifier=str(user.id))
