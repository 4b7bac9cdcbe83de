"""The task runner: makes this process a worker that claims pending tasks and keeps its lease.

Every process that runs tasks (`serve` unless WEB_RUNS_TASKS=false, and `worker`) has one. It
registers a row in `workers` and refreshes its heartbeat; claims pending tasks up to
MAX_CONCURRENT_TASKS with FOR UPDATE SKIP LOCKED; stops the tasks it runs when a cancel request
appears on their rows; and takes back the tasks of dead peers (heartbeat older than LEASE_SECONDS),
which any process then resumes from the last stored candle. LISTEN/NOTIFY wakes it at once on
submissions, cancel requests and hand-backs; polling every TASK_POLL_SECONDS covers a lost
notification (or a PgBouncer in transaction mode, where LISTEN does not work).

procrastinate's worker is the model: `_run_loop`, `_poll_jobs_to_abort`, stalled workers found by
their heartbeat, a stop event, and on shutdown a grace period before cancelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from service.db import execution_logs as logs_db
from service.db import tasks as tasks_db
from service.db import workers as workers_db
from service.db.listener import Listener
from service.db.pool import Connection, Pool, connection, retrying
from service.errors import DatabaseUnavailableError
from service.logging import get_logger
from service.tasks.registry import TaskBody, TaskRegistry, TaskView

__all__ = ["HANDED_BACK_MESSAGE", "TaskRunner", "join_workers", "leave_workers"]

log = get_logger(__name__)

HANDED_BACK_MESSAGE = "Interrupted: its process shut down; waiting to resume"
# Heartbeats per lease: a missed one or two (a slow database) never costs the lease.
_HEARTBEATS_PER_LEASE = 6
# Dead peers are looked for this many times per lease.
_RECOVERIES_PER_LEASE = 3


async def join_workers(pool: Pool, worker_id: uuid.UUID, kind: str) -> None:
    """Register this process in `workers` (DatabaseUnavailableError if the database is away)."""
    async with connection(pool) as conn:
        await workers_db.register_worker(
            conn, worker_id, kind=kind, hostname=socket.gethostname()[:255], pid=os.getpid()
        )


async def leave_workers(pool: Pool, worker_id: uuid.UUID) -> None:
    """Remove this process's row and wake the peers (to claim what it handed back); if the database
    is away, peers reap the row when the lease ends."""

    async def remove(conn: Connection) -> None:
        await workers_db.remove_worker(conn, worker_id)
        await tasks_db.notify(conn, "pending", worker_id)

    try:
        await retrying(pool, remove, give_up_after=2.0)
    except DatabaseUnavailableError as exc:
        log.warning("worker_row_not_removed", error=exc.detail, detail="peers reap it when the lease ends")


class TaskRunner:
    def __init__(
        self,
        pool: Pool,
        listener: Listener,
        registry: TaskRegistry,
        body_for: Callable[[TaskView], TaskBody],
        *,
        kind: str,
        max_concurrent: int,
        lease_seconds: float,
        poll_seconds: float,
        on_notification: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._body_for = body_for
        self._kind = kind
        self._max_concurrent = max_concurrent
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []
        self._on_notification = on_notification
        listener.subscribe(tasks_db.TASKS_CHANNEL, self._notified)
        registry.on_change(self._wake.set)

    @property
    def worker_id(self) -> uuid.UUID:
        return self._registry.worker_id

    @property
    def is_running(self) -> bool:
        return bool(self._background) and not self._stopping

    async def start(self) -> None:
        """Register this worker and start claiming (DatabaseUnavailableError if the database is away:
        start-up retries it)."""
        await self._register()
        # Dead peers' tasks are taken back before start-up is done, not at some moment after it.
        await self.recover()
        self._background = [
            asyncio.create_task(self._claim_loop(), name="task-runner"),
            asyncio.create_task(self._heartbeat_loop(), name="task-runner-heartbeat"),
        ]
        log.info("worker_started", worker_id=str(self.worker_id), kind=self._kind)

    async def _register(self) -> None:
        await join_workers(self._pool, self.worker_id, self._kind)

    async def stop(self, grace: float) -> None:
        """Stop claiming at once; hand the running tasks back within `grace` seconds; leave the workers
        table (any task not handed back is then taken back by the next peer that looks)."""
        self._stopping = True
        claim_loop, others = (self._background[0], self._background[1:]) if self._background else (None, [])
        if claim_loop is not None:
            claim_loop.cancel()
            await asyncio.gather(claim_loop, return_exceptions=True)
        await self._registry.hand_back_all(HANDED_BACK_MESSAGE, grace)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._background:
            await leave_workers(self._pool, self.worker_id)
        self._background = []
        log.info("worker_stopped", worker_id=str(self.worker_id))

    async def _claim_loop(self) -> None:
        next_recovery = time.monotonic() + self._lease / _RECOVERIES_PER_LEASE  # start() recovered
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self._lease / _RECOVERIES_PER_LEASE
                    await self.recover()
                await self._apply_cancel_requests()
                await self._claim()
            except DatabaseUnavailableError as exc:
                log.warning("task_claim_failed", error=exc.detail)
            except Exception:
                log.exception("task_claim_crashed")  # a bug must not end claiming for the process's life
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    async def recover(self) -> int:
        """Take back the tasks of dead peers (and of any task left running without an owner) for any
        process to resume; their running execution-log rows are closed as Interrupted. Returns how
        many tasks were taken back. Live peers are never touched."""
        async with connection(self._pool) as conn, conn.transaction():
            # Our own heartbeat first: after a database outage every heartbeat is old, ours included.
            await workers_db.heartbeat(conn, self.worker_id)
            dead = await workers_db.reap_dead_workers(conn, self._lease, keep=self.worker_id)
            orphans = await tasks_db.take_back_orphans(conn)
            await logs_db.close_running_without_a_running_task(conn, at=datetime.now(UTC))
            if orphans:
                await tasks_db.notify(conn, "pending", orphans[0]["id"])
        for worker in dead:
            log.warning(
                "worker_presumed_dead", dead_worker_id=str(worker["id"]), kind=worker["kind"],
                hostname=worker["hostname"], pid=worker["pid"], last_heartbeat=worker["heartbeat_at"].isoformat(),
            )
        if orphans:
            log.warning(
                "tasks_taken_back", count=len(orphans),
                resumed=[str(r["id"]) for r in orphans if r["status"] == "pending"],
                cancelled=[str(r["id"]) for r in orphans if r["status"] == "cancelled"],
            )
        return len(orphans)

    async def _apply_cancel_requests(self) -> None:
        if self._registry.running_count == 0:
            return
        async with connection(self._pool) as conn:
            requests = await tasks_db.cancel_requests(conn, self.worker_id)
        for request in requests:
            self._registry.cancel_requested(request["id"], request["cancel_reason"] or "cancelled by request")

    async def _claim(self) -> None:
        free = self._max_concurrent - self._registry.running_count
        if free <= 0 or self._stopping:
            return
        async with connection(self._pool) as conn:
            rows = await tasks_db.claim_tasks(conn, self.worker_id, free)
        for row in rows:
            self._registry.run(row, self._body_for)

    async def _heartbeat_loop(self) -> None:
        every = self._lease / _HEARTBEATS_PER_LEASE
        while True:
            await asyncio.sleep(every)
            try:
                async with connection(self._pool) as conn:
                    alive = await workers_db.heartbeat(conn, self.worker_id)
                if not alive:
                    # Peers found our heartbeat too old (the database or this process stalled) and took
                    # our tasks back: stop running them here, then join again as a fresh worker.
                    log.error("worker_lease_lost", worker_id=str(self.worker_id))
                    await self._registry.abandon_all()
                    await self._register()
                    self._wake.set()
            except DatabaseUnavailableError as exc:
                log.warning("worker_heartbeat_failed", error=exc.detail)

    def _notified(self, payload: str | None) -> None:
        self._wake.set()
        self._on_notification()
