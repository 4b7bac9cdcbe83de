"""The service's one asyncpg pool, and the one boundary where driver errors become domain errors.

A connection can be lost at any statement: the server restarts, an operator terminates the
backend, the network drops. `connection()` throws such a connection away (so the pool opens a fresh
one) and raises `DatabaseUnavailableError`; a unique violation leaves it as `DuplicateError` naming
the constraint (procrastinate's `wrap_exceptions` is the model). `retrying()` runs a repeatable unit
of work again on a fresh connection until it succeeds or its time is up. Nothing above service/db/
names a driver exception: it catches these domain errors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import stamina

from service.errors import DatabaseUnavailableError, DuplicateError

__all__ = [
    "CONNECTION_LOST", "Connection", "Pool", "Row", "connection", "create_pool", "domain_errors", "retrying",
]

T = TypeVar("T")

#: Driver errors that mean "this connection (or the server, or our database) is gone", not "this
#: statement is wrong". TimeoutError is an OSError: a statement that outlived command_timeout is on a
#: dead link too. InternalClientError is what asyncpg raises when the server cut the connection
#: mid-COPY. InvalidCatalogNameError: our database was dropped or is not created yet;
#: InvalidAuthorizationSpecificationError: the server refuses our role or password (revoked, rotated).
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)

Pool = asyncpg.Pool
#: One result row, read by column name (`row["id"]`).
Row: TypeAlias = asyncpg.Record
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


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, connect_now: bool = True) -> Pool:
    """Open the pool; each connection is prepared by `_init_connection`.

    `connect_now=False` opens it without a connection, so it can be created while the database is
    down: connections are made on first use. asyncpg wants `init_size >= min_size`, so such a pool
    keeps no floor (`min_size` is ignored): idle connections close after 5 minutes, and reopen on demand.
    """
    pool = await asyncpg.create_pool(
        dsn,
        init_size=None if connect_now else 0,
        min_size=min_size if connect_now else 0,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
    )
    return pool


@contextmanager
def domain_errors() -> Iterator[None]:
    """Translate the driver's errors raised inside: a unique violation into DuplicateError (naming
    the constraint), a lost connection or unreachable database into DatabaseUnavailableError.

    Any other driver error (a wrong statement) is a bug and passes unchanged. The driver's error is
    kept as `__cause__`.
    """
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        constraint = exc.constraint_name
        raise DuplicateError(
            f"a row with the same key exists already ({constraint or 'unique constraint'})", constraint=constraint
        ) from exc
    except CONNECTION_LOST as exc:
        raise DatabaseUnavailableError(
            f"the database connection failed ({exc.__class__.__name__}: {exc})"[:500]
        ) from exc


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pool connection; driver errors leave it as domain errors (`domain_errors`), and a lost
    connection is discarded first."""
    with domain_errors():
        async with pool.acquire() as conn:
            try:
                yield conn
            except CONNECTION_LOST:
                # Its protocol state is unknown: never hand it to the next user. (A connection the
                # server closed has already been taken back by the pool, which refuses this.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise


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
