"""One task run by this process from submission to end: the `collect` command's worker.

The process joins the workers table as kind 'cli', so the service shows it (GET /status,
`kline-collector status`) and leaves its task alone while its heartbeat is fresh. It submits its task
and claims it in one transaction: no other process can claim it in between, and the overlap rules
of every process on the database apply to it. While the task runs it keeps the heartbeat and obeys a
cancel request made through the API; it never claims any other task. `stop()` leaves the workers table.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from service.db import tasks as tasks_db
from service.db import workers as workers_db
from service.db.pool import Connection, Pool, Row, connection
from service.errors import DatabaseUnavailableError
from service.logging import get_logger
from service.tasks.registry import TaskBody, TaskRegistry, TaskView
from service.tasks.runner import join_workers, leave_workers

__all__ = ["WORKER_KIND", "SingleTaskWorker"]

log = get_logger(__name__)

WORKER_KIND = "cli"
# Heartbeats per lease, as for the service's workers: a missed one or two never costs the lease.
_HEARTBEATS_PER_LEASE = 6


class SingleTaskWorker:
    def __init__(self, pool: Pool, registry: TaskRegistry, *, lease_seconds: float, poll_seconds: float) -> None:
        self._pool = pool
        self._registry = registry
        self._every = min(poll_seconds, lease_seconds / _HEARTBEATS_PER_LEASE)
        self._upkeep: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> uuid.UUID:
        return self._registry.worker_id

    async def start(self) -> None:
        """Join the workers table and keep the heartbeat (DatabaseUnavailableError if it cannot join)."""
        await join_workers(self._pool, self.worker_id, WORKER_KIND)
        self._upkeep = asyncio.create_task(self._upkeep_loop(), name="single-task-upkeep")

    async def submit_and_run(
        self, submit: Callable[[Connection], Awaitable[TaskView]], body_for: Callable[[TaskView], TaskBody]
    ) -> tuple[TaskView, asyncio.Task[None]]:
        """Submit a task with `submit` (ConflictError and the like pass through), claim it in the same
        transaction, and run it here; the asyncio task ends once the task's end is recorded."""
        async with connection(self._pool) as conn, conn.transaction():
            view = await submit(conn)
            row: Row | None = await tasks_db.claim_task(conn, self.worker_id, view.task_id)
        if row is None:  # the heartbeat was lost before the claim (the database stalled for a lease)
            raise DatabaseUnavailableError(f"task {view.task_id} could not be claimed: this process lost its lease")
        return TaskView.from_record(row), self._registry.run(row, body_for)

    async def stop(self) -> None:
        """Stop the heartbeat and leave the workers table (if the database is away, peers reap the row
        when the lease ends)."""
        if self._upkeep is None:
            return
        self._upkeep.cancel()
        await asyncio.gather(self._upkeep, return_exceptions=True)
        self._upkeep = None
        await leave_workers(self._pool, self.worker_id)

    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                async with connection(self._pool) as conn:
                    alive = await workers_db.heartbeat(conn, self.worker_id)
                    requests = await tasks_db.cancel_requests(conn, self.worker_id) if alive else []
            except DatabaseUnavailableError as exc:
                log.warning("worker_heartbeat_failed", error=exc.detail)
                continue
            if not alive:
                # Peers found the heartbeat too old and took the task back; its writes here are fenced
                # (refused), so stop it rather than let it run for nothing.
                log.error("worker_lease_lost", worker_id=str(self.worker_id))
                await self._registry.abandon_all()
                return
            for request in requests:
                self._registry.cancel_requested(request["id"], request["cancel_reason"] or "cancelled by request")
