"""The database check behind GET /health: one dedicated connection, outside the pool.

A liveness probe must not queue behind reads and writes for a pool connection: under load that
wait, not the database, decided the answer (503s in the middle of a backfill). The probe owns one
connection of its own, opened on first use and again after it was lost, and concurrent checks share
one `SELECT 1` in flight, so a burst of probes costs one round trip.

Nor should a probe wait on a database that is merely busy: an answer the database gave less than
`max_age` (0.5 s) ago, on a connection still open, is the answer, and once it is older than
`refresh_after` (0.2 s) the next check refreshes it in the background. Under steady probing no
check waits on the database, which sees at most five `SELECT 1` a second. A database that stops
or restarts closes the connection, and the next check goes to the database at once (503 if it
does not answer); one that hangs is noticed `max_age` later, within `timeout` more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from service.db.pool import DEFAULT_STATEMENT_CACHE_SIZE, domain_errors, open_connection
from service.db.recent import Recent
from service.errors import DatabaseUnavailableError, ServiceUnavailableError

__all__ = ["HealthProbe"]


class HealthProbe:
    """Answers "does the database answer?" within `timeout` seconds, whatever the pool is doing."""

    def __init__(
        self, dsn: str, *, timeout: float = 2.0, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
        refresh_after: float = 0.2, max_age: float = 0.5, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._statement_cache_size = statement_cache_size
        self._conn: asyncpg.Connection[Any] | None = None
        self._answer = Recent[None](
            refresh_after=refresh_after, max_age=max_age, trusted=self._connected, clock=clock
        )
        self._closed = False

    async def ping(self) -> None:
        """Return if the database answered `SELECT 1` (within `max_age`, on a connection still open);
        raise ServiceUnavailableError otherwise.

        Callers arriving while a check is in flight, with no answer to go by, await that same check.
        """
        if self._closed:
            raise ServiceUnavailableError("the service is shutting down", error="ShuttingDown")
        await self._answer.get(self._check)

    def _connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _check(self) -> None:
        try:
            # Outside the timeout: its TimeoutError (an OSError) is translated like a dead link.
            with domain_errors():
                async with asyncio.timeout(self._timeout):
                    if self._conn is not None and not self._conn.is_closed():
                        try:
                            with domain_errors():
                                await self._conn.fetchval("SELECT 1")
                            return
                        except DatabaseUnavailableError:
                            # Lost since the last check (server restarted, backend terminated): only
                            # a fresh connection that fails too means the database is down.
                            self._drop()
                    self._conn = await open_connection(
                        self._dsn, statement_cache_size=self._statement_cache_size,
                        server_settings={"application_name": "kline-collector health"},
                    )
                    await self._conn.fetchval("SELECT 1")
        except DatabaseUnavailableError as exc:
            # The connection may be half-way through a statement or already dead: start afresh next time.
            self._drop()
            # The driver's error class says why (ConnectionRefusedError, InvalidCatalogNameError, ...).
            reason = (exc.__cause__ or exc).__class__.__name__
            raise DatabaseUnavailableError(
                f"the database is not answering ({exc.detail})", error=reason
            ) from exc.__cause__

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Stop checking and close the connection (bounded: a dead server does not hold up shutdown)."""
        self._closed = True
        await self._answer.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                with domain_errors():
                    await conn.close(timeout=self._timeout)
            except DatabaseUnavailableError:
                conn.terminate()  # the link or the server is gone: nobody to say goodbye to
