"""Accounts: log in (behind the failed-login limiter), the start-up admin, creating users, whether an admin exists."""

from __future__ import annotations

import asyncio
import re

from service.auth.limiter import LoginLimiter
from service.auth.passwords import PasswordHasher
from service.auth.users import User
from service.auth.users_cache import UsersCache
from service.db import users as users_db
from service.db.listener import Listener
from service.db.pool import Pool, Row, connection
from service.errors import AuthenticationError, InvalidInputError, TooManyAttemptsError
from service.logging import get_logger

__all__ = [
    "HOW_TO_GET_AN_ADMIN",
    "MAX_EMAIL_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "Accounts",
    "check_new_credentials",
    "save_user",
]

log = get_logger(__name__)

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 320
_EMAIL = re.compile(r"[^@\s\x00]+@[^@\s\x00]+")
_INVALID = "invalid email or password"
#: How to get an admin: what the start-up log (`no_admin_account`) and the console say while no active admin
#: exists, and GET /api/v1/auth/setup's `how`. Commands and variables are in backticks (the console shows code).
HOW_TO_GET_AN_ADMIN = (
    "Create an admin with `kline-collector create-user --admin --email you@example.com` "
    "(it asks for the password; `--password-stdin` reads it from standard input), run with the service's "
    "`DATABASE_URL` or, for the embedded database, in the directory the service runs in; or set "
    "`ADMIN_EMAIL` and `ADMIN_PASSWORD`, which make that admin when the service starts."
)


def _user(row: Row) -> User:
    return User(
        id=row["id"], email=row["email"], is_admin=row["is_admin"], is_active=row["is_active"],
        created_at=row["created_at"],
    )


def check_new_credentials(email: str, password: str) -> str:
    """The email, trimmed, if it and the password are acceptable for a new account; else InvalidInputError."""
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise InvalidInputError("email: not an email address", field="email")
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password: must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long", field="password"
        )
    return email


async def save_user(
    pool: Pool, hasher: PasswordHasher, *, email: str, password: str, is_admin: bool
) -> tuple[User, bool]:
    """Create the account, or give the existing one (same email, any case) this password and make it
    active; `is_admin` never demotes. Returns (user, created)."""
    email = check_new_credentials(email, password)
    password_hash = await hasher.hash(password)  # before taking a connection: it takes ~100 ms
    async with connection(pool) as conn:
        row, created = await users_db.upsert_user(conn, email=email, password_hash=password_hash, is_admin=is_admin)
    return _user(row), created


class Accounts:
    """The users of one database."""

    def __init__(self, pool: Pool, hasher: PasswordHasher, limiter: LoginLimiter) -> None:
        self._pool = pool
        self._hasher = hasher
        self._limiter = limiter
        self._bootstrap: asyncio.Task[None] | None = None
        self._cache: UsersCache | None = None

    def follow_changes(self, listener: Listener) -> UsersCache:
        """Keep the accounts `get` reads in memory, dropped as `listener` hears of their changes
        (call before the listener starts). Without it, every `get` reads the database."""
        self._cache = UsersCache(listening=lambda: listener.listening)
        listener.subscribe(users_db.USERS_CHANNEL, self._cache.notified)
        return self._cache

    @property
    def cache(self) -> UsersCache | None:
        """The accounts kept in memory (None: `follow_changes` was not called)."""
        return self._cache

    def start_bootstrap(self, email: str, password: str) -> None:
        """Run `bootstrap_admin` in the background: start-up does not wait for its password hash
        (~100 ms), logins do. A failure is logged (the database was unreachable, say)."""

        async def bootstrap() -> None:
            try:
                await self.bootstrap_admin(email, password)
            except Exception as exc:  # the service still serves; the log says why there is no admin
                log.error("admin_bootstrap_failed", email=email.strip(), error=repr(exc))

        self._bootstrap = asyncio.create_task(bootstrap(), name="admin-bootstrap")

    async def close(self) -> None:
        """Let a bootstrap under way finish (it is short), so the pool can close under it."""
        if self._bootstrap is not None:
            await self._bootstrap

    async def admin_exists(self) -> bool:
        """Whether an active admin exists (one small query), once a start-up admin under way is made."""
        if self._bootstrap is not None:
            await asyncio.shield(self._bootstrap)
        async with connection(self._pool) as conn:
            return await users_db.active_admin_exists(conn)

    async def get(self, user_id: int) -> User | None:
        """The account (active or not), or None if there is none: from memory once `follow_changes`
        was called and the account was read since its last change, else from the database."""
        cache = self._cache
        if cache is not None and (user := cache.get(user_id)) is not None:
            return user
        generation = 0 if cache is None else cache.generation
        async with connection(self._pool) as conn:
            row = await users_db.get_user(conn, user_id)
        if row is None:
            return None  # not kept: an account made later under this id must be found
        user = _user(row)
        if cache is not None:
            cache.put(user, generation)
        return user

    async def login(self, email: str, password: str, *, client_address: str) -> User:
        """The active user with these credentials.

        AuthenticationError, the same for an unknown email, a wrong password and a disabled
        account (each after one password verify); TooManyAttemptsError from the limiter, before
        any password is checked.
        """
        email = email.strip()
        if self._bootstrap is not None:
            await asyncio.shield(self._bootstrap)  # the start-up admin may be this very user
        try:
            attempt = await self._limiter.admit(email, client_address)
        except TooManyAttemptsError:
            log.warning("login_refused", reason="too_many_failures", client_address=client_address)
            raise
        async with connection(self._pool) as conn:
            row = await users_db.find_by_email(conn, email)
        matched = await self._hasher.verify(None if row is None else row["password_hash"], password)
        if row is None or not matched or not row["is_active"]:
            await self._limiter.failed(attempt)
            log.info("login_failed", client_address=client_address)
            raise AuthenticationError(_INVALID)
        await self._limiter.succeeded(attempt)
        log.info("login_succeeded", user_id=row["id"], client_address=client_address)
        return _user(row)

    async def bootstrap_admin(self, email: str, password: str) -> str:
        """Make `email` an active admin with this password (ADMIN_EMAIL / ADMIN_PASSWORD at start-up).

        Idempotent: an admin whose password already matches is left as it is (no new hash, so
        nothing changes at each restart). Returns what happened: created, updated or unchanged.
        """
        async with connection(self._pool) as conn:
            row = await users_db.find_by_email(conn, email.strip())
        if row is None or not await self._hasher.verify(row["password_hash"], password):
            _, created = await save_user(self._pool, self._hasher, email=email, password=password, is_admin=True)
            action = "created" if created else "updated"
        else:
            async with connection(self._pool) as conn:
                action = "updated" if await users_db.make_active_admin(conn, row["id"]) else "unchanged"
        log.info("admin_bootstrap", email=email.strip(), action=action)
        return action
