"""Periodic jobs besides the configs (symbol refresh, retention): each due time claimed by one process."""

from __future__ import annotations

from datetime import datetime

from service.db.pool import Connection

__all__ = ["claim_periodic", "next_periodic", "schedule_first"]


async def claim_periodic(conn: Connection, name: str, *, now: datetime, next_run_at: datetime) -> bool:
    """Claim the run of `name` due by `now` and move it on to `next_run_at`; False if not due or
    another process claimed it. A job never run before is due at once."""
    claimed: str | None = await conn.fetchval(
        """
        INSERT INTO periodic_runs AS p (name, next_run_at) VALUES ($1, $3)
        ON CONFLICT (name) DO UPDATE SET next_run_at = $3 WHERE p.next_run_at <= $2
        RETURNING name
        """,
        name, now, next_run_at,
    )
    return claimed is not None


async def next_periodic(conn: Connection, name: str) -> datetime | None:
    """When `name` is next due (None: never run, so due now)."""
    due: datetime | None = await conn.fetchval("SELECT next_run_at FROM periodic_runs WHERE name = $1", name)
    return due


async def schedule_first(conn: Connection, name: str, at: datetime) -> None:
    """Make `name` first due at `at`, unless it is scheduled already."""
    await conn.execute(
        "INSERT INTO periodic_runs (name, next_run_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, at
    )
