"""/api/v1/data-collector: start collections, watch and cancel tasks, status and latest prices."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api.deps import JobsDep, PoolDep, RegistryDep, RuntimeDep
from service.api.enums import ExchangeChoice, TaskReplyStatus, TaskReplyStatusName, TaskStatusName, TaskTypeName
from service.api.openapi import DocumentedAs, error_responses
from service.api.schemas import Schema, SymbolName, TimeframeText, ms_to_datetime, text_query
from service.auth.guards import BEARER_SECURITY, requires_admin, requires_reader
from service.db import configs as configs_db
from service.db import klines as klines_db
from service.db import symbols as symbols_db
from service.db import workers as workers_db
from service.db.pool import connection
from service.errors import InvalidInputError
from service.exchanges.grid import Timeframe, TimeframeName
from service.exchanges.venues import DEFAULT_VENUE
from service.loop_monitor import LoopLag
from service.tasks.jobs import DATA_COLLECTION, SCHEDULED_DATA_COLLECTION, SYMBOL_REFRESH, CollectionJobs
from service.tasks.records import TaskParams, TaskResult
from service.tasks.registry import TaskView

__all__ = ["DataCollectorController", "TaskReply"]

DEFAULT_TIMEFRAMES = ["1m", "5m", "15m", "1h", "4h", "1d"]
#: Symbols one /start may name: more is a collection the exchange's weight budget takes hours to serve.
MAX_START_SYMBOLS = 1000


class StartCollection(Schema):
    symbols: Annotated[list[SymbolName], msgspec.Meta(max_length=MAX_START_SYMBOLS)]
    """Symbols in any spelling: as the venue names them (BTCUSDT, BTC-USDT, XBTUSD) or unified as
    BASE/QUOTE (BTC/USDT; perpetuals BTC/USDT:USDT); repeats count once."""
    timeframes: Annotated[list[TimeframeText], msgspec.Meta(max_length=len(Timeframe))] | None = None
    """Unified timeframe names the venue serves (GET /api/v1/exchanges lists each venue's set; Binance
    spot: 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M). Absent: those of 1m 5m 15m 1h 4h 1d
    the venue serves."""
    exchange: ExchangeChoice = DEFAULT_VENUE
    """The venue to collect from."""
    start: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Where the history starts: "listing" (the symbol's first candle on the exchange) or an ISO 8601
    time (2023-01-01, 2023-01-01T00:00:00Z). Every candle from there on that the coverage ledger does
    not hold as verified (or as an exchange gap) is fetched. Absent: each series resumes where it ends
    (a new one starts DEFAULT_HISTORY_CANDLES back)."""
    end: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Where it ends (exclusive), ISO 8601; needs `start`. Absent: up to now, the open candle included."""


class RepairRequest(Schema):
    symbol: SymbolName | None = None
    """One symbol to repair (any spelling); absent: every enabled config whose symbol trades."""
    timeframes: Annotated[list[TimeframeText], msgspec.Meta(max_length=len(Timeframe))] | None = None
    """The symbol's timeframes to repair; absent: its config's."""
    exchange: ExchangeChoice | None = None
    """The symbol's venue (default: binance); without a symbol, absent means every venue."""


class RepairReply(Schema):
    """The gap repairs submitted: one task per symbol."""

    task_ids: list[uuid.UUID]
    skipped: dict[str, str]
    """Per symbol left out (its series are being collected right now), why; the next repair takes it."""
    message: str


class SeriesPlanOut(Schema):
    """What a collection would do for one series, computed without fetching candles."""

    symbol: str
    timeframe: TimeframeName
    start: datetime | None
    """First candle the run covers (null: the exchange has no candles for the series)."""
    end: datetime | None
    """End of the range (exclusive); an open-ended run also takes the candle open now."""
    listing_start: datetime | None
    """The series' first candle on the exchange (null: not asked: a run without `start` does not need it)."""
    candles_stored: int
    """Candles of the range already in the database."""
    candles_to_fetch: int
    """Candle slots the run will ask for (those the ledger does not hold as verified or as exchange gaps)."""
    requests: int
    """Requests to the exchange (plus one per exchange gap found, to confirm it)."""
    request_weight: int
    unavailable_until: datetime | None = None
    """The range asked for reaches further back than the venue serves (Kraken: its 720 most recent
    candles): the candles before this time cannot be fetched, are not planned, and show as
    `unavailable` in /coverage (null: the whole range is reachable)."""


