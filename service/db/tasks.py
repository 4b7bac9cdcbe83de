"""Tasks as durable rows: submitted pending, claimed by one live worker, handed back or taken back, ended.

The row holds all a task needs to run (type and params), so any process can run it; `worker_id`
names its owner while it runs, and every write of the owner is fenced by it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from service.db.pool import Connection

__all__ = [
    "TASKS_CHANNEL",
    "TASK_COLUMNS",
    "active_conflict",
    "cancel_pending",
    "cancel_requests",
    "claim_task",
    "claim_tasks",
    "count_by_status",
    "delete_finished_before",
    "finish_task",
    "get_task",
    "hand_back",
    "insert_task",
    "list_tasks",
    "lock_submissions",
    "notify",
    "request_cancel",
    "take_back_orphans",
    "update_progress",
]

TASK_COLUMNS = (
    "id, task_type, status, progress, message, params, result, error, series,"
    " created_at, started_at, completed_at, worker_id, attempts, eta_seconds"
)
_TASK_COLUMNS_OF_T = ", ".join(f"t.{column.strip()}" for column in TASK_COLUMNS.split(","))

#: The channel of task and schedule events ("submitted:<id>", "cancel:<id>", "pending:<id>",
#: "configs:changed"): idle processes wake on it at once; a lost notification costs at most
#: TASK_POLL_SECONDS (tasks) or a minute (the schedule).
TASKS_CHANNEL = "kline_collector_tasks"

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


async def notify(conn: Connection, event: str, subject: object) -> None:
    """Wake the processes listening on TASKS_CHANNEL (sent when the surrounding transaction commits)."""
    await conn.execute("SELECT pg_notify($1, $2)", TASKS_CHANNEL, f"{event}:{subject}")


async def claim_tasks(conn: Connection, worker_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """Claim up to `limit` pending tasks, oldest first, for this worker; returns them, now running.

    SKIP LOCKED lets every process claim at once without waiting on each other or claiming the same
    task twice. The worker's row must exist (foreign key): a process its peers declared dead cannot
    claim until it has registered again.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        WITH claimable AS (
            SELECT id FROM tasks
             WHERE status = 'pending' AND cancel_requested_at IS NULL
               AND EXISTS (SELECT 1 FROM workers WHERE id = $1)
             ORDER BY created_at
             LIMIT $2
               FOR UPDATE SKIP LOCKED)
        UPDATE tasks AS t
           SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
               started_at = coalesce(t.started_at, now()), updated_at = now(),
               message = CASE WHEN t.attempts = 0 THEN 'Started' ELSE 'Resumed' END
          FROM claimable
         WHERE t.id = claimable.id
        RETURNING {_TASK_COLUMNS_OF_T}
        """,
        worker_id, limit,
    )
    return rows


async def claim_task(conn: Connection, worker_id: uuid.UUID, task_id: uuid.UUID) -> asyncpg.Record | None:
    """Claim one given pending task for this worker (the `collect` command runs the task it submitted);
    None if it is not pending any more, a cancel was requested, or the worker's row is gone.

    Fenced like `claim_tasks`: the row lock makes a concurrent claimer wait, and the status is checked
    again once it is released, so a task is never claimed twice.
    """
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE tasks AS t
           SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
               started_at = coalesce(t.started_at, now()), updated_at = now(),
               message = CASE WHEN t.attempts = 0 THEN 'Started' ELSE 'Resumed' END
         WHERE t.id = $2 AND t.status = 'pending' AND t.cancel_requested_at IS NULL
           AND EXISTS (SELECT 1 FROM workers WHERE id = $1)
        RETURNING {_TASK_COLUMNS_OF_T}
        """,
        worker_id, task_id,
    )
    return row


