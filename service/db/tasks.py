"""Persisted tasks: the durable record behind the registry's in-memory view."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from service.db.pool import Connection

__all__ = [
    "TASK_COLUMNS",
    "active_conflict",
    "count_by_status",
    "delete_finished_before",
    "fail_interrupted",
    "finish_task",
    "get_task",
    "insert_task",
    "list_tasks",
    "lock_submissions",
    "mark_running",
    "update_progress",
]

TASK_COLUMNS = (
    "id, task_type, status, progress, message, params, result, error, series,"
    " created_at, started_at, completed_at"
)

# Key of the transaction-level advisory lock that serialises "check overlap, then insert"
# across every process sharing the database.
_SUBMIT_LOCK = 0x6B6C696E65  # "kline"


async def lock_submissions(conn: Connection) -> None:
    """Hold the submission lock until the surrounding transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SUBMIT_LOCK)


async def active_conflict(conn: Connection, series: Sequence[str]) -> asyncpg.Record | None:
    """The oldest pending or running task that collects one of these series, with the shared keys."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT id, ARRAY(SELECT unnest(series) INTERSECT SELECT unnest($1::text[])) AS shared
          FROM tasks
         WHERE status IN ('pending', 'running') AND series && $1::text[]
         ORDER BY created_at LIMIT 1
        """,
        list(series),
    )
    return row


async def insert_task(
    conn: Connection,
    task_id: uuid.UUID,
    task_type: str,
    params: dict[str, Any],
    series: Sequence[str],
    message: str,
    created_at: datetime,
) -> asyncpg.Record:
    """Record a new pending task."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        INSERT INTO tasks (id, task_type, status, params, series, message, created_at, updated_at)
        VALUES ($1, $2, 'pending', $3, $4, $5, $6, $6)
        RETURNING {TASK_COLUMNS}
        """,
        task_id, task_type, params, list(series), message, created_at,
    )
    assert row is not None
    return row


async def mark_running(conn: Connection, task_id: uuid.UUID, message: str, started_at: datetime) -> None:
    await conn.execute(
        """
        UPDATE tasks SET status = 'running', started_at = $3, updated_at = $3, message = $2
         WHERE id = $1 AND status = 'pending'
        """,
        task_id, message, started_at,
    )


async def update_progress(conn: Connection, task_id: uuid.UUID, progress: int, message: str) -> None:
    await conn.execute(
        """
        UPDATE tasks SET progress = $2, message = $3, updated_at = now()
         WHERE id = $1 AND status = 'running'
        """,
        task_id, progress, message,
    )


async def finish_task(
    conn: Connection,
    task_id: uuid.UUID,
    *,
    status: str,
    progress: int,
    message: str,
    result: dict[str, Any] | None,
    error: str | None,
    completed_at: datetime,
) -> None:
    """Close a task for good (completed, failed or cancelled)."""
    await conn.execute(
        """
        UPDATE tasks
           SET status = $2, progress = $3, message = $4, result = $5, error = $6,
               completed_at = $7, updated_at = $7
         WHERE id = $1 AND status IN ('pending', 'running')
        """,
        task_id, status, progress, message, result, error, completed_at,
    )


async def fail_interrupted(conn: Connection) -> list[uuid.UUID]:
    """Close tasks a dead process left pending or running; returns their ids."""
    rows = await conn.fetch(
        """
        UPDATE tasks
           SET status = 'failed', error = 'interrupted',
               message = 'Interrupted: the service stopped while this task was active',
               completed_at = now(), updated_at = now()
         WHERE status IN ('pending', 'running')
        RETURNING id
        """
    )
    return [r["id"] for r in rows]


async def get_task(conn: Connection, task_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1", task_id)
    return row


async def list_tasks(
    conn: Connection,
    *,
    task_type: str | None = None,
    active_only: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[asyncpg.Record]:
    """Tasks newest first, optionally of one type or only the active ones."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {TASK_COLUMNS} FROM tasks
         WHERE ($1::text IS NULL OR task_type = $1)
           AND (NOT $2 OR status IN ('pending', 'running'))
         ORDER BY created_at DESC
         LIMIT $3 OFFSET $4
        """,
        task_type, active_only, limit, offset,
    )
    return rows


async def count_by_status(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def delete_finished_before(conn: Connection, cutoff: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` ended tasks created before `cutoff`; returns how many."""
    status: str = await conn.execute(
        """
        DELETE FROM tasks WHERE id IN (
            SELECT id FROM tasks
             WHERE status IN ('completed', 'failed', 'cancelled') AND created_at < $1
             LIMIT $2)
        """,
        cutoff, batch_size,
    )
    return int(status.rsplit(" ", 1)[1])
