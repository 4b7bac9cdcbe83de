"""Alembic environment: async, on asyncpg, under the migration lock (service.db.migrate.hold_migration_lock).

The connection comes from the caller (service.db.migrate); run by hand (`uv run alembic …`), the URL
comes from DATABASE_URL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db.migrate import hold_migration_lock, migration_engine
from service.settings import Settings


def _engine() -> AsyncEngine:
    configured = context.config.get_main_option("sqlalchemy.url")
    if configured:
        return create_async_engine(configured)
    settings = Settings.from_env()
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set; use `kline-collector migrate`, which also handles the embedded server")
    return migration_engine(settings.database_url, statement_cache_size=settings.db_statement_cache_size)


def _run(connection: Connection) -> None:
    # Taken before Alembic reads the current revision, so a process that waited here finds the
    # migrations applied by the one before it and does nothing.
    hold_migration_lock(connection)
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = _engine()
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


shared: Connection | None = context.config.attributes.get("connection")
if context.is_offline_mode():
    # SQL is only printed: no database, just its dialect.
    context.configure(dialect_name="postgresql", literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif shared is not None:
    _run(shared)
    shared.commit()
else:
    asyncio.run(_run_async())