async def update_progress(
    conn: Connection,
    task_id: uuid.UUID,
    worker_id: uuid.UUID,
    progress: int,
    message: str,
    eta_seconds: float | None = None,
) -> None:
    """Progress of a task this worker still owns (a task taken back from it is left alone)."""
    await conn.execute(
        """
        UPDATE tasks SET progress = $3, message = $4, eta_seconds = $5, updated_at = now()
         WHERE id = $1 AND worker_id = $2 AND status = 'running'
        """,
        task_id, worker_id, progress, message, eta_seconds,
    )


async def finish_task(
    conn: Connection,
    task_id: uuid.UUID,
    worker_id: uuid.UUID,
    *,
    status: str,
    progress: int,
    message: str,
    result: dict[str, Any] | None,
    error: str | None,
    completed_at: datetime,
) -> bool:
    """Close a task this worker owns for good (completed, failed or cancelled); False if it no longer
    owns it (peers took it back while this process was unreachable: their run is the one that counts)."""
    status_tag: str = await conn.execute(
        """
        UPDATE tasks
           SET status = $3, progress = $4, message = $5, result = $6, error = $7, eta_seconds = NULL,
               completed_at = $8, updated_at = $8
         WHERE id = $1 AND worker_id = $2 AND status = 'running'
        """,
        task_id, worker_id, status, progress, message, result, error, completed_at,
    )
    return status_tag == "UPDATE 1"


async def hand_back(conn: Connection, task_id: uuid.UUID, worker_id: uuid.UUID, message: str) -> bool:
    """Return a task this worker owns to `pending` (it is shutting down), for any process to resume."""
    status_tag: str = await conn.execute(
        """
        UPDATE tasks SET status = 'pending', worker_id = NULL, message = $3, updated_at = now()
         WHERE id = $1 AND worker_id = $2 AND status = 'running'
        """,
        task_id, worker_id, message,
    )
    return status_tag == "UPDATE 1"


async def take_back_orphans(conn: Connection) -> list[asyncpg.Record]:
    """Running tasks whose worker is gone (dead and reaped, or exited without handing them back):
    back to `pending` to be resumed, or `cancelled` if a cancel was requested meanwhile."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        UPDATE tasks
           SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
               message = CASE WHEN cancel_requested_at IS NULL
                              THEN 'Interrupted: its process stopped; waiting to resume'
                              ELSE 'Cancelled: ' || coalesce(cancel_reason, 'cancelled by request') END,
               error = CASE WHEN cancel_requested_at IS NULL THEN error
                            ELSE coalesce(cancel_reason, 'cancelled by request') END,
               completed_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
               updated_at = now()
         WHERE status = 'running' AND worker_id IS NULL
        RETURNING id, status
        """
    )
    return rows


async def cancel_pending(conn: Connection, task_id: uuid.UUID, reason: str) -> bool:
    """Cancel a task nobody runs yet; False if it is not pending (any more)."""
    status_tag: str = await conn.execute(
        """
        UPDATE tasks
           SET status = 'cancelled', message = 'Cancelled: ' || $2, error = $2,
               cancel_requested_at = now(), cancel_reason = $2, completed_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'pending'
        """,
        task_id, reason,
    )
    return status_tag == "UPDATE 1"


async def request_cancel(conn: Connection, task_id: uuid.UUID, reason: str) -> bool:
    """Ask the process running a task to stop it; False if it is not running (any more)."""
    status_tag: str = await conn.execute(
        """
        UPDATE tasks
           SET cancel_requested_at = coalesce(cancel_requested_at, now()),
               cancel_reason = coalesce(cancel_reason, $2), updated_at = now()
         WHERE id = $1 AND status = 'running'
        """,
        task_id, reason,
    )
    return status_tag == "UPDATE 1"


async def cancel_requests(conn: Connection, worker_id: uuid.UUID) -> list[asyncpg.Record]:
    """This worker's running tasks someone asked to cancel: (id, cancel_reason)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, cancel_reason FROM tasks
         WHERE worker_id = $1 AND status = 'running' AND cancel_requested_at IS NOT NULL
        """,
        worker_id,
    )
    return rows


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
