"""/api/v1/auth: log in for a bearer token, see who a token belongs to, and whether anyone can log in as admin yet."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import JSONBody
from litestar.security.jwt import Token

from service.api.deps import AccountsDep, RuntimeDep
from service.api.openapi import error_responses
from service.api.schemas import NO_NUL_PATTERN, Schema
from service.auth.accounts import HOW_TO_GET_AN_ADMIN, MAX_EMAIL_LENGTH, MAX_PASSWORD_LENGTH
from service.auth.addresses import client_address
from service.auth.guards import BEARER_SECURITY, requires_user
from service.auth.tokens import create_access_token
from service.auth.users import User

__all__ = ["AuthController"]


class Credentials(Schema):
    email: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EMAIL_LENGTH, pattern=NO_NUL_PATTERN)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class AccessToken(Schema):
    access_token: str
    """Send it as `Authorization: Bearer <access_token>`."""
    token_type: Literal["bearer"]
    expires_in: int
    """Seconds the token stays valid (ACCESS_TOKEN_EXPIRE_MINUTES)."""


class CurrentUser(Schema):
    id: int
    email: str
    is_admin: bool
    is_active: bool
    created_at: datetime


class AuthSetup(Schema):
    admin_exists: bool
    """Whether an active admin account exists; until one does, nobody can use the admin routes."""
    how: str
    """How to make an admin: the `create-user` command, or ADMIN_EMAIL and ADMIN_PASSWORD at start."""


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post(
        "/login", operation_id="login", status_code=200, exclude_from_auth=True,
        summary="Exchange an email and password for a bearer token (5 failed logins a minute per email and "
        "per client address, then 429)",
        responses=error_responses(
            400, 401, 413, 415, 429,
            descriptions={401: "Wrong email or password (the answer never says which)"},
        ),
    )
    async def login(
        self, data: JSONBody[Credentials], request: Request[Any, Any, Any], accounts: AccountsDep, runtime: RuntimeDep
    ) -> AccessToken:
        settings = runtime.settings
        address = client_address(
            request.client.host if request.client else None,
            request.headers.getall("x-forwarded-for", []),
            settings.trusted_proxy_count,
        )
        user = await accounts.login(data.email, data.password, client_address=address)
        return AccessToken(
            access_token=create_access_token(request.app.state.jwt_auth, user),
            token_type="bearer",  # noqa: S106 - the OAuth 2 token type, not a password
            expires_in=settings.access_token_expire_minutes * 60,
        )

    @get(
        "/setup", operation_id="authSetup", exclude_from_auth=True,
        summary="Whether an admin account exists yet, and how to make one (public, like login: the console "
        "asks before anyone can log in)",
        responses=error_responses(),
    )
    async def setup(self, accounts: AccountsDep) -> AuthSetup:
        return AuthSetup(admin_exists=await accounts.admin_exists(), how=HOW_TO_GET_AN_ADMIN)

    @get("/me", operation_id="currentUser", summary="The account the token belongs to",
         guards=[requires_user], security=BEARER_SECURITY, responses=error_responses(401))
    async def me(self, request: Request[User, Token, Any]) -> CurrentUser:
        user = request.user
        return CurrentUser(
            id=user.id, email=user.email, is_admin=user.is_admin, is_active=user.is_active, created_at=user.created_at
        )
