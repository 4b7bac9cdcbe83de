"""What users start: collection runs and symbol refreshes, validated, then handed to the registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.collection.collector import (
    CollectionResult,
    Collector,
    HistoryRequest,
    Pair,
    PairResult,
    SeriesProgress,
    result_so_far,
)
from service.collection.ranges import HistoryStart, format_start, parse_end, parse_start
from service.db import configs as configs_db
from service.db import execution_logs as logs_db
from service.db import klines as klines_db
from service.db import symbols as symbols_db
from service.db import tasks as tasks_db
from service.db.pool import Connection, Pool, Row, connection, retrying
from service.errors import ConflictError, DatabaseUnavailableError, InvalidInputError
from service.exchanges.base import ExchangeError
from service.exchanges.venue_set import VenueSet
from service.logging import get_logger
from service.tasks.records import (
    DATA_COLLECTION,
    GAP_REPAIR,
    SCHEDULED_DATA_COLLECTION,
    SYMBOL_REFRESH,
    LogMetadata,
    SymbolRefreshResult,
    TaskParams,
)
from service.tasks.registry import TaskBody, TaskHandle, TaskOutcome, TaskRegistry, TaskView

__all__ = [
    "DATA_COLLECTION",
    "GAP_REPAIR",
    "MANUAL_JOB_NAME",
    "SCHEDULED_DATA_COLLECTION",
    "SYMBOL_REFRESH",
    "CollectionJobs",
    "ConfigRun",
    "collection_outcome",
]

log = get_logger(__name__)

# Job name of the execution logs of collections started by hand through /data-collector/start.
MANUAL_JOB_NAME = "manual_data_collection"
# Unknown symbols a 422 names (it also says how many there were in all).
_UNKNOWN_SHOWN = 20
# How long a request that needs a venue's symbols (none loaded yet) waits for the venue to list them.
_INLINE_REFRESH_SECONDS = 10.0
# How long opening a run's log rows, or closing them after a failure or cancel, waits for a lost
# database; past it the run fails (opening) or the next start closes them as Interrupted (closing).
_LOG_RETRY_SECONDS = 30.0


class ConfigRun(msgspec.Struct, frozen=True):
    """What a run of a stored collection config needs."""

    id: int
    symbol: str
    exchange: str
    timeframes: list[str]
    interval_minutes: int | None
    """None for a live config (streamed; a trigger still runs it once over REST)."""
    history_start: HistoryStart | None = None
    """Where the config's history starts (None: the last DEFAULT_HISTORY_CANDLES, then onwards)."""

    @property
    def job_name(self) -> str:
        return f"collect_data_{self.id}"

    @classmethod
    def from_record(cls, row: Row) -> ConfigRun:
        history: HistoryStart | None = None
        if row["history_from_listing"]:
            history = "listing"
        elif row["history_start"] is not None:
            history = int(row["history_start"].timestamp() * 1000)
        return cls(
            id=row["id"], symbol=row["symbol"], exchange=row["exchange"], timeframes=list(row["timeframes"]),
            interval_minutes=row["interval_minutes"], history_start=history,
        )


class PlannedSeries(msgspec.Struct, kw_only=True):
    """What a collection would do for one series (see Collector.plan), with what is stored already."""

    symbol: str
    timeframe: str
    start_ms: int | None
    end_ms: int | None
    listing_start: int | None
    candles_stored: int
    candles_to_fetch: int
    requests: int
    request_weight: int
    unavailable_until: int | None = None
    """Candles opening before this are older than the venue serves (None: none of the range)."""


