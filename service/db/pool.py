"""The service's one asyncpg pool, and the one boundary where driver errors become domain errors.

A connection can be lost at any statement: the server restarts, an operator terminates the
backend, the network drops. `connection()` throws such a connection away (so the pool opens a fresh
one) and raises `DatabaseUnavailableError`; a unique violation leaves it as `DuplicateError` naming
the constraint (procrastinate's `wrap_exceptions` is the model). `retrying()` runs a repeatable unit
of work again on a fresh connection until it succeeds or its time is up. Nothing above service/db/
names a driver exception: it catches these domain errors.

Every connection is opened from the DATABASE_URL as given: asyncpg reads libpq's URL parameters
itself (`sslmode`, `sslrootcert`, `host=/socket/dir`…), and a connection that cannot be opened is a
DatabaseUnavailableError naming the database (`open_connection`, and the pool's own connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import stamina

from service.errors import DatabaseUnavailableError, DuplicateError, RowRefusedError

__all__ = [
    "CONNECTION_LOST", "DEFAULT_STATEMENT_CACHE_SIZE", "Connection", "Pool", "Row", "connection", "create_pool",
    "describe_database", "domain_errors", "open_connection", "retrying",
]

T = TypeVar("T")

# retrying(): the wait before the second attempt (stamina's backoff takes over from there).
_FIRST_RETRY_WAIT = 0.1

#: asyncpg's own default: prepared statements kept per connection (DB_STATEMENT_CACHE_SIZE).
DEFAULT_STATEMENT_CACHE_SIZE = 100

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


# The array types the service's statements take (text[] asyncpg knows already). asyncpg learns any
# other array type by introspection, three round trips the first time each connection meets it:
# learnt here, when the connection opens, they never land in a page write or a task's end.
_ARRAY_TYPES = "SELECT $1::int4[], $2::int8[], $3::int2[], $4::timestamptz[], $5::uuid[]"


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    # jsonb columns come and go as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.fetchrow(_ARRAY_TYPES, None, None, None, None, None)


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Connection reset on release: nothing to undo.

    asyncpg still rolls back an open transaction first. The service keeps no session state (no
    LISTEN, SET or session advisory locks; only transaction-level ones), so the default reset
    query would be four statements wasted on every release.
    """


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, connect_now: bool = True,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
) -> Pool:
    """Open the pool; each connection is prepared by `_init_connection`.

    `connect_now=False` opens it without a connection, so it can be created while the database is
    down: connections are made on first use. asyncpg wants `init_size >= min_size`, so such a pool
    keeps no floor (`min_size` is ignored): idle connections close after 5 minutes, and reopen on demand.
    `statement_cache_size=0` keeps no prepared statement on the server (PgBouncer transaction pooling).
    """

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection[Any]:
        with _connect_errors(dsn):
            conn: asyncpg.Connection[Any] = await asyncpg.connect(*args, **kwargs)
            return conn

    pool = await asyncpg.create_pool(
        dsn,
        init_size=None if connect_now else 0,
        min_size=min_size if connect_now else 0,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
        statement_cache_size=statement_cache_size,
        connect=connect,
    )
    return pool


async def open_connection(
    dsn: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE, **options: Any
) -> asyncpg.Connection[Any]:
    """One connection outside the pool (health probe, migrations, LISTEN); `options` go to asyncpg.connect.

    DatabaseUnavailableError, naming the database, when it cannot be opened.
    """
    with _connect_errors(dsn):
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, statement_cache_size=statement_cache_size, **options)
        return conn


@contextmanager
def _connect_errors(dsn: str) -> Iterator[None]:
    # Several databases may be in play (a release phase, a pooler, a replica): say which one failed.
    try:
        yield
    except CONNECTION_LOST as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to {describe_database(dsn)}: {exc.__class__.__name__}: {exc}"[:500]
        ) from exc


def describe_database(dsn: str) -> str:
    """`database "klines" on db.example:5432 (sslmode=require)`: which database a URL names, without
    its user or password."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    user = unquote(parts.netloc.rpartition("@")[0].partition(":")[0])
    # libpq's defaults: the database named like the user, a local socket.
    name = unquote(parts.path.lstrip("/")) or query.get("dbname", [user or "postgres"])[0]
    where = parts.netloc.rpartition("@")[2] or query.get("host", ["localhost"])[0]
    if "port" in query and not parts.netloc.rpartition("@")[2]:
        where += f" port {query['port'][0]}"
    sslmode = f" (sslmode={query['sslmode'][0]})" if "sslmode" in query else ""
    return f'database "{name}" on {where}{sslmode}'


@contextmanager
def domain_errors() -> Iterator[None]:
    """Translate the driver's errors raised inside: a unique violation into DuplicateError (naming
    the constraint), a check violation or a value the column's type cannot read into
    RowRefusedError, a lost connection or unreachable database into DatabaseUnavailableError.

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
    except asyncpg.CheckViolationError as exc:
        raise RowRefusedError(
            f"the database refused a row ({exc.constraint_name or 'check constraint'})", constraint=exc.constraint_name
        ) from exc
    except (asyncpg.InvalidTextRepresentationError, asyncpg.NumericValueOutOfRangeError) as exc:
        raise RowRefusedError(f"the database refused a value: {exc.message}"[:500], constraint=None) from exc
    except CONNECTION_LOST as exc:
        raise DatabaseUnavailableError(
            f"the database connection failed ({exc.__class__.__name__}: {exc})"[:500]
        ) from exc


@asynccontextmanager
async def connection(pool: Pool, *, acquire_timeout: float | None = None) -> AsyncIterator[Connection]:
    """A pool connection; driver errors leave it as domain errors (`domain_errors`), and a lost
    connection is discarded first.

    `acquire_timeout`: seconds to wait for a connection (a free one, or a new one opened) before
    DatabaseUnavailableError. Bound statements with asyncpg's own `timeout=`, never by cancelling them:
    a cancelled statement on a link that no longer answers holds the pool's release until it does.
    """
    with domain_errors():
        async with pool.acquire(timeout=acquire_timeout) as conn:
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
    # The first attempt outside the retry machinery: it is the one nearly every call makes, and
    # entering stamina costs tens of microseconds per call (a page write, an API read).
    began = time.monotonic()
    try:
        async with connection(pool) as conn:
            return await work(conn)
    except DatabaseUnavailableError:
        if give_up_after is not None and time.monotonic() - began + _FIRST_RETRY_WAIT >= give_up_after:
            raise
    await asyncio.sleep(_FIRST_RETRY_WAIT)
    left = None if give_up_after is None else give_up_after - (time.monotonic() - began)
    async for attempt in stamina.retry_context(
        on=DatabaseUnavailableError, attempts=None, timeout=left,
        wait_initial=0.1, wait_max=2.0, wait_jitter=0.1,
    ):
        with attempt:
            async with connection(pool) as conn:
                return await work(conn)
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
