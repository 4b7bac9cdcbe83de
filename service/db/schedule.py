"""Claiming scheduled runs: a conditional UPDATE, so each due run is started by exactly one process."""

from __future__ import annotations

from datetime import datetime

from service.db.pool import Connection

__all__ = ["claim_due_run"]


async def claim_due_run(
    conn: Connection, config_id: int, *, due_at: datetime, next_run_at: datetime, started_at: datetime
) -> bool:
    """Move a due config to its next run time if it is still due at `due_at` and enabled."""
    status: str = await conn.execute(
        """
        UPDATE data_collection_configs
           SET next_run_at = $3, last_run_at = $4
         WHERE id = $1 AND enabled AND next_run_at = $2
        """,
        config_id, due_at, next_run_at, started_at,
    )
    return status == "UPDATE 1"
