"""Everything the running service holds, opened together and closed in reverse order."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.auth.accounts import HOW_TO_GET_AN_ADMIN, Accounts
from service.auth.limiter import LoginLimiter
from service.auth.passwords import PasswordHasher
from service.collection.collector import Collector
from service.cpu_turns import CpuTurns
from service.db.health import HealthProbe
from service.db.listener import Listener
from service.db.migrate import migrate_if_behind
from service.db.pool import Pool, create_pool
from service.db.recent import Recent
from service.exchanges.clients import make_client, make_stream
from service.exchanges.venue_set import VenueSet
from service.exchanges.venues import VENUES
from service.logging import get_logger
from service.loop_monitor import LoopMonitor
from service.metrics import Metrics
from service.process.events import EVENTS_CHANNEL, EventHub
from service.process.live import LiveStreams
from service.process.startup import DatabaseStart
from service.process.weight_budget import shared_budgets
from service.settings import Settings
from service.tasks.configs import Configs
from service.tasks.jobs import CollectionJobs
from service.tasks.registry import TaskRegistry
from service.tasks.runner import TaskRunner
from service.tasks.scheduler import Scheduler

__all__ = ["Runtime", "open_runtime"]

log = get_logger(__name__)

#: How long start-up waits for the first attempt at the database work before serving without it.
_FIRST_ATTEMPT_SECONDS = 2.0
#: Of SHUTDOWN_GRACE_SECONDS, what is kept for the rest of shutdown (HTTP connections, the pool,
#: an embedded PostgreSQL) after the running tasks have been handed back.
_SHUTDOWN_RESERVE_SECONDS = 5.0


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    pool: Pool
    exchanges: VenueSet
    """Venue id → its client, for the enabled venues; everything above exchanges/ speaks to them
    through the protocol."""
    registry: TaskRegistry
    jobs: CollectionJobs
    scheduler: Scheduler
    clock: Callable[[], float]
    """Epoch seconds; every time decision goes through it (tests drive it)."""
    loop_monitor: LoopMonitor
    health: HealthProbe
    """/health's own database check: one connection outside the pool, so load cannot starve it."""
    accounts: Accounts
    """Users: login (and its limiter), the start-up admin."""
    configs: Configs
    """Collection configs: their rules and schedule (the admin API's configs routes call it)."""
    database_start: DatabaseStart
    """The start-up work that needs the database, retried in the background until it is reachable."""
    runner: TaskRunner | None
    """Claims and runs tasks in this process (None: an API-only web process, WEB_RUNS_TASKS=false)."""
    events: EventHub
    """Task and execution-log changes from every process, for /api/v1/events (web processes)."""
    metrics: Metrics
    """This process's Prometheus registry and metrics, for /metrics."""
    status_reads: Recent[Any]
    """GET /status's database reads, shared for up to a second (refreshed in the background after a
    quarter), trusted only while the listener listens (its connection drops with the database)."""
    live: LiveStreams
    """The live configs' streams this process runs (a process that runs tasks takes a venue's
    streams when no peer has them)."""


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    dsn: str,
    *,
    runs_tasks: bool = True,
    kind: str = "web",
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[Runtime]:
    """Pool, HTTP session, exchange client, registry; then, in the background once the database answers
    (`DatabaseStart`), migrations and, when this process `runs_tasks`, the task runner (it takes back
    the tasks of dead peers) and the scheduler.

    `clock` (epoch seconds) and `sleep` drive every time decision (weight windows, history, open
    candles); tests pass a faster or fixed clock.
    """
    # Nothing here waits for the database: with it down the process still serves /health (503).
    pool = await create_pool(
        dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max, connect_now=False,
        statement_cache_size=settings.db_statement_cache_size,
    )
    health = HealthProbe(dsn, statement_cache_size=settings.db_statement_cache_size)
    try:
        # One session for the app's life; the limiter, not the connector, bounds concurrency.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=sum(v.max_concurrency for v in settings.venues.values())),
            headers={"User-Agent": "kline-collector"},
        ) as session:
            cpu = CpuTurns()
            metrics = Metrics()
            # WEIGHT_BUDGET_SCOPE=shared: one budget per venue for every process on this database (one egress IP).
            budgets = shared_budgets(settings, pool)
            venues = VenueSet({
                venue: make_client(
                    VENUES[venue], session, venue_settings, cpu=cpu, observer=metrics, shared=budgets,
                    clock=clock, sleep=sleep,
                )
                for venue, venue_settings in settings.venues.items()
            })
            registry = TaskRegistry(pool, worker_id=uuid.uuid4(), cleanup_delay=settings.task_cleanup_delay)
            write_slots = asyncio.Semaphore(settings.db_write_connections)  # shared by every venue's collector
            collectors = {
                venue: Collector(
                    pool, client, history_candles=settings.default_history_candles, pages_ahead=settings.pages_ahead,
                    max_connections=settings.db_write_connections,
                    cpu=cpu,
                    db_retry_seconds=settings.db_retry_seconds,
                    clock=clock,
                    metrics=metrics,
                    connections=write_slots,
                )
                for venue, client in venues.items()
            }
            live = LiveStreams(
                dsn, pool, venues,
                {
                    venue: make_stream(VENUES[venue], venue_settings, venues[venue])
                    for venue, venue_settings in settings.venues.items()
                },
                collectors, session, statement_cache_size=settings.db_statement_cache_size, clock=clock,
                metrics=metrics,
            )
            jobs = CollectionJobs(
                pool, venues, registry, collectors, clock=clock,
                recheck_gaps_after_seconds=settings.exchange_gap_recheck_after,
            )
            scheduler = Scheduler(
                pool, jobs, settings, worker_id=registry.worker_id, clock=clock, sleep=sleep, metrics=metrics
            )
            # One LISTEN connection for the process: task events wake the runner; web processes
            # also relay every change to the event stream.
            listener = Listener(dsn)
            events = EventHub()
            if kind == "web":
                listener.subscribe(EVENTS_CHANNEL, events.notified)
            runner = (
                TaskRunner(
                    pool, listener, registry, jobs.body_for, kind=kind, max_concurrent=settings.max_concurrent_tasks,
                    lease_seconds=settings.lease_seconds, poll_seconds=settings.task_poll_seconds,
                    # Config changes made through another process wake this scheduler too.
                    on_notification=scheduler.notify_changed,
                )
                if runs_tasks
                else None
            )
            login_limiter = LoginLimiter(pool, key=(settings.secret_key or "").encode())
            accounts = Accounts(pool, PasswordHasher(), login_limiter)
            if kind == "web":  # token checks keep accounts in memory, dropped on every change to one
                accounts.follow_changes(listener)
            loop_monitor = LoopMonitor()

            async def start_with_database() -> None:
                # Repeated whole after a failure: every step up to the symbol refresh is idempotent.
                await migrate_if_behind(dsn, statement_cache_size=settings.db_statement_cache_size)
                if runner is not None:
                    if not runner.is_running:
                        await runner.start()
                    live.start()
                    refreshing = False
                    if settings.scheduler_enabled and not scheduler.is_running:
                        refreshing = await scheduler.start()
                    if not refreshing:  # the symbol refresh teaches the weight limit; else learn it here
                        for client in venues.values():
                            client.refresh_limits_soon()
                if settings.admin_email is not None and settings.admin_password is not None:
                    accounts.start_bootstrap(settings.admin_email, settings.admin_password)
                elif not await accounts.admin_exists():  # a first run: say how to get in, where one looks
                    log.warning("no_admin_account", how=HOW_TO_GET_AN_ADMIN)

            runtime = Runtime(
                settings, pool, venues, registry, jobs, scheduler, clock, loop_monitor,
                health,
                accounts=accounts,
                configs=Configs(
                    pool, jobs, scheduler, min_interval_minutes=settings.min_interval_minutes, clock=clock
                ),
                database_start=DatabaseStart(start_with_database),
                runner=runner,
                events=events,
                metrics=metrics,
                status_reads=Recent(refresh_after=0.25, max_age=1.0, trusted=lambda: listener.listening),
                live=live,
            )
            listener.start()
            loop_monitor.start()
            runtime.database_start.start()
            # With the database up, start-up is complete before the first request; with it down (or
            # slow to answer), the process serves /health meanwhile.
            await runtime.database_start.wait_first_attempt(timeout=_FIRST_ATTEMPT_SECONDS)
            # Everything start-up made (modules, the app, its routes: ~100k objects) lives as long as
            # the process: out of the collector's sight, each collection no longer walks it again. A
            # full collection took 20-50 ms, a pause in every request and page of its moment.
            gc.freeze()
            try:
                yield runtime
            finally:
                events.close()
                await runtime.status_reads.close()
                await runtime.database_start.stop()
                await accounts.close()
                await loop_monitor.stop()
                await scheduler.stop()
                await live.stop()  # its locks go with their connections: a peer takes over at once
                if runner is not None:
                    await runner.stop(grace=max(settings.shutdown_grace_seconds - _SHUTDOWN_RESERVE_SECONDS, 1.0))
                await listener.stop()
                for client in venues.values():
                    await client.aclose()  # a limit refresh in flight must not outlive the session
    finally:
        await health.close()
        await asyncio.wait_for(pool.close(), timeout=5)
