"""Alembic environment: async, on asyncpg, under the migration lock (service.db.migrate.hold_migration_lock).

The connection comes from the caller (service.db.migrate); run by hand (`uv run alembic …`), the URL
comes from DATABASE_URL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.db.migrate import hold_migration_lock, sqlalchemy_url
from service.settings import Settings


def _url() -> str:
    configured = context.config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    settings = Settings.from_env()
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set; use `kline-collector migrate`, which also handles the embedded server")
    return sqlalchemy_url(settings.database_url)


def _run(connection: Connection) -> None:
    # Taken before Alembic reads the current revision, so a process that waited here finds the
    # migrations applied by the one before it and does nothing.
    hold_migration_lock(connection)
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


shared: Connection | None = context.config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif shared is not None:
    _run(shared)
    shared.commit()
else:
    asyncio.run(_run_async())
