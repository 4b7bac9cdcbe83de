"""Alembic glue: apply migrations from a synchronous entry point (Alembic's env.py runs its own loop).

Alembic and SQLAlchemy are imported only when there is something to apply: they cost a third of a
second and 30 MB on every start otherwise.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg

__all__ = ["execute_script", "head_revision", "is_at_head", "sqlalchemy_url", "upgrade"]

_ROOT = Path(__file__).resolve().parents[2]
_VERSIONS = _ROOT / "migrations" / "versions"
_REVISION = re.compile(r'^revision\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)


def sqlalchemy_url(dsn: str) -> str:
    """postgresql://… → postgresql+asyncpg://… for SQLAlchemy's async engine."""
    scheme, rest = dsn.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://…")
    return f"postgresql+asyncpg://{rest}"


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


async def _current_revision(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        version: str | None = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
        return version
    finally:
        await conn.close()


def is_at_head(dsn: str) -> bool:
    """Whether the database already has every migration. Must not be called while a loop runs."""
    return asyncio.run(_current_revision(dsn)) == head_revision()


def upgrade(dsn: str, revision: str = "head") -> None:
    """Bring the database at `dsn` to `revision`. Must not be called while an event loop runs."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    # ConfigParser interpolation would choke on a '%' in a password.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    command.upgrade(config, revision)


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
