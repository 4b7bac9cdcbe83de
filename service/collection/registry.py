"""Task registry: runs collection tasks in this process, bounded, cancellable, persisted.

The database is the record: every task is a row from submission on, overlap between active tasks is
checked there under an advisory lock, and a task's end is written there. Memory holds the tasks this
process runs (their asyncio task and live progress) and finished ones for TASK_CLEANUP_DELAY.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec
import structlog

from service.collection.task_records import TaskParams, TaskResult, task_params_from_json, task_result_from_json
from service.db import tasks as tasks_db
from service.db.pool import Connection, Pool, Row, connection, retrying
from service.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from service.logging import get_logger

__all__ = ["TaskBody", "TaskHandle", "TaskOutcome", "TaskRegistry", "TaskView"]

log = get_logger(__name__)

TaskStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"pending", "running"})
# Progress is written to the database at most this often per task (and always at the end).
_PERSIST_EVERY = 1.0
# How long a task's start waits for a lost database before the task fails.
_START_RETRY_SECONDS = 30.0


class TaskView(msgspec.Struct, kw_only=True):
    """A task as the API shows it."""

    task_id: uuid.UUID
    task_type: str
    status: TaskStatus
    progress: int
    message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    result: TaskResult | None
    params: TaskParams = msgspec.field(default_factory=TaskParams)

    @classmethod
    def from_record(cls, row: Row) -> TaskView:
        return cls(
            task_id=row["id"], task_type=row["task_type"], status=row["status"], progress=row["progress"],
            message=row["message"], created_at=row["created_at"], started_at=row["started_at"],
            completed_at=row["completed_at"], error=row["error"],
            result=task_result_from_json(row["task_type"], row["result"]), params=task_params_from_json(row["params"]),
        )


class TaskOutcome(msgspec.Struct, kw_only=True):
    """What a task body returns: how it ended."""

    status: Literal["completed", "failed"]
    message: str
    result: TaskResult | None = None
    error: str | None = None


class TaskHandle:
    """Given to a task body: its id, and where it reports progress."""

    def __init__(self, registry: TaskRegistry, view: TaskView) -> None:
        self._registry = registry
        self.view = view
        self._persisted_at = 0.0

    @property
    def task_id(self) -> uuid.UUID:
        return self.view.task_id

    async def report(self, progress: int, message: str) -> None:
        """Update live progress; written through to the database at most once a second."""
        self.view.progress = max(self.view.progress, min(progress, 100))
        if message:
            self.view.message = message
        now = time.monotonic()
        if now - self._persisted_at >= _PERSIST_EVERY:
            self._persisted_at = now
            # Progress is a hint: losing one write must never fail the task (the end is recorded
            # with retries, and the live view is in memory).
            try:
                async with connection(self._registry.pool) as conn:
                    await tasks_db.update_progress(conn, self.task_id, self.view.progress, self.view.message or "")
            except DatabaseUnavailableError as exc:
                log.warning("progress_not_recorded", task_id=str(self.task_id), error=exc.detail)

    def waiting(self, reason: str, until: float) -> None:
        """The exchange made us wait (rate limit or ban): say so in the task's message."""
        when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        what = "IP banned by the exchange" if reason == "banned" else "Rate limited by the exchange"
        self.view.message = f"{what}: paused until {when}"


TaskBody = Callable[[TaskHandle], Awaitable[TaskOutcome]]


class _Entry:
    __slots__ = ("cancel_reason", "finishing", "handle", "task")

    def __init__(self, handle: TaskHandle) -> None:
        self.handle = handle
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        # The body has ended and its outcome is being written (retried while the database is away).
        self.finishing = False


