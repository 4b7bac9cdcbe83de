"""The service's one asyncpg pool, and the one boundary where a lost connection becomes a domain error.

A connection can be lost at any statement: the server restarts, an operator terminates the
backend, the network drops. `connection()` throws such a connection away (so the pool opens a fresh
one) and raises `DatabaseUnavailableError`; `retrying()` runs a repeatable unit of work again on a
fresh connection until it succeeds or its time is up.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import stamina

from service.errors import DatabaseUnavailableError

__all__ = ["CONNECTION_LOST", "Connection", "Pool", "connection", "create_pool", "retrying"]

T = TypeVar("T")

#: Driver errors that mean "this connection (or the server) is gone", not "this statement is wrong".
#: TimeoutError is an OSError: a statement that outlived command_timeout is on a dead link too.
#: InternalClientError is what asyncpg raises when the server cut the connection mid-COPY.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)

Pool = asyncpg.Pool
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: What the SQL functions take: a plain connection or one borrowed from the pool.
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    # jsonb columns come and go as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # Each connection gets its own staging table for the upsert path; ON COMMIT DELETE ROWS
    # empties it at the end of every write transaction.
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS klines_staging"
        " (LIKE klines INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Connection reset on release: nothing to undo.

    asyncpg still rolls back an open transaction first. The service keeps no session state (no
    LISTEN, SET or session advisory locks; only transaction-level ones), so the default reset
    query would be four statements wasted on every release.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> Pool:
    """Open the pool; each connection is prepared by `_init_connection`."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
    )
    return pool


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pool connection; if it is lost, it is discarded and DatabaseUnavailableError raised."""
    try:
        async with pool.acquire() as conn:
            try:
                yield conn
            except CONNECTION_LOST:
                # Its protocol state is unknown: never hand it to the next user. (A connection the
                # server closed has already been taken back by the pool, which refuses this.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise
    except CONNECTION_LOST as exc:
        raise DatabaseUnavailableError(
            f"the database connection failed ({exc.__class__.__name__}: {exc})"[:500]
        ) from exc


async def retrying(
    pool: Pool, work: Callable[[Connection], Awaitable[T]], *, give_up_after: float | None
) -> T:
    """Run `work` on a pool connection, again on a fresh one each time the connection is lost.

    `work` must be safe to repeat (one transaction, or idempotent statements). It is retried with
    capped exponential backoff for `give_up_after` seconds (None: for as long as the process
    lives), then DatabaseUnavailableError is raised. stamina logs each retry.
    """
    async for attempt in stamina.retry_context(
        on=DatabaseUnavailableError, attempts=None, timeout=give_up_after,
        wait_initial=0.1, wait_max=2.0, wait_jitter=0.1,
    ):
        with attempt:
            async with connection(pool) as conn:
                return await work(conn)
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
