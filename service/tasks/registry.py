"""Task registry: tasks are durable rows; this process runs the ones it claimed, bounded and cancellable.

The database is the record: every task is a row from submission on (type and params: all it needs to
run, in any process), overlap between active tasks is checked there under an advisory lock, and a
task's end is written there. A `TaskRunner` (service/tasks/runner.py) claims pending rows and
hands them to `run()`; memory holds the tasks this process runs (their asyncio task and live
progress) and finished ones for TASK_CLEANUP_DELAY. Every write of a running task is fenced by this
process's worker id, so a process whose tasks were taken back (it was presumed dead) cannot overwrite
the run that replaced it.
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

from service.collection.collector import SeriesProgress
from service.db import execution_logs as logs_db
from service.db import tasks as tasks_db
from service.db.pool import Connection, Pool, Row, connection, retrying
from service.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from service.logging import get_logger
from service.tasks.records import TaskParams, TaskResult, task_params_from_json, task_result_from_json

__all__ = ["TaskBody", "TaskHandle", "TaskOutcome", "TaskRegistry", "TaskView"]

log = get_logger(__name__)

TaskStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"pending", "running"})
# Progress is written to the database at most this often per task (and always at the end).
_PERSIST_EVERY = 1.0
# How long a cancel through a process that does not run the task waits for its owner to stop it.
_REMOTE_CANCEL_WAIT = 5.0
_REMOTE_CANCEL_POLL = 0.05


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
    worker_id: uuid.UUID | None = None
    """The process running it (running tasks only)."""
    attempts: int = 0
    """How many times a process has started it (more than one: it was resumed)."""
    eta_seconds: float | None = None
    """A running collection's estimated seconds to completion, from its measured throughput."""

    @classmethod
    def from_record(cls, row: Row) -> TaskView:
        return cls(
            task_id=row["id"], task_type=row["task_type"], status=row["status"], progress=row["progress"],
            message=row["message"], created_at=row["created_at"], started_at=row["started_at"],
            completed_at=row["completed_at"], error=row["error"],
            result=task_result_from_json(row["task_type"], row["result"]), params=task_params_from_json(row["params"]),
            worker_id=row["worker_id"], attempts=row["attempts"], eta_seconds=row["eta_seconds"],
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
        self.handing_back: str | None = None
        """Set when the body is being stopped to hand the task back (shutdown): why, for its logs."""
        self.series: list[SeriesProgress] = []
        """A collection's live progress per series (in memory only; the `collect` command draws it)."""
        self.result_so_far: TaskResult | None = None
        """Set by a body that was cancelled: what it had done, recorded as the cancelled task's result."""

    @property
    def task_id(self) -> uuid.UUID:
        return self.view.task_id

    async def report(self, progress: int, message: str, *, eta_seconds: float | None = None) -> None:
        """Update live progress; written through to the database at most once a second."""
        self.view.progress = max(self.view.progress, min(progress, 100))
        if message:
            self.view.message = message
        if eta_seconds is not None:
            self.view.eta_seconds = round(eta_seconds, 1)
        now = time.monotonic()
        if now - self._persisted_at >= _PERSIST_EVERY:
            self._persisted_at = now
            # Progress is a hint: losing one write must never fail the task (the end is recorded
            # with retries, and the live view is in memory).
            try:
                async with connection(self._registry.pool) as conn:
                    await tasks_db.update_progress(
                        conn, self.task_id, self._registry.worker_id, self.view.progress, self.view.message or "",
                        self.view.eta_seconds,
                    )
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
    def __init__(self, pool: Pool, *, worker_id: uuid.UUID, cleanup_delay: float) -> None:
        self.pool = pool
        self.worker_id = worker_id
        """This process's id in the workers table: the owner of the tasks it runs."""
        self._cleanup_delay = cleanup_delay
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._closing = False
        self._on_change: Callable[[], None] | None = None

    def on_change(self, wake: Callable[[], None]) -> None:
        """Call `wake` after each submission from this process and each end of a task it runs (the
        local runner claims at once, for the new task or into the freed slot)."""
        self._on_change = wake

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    @property
    def running_count(self) -> int:
        """Tasks this process runs (until each has recorded its end)."""
        return sum(1 for e in self._entries.values() if e.task is not None and not e.task.done())

    def runs(self, task_id: uuid.UUID) -> bool:
        entry = self._entries.get(task_id)
        return entry is not None and entry.task is not None and not entry.task.done()

    async def submit(
        self,
        task_type: str,
        *,
        params: TaskParams,
        series: Sequence[str] = (),
        message: str = "Waiting for a free slot",
        conn: Connection | None = None,
    ) -> TaskView:
        """Record a pending task for any process to claim; ConflictError if an active task collects one
        of `series`. With `conn`, inside its transaction (the scheduler's claim and submit are one)."""
        if self._closing:
            raise ConflictError("the service is shutting down; no new tasks are accepted")
        if conn is None:
            async with connection(self.pool) as own:
                view = await self._insert(own, task_type, params, series, message)
        else:
            view = await self._insert(conn, task_type, params, series, message)
        log.info("task_submitted", task_id=str(view.task_id), task_type=task_type)
        self._changed()
        return view

    async def _insert(
        self, conn: Connection, task_type: str, params: TaskParams, series: Sequence[str], message: str
    ) -> TaskView:
        task_id = uuid.uuid4()
        async with conn.transaction():
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
            await tasks_db.notify(conn, "submitted", task_id)
        return TaskView.from_record(row)

    def run(self, row: Row, body_for: Callable[[TaskView], TaskBody]) -> asyncio.Task[None]:
        """Run a task this process has just claimed (its row says running, owned by this worker); the
        returned asyncio task ends once the task's end is recorded."""
        entry = _Entry(TaskHandle(self, TaskView.from_record(row)))
        self._entries[entry.handle.task_id] = entry
        body = body_for(entry.handle.view)
        entry.task = asyncio.create_task(self._run(entry, body), name=f"{row['task_type']}:{row['id']}")
        return entry.task

    async def _run(self, entry: _Entry, body: TaskBody) -> None:
        view = entry.handle.view
        structlog.contextvars.bind_contextvars(task_id=str(view.task_id), task_type=view.task_type)
        status: TaskStatus
        log.info("task_started" if view.attempts <= 1 else "task_resumed", attempt=view.attempts)
        try:
            outcome = await body(entry.handle)
            status = outcome.status
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled here: the rest of this task is recording the end
            if entry.handle.handing_back is not None:
                entry.finishing = True
                await self._hand_back(entry, entry.handle.handing_back)
                return
            reason = entry.cancel_reason or "cancelled"
            status, outcome = "cancelled", TaskOutcome(
                status="completed", message=f"Cancelled: {reason}", result=entry.handle.result_so_far
            )
        except Exception as exc:
            log.exception("task_crashed")
            status = "failed"
            outcome = TaskOutcome(status="failed", message="Failed", error=f"{exc.__class__.__name__}: {exc}")
        entry.finishing = True
        await self._finish(view, status, outcome)
        log.info("task_finished", status=status, message=outcome.message)
        self._changed()

    async def _finish(self, view: TaskView, status: TaskStatus, outcome: TaskOutcome) -> None:
        """Record the end, retrying while the database is away; only then show it in memory.

        Memory never claims an end the row does not have: until the write lands, the task stays
        active for GET, for the overlap check (the row) and for cancel (409: it is ending).
        """
        completed_at = datetime.now(UTC)
        progress = 100 if status == "completed" else view.progress
        error = outcome.error if outcome.error is not None or status != "cancelled" else outcome.message

        async def record(conn: Connection) -> bool:
            async with conn.transaction():
                owned = await tasks_db.finish_task(
                    conn, view.task_id, self.worker_id, status=status, progress=progress, message=outcome.message,
                    result=None if outcome.result is None else msgspec.to_builtins(outcome.result),
                    error=error, completed_at=completed_at,
                )
                if owned:  # a log row the body could not close must not stay `running` for good
                    await logs_db.close_running_of_tasks(conn, [view.task_id], at=completed_at)
                return owned

        if not await retrying(self.pool, record, give_up_after=None):
            log.warning("task_taken_back", detail="peers resumed this task while this process was presumed dead")
            self._entries.pop(view.task_id, None)
            return
        view.status, view.completed_at, view.progress = status, completed_at, progress
        view.message, view.result, view.error = outcome.message, outcome.result, error
        view.eta_seconds = None
        asyncio.get_running_loop().call_later(self._cleanup_delay, self._entries.pop, view.task_id, None)

    async def _hand_back(self, entry: _Entry, message: str) -> None:
        """Return the task to `pending` for any process to resume; if the database is away, the
        lease does it instead (peers take back the tasks of a worker whose heartbeat stopped)."""
        view = entry.handle.view

        async def record(conn: Connection) -> bool:
            async with conn.transaction():
                owned = await tasks_db.hand_back(conn, view.task_id, self.worker_id, message)
                if owned:  # else a peer took it back already: the log rows open now are its run's
                    await logs_db.close_running_of_tasks(conn, [view.task_id], at=datetime.now(UTC), message=message)
                    await tasks_db.notify(conn, "pending", view.task_id)
                return owned

        try:
            await retrying(self.pool, record, give_up_after=2.0)
            log.info("task_handed_back", message=message)
        except DatabaseUnavailableError as exc:
            log.warning("task_not_handed_back", error=exc.detail, detail="peers take it back when the lease ends")
        view.status, view.message = "pending", message
        self._entries.pop(view.task_id, None)

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
        """Stop a pending or running task, wherever it runs; ConflictError if it has already ended.

        Run here: cancelled at once. Pending: cancelled in its row. Run by another process: a cancel
        request on its row (and a notification) that its owner acts on within a second or two; the
        answer waits for that, up to a few seconds.
        """
        entry = self._entries.get(task_id)
        if entry is not None and entry.task is not None:
            return await self._cancel_here(entry, reason)
        async with connection(self.pool) as conn, conn.transaction():
            if await tasks_db.cancel_pending(conn, task_id, reason):
                await tasks_db.notify(conn, "cancelled", task_id)
                requested = False
            elif await tasks_db.request_cancel(conn, task_id, reason):
                await tasks_db.notify(conn, "cancel", task_id)
                requested = True
            else:
                view = await self.get(task_id)  # NotFoundError for unknown ids
                raise ConflictError(f"task {task_id} has already ended ({view.status})", status=view.status)
        log.info("task_cancel_requested" if requested else "task_cancelled", task_id=str(task_id), reason=reason)
        deadline = time.monotonic() + _REMOTE_CANCEL_WAIT
        while True:
            view = await self.get(task_id)
            if view.status not in ACTIVE or time.monotonic() >= deadline:
                return view
            await asyncio.sleep(_REMOTE_CANCEL_POLL)

    async def _cancel_here(self, entry: _Entry, reason: str) -> TaskView:
        assert entry.task is not None
        view = entry.handle.view
        if entry.task.done() or view.status not in ACTIVE:
            raise ConflictError(f"task {view.task_id} has already ended ({view.status})", status=view.status)
        if entry.finishing:
            raise ConflictError(f"task {view.task_id} is ending; its outcome is being recorded", status=view.status)
        entry.cancel_reason = reason
        entry.task.cancel()
        await asyncio.wait([entry.task])
        return view

    def cancel_requested(self, task_id: uuid.UUID, reason: str) -> None:
        """A cancel request for a task this process runs came in through another process."""
        entry = self._entries.get(task_id)
        if entry is None or entry.task is None or entry.task.done() or entry.finishing:
            return
        entry.cancel_reason = reason
        entry.task.cancel()

    async def hand_back_all(self, message: str, grace: float) -> None:
        """Stop every task this process runs and hand each back (pending) for a peer, or this process
        after a restart, to resume; waits up to `grace` seconds. No new task is accepted meanwhile."""
        self._closing = True
        running = [e for e in self._entries.values() if e.task is not None and not e.task.done()]
        for entry in running:
            if not entry.finishing:
                entry.handle.handing_back = message
                assert entry.task is not None
                entry.task.cancel()
        if not running:
            return
        tasks = [e.task for e in running if e.task is not None]
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            # Still recording (the database is away): the lease hands them to a peer instead.
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
            log.warning("task_end_not_recorded_on_shutdown", count=len(pending))
        log.info("tasks_handed_back_on_shutdown", count=len(running))

    async def abandon_all(self) -> None:
        """Peers declared this process dead and took its tasks back: stop running them here (their
        writes are fenced and would be refused anyway)."""
        running = [e for e in self._entries.values() if e.task is not None and not e.task.done()]
        for entry in running:
            entry.handle.handing_back = "Interrupted: its process lost its lease; a peer resumes it"
            assert entry.task is not None
            entry.task.cancel()
        if running:
            await asyncio.wait([e.task for e in running if e.task is not None], timeout=5.0)
            log.warning("tasks_abandoned_after_lost_lease", count=len(running))
