"""What users start: collection runs and symbol refreshes, validated, then handed to the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from service.collection.collector import CollectionResult, Collector, Pair
from service.collection.registry import TaskHandle, TaskOutcome, TaskRegistry, TaskView
from service.db import symbols as symbols_db
from service.db.pool import Pool
from service.errors import InvalidInputError
from service.exchanges.base import ExchangeClient, ExchangeError
from service.logging import get_logger
from service.settings import TIMEFRAMES

__all__ = ["DATA_COLLECTION", "SYMBOL_REFRESH", "CollectionJobs", "collection_outcome", "validate_timeframes"]

log = get_logger(__name__)

DATA_COLLECTION = "data_collection"
SYMBOL_REFRESH = "symbol_refresh"


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
    """Completed if any pair worked (failures listed in the result); failed if every pair failed."""
    builtins: dict[str, Any] = msgspec.to_builtins(result)
    if result.pairs_total and result.pairs_failed == result.pairs_total:
        first = next(p.error for p in result.pairs if p.error)
        return TaskOutcome(
            status="failed", message=f"Failed: all {result.pairs_total} series failed",
            result=builtins, error=f"all {result.pairs_total} series failed; first error: {first}",
        )
    message = f"Completed: {result.candles_written} candles written for {result.pairs_total} series"
    if result.pairs_failed:
        message += f"; {result.pairs_failed} series failed (see result)"
    return TaskOutcome(status="completed", message=message, result=builtins)


class CollectionJobs:
    def __init__(self, pool: Pool, client: ExchangeClient, registry: TaskRegistry, collector: Collector) -> None:
        self._pool = pool
        self._client = client
        self._registry = registry
        self._collector = collector

    @property
    def exchange(self) -> str:
        return self._client.name

    async def refresh_symbols(self) -> int:
        """Reload the exchange's listing (and its weight limit) into the symbols table."""
        symbols = await self._client.fetch_symbols()
        async with self._pool.acquire() as conn:
            count = await symbols_db.replace_symbols(conn, self.exchange, symbols)
        log.info("symbols_refreshed", exchange=self.exchange, count=count)
        return count

    async def resolve_symbols(self, names: Sequence[str]) -> list[str]:
        """Exchange symbols for 'BTCUSDT' / 'BTC/USDT' names, de-duplicated; 422 naming the unknown ones."""
        if not names:
            raise InvalidInputError("symbols must not be empty")
        async with self._pool.acquire() as conn:
            empty = await symbols_db.count_symbols(conn, self.exchange) == 0
        if empty:
            try:
                await self.refresh_symbols()
            except ExchangeError as exc:
                raise InvalidInputError(
                    f"the symbols of {self.exchange} are not known yet and could not be loaded: {exc}"
                ) from None
        resolved: list[str] = []
        unknown: list[str] = []
        async with self._pool.acquire() as conn:
            for name in names:
                row = await symbols_db.find_symbol(conn, self.exchange, name)
                if row is None:
                    unknown.append(name)
                else:
                    resolved.append(row["symbol"])
        if unknown:
            raise InvalidInputError(
                f"unknown symbol {', '.join(map(repr, unknown))} on {self.exchange}", unknown_symbols=unknown
            )
        return list(dict.fromkeys(resolved))

    async def start_collection(
        self,
        symbols: Sequence[str],
        timeframes: Sequence[str],
        *,
        task_type: str = DATA_COLLECTION,
    ) -> TaskView:
        """Validate and submit a collection of every symbol × timeframe."""
        frames = validate_timeframes(timeframes)
        names = await self.resolve_symbols(symbols)
        pairs = [Pair(symbol=s, timeframe=tf) for s in names for tf in frames]

        async def body(handle: TaskHandle) -> TaskOutcome:
            return collection_outcome(await self._collector.collect(pairs, handle))

        return await self._registry.submit(
            task_type, body,
            params={"exchange": self.exchange, "symbols": names, "timeframes": frames},
            series=[p.key(self.exchange) for p in pairs],
        )

    async def start_symbol_refresh(self) -> TaskView:
        """Submit a symbol refresh as a task (one at a time)."""

        async def body(handle: TaskHandle) -> TaskOutcome:
            await handle.report(10, f"Loading the symbol list of {self.exchange}")
            count = await self.refresh_symbols()
            return TaskOutcome(
                status="completed", message=f"Refreshed {count} symbols",
                result={"exchange": self.exchange, "symbols": count},
            )

        return await self._registry.submit(
            SYMBOL_REFRESH, body, params={"exchange": self.exchange}, series=[f"{self.exchange}:symbols"],
        )
