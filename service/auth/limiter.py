"""The failed-login limiter: `LOGIN_FAILURES` per email and per client address within `LOGIN_WINDOW`.

Every attempt is written to PostgreSQL before its password is checked, so all processes count the
same attempts, and a burst sent in parallel cannot slip past the limit: an attempt waits while the
failures plus the attempts still being checked before it reach the limit, and is refused (429)
when the failures alone do. A right password deletes its attempt, so successes never count.
The stored keys are keyed hashes, never the email or the address (an email box sometimes holds a
password typed in the wrong place).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from datetime import timedelta

from service.db import users as users_db
from service.db.pool import Pool, connection
from service.errors import TooManyAttemptsError

__all__ = ["LOGIN_FAILURES", "LOGIN_WINDOW", "Attempt", "LoginLimiter"]

LOGIN_FAILURES = 5
"""Failed logins allowed per email, and per client address, within `LOGIN_WINDOW`."""
LOGIN_WINDOW = timedelta(minutes=1)
#: An attempt still unresolved after this long counts as failed (its process died).
_STALE_AFTER = timedelta(seconds=10)
#: How often a waiting attempt looks again, and for how long at most.
_POLL_SECONDS = 0.05
_MAX_WAIT_SECONDS = 15.0

Attempt = list[int]
"""The rows of one admitted attempt (one per key)."""


class LoginLimiter:
    def __init__(self, pool: Pool, *, key: bytes) -> None:
        self._pool = pool
        self._key = key

    async def admit(self, email: str, address: str) -> Attempt:
        """Record an attempt for this email from this address, once it may go on.

        TooManyAttemptsError (with the seconds to wait) when either already failed
        `LOGIN_FAILURES` times within `LOGIN_WINDOW`.
        """
        keys = [self._hashed("email", email.strip().lower()), self._hashed("address", address)]
        async with connection(self._pool) as conn:
            attempt = await users_db.record_attempts(conn, keys, window=LOGIN_WINDOW)
        deadline = time.monotonic() + _MAX_WAIT_SECONDS
        while True:
            async with connection(self._pool) as conn:
                check = await users_db.check_attempts(
                    conn, keys, before_id=attempt[0], limit=LOGIN_FAILURES, window=LOGIN_WINDOW,
                    stale_after=_STALE_AFTER,
                )
                gave_up = check.busy and time.monotonic() >= deadline
                if check.retry_after is not None or gave_up:
                    await users_db.forget_attempts(conn, attempt)  # a refused attempt is no failure
            if check.retry_after is not None or gave_up:
                retry_after = max(1, math.ceil(check.retry_after or 1))
                raise TooManyAttemptsError(
                    f"too many failed logins; try again in {retry_after} s", retry_after=retry_after
                )
            if not check.busy:
                return attempt
            await asyncio.sleep(_POLL_SECONDS)

    async def failed(self, attempt: Attempt) -> None:
        async with connection(self._pool) as conn:
            await users_db.mark_failed(conn, attempt)

    async def succeeded(self, attempt: Attempt) -> None:
        async with connection(self._pool) as conn:
            await users_db.forget_attempts(conn, attempt)

    def _hashed(self, kind: str, value: str) -> str:
        return kind + ":" + hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
