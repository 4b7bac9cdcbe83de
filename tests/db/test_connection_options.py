"""DATABASE_URL's `sslmode` and DB_STATEMENT_CACHE_SIZE, wherever the service connects: the pool, the /health
probe's own connection, and the migrations (Alembic through SQLAlchemy).

The session's PostgreSQL listens on a Unix socket, where SSL never applies; the tests reach it over TCP
through a small relay that declines SSL as a server without SSL does (it answers `N` to the SSL request).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import text

from service.db.health import HealthProbe
from service.db.migrate import head_revision, migration_engine
from service.db.pool import connection, create_pool, describe_database
from service.errors import DatabaseUnavailableError
from service.settings import Settings, SettingsError
from tests.conftest import new_database
from tests.processes import run_service_command

#: What a client sends first to ask for SSL, or for GSSAPI encryption (PostgreSQL protocol, "SSLRequest").
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _open_upstream(dsn: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the server `dsn` names (a Unix socket directory in `?host=`, or host and port)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    if host.startswith("/"):
        return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    return await asyncio.open_connection(host, port)


@asynccontextmanager
async def server_without_ssl(dsn: str) -> AsyncIterator[int]:
    """A TCP port on 127.0.0.1 in front of the server of `dsn` that declines SSL (and GSSAPI encryption)."""
    handlers: set[asyncio.Task[Any]] = set()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            first = await client_reader.readexactly(8)
            while first in (SSL_REQUEST, GSSENC_REQUEST):
                client_writer.write(b"N")
                await client_writer.drain()
                first = await client_reader.readexactly(8)
            server_reader, server_writer = await _open_upstream(dsn)
            server_writer.write(first)
            await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
        except (OSError, asyncio.IncompleteReadError):  # the client gave up after the `N`
            client_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def over_tcp(dsn: str, port: int, sslmode: str) -> str:
    """The same database and user as `dsn`, on 127.0.0.1:`port`, with `sslmode`."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}", query=f"sslmode={sslmode}"))