class PlanReply(Schema):
    series: list[SeriesPlanOut]
    candles_stored: int
    candles_to_fetch: int
    requests: int
    request_weight: int
    weight_budget_per_minute: int | None
    """The weight this service spends per minute on the venue (null: not learnt yet)."""
    estimated_seconds: float | None
    """How long the venue's limit makes the run take: what is left of this window is spent at once,
    then one budget per window (null: budget unknown; 0: this window's budget covers it, and the
    venue's latency sets the pace). Running tasks report `eta_seconds` from their measured throughput."""
    window_seconds: float = 60.0
    """The window the venue counts its limit in (Binance a minute, Bybit 5 s, OKX 2 s, Coinbase and
    Kraken 1 s)."""


class TaskReply(Schema):
    """What submitting a task (start, refresh, trigger) or cancelling one answers."""

    task_id: uuid.UUID
    status: TaskReplyStatusName
    message: str


class TaskOut(Schema):
    task_id: uuid.UUID
    task_type: TaskTypeName
    status: TaskStatusName
    progress: int
    message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    result: Annotated[Any, DocumentedAs(TaskResult | None)]
    """Per series for a collection, the symbol count for a refresh; null until the task ends (and after a cancel)."""
    params: TaskParams
    eta_seconds: float | None = None
    """Running collections: estimated seconds to completion, from the throughput measured so far."""


class TaskList(Schema):
    tasks: list[TaskOut]
    count: int


class CollectorStatus(Schema):
    symbols_count: int
    timeframes: list[TimeframeName]
    available_symbols: list[str]


class TaskCounts(Schema):
    """How many tasks are in each status."""

    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int


class TaskStats(Schema):
    task_counts: TaskCounts
    active_tasks_count: int
    data_collector_status: CollectorStatus


class SchedulerStatus(Schema):
    is_running: bool
    collection_interval: int | None
    """Shortest interval of the enabled configs, in seconds (None: nothing scheduled)."""
    symbol_refresh_interval: int
    data_collection_running: bool
    active_tasks_count: int
    scheduler_task_types: list[TaskTypeName]
    scheduled_configs: int
    next_run_at: datetime | None
    next_symbol_refresh_at: datetime | None


class LimiterOut(Schema):
    weight_limit: int | None
    weight_budget: int | None
    weight_used_this_minute: int
    paused_until: float | None
    paused_reason: str | None


class WorkerOut(Schema):
    """A live process that runs tasks (and, unless SCHEDULER_ENABLED=false, the schedule)."""

    worker_id: uuid.UUID
    kind: Literal["web", "worker", "cli"]
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    running_tasks: int


class ServiceStatus(Schema):
    is_running: bool
    exchange: ExchangeChoice
    symbols_count: int
    active_tasks: int
    collection_interval: int | None
    symbols: list[str]
    scheduler_status: SchedulerStatus
    rate_limiter: LimiterOut
    event_loop_lag_ms: LoopLag
    """How late the event loop woke a 50 ms sleep over the last minute: a blocked loop shows here."""
    workers: list[WorkerOut] = msgspec.field(default_factory=list)
    """Every live process that claims tasks, across the service (this one included if it does);
    `scheduler_status` is this process's own scheduler."""


class LatestPrice(Schema):
    exchange: ExchangeChoice
    symbol: str
    price: str
    timeframe: TimeframeName
    open_time: datetime
    close_time: datetime
    is_closed: bool


class LatestPrices(Schema):
    prices: list[LatestPrice]
    count: int


