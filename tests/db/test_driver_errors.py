"""service/db/ is the one boundary for driver errors: what leaves it is a domain error or a bug."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from service.db import configs as configs_db
from service.db.health import HealthProbe
from service.db.pool import Pool, connection, create_pool, retrying
from service.errors import ConflictError, DatabaseUnavailableError, DuplicateError


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[Pool]:
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def insert_btc_config(conn: Any) -> None:
    await configs_db.insert_config(
        conn, symbol="BTCUSDT", exchange="binance", timeframes=["1m"], interval_minutes=5, enabled=True,
        description=None, created_by=None, next_run_at=None,
    )


async def drop_database(pg_dsn: str, db_dsn: str) -> None:
    """The test's database dropped under the service (its connections are cut)."""
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'DROP DATABASE "{urlsplit(db_dsn).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_a_unique_violation_leaves_as_a_duplicate_error_naming_its_constraint(pool: Pool) -> None:
    """A second config for the same pair is a DuplicateError (a 409 kind) that names the unique constraint."""
    async with connection(pool) as conn:
        await insert_btc_config(conn)
    with pytest.raises(DuplicateError) as caught:
        async with connection(pool) as conn:
            await insert_btc_config(conn)
    assert caught.value.constraint == "data_collection_configs_exchange_symbol_key"
    assert isinstance(caught.value, ConflictError)
    assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)
    async with connection(pool) as conn:  # the connection went back to the pool in working order
        assert await conn.fetchval("SELECT count(*) FROM data_collection_configs") == 1


async def test_a_statement_error_passes_unchanged(pool: Pool) -> None:
    """A wrong statement is a bug, not an outage: it is not dressed up as a domain error."""
    with pytest.raises(asyncpg.PostgresSyntaxError):
        async with connection(pool) as conn:
            await conn.execute("SELEC 1")


async def test_a_dropped_database_is_database_unavailable(pool: Pool, pg_dsn: str, db_dsn: str) -> None:
    """Once its database is gone, every use of the pool (and a retried unit of work, once its time is up)
    raises DatabaseUnavailableError, never the driver's own error."""
    await drop_database(pg_dsn, db_dsn)
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with connection(pool) as conn:
            await conn.fetchval("SELECT 1")
    assert isinstance(caught.value.__cause__, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError))

    async def select_one(conn: Any) -> int:
        value: int = await conn.fetchval("SELECT 1")
        return value

    with pytest.raises(DatabaseUnavailableError):
        await retrying(pool, select_one, give_up_after=0.3)


async def test_the_health_probe_reports_a_dropped_database_as_unavailable(pg_dsn: str, db_dsn: str) -> None:
    """The health probe's answer for a dropped database is DatabaseUnavailableError naming the driver's reason."""
    probe = HealthProbe(db_dsn)
    try:
        await probe.ping()
        await drop_database(pg_dsn, db_dsn)
        with pytest.raises(DatabaseUnavailableError) as caught:
            await probe.ping()
    finally:
        await probe.close()
    assert caught.value.extra["error"] == "InvalidCatalogNameError"
