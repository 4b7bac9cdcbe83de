"""Everything the running service holds, opened together and closed in reverse order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from service.auth.accounts import Accounts
from service.auth.limiter import LoginLimiter
from service.auth.passwords import PasswordHasher
from service.collection.collector import Collector
from service.collection.configs import Configs
from service.collection.jobs import CollectionJobs
from service.collection.registry import TaskRegistry
from service.collection.scheduler import Scheduler
from service.collection.startup import DatabaseStart
from service.cpu_turns import CpuTurns
from service.db import execution_logs as execution_logs_db
from service.db.health import HealthProbe
from service.db.migrate import migrate_if_behind
from service.db.pool import Pool, connection, create_pool
from service.exchanges.base import ExchangeClient
from service.exchanges.binance import BinanceClient
from service.exchanges.limiter import WeightLimiter
from service.logging import get_logger
from service.loop_monitor import LoopMonitor
from service.settings import Settings

__all__ = ["Runtime", "open_runtime"]

log = get_logger(__name__)

#: How long start-up waits for the first attempt at the database work before serving without it.
_FIRST_ATTEMPT_SECONDS = 2.0


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    pool: Pool
    exchanges: Mapping[str, ExchangeClient]
    """Exchange name → its client; everything above exchanges/ speaks to them through the protocol."""
    registry: TaskRegistry
    collector: Collector
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


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    dsn: str,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[Runtime]:
    """Pool, HTTP session, exchange client, registry; then, in the background once the database answers
    (`DatabaseStart`), migrations, recovery of interrupted tasks, the symbol refresh and the scheduler.

    `clock` (epoch seconds) and `sleep` drive every time decision (weight windows, history, open
    candles); tests pass a faster or fixed clock.
    """
    # Nothing here waits for the database: with it down the process still serves /health (503).
    pool = await create_pool(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max, connect_now=False)
    health = HealthProbe(dsn)
    try:
        # One session for the app's life; the limiter, not the connector, bounds concurrency.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.binance_max_concurrency),
            headers={"User-Agent": "kline-collector"},
        ) as session:
            cpu = CpuTurns()
            limiter = WeightLimiter(
                limit=settings.binance_weight_limit or settings.binance_weight_fallback,
                margin=settings.binance_weight_margin,
                max_concurrency=settings.binance_max_concurrency,
                clock=clock,
                sleep=sleep,
            )
            client = BinanceClient(
                session, limiter,
                base_url=settings.binance_api_url,
                timeout=settings.binance_timeout,
                retry_attempts=settings.binance_retry_attempts,
                retry_wait_initial=settings.binance_retry_wait,
                weight_limit_override=settings.binance_weight_limit,
                cpu=cpu,
            )
            registry = TaskRegistry(
                pool, max_concurrent=settings.max_concurrent_tasks, cleanup_delay=settings.task_cleanup_delay
            )
            collector = Collector(
                pool, client, history_candles=settings.default_history_candles, pages_ahead=settings.pages_ahead,
                max_connections=settings.db_write_connections,
                cpu=cpu,
                db_retry_seconds=settings.db_retry_seconds,
                clock=clock,
            )
            jobs = CollectionJobs(pool, client, registry, collector, clock=clock)
            scheduler = Scheduler(pool, jobs, settings, clock=clock, sleep=sleep)
            login_limiter = LoginLimiter(pool, key=(settings.secret_key or "").encode())
            accounts = Accounts(pool, PasswordHasher(), login_limiter)
            loop_monitor = LoopMonitor()

            async def start_with_database() -> None:
                # Repeated whole after a failure: every step up to the symbol refresh is idempotent.
                await migrate_if_behind(dsn)
                await registry.recover()
                async with connection(pool) as conn:
                    await execution_logs_db.close_interrupted(conn, at=datetime.fromtimestamp(clock(), UTC))
                # Learn the exchange's symbols and weight limit without holding up start-up.
                await jobs.start_symbol_refresh()
                if settings.scheduler_enabled:
                    await scheduler.start()
                if settings.admin_email is not None and settings.admin_password is not None:
                    accounts.start_bootstrap(settings.admin_email, settings.admin_password)

            runtime = Runtime(
                settings, pool, {client.name: client}, registry, collector, jobs, scheduler, clock, loop_monitor,
                health,
                accounts=accounts,
                configs=Configs(
                    pool, jobs, scheduler, min_interval_minutes=settings.min_interval_minutes, clock=clock
                ),
                database_start=DatabaseStart(start_with_database),
            )
            loop_monitor.start()
            runtime.database_start.start()
            # With the database up, start-up is complete before the first request; with it down (or
            # slow to answer), the process serves /health meanwhile.
            await runtime.database_start.wait_first_attempt(timeout=_FIRST_ATTEMPT_SECONDS)
            try:
                yield runtime
            finally:
                await runtime.database_start.stop()
                await accounts.close()
                await loop_monitor.stop()
                await scheduler.stop()
                await registry.shutdown()
                await client.aclose()  # a limit refresh in flight must not outlive the session
    finally:
        await health.close()
        await asyncio.wait_for(pool.close(), timeout=5)
