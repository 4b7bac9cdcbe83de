"""The scheduler: one asyncio loop that runs each enabled collection config every interval_minutes.

The schedule lives in the database (`data_collection_configs.next_run_at`, and `periodic_runs` for
the symbol refresh and retention); the loop keeps nothing but a wake-up event. Every process that
runs tasks runs this loop. Each turn it claims the configs that are due with a conditional UPDATE
and submits the run in the same transaction, so across all processes each due time is run exactly
once, and a run is never claimed without its task (nor by a process whose worker row its peers
removed: the claim is fenced by it). Then it sleeps until the next due time, or until an API change
wakes it. A run whose series are still being collected (a previous run, or a manual start) is skipped
and logged as `skipped`. After downtime a missed run happens once, promptly: the next due time
is moved forward past "now" rather than replaying every missed tick.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec

from service.db import configs as configs_db
from service.db import execution_logs as logs_db
from service.db import periodic as periodic_db
from service.db import tasks as tasks_db
from service.db.pool import Connection, Pool, connection
from service.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from service.logging import get_logger
from service.metrics import Metrics
from service.settings import Settings
from service.tasks.jobs import DATA_COLLECTION, SCHEDULED_DATA_COLLECTION, CollectionJobs, ConfigRun
from service.tasks.registry import TaskView

__all__ = ["Scheduler", "SchedulerState"]

log = get_logger(__name__)

RETENTION_EVERY = timedelta(days=1)
_SYMBOL_REFRESH = "symbol_refresh"
_GAP_REPAIR = "gap_repair"
_RETENTION = "retention"
RETENTION_BATCH = 1000
# Upper bound on one sleep, so a change made by another process is noticed within it.
_MAX_SLEEP = 60.0


class SchedulerState(msgspec.Struct, frozen=True):
    is_running: bool
    next_run_at: datetime | None
    next_symbol_refresh_at: datetime | None
    next_retention_at: datetime | None


class Scheduler:
    def __init__(
        self,
        pool: Pool,
        jobs: CollectionJobs,
        settings: Settings,
        *,
        worker_id: uuid.UUID,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._metrics = metrics
        self._settings = settings
        self._worker_id = worker_id
        self._clock = clock
        self._sleep = sleep
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._next_refresh: datetime | None = None
        self._next_retention: datetime | None = None
        self._next_repair: datetime | None = None
        self._next_run: datetime | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def is_running(self) -> bool:
        """True while the scheduling loop runs in this process."""
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def state(self) -> SchedulerState:
        return SchedulerState(
            is_running=self.is_running,
            next_run_at=self._next_run,
            next_symbol_refresh_at=self._next_refresh,
            next_retention_at=self._next_retention,
        )

    def notify_changed(self) -> None:
        """The schedule may have changed (a notification came in): re-read it now."""
        self._changed.set()

    async def changed(self) -> None:
        """A config was created, updated, enabled, disabled or deleted here: re-read the schedule now,
        in this process and, through a notification, in every other one."""
        self._changed.set()
        try:
            async with connection(self._pool) as conn:
                await tasks_db.notify(conn, "configs", "changed")
        except DatabaseUnavailableError as exc:  # the change is stored; peers notice within a minute
            log.warning("schedule_change_not_broadcast", error=exc.detail)

    async def start(self) -> bool:
        """Run a first turn now (whatever is due: on a first start, the symbol refresh), then start the
        loop. True if that turn submitted a symbol refresh (which also teaches the weight limit)."""
        refreshed = await self._turn()
        self._loop_task = asyncio.create_task(self._run_loop(), name="scheduler")
        log.info("scheduler_started")
        return refreshed

    async def stop(self) -> None:
        """Stop the loop (runs already submitted belong to the registry, which stops them)."""
        self._stopping.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            log.info("scheduler_stopped")

    async def trigger(self, config_id: int) -> TaskView:
        """Run a config now as a task; NotFoundError if unknown, ConflictError if its run is active."""
        async with connection(self._pool) as conn:
            config = await configs_db.get_config(conn, config_id)
        if config is None:
            raise NotFoundError(f"no collection config with id {config_id}")
        return await self._jobs.start_config_run(ConfigRun.from_record(config), task_type=DATA_COLLECTION)

    async def _run_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._turn()
            except DatabaseUnavailableError as exc:
                # The database is away: try again shortly rather than die.
                log.error("scheduler_turn_failed", error=str(exc))
                await self._wait(5.0)
                continue
            except Exception:
                # A bug must not silently end scheduling for the life of the process.
                log.exception("scheduler_turn_crashed")
                await self._wait(5.0)
                continue
            await self._wait(self._seconds_to_next())

    async def _turn(self) -> bool:
        """One pass over what is due; True if it submitted a symbol refresh."""
        now = self.now()
        await self._run_due_configs(now)
        refresh_every = timedelta(seconds=self._settings.symbol_refresh_interval)
        refreshed = await self._claim_periodic(_SYMBOL_REFRESH, now, now + refresh_every)
        if refreshed:
            refreshed = await self._refresh_symbols()
        if await self._claim_periodic(_RETENTION, now, now + RETENTION_EVERY):
            await self.apply_retention(now)
        repair_every = timedelta(seconds=self._settings.gap_repair_interval)
        if self._next_repair is None:
            # The first repair comes one interval after the service first started, not at once: a
            # fresh service has nothing to repair, and a restart must not trigger one.
            async with connection(self._pool) as conn:
                await periodic_db.schedule_first(conn, _GAP_REPAIR, now + repair_every)
        if await self._claim_periodic(_GAP_REPAIR, now, now + repair_every):
            await self._repair_gaps()
        async with connection(self._pool) as conn:
            self._next_run = await configs_db.next_due_at(conn)
            self._next_refresh = await periodic_db.next_periodic(conn, _SYMBOL_REFRESH)
            self._next_retention = await periodic_db.next_periodic(conn, _RETENTION)
            self._next_repair = await periodic_db.next_periodic(conn, _GAP_REPAIR)
        return refreshed

    async def _claim_periodic(self, name: str, now: datetime, next_at: datetime) -> bool:
        async with connection(self._pool) as conn:
            return await periodic_db.claim_periodic(conn, name, now=now, next_run_at=next_at)

    async def _run_due_configs(self, now: datetime) -> None:
        async with connection(self._pool) as conn:
            due = await configs_db.due_configs(conn, now)
        for record in due:
            config = ConfigRun.from_record(record)
            assert config.interval_minutes is not None  # live configs are never due
            interval = timedelta(minutes=config.interval_minutes)
            due_at: datetime = record["next_run_at"]
            # Keep the cadence, but never replay ticks missed while the service was down.
            next_at = due_at + interval
            if next_at <= now:
                next_at = now + interval
            async with connection(self._pool) as conn, conn.transaction():
                claimed = await configs_db.claim_due_run(
                    conn, config.id, due_at=due_at, next_run_at=next_at, started_at=now, worker_id=self._worker_id
                )
                if not claimed:
                    continue  # another process took it, or the config changed meanwhile
                try:
                    await self._jobs.start_config_run(config, task_type=SCHEDULED_DATA_COLLECTION, conn=conn)
                    if self._metrics is not None:
                        self._metrics.scheduled_run_submitted((now - due_at).total_seconds())
                except ConflictError as exc:
                    await logs_db.insert_skipped(
                        conn, job_name=config.job_name, job_type=SCHEDULED_DATA_COLLECTION,
                        symbol=config.symbol, exchange=config.exchange,
                        reason=f"previous run still active: {exc.detail}", at=now,
                    )
                    log.info("scheduled_run_skipped", job_name=config.job_name, reason=exc.detail)

    async def _refresh_symbols(self) -> bool:
        """A symbol refresh task per venue (each venue's own: one that does not answer leaves the
        others working); True if one was submitted."""
        submitted = False
        for exchange in self._jobs.venues:
            try:
                await self._jobs.start_symbol_refresh(exchange)
                submitted = True
            except ConflictError:
                log.info("symbol_refresh_skipped", exchange=exchange, reason="a refresh is already running")
        return submitted

    async def _repair_gaps(self) -> None:
        tasks, skipped = await self._jobs.start_repairs()
        log.info("gap_repairs_submitted", tasks=len(tasks), skipped=sorted(skipped))

    async def apply_retention(self, now: datetime) -> tuple[int, int]:
        """Delete execution logs and finished tasks older than LOG_RETENTION_DAYS, in bounded batches."""
        cutoff = now - timedelta(days=self._settings.log_retention_days)
        logs = await self._delete_in_batches(logs_db.delete_logs_before, cutoff)
        tasks = await self._delete_in_batches(tasks_db.delete_finished_before, cutoff)
        log.info("retention_applied", cutoff=cutoff.isoformat(), logs_deleted=logs, tasks_deleted=tasks)
        return logs, tasks

    async def _delete_in_batches(
        self, delete: Callable[[Connection, datetime, int], Awaitable[int]], cutoff: datetime
    ) -> int:
        """One short transaction per batch, so retention never holds long locks."""
        total = 0
        while True:
            async with connection(self._pool) as conn:
                deleted = await delete(conn, cutoff, RETENTION_BATCH)
            total += deleted
            if deleted < RETENTION_BATCH:
                return total

    def _seconds_to_next(self) -> float:
        now = self.now()
        candidates = [
            t for t in (self._next_run, self._next_refresh, self._next_retention, self._next_repair) if t is not None
        ]
        if not candidates:
            return _MAX_SLEEP
        return min(max((min(candidates) - now).total_seconds(), 0.0), _MAX_SLEEP)

    async def _wait(self, seconds: float) -> None:
        """Sleep (on the injected clock) until `seconds` pass or a change wakes us."""
        if seconds <= 0 and not self._changed.is_set():
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.create_task(self._changed.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
        self._changed.clear()