class TaskRegistry:
    def __init__(self, pool: Pool, *, max_concurrent: int, cleanup_delay: float) -> None:
        self.pool = pool
        self._slots = asyncio.Semaphore(max_concurrent)
        self._cleanup_delay = cleanup_delay
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._closing = False

    async def recover(self) -> list[uuid.UUID]:
        """Close tasks a dead process left active (run once at start-up)."""
        async with connection(self.pool) as conn:
            ids = await tasks_db.fail_interrupted(conn)
        if ids:
            log.warning("tasks_interrupted", count=len(ids), task_ids=[str(i) for i in ids])
        return ids

    async def submit(
        self,
        task_type: str,
        body: TaskBody,
        *,
        params: TaskParams,
        series: Sequence[str] = (),
        message: str = "Waiting for a free slot",
    ) -> TaskView:
        """Record and start a task; ConflictError if an active task collects one of `series`."""
        if self._closing:
            raise ConflictError("the service is shutting down; no new tasks are accepted")
        task_id = uuid.uuid4()
        async with connection(self.pool) as conn, conn.transaction():
            await tasks_db.lock_submissions(conn)
            if series:
                conflict = await tasks_db.active_conflict(conn, series)
                if conflict is not None:
                    shared = sorted(conflict["shared"])
                    raise ConflictError(
                        f"task {conflict['id']} is already collecting {', '.join(shared[:5])}"
                        + (f" and {len(shared) - 5} more series" if len(shared) > 5 else ""),
                        active_task_id=str(conflict["id"]),
                        series=shared,
                    )
            row = await tasks_db.insert_task(
                conn, task_id, task_type, msgspec.to_builtins(params), series, message, created_at=datetime.now(UTC)
            )
        entry = _Entry(TaskHandle(self, TaskView.from_record(row)))
        self._entries[task_id] = entry
        entry.task = asyncio.create_task(self._run(entry, body), name=f"{task_type}:{task_id}")
        log.info("task_submitted", task_id=str(task_id), task_type=task_type)
        return entry.handle.view

    async def _run(self, entry: _Entry, body: TaskBody) -> None:
        view = entry.handle.view
        structlog.contextvars.bind_contextvars(task_id=str(view.task_id), task_type=view.task_type)
        status: TaskStatus
        holds_slot = False
        try:
            await self._slots.acquire()
            holds_slot = True
            started_at = datetime.now(UTC)

            async def mark_running(conn: Connection) -> None:
                await tasks_db.mark_running(conn, view.task_id, "Started", started_at)  # idempotent

            await retrying(self.pool, mark_running, give_up_after=_START_RETRY_SECONDS)
            view.status, view.started_at, view.message = "running", started_at, "Started"
            log.info("task_started")
            outcome = await body(entry.handle)
            status = outcome.status
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled here: the rest of this task is recording the end
            reason = entry.cancel_reason or "cancelled"
            status, outcome = "cancelled", TaskOutcome(status="completed", message=f"Cancelled: {reason}")
        except Exception as exc:
            log.exception("task_crashed")
            status = "failed"
            outcome = TaskOutcome(status="failed", message="Failed", error=f"{exc.__class__.__name__}: {exc}")
        entry.finishing = True
        try:
            await self._finish(view, status, outcome)
        finally:
            # Held until the end is recorded: a task still showing as running keeps its slot, so
            # no more than MAX_CONCURRENT_TASKS ever show as running.
            if holds_slot:
                self._slots.release()
        log.info("task_finished", status=status, message=outcome.message)

    async def _finish(self, view: TaskView, status: TaskStatus, outcome: TaskOutcome) -> None:
        """Record the end, retrying while the database is away; only then show it in memory.

        Memory never claims an end the row does not have: until the write lands, the task stays
        active for GET, for the overlap check (the row) and for cancel (409: it is ending).
        """
        completed_at = datetime.now(UTC)
        progress = 100 if status == "completed" else view.progress
        error = outcome.error if outcome.error is not None or status != "cancelled" else outcome.message

        async def record(conn: Connection) -> None:
            await tasks_db.finish_task(
                conn, view.task_id, status=status, progress=progress, message=outcome.message,
                result=None if outcome.result is None else msgspec.to_builtins(outcome.result),
                error=error, completed_at=completed_at,
            )

        await retrying(self.pool, record, give_up_after=None)
        view.status, view.completed_at, view.progress = status, completed_at, progress
        view.message, view.result, view.error = outcome.message, outcome.result, error
        asyncio.get_running_loop().call_later(self._cleanup_delay, self._entries.pop, view.task_id, None)

    async def get(self, task_id: uuid.UUID) -> TaskView:
        """Live view from memory, else the stored record; NotFoundError if neither."""
        entry = self._entries.get(task_id)
        if entry is not None:
            return entry.handle.view
        async with connection(self.pool) as conn:
            row = await tasks_db.get_task(conn, task_id)
        if row is None:
            raise NotFoundError(f"no task with id {task_id}")
        return TaskView.from_record(row)

    async def list(
        self, *, task_type: str | None = None, active_only: bool = False, limit: int = 100
    ) -> builtins.list[TaskView]:
        """Tasks newest first (live views for the ones this process runs)."""
        async with connection(self.pool) as conn:
            rows = await tasks_db.list_tasks(conn, task_type=task_type, active_only=active_only, limit=limit)
        views = []
        for row in rows:
            entry = self._entries.get(row["id"])
            views.append(entry.handle.view if entry is not None else TaskView.from_record(row))
        return views

    async def counts(self) -> dict[str, int]:
        async with connection(self.pool) as conn:
            counts = await tasks_db.count_by_status(conn)
        return {status: counts.get(status, 0) for status in ("pending", "running", "completed", "failed", "cancelled")}

    async def cancel(self, task_id: uuid.UUID, reason: str = "cancelled by request") -> TaskView:
        """Stop a pending or running task promptly; ConflictError if it has already ended."""
        entry = self._entries.get(task_id)
        if entry is None or entry.task is None:
            view = await self.get(task_id)  # NotFoundError for unknown ids
            if view.status in ACTIVE:
                raise ConflictError(f"task {task_id} is not run by this process and cannot be cancelled here")
            raise ConflictError(f"task {task_id} has already ended ({view.status})", status=view.status)
        if entry.task.done() or entry.handle.view.status not in ACTIVE:
            raise ConflictError(
                f"task {task_id} has already ended ({entry.handle.view.status})", status=entry.handle.view.status
            )
        if entry.finishing:
            raise ConflictError(
                f"task {task_id} is ending; its outcome is being recorded", status=entry.handle.view.status
            )
        entry.cancel_reason = reason
        entry.task.cancel()
        await asyncio.wait([entry.task])
        return entry.handle.view

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel every task this process runs and wait (bounded) until each has recorded its end."""
        self._closing = True
        running = [e for e in self._entries.values() if e.task is not None and not e.task.done()]
        for entry in running:
            entry.cancel_reason = "the service is shutting down"
            assert entry.task is not None
            entry.task.cancel()
        if running:
            tasks = [e.task for e in running if e.task is not None]
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                # Still recording their end (the database is away): the next start closes them
                # as interrupted. Cancel them so nothing outlives the pool.
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
                log.warning("task_end_not_recorded_on_shutdown", count=len(pending))
            log.info("tasks_cancelled_on_shutdown", count=len(running))
