"""The service's one asyncpg pool."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

__all__ = ["Connection", "Pool", "create_pool"]

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
