"""The database check behind GET /health: one dedicated connection, outside the pool.

A liveness probe must not queue behind reads and writes for a pool connection: under load that
wait, not the database, decided the answer (503s in the middle of a backfill). The probe owns one
connection of its own, opened on first use and again after it was lost, and concurrent checks share
one `SELECT 1` in flight, so a burst of probes costs one round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from service.db.pool import DEFAULT_STATEMENT_CACHE_SIZE, domain_errors, open_connection
from service.errors import DatabaseUnavailableError, ServiceUnavailableError

__all__ = ["HealthProbe"]


class HealthProbe:
    """Answers "does the database answer?" within `timeout` seconds, whatever the pool is doing."""

    def __init__(
        self, dsn: str, *, timeout: float = 2.0, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
    ) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._statement_cache_size = statement_cache_size
        self._conn: asyncpg.Connection[Any] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._closed = False

    async def ping(self) -> None:
        """Return if the database answered `SELECT 1`; raise ServiceUnavailableError otherwise.

        Callers arriving while a check is in flight await that same check.
        """
        if self._closed:
            raise ServiceUnavailableError("the service is shutting down", error="ShuttingDown")
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._check())
            self._inflight.add_done_callback(self._finished)
        # Shielded: a caller that goes away (client disconnect) must not cancel the shared check.
        await asyncio.shield(self._inflight)

    def _finished(self, future: asyncio.Future[None]) -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning when every caller left

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
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.wait([self._inflight])
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                with domain_errors():
                    await conn.close(timeout=self._timeout)
            except DatabaseUnavailableError:
                conn.terminate()  # the link or the server is gone: nobody to say goodbye to
