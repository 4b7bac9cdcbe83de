"""Migrations: the head is found from the files, and start-up can tell a migrated database."""

from __future__ import annotations

from typing import Any

import asyncpg

from service.db.migrate import current_revision, head_revision
from tests.conftest import with_database


async def test_a_migrated_database_is_at_head(db_dsn: str) -> None:
    """After `migrate` the database's alembic_version is the newest revision file's."""
    assert head_revision() == "0014"
    assert await current_revision(db_dsn) == head_revision()


async def test_an_empty_database_is_not(pg_dsn: str) -> None:
    """A database without alembic_version needs migrating (so `serve` runs Alembic)."""
    admin: asyncpg.Connection[Any] = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS kc_empty")
        await admin.execute("CREATE DATABASE kc_empty")
        assert await current_revision(with_database(pg_dsn, "kc_empty")) is None
    finally:
        await admin.execute("DROP DATABASE IF EXISTS kc_empty WITH (FORCE)")
        await admin.close()