@pytest.fixture
async def empty_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A database of its own, never migrated."""
    async with new_database(pg_dsn, "kc_ssl") as dsn:
        yield dsn


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
async def test_sslmode_disable_and_prefer_reach_a_server_without_ssl_everywhere(empty_dsn: str, sslmode: str) -> None:
    """With `?sslmode=disable` or `prefer` in DATABASE_URL, `migrate` migrates, and the pool and the /health
    probe connect (without SSL) to a server that offers none."""
    async with server_without_ssl(empty_dsn) as port:
        dsn = over_tcp(empty_dsn, port, sslmode)
        code, out = await run_service_command("migrate", env={"DATABASE_URL": dsn, "LOG_FORMAT": "console"})
        assert code == 0, out
        pool = await create_pool(dsn, connect_now=False)
        try:
            async with connection(pool) as conn:
                assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
                assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
        finally:
            await pool.close()
        probe = HealthProbe(dsn)
        try:
            await probe.ping()
        finally:
            await probe.close()


async def test_sslmode_require_without_ssl_on_the_server_fails_at_once_naming_the_database(empty_dsn: str) -> None:
    """With `?sslmode=require` and a server without SSL, the pool, the /health probe and `migrate` fail within
    seconds with an error naming the database and the sslmode; `migrate` says so in one line and exits 1."""
    name = urlsplit(empty_dsn).path.lstrip("/")
    async with server_without_ssl(empty_dsn) as port:
        dsn = over_tcp(empty_dsn, port, "require")
        named = f'database "{name}" on 127.0.0.1:{port} (sslmode=require)'

        pool = await create_pool(dsn, connect_now=False)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(DatabaseUnavailableError) as refused:
                    async with connection(pool):
                        pass
        finally:
            await pool.close()
        assert named in refused.value.detail and "SSL" in refused.value.detail, refused.value.detail

        probe = HealthProbe(dsn)
        try:
            with pytest.raises(DatabaseUnavailableError) as unhealthy:
                await probe.ping()
        finally:
            await probe.close()
        assert named in unhealthy.value.detail and "SSL" in unhealthy.value.detail, unhealthy.value.detail
        assert unhealthy.value.extra == {"error": "ConnectionError"}  # what /health shows: no host, no name

        code, out = await run_service_command(
            "migrate", env={"DATABASE_URL": dsn, "LOG_FORMAT": "console"}, timeout=30
        )
        assert code == 1, out
        assert named in out and "SSL" in out and "Traceback" not in out, out


def test_describe_database_names_database_host_and_sslmode_but_no_credentials() -> None:
    """Errors name a database by name, host (or socket directory) and sslmode; user and password stay out."""
    assert describe_database("postgresql://klines:s3cret@db.example:6543/prod?sslmode=verify-full") == (
        'database "prod" on db.example:6543 (sslmode=verify-full)'
    )
    assert describe_database("postgresql://postgres:@/postgres?host=/tmp/pg") == 'database "postgres" on /tmp/pg'
    # libpq's defaults: the database named like the user, on localhost.
    assert describe_database("postgresql://alice@localhost") == 'database "alice" on localhost'


async def _prepared_statements(conn: asyncpg.Connection[Any] | Any) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
    return count


@pytest.mark.parametrize(("cache_size", "keeps_statements"), [(0, False), (100, True)])
async def test_statement_cache_size_zero_leaves_no_prepared_statement_on_the_server(
    db_dsn: str, cache_size: int, keeps_statements: bool
) -> None:
    """DB_STATEMENT_CACHE_SIZE=0 leaves no prepared statement on a pool, /health or migration connection (as
    PgBouncer transaction pooling needs); the default of 100 keeps them (the check can tell)."""
    pool = await create_pool(db_dsn, min_size=1, max_size=1, statement_cache_size=cache_size)
    try:
        async with connection(pool) as conn:
            for value in range(3):
                assert await conn.fetchval("SELECT $1::int + 1", value) == value + 1
                await conn.fetch("SELECT symbol FROM symbols WHERE exchange = $1", "binance")
            assert (await _prepared_statements(conn) > 0) is keeps_statements
    finally:
        await pool.close()

    probe = HealthProbe(db_dsn, statement_cache_size=cache_size)
    try:
        await probe.ping()
        await probe.ping()
        assert probe._conn is not None  # the probe's own connection, kept between checks
        assert (await _prepared_statements(probe._conn) > 0) is keeps_statements
    finally:
        await probe.close()

    engine = migration_engine(db_dsn, statement_cache_size=cache_size)
    try:
        async with engine.connect() as migrating:
            for value in range(3):
                assert (await migrating.execute(text("SELECT :v + 1"), {"v": value})).scalar() == value + 1
            driver = (await migrating.get_raw_connection()).driver_connection
            assert driver is not None
            assert (await _prepared_statements(driver) > 0) is keeps_statements
    finally:
        await engine.dispose()


async def test_migrate_with_statement_cache_size_zero_applies_every_migration(empty_dsn: str) -> None:
    """`DB_STATEMENT_CACHE_SIZE=0 kline-collector migrate` brings an empty database to head."""
    code, out = await run_service_command(
        "migrate", env={"DATABASE_URL": empty_dsn, "DB_STATEMENT_CACHE_SIZE": "0", "LOG_FORMAT": "console"}
    )
    assert code == 0, out
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


def test_db_statement_cache_size_setting() -> None:
    """DB_STATEMENT_CACHE_SIZE defaults to asyncpg's 100, takes 0, and refuses a negative value by name."""
    assert Settings.from_env({}).db_statement_cache_size == 100
    assert Settings.from_env({"DB_STATEMENT_CACHE_SIZE": "0"}).db_statement_cache_size == 0
    with pytest.raises(SettingsError, match=r"^DB_STATEMENT_CACHE_SIZE"):
        Settings.from_env({"DB_STATEMENT_CACHE_SIZE": "-1"})