class CollectionPlan(msgspec.Struct, kw_only=True):
    series: list[PlannedSeries]
    weight_budget: int | None
    """What this service spends per window of the venue's limit (None: not known)."""
    window_seconds: float
    """The window the venue counts its limit in: Binance's minute, Bybit's 5 s…"""
    weight_left_in_window: int
    seconds_to_next_window: float

    @property
    def request_weight(self) -> int:
        return sum(s.request_weight for s in self.series)

    @property
    def weight_budget_per_minute(self) -> int | None:
        budget = self.weight_budget
        return None if budget is None else round(budget * 60 / self.window_seconds)

    def estimated_seconds(self) -> float | None:
        """How long the venue's limit makes the run take (None while the budget is not known).

        What is left of this window is spent at once, then a whole budget each next window, so the
        run ends early in the window that spends its last weight. 0: this window's budget covers it
        (then the venue's latency, not the budget, sets the pace; running tasks report `eta_seconds`
        from what they measure).
        """
        budget = self.weight_budget
        if not budget:
            return None
        beyond = self.request_weight - self.weight_left_in_window
        if beyond <= 0:
            return 0.0
        windows_after_this = -(-beyond // budget)  # ceil
        return round(self.seconds_to_next_window + self.window_seconds * (windows_after_this - 1), 1)


def collection_outcome(result: CollectionResult) -> TaskOutcome:
    """Completed only if every series was collected; otherwise failed, with each series' fate in the result.

    A series that could not be completed is never reported as a success: the candles of the
    series that did complete are kept (see result.pairs), and the next run resumes the others.
    """
    if result.pairs_failed:
        first = next(p.error for p in result.pairs if p.error)
        failed = f"{result.pairs_failed} of {result.pairs_total} series failed"
        return TaskOutcome(
            status="failed",
            message=f"Failed: {failed}; {result.candles_written} candles written (see result)",
            result=result, error=f"{failed}; first error: {first}",
        )
    message = f"Completed: {result.candles_written} candles written for {result.pairs_total} series"
    return TaskOutcome(status="completed", message=message, result=result)


def _symbol_log(pairs: list[PairResult], timeframes: list[str]) -> dict[str, Any]:
    """One symbol's execution-log outcome: status, records, error and metadata."""
    failed = {p.timeframe: p.error for p in pairs if p.error}
    metadata = LogMetadata(
        timeframes=timeframes,
        timeframes_collected=sum(1 for p in pairs if not p.error),
        timeframes_failed=len(failed),
        records_per_timeframe={p.timeframe: p.candles_written for p in pairs},
        records_quarantined=sum(p.candles_quarantined for p in pairs),
        exchange_gaps=sum(p.exchange_gaps for p in pairs),
        failed_timeframes=failed or msgspec.UNSET,
    )
    return {
        "status": "failed" if failed else "success",
        "records_collected": sum(p.candles_written for p in pairs),
        "error_message": "; ".join(f"{tf}: {error}" for tf, error in failed.items()) or None,
        "error_type": "TimeframesFailed" if failed else None,
        "metadata": msgspec.to_builtins(metadata),
    }


def _timeframes_only(timeframes: list[str]) -> dict[str, Any]:
    """The metadata of a symbol's log while its run is under way, or after it failed as a whole."""
    builtins: dict[str, Any] = msgspec.to_builtins(LogMetadata(timeframes=timeframes))
    return builtins


class CollectionJobs:
    def __init__(
        self,
        pool: Pool,
        venues: VenueSet,
        registry: TaskRegistry,
        collectors: Mapping[str, Collector],
        *,
        clock: Callable[[], float] = time.time,
        recheck_gaps_after_seconds: float = 24 * 3600,
    ) -> None:
        self._recheck_gaps_after_ms = int(recheck_gaps_after_seconds * 1000)
        self._pool = pool
        self._venues = venues
        self._registry = registry
        self._collectors = collectors
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def venues(self) -> VenueSet:
        return self._venues

    @property
    def default_exchange(self) -> str:
        """The venue a request that names none means."""
        return self._venues.default

    def check_exchange(self, exchange: str) -> None:
        """InvalidInputError unless `exchange` is a venue this deployment collects from."""
        self._venues.client(exchange)

    async def refresh_symbols(self, exchange: str) -> int:
        """Reload the venue's listing (and its limits) into the symbols table, and pause the configs
        whose symbol stopped trading (resume those trading again) in the same transaction."""
        symbols = await self._venues.client(exchange).fetch_symbols()
        async with connection(self._pool) as conn, conn.transaction():
            count = await symbols_db.replace_symbols(conn, exchange, symbols)
            paused, resumed = await configs_db.sync_listing_pauses(conn, exchange, self._now())
            if paused or resumed:  # every process's scheduler re-reads its schedule (sent at commit)
                await tasks_db.notify(conn, "configs", "changed")
        log.info("symbols_refreshed", exchange=exchange, count=count)
        for row in paused:
            log.warning("config_paused", config_id=row["id"], symbol=row["symbol"], status=row["status"],
                        reason=row["reason"])
        for row in resumed:
            log.info("config_resumed", config_id=row["id"], symbol=row["symbol"], status=row["status"])
        return count

    async def resolve_symbols(self, exchange: str, names: Sequence[str]) -> list[str]:
        """The venue's symbols for names in any spelling ('BTCUSDT', 'BTC/USDT', Kraken's 'XBTUSD'),
        de-duplicated, resolved in one query.

        InvalidInputError (422) for unknown names: the first _UNKNOWN_SHOWN of them and how many
        there are, so that a long list of typos gives a short answer.
        """
        if not names:
            raise InvalidInputError("symbols must not be empty")
        distinct = list(dict.fromkeys(names))
        async with connection(self._pool) as conn:
            resolved = await symbols_db.resolve_symbols(conn, exchange, distinct)
            # Unknown names, and no symbols at all: the start-up refresh has not run (or failed).
            load = None in resolved.values() and await symbols_db.count_symbols(conn, exchange) == 0
            if None in resolved.values() and not load:
                # A refresh may have committed between the two reads: ask once more before refusing.
                resolved = await symbols_db.resolve_symbols(conn, exchange, distinct)
        if load:
            await self._load_symbols_now(exchange)
            async with connection(self._pool) as conn:
                resolved = await symbols_db.resolve_symbols(conn, exchange, distinct)
        unknown = [name for name, symbol in resolved.items() if symbol is None]
        if unknown:
            shown = unknown[:_UNKNOWN_SHOWN]
            listed = ", ".join(map(repr, shown))
            if len(unknown) == 1:
                detail = f"unknown symbol {listed} on {exchange}"
            else:
                more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
                detail = f"{len(unknown)} unknown symbols on {exchange}: {listed}{more}"
            raise InvalidInputError(detail, unknown_symbols=shown, unknown_count=len(unknown))
        return list(dict.fromkeys(symbol for symbol in resolved.values() if symbol is not None))

    async def _load_symbols_now(self, exchange: str) -> None:
        """Load a venue's symbols inside a request that needs them: at once, or a 422 saying why not
        (the venue holds our requests, or does not list them within _INLINE_REFRESH_SECONDS); never
        a request that waits out a ban."""
        unknown = f"the symbols of {exchange} are not known yet"
        client = self._venues.client(exchange)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _INLINE_REFRESH_SECONDS
        refresh = asyncio.ensure_future(self.refresh_symbols(exchange))
        try:
            while not refresh.done():
                paused = client.limiter_state()
                if paused.paused_until is not None:
                    until = datetime.fromtimestamp(paused.paused_until, UTC).isoformat().replace("+00:00", "Z")
                    raise InvalidInputError(
                        f"{unknown}, and {exchange} holds every request until {until} ({paused.paused_reason})",
                        paused_until=until,
                    )
                if loop.time() >= deadline:
                    raise InvalidInputError(
                        f"{unknown} and {exchange} did not list them within {_INLINE_REFRESH_SECONDS:.0f} s; "
                        "try again once a symbol refresh has loaded them"
                    )
                # Looked at every 50 ms: a pause the venue orders meanwhile answers this request at once.
                await asyncio.wait([refresh], timeout=0.05)
            refresh.result()
        except ExchangeError as exc:
            raise InvalidInputError(f"{unknown} and could not be loaded: {exc}") from None
        finally:
            if not refresh.done():
                refresh.cancel()
                await asyncio.wait([refresh])

    async def start_collection(
        self,
        symbols: Sequence[str],
        timeframes: Sequence[str],
        *,
        exchange: str | None = None,
        task_type: str = DATA_COLLECTION,
        start: str | None = None,
        end: str | None = None,
        conn: Connection | None = None,
    ) -> TaskView:
        """Validate and submit a collection of every symbol × timeframe (with `conn`, inside its
        transaction: the `collect` command submits and claims its task at once).

        `start` ("listing" or ISO 8601) and `end` (ISO 8601, exclusive) bound the history collected;
        without `start`, each series resumes where it ends. `exchange`: the default venue if None."""
        venue = exchange or self.default_exchange
        frames = self._venues.timeframes(venue, timeframes)
        request = self.history_request(start, end)
        names = await self.resolve_symbols(venue, symbols)
        return await self._registry.submit(
            task_type,
            params=TaskParams(
                exchange=venue, symbols=names, timeframes=frames,
                start=format_start(request.start) or msgspec.UNSET,
                end=format_start(request.end) or msgspec.UNSET,
            ),
            series=[Pair(symbol=s, timeframe=tf).key(venue) for s in names for tf in frames],
            conn=conn,
        )

    def history_request(self, start: str | None, end: str | None) -> HistoryRequest:
        """The range a user asked for, checked: InvalidInputError (422) names a bad `start` or `end`."""
        first = None if start is None else parse_start(start)
        last = None if end is None else parse_end(end)
        now_ms = int(self._clock() * 1000)
        if isinstance(first, int) and first > now_ms:
            raise InvalidInputError("start must not be in the future", field="start")
        if last is not None:
            if first is None:
                raise InvalidInputError("end needs a start", field="end")
            if isinstance(first, int) and last <= first:
                raise InvalidInputError("end must be after start", field="end")
        return HistoryRequest(start=first, end=last)

    async def plan(
        self,
        symbols: Sequence[str],
        timeframes: Sequence[str],
        *,
        exchange: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> CollectionPlan:
        """What a collection of these series would fetch now (validated like a start; fetches no candles)."""
        venue = exchange or self.default_exchange
        frames = self._venues.timeframes(venue, timeframes)
        request = self.history_request(start, end)
        names = await self.resolve_symbols(venue, symbols)
        plans = await self._collectors[venue].plan(
            [Pair(symbol=s, timeframe=tf) for s in names for tf in frames], request
        )
        async with connection(self._pool) as conn:
            stored = [
                0 if p.start_ms is None else await klines_db.count_stored(conn, p.series_id, p.start_ms, p.end_ms)
                for p in plans
            ]
        client = self._venues[venue]
        limiter = client.limiter_state()
        return CollectionPlan(
            series=[
                PlannedSeries(
                    symbol=p.symbol, timeframe=p.timeframe, start_ms=p.start_ms, end_ms=p.end_ms,
                    listing_start=p.listing_start, candles_stored=count, candles_to_fetch=p.candles_to_fetch,
                    requests=p.requests, request_weight=p.weight, unavailable_until=p.unavailable_until,
                )
                for p, count in zip(plans, stored, strict=True)
            ],
            weight_budget=limiter.budget,
            window_seconds=limiter.window_seconds,
            weight_left_in_window=max((limiter.budget or 0) - limiter.used_in_window, 0),
            # A fixed window (Binance's minute) turns at the clock's window boundary; a sliding one
            # frees its budget as the requests in it age, a whole window at most.
            seconds_to_next_window=limiter.window_seconds - self._clock() % limiter.window_seconds,
        )

    async def start_config_run(self, config: ConfigRun, *, task_type: str, conn: Connection | None = None) -> TaskView:
        """Submit one run of a stored config; ConflictError if its series are being collected.

        With `conn`, inside its transaction (the scheduler claims the due run and submits it at once).
        """
        return await self._registry.submit(
            task_type,
            params=TaskParams(
                exchange=config.exchange, symbols=[config.symbol], timeframes=config.timeframes,
                config_id=config.id, job_name=config.job_name,
                start=format_start(config.history_start) or msgspec.UNSET,
            ),
            series=[Pair(symbol=config.symbol, timeframe=tf).key(config.exchange) for tf in config.timeframes],
            conn=conn,
        )

    def body_for(self, task: TaskView) -> TaskBody:
        """What runs a task, rebuilt from its row alone: any process can run (or resume) any task."""
        params = task.params
        exchange = params.exchange if isinstance(params.exchange, str) else self.default_exchange
        if task.task_type == SYMBOL_REFRESH:
            return self._symbol_refresh_body(exchange)
        symbols = [] if isinstance(params.symbols, msgspec.UnsetType) else params.symbols
        frames = [] if isinstance(params.timeframes, msgspec.UnsetType) else params.timeframes
        pairs = [Pair(symbol=s, timeframe=tf) for s in symbols for tf in frames]
        if isinstance(params.job_name, str):
            job_names = dict.fromkeys(symbols, params.job_name)
        elif task.task_type == GAP_REPAIR:
            job_names = dict.fromkeys(symbols, GAP_REPAIR)
        else:
            job_names = dict.fromkeys(symbols, MANUAL_JOB_NAME)
        if task.task_type == GAP_REPAIR:
            request = HistoryRequest(repair=True, recheck_gaps_after_ms=self._recheck_gaps_after_ms)
        else:
            request = HistoryRequest(
                start=None if isinstance(params.start, msgspec.UnsetType) else parse_start(params.start),
                end=None if isinstance(params.end, msgspec.UnsetType) else parse_end(params.end),
            )
        return self._collection_body(exchange, pairs, task.task_type, job_names, request)

    def _collection_body(
        self, exchange: str, pairs: list[Pair], job_type: str, job_names: dict[str, str], request: HistoryRequest
    ) -> TaskBody:
        """A collection task that writes one execution log per symbol: running at start, then its outcome."""

        async def body(handle: TaskHandle) -> TaskOutcome:
            frames_of = {s: [p.timeframe for p in pairs if p.symbol == s] for s in job_names}
            started_at = self._now()

            async def open_logs(conn: Connection) -> dict[str, int]:
                # One statement: all rows or none, so a retry cannot double them.
                return await logs_db.start_logs(
                    conn, job_names=job_names, job_type=job_type, exchange=exchange,
                    metadata={s: _timeframes_only(frames_of[s]) for s in job_names}, task_id=handle.task_id,
                    started_at=started_at,
                )

            log_ids = await retrying(self._pool, open_logs, give_up_after=_LOG_RETRY_SECONDS)
            handle.series = [SeriesProgress(symbol=p.symbol, timeframe=p.timeframe) for p in pairs]
            try:
                collector = self._collectors.get(exchange)
                if collector is None:  # a task for a venue this deployment no longer collects from
                    raise InvalidInputError(f"exchange {exchange!r} is not enabled here (EXCHANGES)")
                result = await collector.collect(
                    pairs, handle, series=handle.series, request=request, task_id=handle.task_id
                )
            except BaseException as exc:
                if handle.handing_back is not None:
                    error_type, message = "Interrupted", handle.handing_back
                elif isinstance(exc, asyncio.CancelledError):
                    error_type, message = "Cancelled", "the task was cancelled"
                    # The candles written before the cancel are kept: the task's result says how many.
                    handle.result_so_far = result_so_far(exchange, handle.series)
                else:
                    error_type, message = exc.__class__.__name__, str(exc)
                await self._close_logs_on_error(log_ids, frames_of, error_type, message)
                raise
            finished_at = self._now()

            pairs_of: dict[str, list[PairResult]] = {symbol: [] for symbol in log_ids}
            for pair in result.pairs:
                pairs_of.setdefault(pair.symbol, []).append(pair)
            outcomes = [
                logs_db.LogOutcome(log_id=log_id, **_symbol_log(pairs_of[symbol], frames_of[symbol]))
                for symbol, log_id in log_ids.items()
            ]

            async def close_logs(conn: Connection) -> None:
                await logs_db.finish_logs(conn, outcomes, finished_at=finished_at)

            # The candles are stored: a database away at this moment delays the record, never fails the run.
            await retrying(self._pool, close_logs, give_up_after=None)
            return collection_outcome(result)

        return body

    async def _close_logs_on_error(
        self, log_ids: dict[str, int], frames_of: dict[str, list[str]], error_type: str, message: str
    ) -> None:
        finished_at = self._now()

        outcomes = [
            logs_db.LogOutcome(
                log_id=log_id, status="failed", records_collected=0, error_message=message[:1000],
                error_type=error_type, metadata=_timeframes_only(frames_of[symbol]),
            )
            for symbol, log_id in log_ids.items()
        ]

        async def close_logs(conn: Connection) -> None:
            await logs_db.finish_logs(conn, outcomes, finished_at=finished_at)

        try:
            await retrying(self._pool, close_logs, give_up_after=_LOG_RETRY_SECONDS)
        except DatabaseUnavailableError:
            log.exception("execution_log_not_closed")  # closed as Interrupted at the next start

    async def start_repair(
        self, symbol: str, timeframes: Sequence[str] | None, *, exchange: str | None = None
    ) -> TaskView:
        """Submit a gap repair of one symbol's series (its config's timeframes if none are given);
        ConflictError if one of them is being collected."""
        venue = exchange or self.default_exchange
        self.check_exchange(venue)
        names = await self.resolve_symbols(venue, [symbol])
        if timeframes:
            frames = self._venues.timeframes(venue, timeframes)
        else:
            async with connection(self._pool) as conn:
                config = await configs_db.find_by_pair(conn, venue, names[0])
            if config is None:
                raise InvalidInputError(
                    f"{names[0]} has no collection config: name the timeframes to repair", field="timeframes"
                )
            frames = list(config["timeframes"])
        return await self._submit_repair(venue, names[0], frames)

    async def _submit_repair(
        self, exchange: str, symbol: str, frames: list[str], conn: Connection | None = None
    ) -> TaskView:
        return await self._registry.submit(
            GAP_REPAIR,
            params=TaskParams(exchange=exchange, symbols=[symbol], timeframes=frames, job_name=GAP_REPAIR),
            series=[Pair(symbol=symbol, timeframe=tf).key(exchange) for tf in frames],
            message="Waiting for a free slot to repair gaps",
            conn=conn,
        )

    async def start_repairs(self, exchange: str | None = None) -> tuple[list[TaskView], dict[str, str]]:
        """A gap repair of every enabled, trading config's series (of one venue, or of every venue):
        one task per config. A config whose series are being collected is skipped (the next repair
        takes it): returns the tasks and, per skipped symbol, why."""
        if exchange is not None:
            self.check_exchange(exchange)
        submitted: list[TaskView] = []
        skipped: dict[str, str] = {}
        for venue in [exchange] if exchange is not None else list(self._venues):
            async with connection(self._pool) as conn:
                configs = await configs_db.repairable_configs(conn, venue)
            for config in configs:
                try:
                    submitted.append(await self._submit_repair(venue, config["symbol"], list(config["timeframes"])))
                except ConflictError as exc:
                    skipped[config["symbol"]] = exc.detail
        return submitted, skipped

    async def start_symbol_refresh(self, exchange: str, *, conn: Connection | None = None) -> TaskView:
        """Submit a refresh of one venue's symbols as a task (one at a time per venue)."""
        return await self._registry.submit(
            SYMBOL_REFRESH, params=TaskParams(exchange=exchange), series=[f"{exchange}:symbols"], conn=conn,
        )

    def _symbol_refresh_body(self, exchange: str) -> TaskBody:
        async def body(handle: TaskHandle) -> TaskOutcome:
            await handle.report(10, f"Loading the symbol list of {exchange}")
            async with connection(self._pool) as conn:
                log_id = await logs_db.start_log(
                    conn, job_name=SYMBOL_REFRESH, job_type=SYMBOL_REFRESH, symbol=None, exchange=exchange,
                    timeframe=None, metadata={}, task_id=handle.task_id, started_at=self._now(),
                )
            try:
                count = await self.refresh_symbols(exchange)
            except BaseException as exc:
                async with connection(self._pool) as conn:
                    await logs_db.finish_log(
                        conn, log_id, status="failed", records_collected=0, error_message=str(exc)[:1000],
                        error_type=exc.__class__.__name__, metadata={}, finished_at=self._now(),
                    )
                raise
            async with connection(self._pool) as conn:
                await logs_db.finish_log(
                    conn, log_id, status="success", records_collected=0, error_message=None,
                    error_type=None, metadata=msgspec.to_builtins(LogMetadata(symbols=count)), finished_at=self._now(),
                )
            return TaskOutcome(
                status="completed", message=f"Refreshed {count} symbols",
                result=SymbolRefreshResult(exchange=exchange, symbols=count),
            )

        return body
