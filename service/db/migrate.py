"""Alembic glue: apply migrations from a synchronous entry point (Alembic's env.py runs its own loop)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["execute_script", "sqlalchemy_url", "upgrade"]

_ROOT = Path(__file__).resolve().parents[2]


def sqlalchemy_url(dsn: str) -> str:
    """postgresql://… → postgresql+asyncpg://… for SQLAlchemy's async engine."""
    scheme, rest = dsn.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://…")
    return f"postgresql+asyncpg://{rest}"


def upgrade(dsn: str, revision: str = "head") -> None:
    """Bring the database at `dsn` to `revision`. Must not be called while an event loop runs."""
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