def _timeframes(data: StartCollection, jobs: CollectionJobs) -> list[str]:
    """The timeframes a start names, or the defaults its venue serves."""
    if data.timeframes is not None:
        return data.timeframes
    return [tf for tf in DEFAULT_TIMEFRAMES if tf in jobs.venues.client(data.exchange).timeframes]


def _task_out(view: TaskView) -> TaskOut:
    return TaskOut(
        task_id=view.task_id, task_type=view.task_type, status=view.status, progress=view.progress,
        message=view.message, created_at=view.created_at, started_at=view.started_at,
        completed_at=view.completed_at, error=view.error, result=view.result, params=view.params,
        eta_seconds=view.eta_seconds if view.status == "running" else None,
    )


class DataCollectorController(Controller):
    path = "/api/v1/data-collector"
    tags = ["data-collector"]
    # Reads are public unless PUBLIC_READS=false; the routes that change state need an admin.
    guards = [requires_reader]

    @post(
        "/start", operation_id="startCollection", status_code=202,
        guards=[requires_admin], security=BEARER_SECURITY,
        summary="Start collecting candles of symbols × timeframes; returns the task id at once",
        responses=error_responses(
            400, 401, 403, 409, 413, 415, 422,
            descriptions={409: "A pending or running task already collects one of these series "
                               "(`extra.active_task_id`), or the service is shutting down"},
        ),
    )
    async def start(self, data: JSONBody[StartCollection], jobs: JobsDep) -> TaskReply:
        view = await jobs.start_collection(
            data.symbols, _timeframes(data, jobs), exchange=data.exchange, task_type=DATA_COLLECTION, start=data.start,
            end=data.end,
        )
        return TaskReply(
            task_id=view.task_id, status=TaskReplyStatus.SUBMITTED,
            message="Data collection task submitted successfully. Use the task_id to check status.",
        )

    @post(
        "/plan", operation_id="planCollection", status_code=200,
        guards=[requires_admin], security=BEARER_SECURITY,
        summary="What a /start with the same body would fetch, per series and in total, without fetching candles",
        description=(
            "Asks the exchange only for listing starts it does not know yet (one request per series,"
            " remembered). The estimate is the request weight over this service's weight budget."
        ),
        responses=error_responses(400, 401, 403, 413, 415, 422),
    )
    async def plan(self, data: JSONBody[StartCollection], jobs: JobsDep) -> PlanReply:
        plan = await jobs.plan(
            data.symbols, _timeframes(data, jobs), exchange=data.exchange, start=data.start, end=data.end
        )
        series = [
            SeriesPlanOut(
                symbol=p.symbol, timeframe=p.timeframe,
                start=None if p.start_ms is None else ms_to_datetime(p.start_ms),
                end=None if p.end_ms is None else ms_to_datetime(p.end_ms),
                listing_start=None if p.listing_start is None else ms_to_datetime(p.listing_start),
                candles_stored=p.candles_stored, candles_to_fetch=p.candles_to_fetch, requests=p.requests,
                request_weight=p.request_weight,
                unavailable_until=None if p.unavailable_until is None else ms_to_datetime(p.unavailable_until),
            )
            for p in plan.series
        ]
        return PlanReply(
            series=series, candles_stored=sum(p.candles_stored for p in plan.series),
            candles_to_fetch=sum(p.candles_to_fetch for p in plan.series),
            requests=sum(p.requests for p in plan.series), request_weight=plan.request_weight,
            weight_budget_per_minute=plan.weight_budget_per_minute, estimated_seconds=plan.estimated_seconds(),
            window_seconds=plan.window_seconds,
        )

    @post(
        "/repair", operation_id="repairGaps", status_code=202,
        guards=[requires_admin], security=BEARER_SECURITY,
        summary="Re-fetch the holes and failed ranges of the coverage ledger (one symbol, or every config)",
        description=(
            "Never re-fetches a verified range; an exchange gap is fetched once more a day after it was"
            " confirmed, then left alone. Runs as `gap_repair` tasks with their own execution logs."
        ),
        responses=error_responses(
            400, 401, 403, 409, 413, 415, 422,
            descriptions={409: "The symbol's series are being collected right now (`extra.active_task_id`)"},
        ),
    )
    async def repair(self, data: JSONBody[RepairRequest], jobs: JobsDep) -> RepairReply:
        if data.symbol is not None:
            view = await jobs.start_repair(data.symbol, data.timeframes, exchange=data.exchange)
            return RepairReply(task_ids=[view.task_id], skipped={}, message="Gap repair task submitted.")
        if data.timeframes is not None:
            raise InvalidInputError("timeframes needs a symbol", field="timeframes")
        views, skipped = await jobs.start_repairs(data.exchange)
        return RepairReply(
            task_ids=[v.task_id for v in views], skipped=skipped,
            message=f"{len(views)} gap repair task(s) submitted" + (f", {len(skipped)} skipped" if skipped else ""),
        )

    @get(
        "/task/{task_id:uuid}", operation_id="getTask", summary="One task's status, progress and result",
        responses=error_responses(400, 401, 404),
    )
    async def get_task(self, task_id: FromPath[uuid.UUID], registry: RegistryDep) -> TaskOut:
        return _task_out(await registry.get(task_id))

    @get(
        "/tasks", operation_id="listTasks", summary="Tasks, newest first",
        responses=error_responses(400, 401),
    )
    async def list_tasks(
        self,
        registry: RegistryDep,
        task_type: Annotated[TaskTypeName | None, text_query(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> TaskList:
        views = await registry.list(task_type=task_type, limit=limit)
        return TaskList(tasks=[_task_out(v) for v in views], count=len(views))

    @get(
        "/tasks/active", operation_id="listActiveTasks", summary="Pending and running tasks",
        responses=error_responses(401),
    )
    async def active_tasks(self, registry: RegistryDep) -> TaskList:
        views = await registry.list(active_only=True, limit=1000)
        return TaskList(tasks=[_task_out(v) for v in views], count=len(views))

    @post(
        "/task/{task_id:uuid}/cancel", operation_id="cancelTask", status_code=200,
        guards=[requires_admin], security=BEARER_SECURITY,
        summary="Cancel a pending or running task, wherever it runs; candles already written stay",
        description=(
            "A task run by another process is stopped by its owner within about two seconds; the answer"
            " waits for that (up to five seconds) and shows the task's status then."
        ),
        responses=error_responses(
            400, 401, 403, 404, 409,
            descriptions={409: "The task has already ended, or is recording its end"},
        ),
    )
    async def cancel(self, task_id: FromPath[uuid.UUID], registry: RegistryDep) -> TaskReply:
        view = await registry.cancel(task_id)
        return TaskReply(task_id=view.task_id, status=view.status, message=view.message or "Cancelled")

    @get(
        "/tasks/stats", operation_id="taskStats", summary="Task counts by status and collector overview",
        responses=error_responses(401),
    )
    async def stats(self, registry: RegistryDep, jobs: JobsDep, pool: PoolDep) -> TaskStats:
        counts = await registry.counts()
        async with connection(pool) as conn:
            symbols = await symbols_db.list_symbols(conn, jobs.default_exchange)
        return TaskStats(
            task_counts=TaskCounts(**counts),
            active_tasks_count=counts["pending"] + counts["running"],
            data_collector_status=CollectorStatus(
                symbols_count=len(symbols), timeframes=list(jobs.venues[jobs.default_exchange].timeframes),
                available_symbols=symbols,
            ),
        )

    @post(
        "/refresh-symbols", operation_id="refreshSymbols", status_code=202,
        guards=[requires_admin], security=BEARER_SECURITY,
        summary="Reload a venue's symbol list (and its limits) as a task",
        responses=error_responses(
            400, 401, 403, 409, 422,
            descriptions={409: "A symbol refresh is already running, or the service is shutting down"},
        ),
    )
    async def refresh_symbols(
        self, jobs: JobsDep, exchange: Annotated[ExchangeChoice | None, text_query(max_length=32)] = None
    ) -> TaskReply:
        venue = exchange or jobs.default_exchange
        jobs.check_exchange(venue)
        view = await jobs.start_symbol_refresh(venue)
        return TaskReply(
            task_id=view.task_id, status=TaskReplyStatus.SUBMITTED, message="Symbol refresh task submitted."
        )

    @get(
        "/status", operation_id="collectorStatus", summary="Collector, scheduler and rate-limiter state",
        responses=error_responses(401),
    )
    async def status(self, runtime: RuntimeDep) -> ServiceStatus:
        async def symbols_and_configs() -> tuple[list[str], list[Any], list[Any]]:
            async with connection(runtime.pool) as conn:
                symbols = await symbols_db.list_symbols(conn, runtime.jobs.default_exchange)
                enabled = await configs_db.list_configs(conn, enabled=True, exchange=None, skip=0, limit=10_000)
                workers = await workers_db.list_workers(conn)
            return symbols, enabled, workers

        async def read() -> tuple[list[TaskView], tuple[list[str], list[Any], list[Any]]]:
            # Two independent reads, each on its own pool connection: when the pool is busy, wait for
            # both connections side by side rather than one after the other. (gather, not a TaskGroup:
            # a driver error must reach the error handlers as itself, not inside an ExceptionGroup.)
            active, rest = await asyncio.gather(
                runtime.registry.list(active_only=True, limit=1000), symbols_and_configs()
            )
            return active, rest

        # Shared by the requests of the last second: a busy database delays the refresh, not the answer.
        active, (symbols, enabled, workers) = await runtime.status_reads.get(read)
        limiter = runtime.exchanges[runtime.jobs.default_exchange].limiter_state()
        scheduler = runtime.scheduler.state
        collecting = any(v.task_type != SYMBOL_REFRESH for v in active)
        interval = min((c["interval_minutes"] * 60 for c in enabled if c["interval_minutes"] is not None), default=None)
        return ServiceStatus(
            is_running=True,
            exchange=runtime.jobs.default_exchange,
            symbols_count=len(symbols),
            active_tasks=len(active),
            collection_interval=interval,
            symbols=symbols,
            scheduler_status=SchedulerStatus(
                is_running=scheduler.is_running,
                collection_interval=interval,
                symbol_refresh_interval=int(runtime.settings.symbol_refresh_interval),
                data_collection_running=collecting,
                active_tasks_count=len(active),
                scheduler_task_types=[SCHEDULED_DATA_COLLECTION, SYMBOL_REFRESH] if scheduler.is_running else [],
                scheduled_configs=len(enabled) if scheduler.is_running else 0,
                next_run_at=scheduler.next_run_at,
                next_symbol_refresh_at=scheduler.next_symbol_refresh_at,
            ),
            rate_limiter=LimiterOut(
                weight_limit=limiter.limit, weight_budget=limiter.budget,
                weight_used_this_minute=limiter.used_in_window,
                paused_until=limiter.paused_until, paused_reason=limiter.paused_reason,
            ),
            event_loop_lag_ms=runtime.loop_monitor.lag(),
            workers=[
                WorkerOut(
                    worker_id=w["id"], kind=w["kind"], hostname=w["hostname"], pid=w["pid"],
                    started_at=w["started_at"], heartbeat_at=w["heartbeat_at"], running_tasks=w["running"],
                )
                for w in workers
            ],
        )

    @get(
        "/latest-prices", operation_id="latestPrices", summary="Latest stored close per collected symbol",
        responses=error_responses(401),
    )
    async def latest_prices(self, pool: PoolDep) -> LatestPrices:
        async with connection(pool) as conn:
            rows = await klines_db.latest_prices(conn)
        prices = [
            LatestPrice(
                exchange=r["exchange"], symbol=r["symbol"], price=r["price"], timeframe=r["timeframe"],
                open_time=ms_to_datetime(r["open_time"]), close_time=ms_to_datetime(r["close_time"]),
                is_closed=r["is_closed"],
            )
            for r in rows
        ]
        return LatestPrices(prices=prices, count=len(prices))
