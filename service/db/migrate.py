"""Alembic glue: apply migrations from a synchronous entry point (Alembic's env.py runs its own loop).

Alembic and SQLAlchemy are imported only when there is something to apply: they cost a third of a
second and 30 MB on every start otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from service.db.pool import DEFAULT_STATEMENT_CACHE_SIZE, domain_errors, open_connection

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "MIGRATION_LOCK_KEY", "current_revision", "execute_script", "head_revision", "hold_migration_lock",
    "is_at_head", "migrate_if_behind", "migration_engine", "upgrade", "upgrade_async",
]

#: The session-level advisory lock every migration run holds: processes starting together on a fresh
#: database (release + web, several replicas) apply the migrations one after another; the later ones
#: find the database at head under the lock and do nothing. Any fixed bigint works; this one spells "kline-mg".
MIGRATION_LOCK_KEY = 0x6B6C696E652D6D67

_ROOT = Path(__file__).resolve().parents[2]
_VERSIONS = _ROOT / "migrations" / "versions"
_REVISION = re.compile(r'^revision\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)


def migration_engine(dsn: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE) -> AsyncEngine:
    """SQLAlchemy's async engine for Alembic, on connections opened as every other (`open_connection`).

    The URL reaches asyncpg as given: SQLAlchemy would hand each of its query parameters to asyncpg as
    an argument, and asyncpg refuses `sslmode=` there (it reads it from the URL only).
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    async def connect() -> asyncpg.Connection[Any]:
        return await open_connection(dsn, statement_cache_size=statement_cache_size)

    # DBAPI options of SQLAlchemy's asyncpg adapter. `async_creator_fn` is how its own `async_creator`
    # argument passes the function on, but that argument drops the other options.
    adapter_options: dict[str, Any] = {
        "async_creator_fn": connect,
        # The adapter prepares every statement itself and keeps them in a cache of its own.
        "prepared_statement_cache_size": statement_cache_size,
    }
    if statement_cache_size == 0:
        # Behind PgBouncer another client's statement may sit on the same server connection: unique
        # names cannot collide (SQLAlchemy's recipe for PgBouncer).
        adapter_options["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    return create_async_engine("postgresql+asyncpg://", poolclass=NullPool, connect_args=adapter_options)


@functools.cache  # the files do not change while the process runs; start-up retries ask again
def head_revision() -> str:
    """The newest revision in migrations/versions: the one no other revision builds on."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in _VERSIONS.glob("*.py"):
        text = path.read_text()
        if (found := _REVISION.search(text)) is not None:
            revisions.add(found.group(1))
        if (parent := _DOWN_REVISION.search(text)) is not None:
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations/versions must have exactly one head, found {sorted(heads)}")
    return heads.pop()


async def current_revision(dsn: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE) -> str | None:
    """The revision the database at `dsn` is at, None before the first migration.

    Raises DatabaseUnavailableError when the database cannot be reached.
    """
    with domain_errors():
        return await _read_revision(dsn, statement_cache_size)


async def _read_revision(dsn: str, statement_cache_size: int) -> str | None:
    conn = await open_connection(dsn, statement_cache_size=statement_cache_size)
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        version: str | None = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
        return version
    finally:
        await conn.close()


def is_at_head(dsn: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE) -> bool:
    """Whether the database already has every migration. Must not be called while a loop runs.

    Raises DatabaseUnavailableError when the database cannot be reached.
    """
    return asyncio.run(current_revision(dsn, statement_cache_size=statement_cache_size)) == head_revision()


async def migrate_if_behind(dsn: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE) -> None:
    """Apply the missing migrations, if any (checked without the lock first: the usual case has none)."""
    if await current_revision(dsn, statement_cache_size=statement_cache_size) != head_revision():
        await upgrade_async(dsn, statement_cache_size=statement_cache_size)


def upgrade(dsn: str, revision: str = "head", *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE) -> None:
    """Bring the database at `dsn` to `revision`. Must not be called while an event loop runs.

    Raises DatabaseUnavailableError, naming the database, when it cannot be reached.
    """
    asyncio.run(upgrade_async(dsn, revision, statement_cache_size=statement_cache_size))


async def upgrade_async(
    dsn: str, revision: str = "head", *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
) -> None:
    """Bring the database at `dsn` to `revision` under the migration lock, from a running event loop.

    Alembic itself is synchronous: it runs on one connection through SQLAlchemy's `run_sync`
    (Alembic's "connection sharing" recipe), so migrations briefly hold the loop.
    """
    engine = migration_engine(dsn, statement_cache_size=statement_cache_size)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_upgrade_on, revision)
    finally:
        await engine.dispose()


def _upgrade_on(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    config.attributes["connection"] = connection  # migrations/env.py runs on it
    command.upgrade(config, revision)


def hold_migration_lock(connection: Connection) -> None:
    """Wait for, then take, the session-level migration lock on `connection` (released when it closes).

    Committed at once so no transaction stays open around it: Alembic then runs one transaction
    per migration while this session keeps the lock, and reads the current revision under it.
    """
    from sqlalchemy import text

    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.commit()


def execute_script(script: str) -> None:
    """Run a migration's SQL, one statement at a time.

    SQLAlchemy's asyncpg driver prepares each statement and refuses several in one; statements in
    our scripts end with a semicolon at the end of a line.
    """
    from alembic import op

    statement: list[str] = []
    for line in script.splitlines():
        statement.append(line)
        if line.rstrip().endswith(";"):
            op.execute("\n".join(statement))
            statement = []
    if "".join(statement).strip():
        op.execute("\n".join(statement))
