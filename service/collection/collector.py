"""One collection run: every (symbol, timeframe) pair concurrently, each series paged forward in order.

Per series: resume at the last stored candle (re-reading it: it may have been open), or start
DEFAULT_HISTORY_CANDLES back; plan windows of at most one page; fetch a few windows ahead of the one
being written, concurrently; write them strictly in order, one transaction per page. A crash
between pages therefore leaves a series complete up to its last stored candle, and the next run
resumes exactly there: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

import msgspec

from service.collection.planner import Window, plan_windows, resume_start
from service.cpu_turns import CpuTurns
from service.db import klines as klines_db
from service.db.pool import Connection, Pool, retrying
from service.exchanges.base import ExchangeClient, ExchangeError, WaitCallback
from service.logging import get_logger
from service.metrics import Metrics
from service.records import KlinePage
from service.settings import TimeframeName

__all__ = ["CollectionResult", "Collector", "Pair", "PairResult", "ProgressSink", "SeriesProgress"]

log = get_logger(__name__)


class Pair(msgspec.Struct, frozen=True):
    symbol: str
    timeframe: str

    def key(self, exchange: str) -> str:
        """The series key active tasks are compared on."""
        return f"{exchange}:{self.symbol}:{self.timeframe}"


class PairResult(msgspec.Struct):
    """How one series of a collection ended."""

    symbol: str
    timeframe: TimeframeName
    candles_written: int = 0
    """Candles inserted or changed."""
    error: str | None = None
    """Why the series could not be completed (null: it was)."""


class CollectionResult(msgspec.Struct):
    """How a collection ended, in total and per series."""

    exchange: str
    candles_written: int
    pairs_total: int
    pairs_failed: int
    pairs: list[PairResult]


class SeriesProgress(msgspec.Struct, kw_only=True):
    """How far one series of a running collection is: updated in place by the collector, read by
    whoever watches the run (the `collect` command's progress bars)."""

    symbol: str
    timeframe: str
    pages_done: int = 0
    pages_total: int | None = None
    """None until the series' windows are planned."""
    candles_written: int = 0
    ended: bool = False
    error: str | None = None


def result_so_far(exchange: str, series: Sequence[SeriesProgress]) -> CollectionResult:
    """What a run that was stopped midway had written; a series it had not finished counts as failed."""
    pairs = [
        PairResult(
            symbol=s.symbol, timeframe=s.timeframe, candles_written=s.candles_written,
            error=s.error if s.ended else "stopped before it was complete",
        )
        for s in series
    ]
    return CollectionResult(
        exchange=exchange,
        candles_written=sum(p.candles_written for p in pairs),
        pairs_total=len(pairs),
        pairs_failed=sum(1 for p in pairs if p.error is not None),
        pairs=pairs,
    )


class ProgressSink(Protocol):
    """Where a run reports how far it is (the task handle)."""

    async def report(self, progress: int, message: str) -> None: ...

    def waiting(self, reason: str, until: float) -> None: ...


class _Progress:
    """Percent = mean over pairs of the share of their pages written (kept as a running sum)."""

    def __init__(self, sink: ProgressSink, pairs: int) -> None:
        self._sink = sink
        self._pairs = pairs
        self._fraction: dict[int, float] = {}
        self._total = 0.0
        self.pairs_done = 0

    def _set(self, index: int, fraction: float) -> None:
        self._total += fraction - self._fraction.get(index, 0.0)
        self._fraction[index] = fraction

    def percent(self) -> int:
        return min(99, int(100 * self._total / max(self._pairs, 1)))

    async def page_done(self, index: int, done: int, total: int) -> None:
        self._set(index, done / total)
        await self._sink.report(self.percent(), "")

    async def pair_done(self, index: int, pair: Pair, error: str | None) -> None:
        self._set(index, 1.0)
        self.pairs_done += 1
        verb = "Failed" if error else "Collected"
        await self._sink.report(
            self.percent(), f"{verb} {pair.symbol} {pair.timeframe} ({self.pairs_done}/{self._pairs})"
        )


class Collector:
    def __init__(
        self,
        pool: Pool,
        client: ExchangeClient,
        *,
        history_candles: int,
        pages_ahead: int,
        max_connections: int,
        cpu: CpuTurns,
        db_retry_seconds: float,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._cpu = cpu
        # Collection may hold at most this many pool connections, so that API requests and the
        # scheduler always find one free while a big backfill writes.
        self._connections = asyncio.Semaphore(max_connections)
        self._client = client
        self._history_candles = history_candles
        self._pages_ahead = pages_ahead
        self._clock = clock
        # How long a page write keeps retrying on fresh connections before its series fails.
        self._db_retry_seconds = db_retry_seconds

    @property
    def exchange(self) -> str:
        return self._client.name

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def collect(
        self, pairs: Sequence[Pair], sink: ProgressSink, *, series: Sequence[SeriesProgress] | None = None
    ) -> CollectionResult:
        """Collect every pair; one failing pair does not stop the others.

        The pairs run in one task group: if the run itself fails or is cancelled, every pair is
        stopped before this returns, so no series is still being written once the task has ended.
        `series` (one per pair, in order) is kept up to date as pages are written.
        """
        if series is None:
            series = [SeriesProgress(symbol=p.symbol, timeframe=p.timeframe) for p in pairs]
        keys = [(p.symbol, p.timeframe) for p in pairs]

        async def find_series(conn: Connection) -> tuple[dict[tuple[str, str], int], dict[int, klines_db.StoredEnd]]:
            ids = await klines_db.series_ids(conn, self.exchange, keys)
            return ids, await klines_db.stored_ends(conn, list(ids.values()))

        async with self._connections:
            ids, ends = await retrying(self._pool, find_series, give_up_after=self._db_retry_seconds)
        progress = _Progress(sink, len(pairs))
        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(
                    self._collect_pair_safely(i, pair, ids[pair.symbol, pair.timeframe],
                                              ends[ids[pair.symbol, pair.timeframe]], progress, sink.waiting,
                                              series[i]),
                    name=f"collect:{pair.symbol}:{pair.timeframe}",
                )
                for i, pair in enumerate(pairs)
            ]
        results = [run.result() for run in runs]
        return CollectionResult(
            exchange=self.exchange,
            candles_written=sum(r.candles_written for r in results),
            pairs_total=len(results),
            pairs_failed=sum(1 for r in results if r.error is not None),
            pairs=results,
        )

    async def _collect_pair_safely(
        self,
        index: int,
        pair: Pair,
        series_id: int,
        stored: klines_db.StoredEnd,
        progress: _Progress,
        on_wait: WaitCallback,
        live: SeriesProgress,
    ) -> PairResult:
        result = PairResult(symbol=pair.symbol, timeframe=pair.timeframe)
        try:
            await self._collect_pair(index, pair, series_id, stored, result, progress, on_wait, live)
        except ExchangeError as exc:
            result.error = str(exc)
        except Exception as exc:  # a bug or a database fault must not sink the other pairs
            log.exception("pair_failed", symbol=pair.symbol, timeframe=pair.timeframe)
            result.error = f"{exc.__class__.__name__}: {exc}"[:500]
        if result.error:
            log.warning("pair_failed", symbol=pair.symbol, timeframe=pair.timeframe, error=result.error)
        live.candles_written, live.error, live.ended = result.candles_written, result.error, True
        await progress.pair_done(index, pair, result.error)
        return result

    async def _collect_pair(
        self,
        index: int,
        pair: Pair,
        series_id: int,
        stored: klines_db.StoredEnd,
        result: PairResult,
        progress: _Progress,
        on_wait: WaitCallback,
        live: SeriesProgress,
    ) -> None:
        now_ms = self._now_ms()
        start = resume_start(stored.resume_at, pair.timeframe, now_ms, self._history_candles)
        windows = plan_windows(start, now_ms, pair.timeframe, self._client.max_page)
        live.pages_total = len(windows)
        stored_until = stored.newest
        done = 0
        async with aclosing(self._fetch_in_order(pair, windows, on_wait)) as fetched:
            async for pages in fetched:
                if any(page.klines for page in pages):
                    async with self._cpu.turn():
                        encoded = klines_db.encode_page(series_id, pages, stored_until=stored_until)
                    written = await self._store(encoded)
                    result.candles_written += written
                    if self._metrics is not None:
                        self._metrics.candles_stored(self._client.name, pair.timeframe, written)
                    last = max(page.klines[-1].open_time for page in pages if page.klines)
                    stored_until = last if stored_until is None else max(stored_until, last)
                done += 1
                live.pages_done, live.candles_written = done, result.candles_written
                await progress.page_done(index, done, len(windows))
        log.info("pair_collected", symbol=pair.symbol, timeframe=pair.timeframe, written=result.candles_written)

    async def _store(self, page: klines_db.EncodedPage) -> int:
        """Write one page; a lost connection is retried on a fresh one (a page is one transaction)."""

        async def write(conn: Connection) -> int:
            return await klines_db.store_page(conn, page)

        async with self._connections:
            return await retrying(self._pool, write, give_up_after=self._db_retry_seconds)

    async def _fetch_in_order(
        self, pair: Pair, windows: list[Window], on_wait: WaitCallback
    ) -> AsyncGenerator[list[KlinePage], None]:
        """Fetch up to `pages_ahead` windows concurrently; yield them in window order."""
        in_flight: deque[asyncio.Task[list[KlinePage]]] = deque()
        try:
            for window in windows:
                in_flight.append(asyncio.create_task(self._fetch_window(pair, window, on_wait)))
                if len(in_flight) >= self._pages_ahead:
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _fetch_window(self, pair: Pair, window: Window, on_wait: WaitCallback) -> list[KlinePage]:
        """All answers for one window, oldest first, without repeated candles.

        A bounded window holds at most one page of candle slots, so one request covers it. The
        open-ended last window pages on while the exchange returns full pages (its clock may be
        ahead of ours); a page ending in a candle that was still open is continued from that
        candle, so the later answer (which may have seen it close) replaces it.
        """
        page_size = self._client.max_page
        pages: list[KlinePage] = []
        start = window.start_ms
        while True:
            page = await self._client.fetch_klines(
                pair.symbol, pair.timeframe, start_ms=start, end_ms=window.end_ms, limit=page_size, on_wait=on_wait
            )
            if pages and page.klines and pages[-1].klines[-1].open_time == page.klines[0].open_time:
                previous = pages.pop()
                pages.append(KlinePage(klines=previous.klines[:-1], as_of_ms=previous.as_of_ms))
            pages.append(page)
            if len(page.klines) < page_size or window.end_ms is not None:
                return pages
            last = page.klines[-1].open_time
            # Re-read an open last candle (unless it is all this page moved on by).
            start = last if page.last_is_open() and last > start else last + 1
