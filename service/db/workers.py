"""Workers: one row per live process that runs tasks, kept alive by its heartbeat.

Time here is PostgreSQL's (`now()`), never a process's: processes on different machines agree on
which heartbeat is stale only if one clock judges them all.
"""

from __future__ import annotations

import uuid

import asyncpg

from service.db.pool import Connection

__all__ = ["heartbeat", "list_workers", "reap_dead_workers", "register_worker", "remove_worker"]


async def register_worker(conn: Connection, worker_id: uuid.UUID, *, kind: str, hostname: str, pid: int) -> None:
    """Insert this process's row (or refresh it, after a peer had declared it dead and removed it)."""
    await conn.execute(
        """
        INSERT INTO workers (id, kind, hostname, pid) VALUES ($1, $2, $3, $4)
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
        """,
        worker_id, kind, hostname, pid,
    )


async def heartbeat(conn: Connection, worker_id: uuid.UUID) -> bool:
    """Refresh the heartbeat; False if the row is gone (peers declared this process dead)."""
    status: str = await conn.execute("UPDATE workers SET heartbeat_at = now() WHERE id = $1", worker_id)
    return status == "UPDATE 1"


async def remove_worker(conn: Connection, worker_id: uuid.UUID) -> None:
    """A clean exit: the row goes, and any task it still owns is left running without an owner."""
    await conn.execute("DELETE FROM workers WHERE id = $1", worker_id)


async def reap_dead_workers(conn: Connection, lease_seconds: float, *, keep: uuid.UUID) -> list[asyncpg.Record]:
    """Delete the rows of workers (other than `keep`, the caller) whose heartbeat is older than the
    lease; returns them.

    The tasks they owned keep status `running` with worker_id NULL (ON DELETE SET NULL), which is
    what `tasks.take_back_orphans` looks for.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        DELETE FROM workers
         WHERE heartbeat_at < now() - make_interval(secs => $1) AND id <> $2
        RETURNING id, kind, hostname, pid, heartbeat_at
        """,
        lease_seconds, keep,
    )
    return rows


async def list_workers(conn: Connection) -> list[asyncpg.Record]:
    """Live workers with how many tasks each runs, oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT w.id, w.kind, w.hostname, w.pid, w.started_at, w.heartbeat_at,
               (SELECT count(*) FROM tasks t WHERE t.worker_id = w.id AND t.status = 'running') AS running
          FROM workers w ORDER BY w.started_at
        """
    )
    return rows
