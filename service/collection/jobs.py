"""What users start: collection runs and symbol refreshes, validated, then handed to the registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.collection.collector import (
    CollectionResult,
    Collector,
    Pair,
    PairResult,
    SeriesProgress,
    result_so_far,
)
from service.collection.registry import TaskBody, TaskHandle, TaskOutcome, TaskRegistry, TaskView
from service.collection.task_records import (
    DATA_COLLECTION,
    SCHEDULED_DATA_COLLECTION,
    SYMBOL_REFRESH,
    LogMetadata,
    SymbolRefreshResult,
    TaskParams,
)
from service.db import execution_logs as logs_db
from service.db import symbols as symbols_db
from service.db.pool import Connection, Pool, Row, connection, retrying
from service.errors import DatabaseUnavailableError, InvalidInputError
from service.exchanges.base import ExchangeClient, ExchangeError
from service.logging import get_logger
from service.settings import TIMEFRAMES

__all__ = [
    "DATA_COLLECTION",
    "MANUAL_JOB_NAME",
    "SCHEDULED_DATA_COLLECTION",
    "SYMBOL_REFRESH",
    "CollectionJobs",
    "ConfigRun",
    "collection_outcome",
    "validate_timeframes",
]

log = get_logger(__name__)

# Job name of the execution logs of collections started by hand through /data-collector/start.
MANUAL_JOB_NAME = "manual_data_collection"
# Unknown symbols a 422 names (it also says how many there were in all).
_UNKNOWN_SHOWN = 20
# How long opening a run's log rows, or closing them after a failure or cancel, waits for a lost
# database; past it the run fails (opening) or the next start closes them as Interrupted (closing).
_LOG_RETRY_SECONDS = 30.0


class ConfigRun(msgspec.Struct, frozen=True):
    """What a run of a stored collection config needs."""

    id: int
    symbol: str
    exchange: str
    timeframes: list[str]
    interval_minutes: int

    @property
    def job_name(self) -> str:
        return f"collect_data_{self.id}"

    @classmethod
    def from_record(cls, row: Row) -> ConfigRun:
        return cls(
            id=row["id"], symbol=row["symbol"], exchange=row["exchange"], timeframes=list(row["timeframes"]),
            interval_minutes=row["interval_minutes"],
        )


def validate_timeframes(timeframes: Sequence[str]) -> list[str]:
    """Timeframes in the order given, de-duplicated; InvalidInputError names any the exchange lacks."""
    if not timeframes:
        raise InvalidInputError("timeframes must not be empty", allowed=list(TIMEFRAMES))
    bad = [tf for tf in timeframes if tf not in TIMEFRAMES]
    if bad:
        raise InvalidInputError(
            f"unknown timeframe {', '.join(map(repr, bad))}; allowed: {' '.join(TIMEFRAMES)}",
            invalid=bad, allowed=list(TIMEFRAMES),
        )
    return list(dict.fromkeys(timeframes))


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
        client: ExchangeClient,
        registry: TaskRegistry,
        collector: Collector,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._client = client
        self._registry = registry
        self._collector = collector
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def exchange(self) -> str:
        return self._client.name

    def check_exchange(self, exchange: str) -> None:
        """InvalidInputError unless `exchange` is the one this service collects from."""
        if exchange != self.exchange:
            raise InvalidInputError(
                f"unknown exchange {exchange!r}; supported: {self.exchange}", supported=[self.exchange]
            )

    async def refresh_symbols(self) -> int:
        """Reload the exchange's listing (and its weight limit) into the symbols table."""
        symbols = await self._client.fetch_symbols()
        async with connection(self._pool) as conn:
            count = await symbols_db.replace_symbols(conn, self.exchange, symbols)
        log.info("symbols_refreshed", exchange=self.exchange, count=count)
        return count

    async def resolve_symbols(self, names: Sequence[str]) -> list[str]:
        """Exchange symbols for 'BTCUSDT' / 'BTC/USDT' names, de-duplicated, resolved in one query.

        InvalidInputError (422) for unknown names: the first _UNKNOWN_SHOWN of them and how many
        there are, so that a long list of typos gives a short answer.
        """
        if not names:
            raise InvalidInputError("symbols must not be empty")
        distinct = list(dict.fromkeys(names))
        async with connection(self._pool) as conn:
            resolved = await symbols_db.resolve_symbols(conn, self.exchange, distinct)
            # Unknown names, and no symbols at all: the start-up refresh has not run (or failed).
            load = None in resolved.values() and await symbols_db.count_symbols(conn, self.exchange) == 0
        if load:
            try:
                await self.refresh_symbols()
            except ExchangeError as exc:
                raise InvalidInputError(
                    f"the symbols of {self.exchange} are not known yet and could not be loaded: {exc}"
                ) from None
            async with connection(self._pool) as conn:
                resolved = await symbols_db.resolve_symbols(conn, self.exchange, distinct)
        unknown = [name for name, symbol in resolved.items() if symbol is None]
        if unknown:
            shown = unknown[:_UNKNOWN_SHOWN]
            listed = ", ".join(map(repr, shown))
            if len(unknown) == 1:
                detail = f"unknown symbol {listed} on {self.exchange}"
            else:
                more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
                detail = f"{len(unknown)} unknown symbols on {self.exchange}: {listed}{more}"
            raise InvalidInputError(detail, unknown_symbols=shown, unknown_count=len(unknown))
        return list(dict.fromkeys(symbol for symbol in resolved.values() if symbol is not None))

    async def start_collection(
        self,
        symbols: Sequence[str],
        timeframes: Sequence[str],
        *,
        task_type: str = DATA_COLLECTION,
        conn: Connection | None = None,
    ) -> TaskView:
        """Validate and submit a collection of every symbol × timeframe (with `conn`, inside its
        transaction: the `collect` command submits and claims its task at once)."""
        frames = validate_timeframes(timeframes)
        names = await self.resolve_symbols(symbols)
        return await self._registry.submit(
            task_type,
            params=TaskParams(exchange=self.exchange, symbols=names, timeframes=frames),
            series=[Pair(symbol=s, timeframe=tf).key(self.exchange) for s in names for tf in frames],
            conn=conn,
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
            ),
            series=[Pair(symbol=config.symbol, timeframe=tf).key(self.exchange) for tf in config.timeframes],
            conn=conn,
        )

    def body_for(self, task: TaskView) -> TaskBody:
        """What runs a task, rebuilt from its row alone: any process can run (or resume) any task."""
        if task.task_type == SYMBOL_REFRESH:
            return self._symbol_refresh_body()
        params = task.params
        symbols = [] if isinstance(params.symbols, msgspec.UnsetType) else params.symbols
        frames = [] if isinstance(params.timeframes, msgspec.UnsetType) else params.timeframes
        pairs = [Pair(symbol=s, timeframe=tf) for s in symbols for tf in frames]
        if isinstance(params.job_name, str):
            job_names = dict.fromkeys(symbols, params.job_name)
        else:
            job_names = dict.fromkeys(symbols, MANUAL_JOB_NAME)
        return self._collection_body(pairs, task.task_type, job_names)

    def _collection_body(self, pairs: list[Pair], job_type: str, job_names: dict[str, str]) -> TaskBody:
        """A collection task that writes one execution log per symbol: running at start, then its outcome."""

        async def body(handle: TaskHandle) -> TaskOutcome:
            frames_of = {s: [p.timeframe for p in pairs if p.symbol == s] for s in job_names}
            started_at = self._now()

            async def open_logs(conn: Connection) -> dict[str, int]:
                async with conn.transaction():  # all rows or none, so a retry cannot double them
                    return {
                        symbol: await logs_db.start_log(
                            conn, job_name=job_name, job_type=job_type, symbol=symbol, exchange=self.exchange,
                            timeframe=None, metadata=_timeframes_only(frames_of[symbol]), task_id=handle.task_id,
                            started_at=started_at,
                        )
                        for symbol, job_name in job_names.items()
                    }

            log_ids = await retrying(self._pool, open_logs, give_up_after=_LOG_RETRY_SECONDS)
            handle.series = [SeriesProgress(symbol=p.symbol, timeframe=p.timeframe) for p in pairs]
            try:
                result = await self._collector.collect(pairs, handle, series=handle.series)
            except BaseException as exc:
                if handle.handing_back is not None:
                    error_type, message = "Interrupted", handle.handing_back
                elif isinstance(exc, asyncio.CancelledError):
                    error_type, message = "Cancelled", "the task was cancelled"
                    # The candles written before the cancel are kept: the task's result says how many.
                    handle.result_so_far = result_so_far(self.exchange, handle.series)
                else:
                    error_type, message = exc.__class__.__name__, str(exc)
                await self._close_logs_on_error(log_ids, frames_of, error_type, message)
                raise
            finished_at = self._now()

            async def close_logs(conn: Connection) -> None:
                for symbol, log_id in log_ids.items():
                    outcome = _symbol_log([p for p in result.pairs if p.symbol == symbol], frames_of[symbol])
                    await logs_db.finish_log(conn, log_id, finished_at=finished_at, **outcome)

            # The candles are stored: a database away at this moment delays the record, never fails the run.
            await retrying(self._pool, close_logs, give_up_after=None)
            return collection_outcome(result)

        return body

    async def _close_logs_on_error(
        self, log_ids: dict[str, int], frames_of: dict[str, list[str]], error_type: str, message: str
    ) -> None:
        finished_at = self._now()

        async def close_logs(conn: Connection) -> None:
            for symbol, log_id in log_ids.items():
                await logs_db.finish_log(
                    conn, log_id, status="failed", records_collected=0, error_message=message[:1000],
                    error_type=error_type, metadata=_timeframes_only(frames_of[symbol]), finished_at=finished_at,
                )

        try:
            await retrying(self._pool, close_logs, give_up_after=_LOG_RETRY_SECONDS)
        except DatabaseUnavailableError:
            log.exception("execution_log_not_closed")  # closed as Interrupted at the next start

    async def start_symbol_refresh(self, *, conn: Connection | None = None) -> TaskView:
        """Submit a symbol refresh as a task (one at a time)."""
        return await self._registry.submit(
            SYMBOL_REFRESH, params=TaskParams(exchange=self.exchange), series=[f"{self.exchange}:symbols"], conn=conn,
        )

    def _symbol_refresh_body(self) -> TaskBody:
        async def body(handle: TaskHandle) -> TaskOutcome:
            await handle.report(10, f"Loading the symbol list of {self.exchange}")
            async with connection(self._pool) as conn:
                log_id = await logs_db.start_log(
                    conn, job_name=SYMBOL_REFRESH, job_type=SYMBOL_REFRESH, symbol=None, exchange=self.exchange,
                    timeframe=None, metadata={}, task_id=handle.task_id, started_at=self._now(),
                )
            try:
                count = await self.refresh_symbols()
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
                result=SymbolRefreshResult(exchange=self.exchange, symbols=count),
            )

        return body
