"""One collection run: every (symbol, timeframe) pair concurrently, each series paged forward in order.

Per series: plan windows of at most one page, either from where the stored series ends
(re-reading its last candle: it may have been open; a new series starts DEFAULT_HISTORY_CANDLES
back), or over the holes of the coverage ledger within a requested range (from a date or the
listing; a repair: every hole and failed range). Fetch a few windows ahead of the one being
written, concurrently; check every candle; write them strictly in order, one transaction per page
holding its candles, the ledger ranges they prove and the candles refused. A crash between pages
therefore leaves a series complete up to its last written page, the ledger saying exactly that,
and the next run resumes there: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec

from service.collection.coverage import EXCHANGE_GAP, FAILED, VERIFIED, holes
from service.collection.page_writer import PageWriter
from service.collection.planner import Window, plan_span, plan_windows, resume_start
from service.collection.ranges import LISTING, HistoryStart
from service.collection.validation import check_klines
from service.cpu_turns import CpuTurns
from service.db import klines as klines_db
from service.db import ledger as ledger_db
from service.db.pool import Connection, Pool, connection, retrying
from service.errors import DatabaseUnavailableError, RowRefusedError
from service.exchanges.base import ExchangeClient, ExchangeError, WaitCallback
from service.exchanges.grid import Grid, TimeframeName
from service.logging import get_logger
from service.metrics import Metrics
from service.records import Kline, KlinePage, LedgerRange

__all__ = [
    "CollectionResult", "Collector", "HistoryRequest", "Pair", "PairResult", "ProgressSink", "SeriesPlan",
    "SeriesProgress",
]

log = get_logger(__name__)

T = TypeVar("T")


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
    candles_quarantined: int = 0
    """Candles the exchange sent that failed a check: kept in quarantine, not stored."""
    exchange_gaps: int = 0
    """Ranges the exchange has no candles for (confirmed by a second fetch) found by this run."""
    error: str | None = None
    """Why the series could not be completed (null: it was)."""


class CollectionResult(msgspec.Struct):
    """How a collection ended, in total and per series."""

    exchange: str
    candles_written: int
    pairs_total: int
    pairs_failed: int
    pairs: list[PairResult]
    candles_quarantined: int = 0


class SeriesProgress(msgspec.Struct, kw_only=True):
    """How far one series of a running collection is: updated in place by the collector, read by
    whoever watches the run (the `collect` command's progress bars)."""

    symbol: str
    timeframe: str
    pages_done: int = 0
    pages_total: int | None = None
    """None until the series' windows are planned."""
    candles_written: int = 0
    candles_quarantined: int = 0
    ended: bool = False
    error: str | None = None


class HistoryRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Which part of each series' history a run covers.

    No start: resume where the stored series ends (the last DEFAULT_HISTORY_CANDLES for a new one).
    A start: every candle from it (or from the listing) on that the ledger does not hold as
    verified or as an exchange gap. Repair: the holes and failed ranges of what the ledger covers,
    and exchange gaps due their one re-check; never a verified range.
    """

    start: HistoryStart | None = None
    end: int | None = None
    """Exclusive, epoch ms; None: up to now, including the candle still open."""
    repair: bool = False
    recheck_gaps_after_ms: int = 24 * 3600 * 1000
    """Repair: an exchange gap confirmed this long ago is fetched once more."""


class SeriesPlan(msgspec.Struct, kw_only=True):
    """What a run will fetch for one series, and what it already holds."""

    symbol: str
    timeframe: str
    series_id: int
    grid: Grid
    """Where the series' candles open (the venue's grid, or the one the series learnt)."""
    windows: list[Window]
    start_ms: int | None
    """First open time the run covers (None: nothing to fetch, e.g. no candles on the exchange)."""
    end_ms: int | None
    """Exclusive bound of the bounded part; the last window may also run on past it (open-ended)."""
    listing_start: int | None
    candles_to_fetch: int
    """Candle slots in the windows (an upper bound: exchange gaps have none)."""
    listing_unknown: bool = False
    """The windows may start before the listing: only slots between two candles of one window can be gaps."""
    requests: int = 0
    """Requests the windows take: one each, and one more for an open-ended last window that fills a
    page (it ends in the open candle, which is read again) where the venue does not mark that candle."""
    weight: int = 0
    """What those requests cost against the venue's limit, in its unit."""
    unavailable_until: int | None = None
    """The range asked for starts before the venue's reach (Kraken's 720 most recent candles): the
    candles before this open time cannot be fetched and are not planned."""


def result_so_far(exchange: str, series: Sequence[SeriesProgress]) -> CollectionResult:
    """What a run that was stopped midway had written; a series it had not finished counts as failed."""
    pairs = [
        PairResult(
            symbol=s.symbol, timeframe=s.timeframe, candles_written=s.candles_written,
            candles_quarantined=s.candles_quarantined,
            error=s.error if s.ended else "stopped before it was complete",
        )
        for s in series
    ]
    return _result(exchange, pairs)


def _result(exchange: str, pairs: list[PairResult]) -> CollectionResult:
    return CollectionResult(
        exchange=exchange,
        candles_written=sum(p.candles_written for p in pairs),
        pairs_total=len(pairs),
        pairs_failed=sum(1 for p in pairs if p.error is not None),
        pairs=pairs,
        candles_quarantined=sum(p.candles_quarantined for p in pairs),
    )


class ProgressSink(Protocol):
    """Where a run reports how far it is (the task handle)."""

    async def report(self, progress: int, message: str, *, eta_seconds: float | None = None) -> None: ...

    def waiting(self, reason: str, until: float) -> None: ...


class _Progress:
    """Percent = mean over pairs of the share of their pages written (kept as a running sum).

    The ETA comes from measured throughput: pages written so far over the time since the first
    page began, applied to the pages left (known once every series is planned).
    """

    def __init__(self, sink: ProgressSink, pairs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._pairs = pairs
        self._fraction: dict[int, float] = {}
        self._total = 0.0
        self.pairs_done = 0
        self._clock = clock
        self._began = clock()
        # Per series and summed as they change (a run of 300 series reports 300 times).
        self._pages_total: dict[int, int] = {}
        self._pages_done: dict[int, int] = {}
        self._total_pages = 0
        self._done_pages = 0

    def _set(self, index: int, fraction: float) -> None:
        self._total += fraction - self._fraction.get(index, 0.0)
        self._fraction[index] = fraction

    def percent(self) -> int:
        return min(99, int(100 * self._total / max(self._pairs, 1)))

    def planned(self, index: int, pages: int) -> None:
        first_time = index not in self._pages_total
        self._total_pages += pages - self._pages_total.get(index, 0)
        self._pages_total[index] = pages
        if first_time and len(self._pages_total) == self._pairs:
            # Every series is planned (listing searches, learnt grids): the pages' time starts here,
            # as the docstring says; counting the planning too made early estimates long.
            self._began = self._clock()

    def _pages_finished(self, index: int, done: int) -> None:
        self._done_pages += done - self._pages_done.get(index, 0)
        self._pages_done[index] = done

    def eta_seconds(self) -> float | None:
        """Seconds left at the throughput measured so far (None until it can be measured)."""
        done = self._done_pages
        if len(self._pages_total) < self._pairs or done == 0:
            return None
        left = self._total_pages - done
        return max(left, 0) * (self._clock() - self._began) / done

    async def page_done(self, index: int, done: int, total: int) -> None:
        self._set(index, done / total)
        self._pages_finished(index, done)
        await self._sink.report(self.percent(), "", eta_seconds=self.eta_seconds())

    async def pair_done(self, index: int, pair: Pair, error: str | None) -> None:
        self._set(index, 1.0)
        self._pages_finished(index, self._pages_total.get(index, 0))
        self.pairs_done += 1
        verb = "Failed" if error else "Collected"
        await self._sink.report(
            self.percent(), f"{verb} {pair.symbol} {pair.timeframe} ({self.pairs_done}/{self._pairs})",
            eta_seconds=self.eta_seconds(),
        )


class _Fetched(msgspec.Struct):
    """One window's answers, and the exchange gaps found in it (confirmed by a second fetch)."""

    window: Window
    pages: list[KlinePage]
    gaps: list[LedgerRange]


class _CheckedPage(msgspec.Struct):
    """A window ready to write: its valid candles (encoded too), the refused ones with their reason,
    and the ledger ranges the valid ones prove."""

    series_id: int
    pages: list[KlinePage]
    rejected: list[tuple[Kline, str]]
    ranges: list[LedgerRange]
    encoded: klines_db.EncodedPage


# A candle may open this far past our clock before it counts as "in the future" (clock skew).
_FUTURE_TOLERANCE_MS = 5_000
# An exchange gap is confirmed by a second fetch (checks = 2) and re-checked once a day later (3).
_GAP_CONFIRMED = 2
_GAP_RECHECKED = 3


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
        connections: asyncio.Semaphore | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._cpu = cpu
        # Collection may hold at most this many pool connections, so that API requests and the
        # scheduler always find one free while a big backfill writes: `connections`, shared by the
        # collectors of every venue, or one of its own.
        self._connections = connections or asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._fetching = _Busy(lambda seconds: metrics.ingest_phase("fetch", seconds) if metrics else None)
        self._client = client
        self._history_candles = history_candles
        self._pages_ahead = pages_ahead
        self._clock = clock
        # How long a page write keeps retrying on fresh connections before its series fails.
        self._db_retry_seconds = db_retry_seconds

    @property
    def exchange(self) -> str:
        return self._client.name

    @property
    def client(self) -> ExchangeClient:
        return self._client

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _db(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        async with self._connections:
            return await retrying(self._pool, work, give_up_after=self._db_retry_seconds)

    def _page_write_done(self, pages: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.page_write(pages, seconds, self._clock())

    async def _series(self, pairs: Sequence[Pair]) -> klines_db.RunStart:
        keys = [(p.symbol, p.timeframe) for p in pairs]

        async def run_start(conn: Connection) -> klines_db.RunStart:
            return await klines_db.run_start(conn, self.exchange, keys)

        return await self._db(run_start)

    async def plan(self, pairs: Sequence[Pair], request: HistoryRequest) -> list[SeriesPlan]:
        """What a run of `pairs` would fetch now, series by series (asks the exchange only for
        listing starts it does not know yet, and remembers them)."""
        start = await self._series(pairs)
        plans = []
        for pair in pairs:
            series = start.series[pair.symbol, pair.timeframe]
            plans.append(
                await self._plan_pair(pair, series, request, None)
            )
        return plans

    async def _listing(self, series_id: int, pair: Pair, known: int | None, on_wait: WaitCallback | None) -> int | None:
        if known is not None:
            return known
        listing = await self._client.fetch_listing_start(pair.symbol, pair.timeframe, on_wait=on_wait)
        if listing is not None:

            async def remember(conn: Connection) -> None:
                await ledger_db.set_listing_start(conn, series_id, listing)

            await self._db(remember)
        return listing

    async def _series_grid(self, pair: Pair, series: klines_db.RunSeries, on_wait: WaitCallback | None) -> Grid:
        """The series' grid: the venue's where it documents it; else where the series learnt its
        candles open, learnt now from the venue's newest candle if never (one request, once a series)."""
        grid = self._client.grid(pair.timeframe)
        if grid.anchored or series.grid_offset_ms is not None:
            return grid.with_learnt(series.grid_offset_ms)
        now = self._now_ms()
        newest = await self._client.fetch_klines(
            pair.symbol, pair.timeframe, start_ms=max(grid.shift(grid.align_open(now), -2), 0), end_ms=None,
            limit=3, on_wait=on_wait,
        )
        if not newest.klines:
            return grid  # nothing to learn from yet: the first guess, learnt at a later run
        learnt = grid.anchored_at(newest.klines[-1].open_time)

        async def remember(conn: Connection) -> None:
            await klines_db.set_grid_offset(conn, series.series_id, learnt.offset_ms)

        await self._db(remember)
        if learnt.offset_ms != grid.offset_ms:
            log.info("grid_anchor_learnt", symbol=pair.symbol, timeframe=pair.timeframe, offset_ms=learnt.offset_ms)
        return learnt

    async def _plan_pair(
        self,
        pair: Pair,
        series: klines_db.RunSeries,
        request: HistoryRequest,
        on_wait: WaitCallback | None,
    ) -> SeriesPlan:
        series_id, stored, listing_known = series.series_id, series.stored, series.listing_start
        tf, page = pair.timeframe, self._client.max_page
        grid = await self._series_grid(pair, series, on_wait)
        now = self._now_ms()
        current_open = grid.align_open(now)
        plan = SeriesPlan(
            symbol=pair.symbol, timeframe=tf, series_id=series_id, grid=grid, windows=[], start_ms=None, end_ms=None,
            listing_start=listing_known, candles_to_fetch=0,
        )
        reach = self._client.reach_start(tf, now)
        if request.start is None and not request.repair:
            resume_at = stored.resume_at
            if reach is not None and resume_at is not None and resume_at < reach:
                # The oldest candle stored open is out of the venue's reach (an outage longer than
                # Kraken's 720 candles): it can never be read again, so it no longer holds the
                # resume point; it stays stored as open, which it was when last seen.
                resume_at = stored.newest if stored.newest is not None and stored.newest >= reach else reach
            start = resume_start(resume_at, grid, now, self._history_candles)
            if listing_known is not None:
                start = max(start, grid.align_up(listing_known))
            elif stored.newest is None:
                # A new series whose listing is not known: no candles before the first one answered
                # count as an exchange gap (they may predate the listing). Costs no extra request.
                plan.listing_unknown = True
            if reach is not None and start < reach:
                plan.unavailable_until, start = reach, reach
            plan.windows = plan_windows(start, now, grid, page)
            plan.start_ms, plan.end_ms = start, current_open
        else:
            plan.listing_start = await self._listing(series_id, pair, listing_known, on_wait)
            if plan.listing_start is None:
                return plan
            await self._plan_range(plan, request, now, current_open, reach)
        slots = [_slots(grid, w, current_open) for w in plan.windows]
        plan.candles_to_fetch = sum(slots)
        rereads_open_candle = (
            bool(plan.windows) and plan.windows[-1].end_ms is None and slots[-1] >= page
            and not self._client.marks_open_candle
        )
        plan.requests = len(slots) + rereads_open_candle
        weigh = self._client.klines_weight
        limits = [self._page_limit(grid, w, current_open) for w in plan.windows]
        plan.weight = sum(map(weigh, limits)) + rereads_open_candle * weigh(page)
        return plan

    def _page_limit(self, grid: Grid, window: Window, current_open: int) -> int:
        """How many candles a request for `window` asks: a page, or the window's slots where the venue
        weighs a request by its size and they cost less (USD-M: 1 to 10 by `limit`). An open-ended
        window asks one more than it expects (the venue's clock may be a candle ahead; a full
        answer is read on from anyway); where the grid is still a guess (weeks not learnt yet), one
        more slot may lie in the window."""
        page = self._client.max_page
        slots = _slots(grid, window, current_open) + (window.end_ms is None) + (not grid.anchored)
        weigh = self._client.klines_weight
        return slots if slots < page and weigh(slots) < weigh(page) else page

    async def _plan_range(
        self, plan: SeriesPlan, request: HistoryRequest, now: int, current_open: int, reach: int | None
    ) -> None:
        grid, page = plan.grid, self._client.max_page
        listing = plan.listing_start
        assert listing is not None
        open_ended = False
        if request.repair:

            async def earliest(conn: Connection) -> int | None:
                return await ledger_db.earliest_start(conn, plan.series_id)

            first = await self._db(earliest)
            if first is None:
                return  # nothing collected with a ledger yet: nothing to repair
            start, end = max(first, listing), current_open
        else:
            start = listing if request.start == LISTING or request.start is None else max(
                grid.align_up(int(request.start)), listing
            )
            end = current_open
            if request.end is not None:
                end = min(end, grid.align_up(request.end))
            open_ended = request.end is None or request.end > current_open
        if reach is not None and start < reach:
            # Older than the venue still serves: said in the plan and in coverage, never fetched.
            plan.unavailable_until, start = min(reach, end), max(start, reach)
        if start >= end and not open_ended:
            return

        async def ranges(conn: Connection) -> list[LedgerRange]:
            return await ledger_db.ledger_ranges(conn, plan.series_id, start, max(end, start + 1))

        ledger = await self._db(ranges) if start < end else []
        spans = holes(ledger, start, end) if start < end else []
        windows: list[Window] = []
        for a, b in spans:
            windows += plan_span(a, b, grid, page)
        if request.repair:
            due = now - request.recheck_gaps_after_ms
            for r in ledger:
                stale = r.checked_at is not None and r.checked_at.timestamp() * 1000 <= due
                if r.kind == EXCHANGE_GAP and r.checks < _GAP_RECHECKED and stale:
                    windows += plan_span(max(r.start, start), min(r.end, end), grid, page, recheck=True)
            windows.sort(key=lambda w: w.start_ms)
        if open_ended:
            # The part from the current candle on (and the candle itself, open) is fetched open-ended.
            tail_from = spans[-1][0] if spans and spans[-1][1] == end else end
            if windows and windows[-1].start_ms >= tail_from:
                windows = [w for w in windows if w.start_ms < tail_from]
            windows += plan_windows(tail_from, now, grid, page)
        plan.windows = windows
        plan.start_ms, plan.end_ms = start, end

    async def collect(
        self,
        pairs: Sequence[Pair],
        sink: ProgressSink,
        *,
        series: Sequence[SeriesProgress] | None = None,
        request: HistoryRequest | None = None,
        task_id: uuid.UUID | None = None,
    ) -> CollectionResult:
        """Collect every pair; one failing pair does not stop the others.

        The pairs run in one task group: if the run itself fails or is cancelled, every pair is
        stopped before this returns, so no series is still being written once the task has ended.
        `series` (one per pair, in order) is kept up to date as pages are written.
        """
        if series is None:
            series = [SeriesProgress(symbol=p.symbol, timeframe=p.timeframe) for p in pairs]
        start = await self._series(pairs)
        prices_by_database = start.candle_check_enforced
        if not prices_by_database:
            log.warning(
                "candle_check_missing", constraint=klines_db.CANDLE_CHECK,
                detail="klines lacks its CHECK constraint: every candle's prices are checked here, more slowly",
            )
        progress = _Progress(sink, len(pairs))

        async def store(pages: list[klines_db.PageWrite]) -> list[int]:
            async def write(conn: Connection) -> list[int]:
                return await klines_db.store_pages(conn, pages, task_id=task_id)

            return await self._db(write)

        writer = PageWriter(store, writers=self._max_connections, on_write=self._page_write_done)
        run = _Run(request or HistoryRequest(), progress, sink.waiting, task_id, prices_by_database, writer)
        try:
            async with asyncio.TaskGroup() as group:
                runs = [
                    group.create_task(
                        self._collect_pair_safely(i, pair, start.series[pair.symbol, pair.timeframe], run, series[i]),
                        name=f"collect:{pair.symbol}:{pair.timeframe}",
                    )
                    for i, pair in enumerate(pairs)
                ]
        finally:
            # A stopped run writes nothing more once this returns (a batch under way rolls back).
            await writer.aclose()
        return _result(self.exchange, [r.result() for r in runs])

    async def _collect_pair_safely(
        self,
        index: int,
        pair: Pair,
        start: klines_db.RunSeries,
        run: _Run,
        live: SeriesProgress,
    ) -> PairResult:
        result = PairResult(symbol=pair.symbol, timeframe=pair.timeframe)
        state = _PairState()
        series_id, stored = start.series_id, start.stored
        try:
            plan = await self._plan_pair(pair, start, run.request, run.on_wait)
            state.plan = plan
            await self._collect_pair(index, pair, plan, stored, result, run, live, state)
        except ExchangeError as exc:
            result.error = str(exc)
            await self._record_failed(pair, series_id, state, result.error)
        except DatabaseUnavailableError as exc:  # a fault, not a bug: no traceback (warned below)
            result.error = f"{exc.__class__.__name__}: {exc}"[:500]
        except Exception as exc:  # a bug must not sink the other pairs
            log.exception("pair_failed", symbol=pair.symbol, timeframe=pair.timeframe)
            result.error = f"{exc.__class__.__name__}: {exc}"[:500]
        if result.error:
            log.warning("pair_failed", symbol=pair.symbol, timeframe=pair.timeframe, error=result.error)
        live.candles_written, live.error, live.ended = result.candles_written, result.error, True
        live.candles_quarantined = result.candles_quarantined
        await run.progress.pair_done(index, pair, result.error)
        return result

    async def _record_failed(self, pair: Pair, series_id: int, state: _PairState, error: str) -> None:
        """Mark what the failed series did not fetch as `failed` in the ledger (only where it holds
        no verified range or exchange gap: a failed fetch proves nothing about those)."""
        plan = state.plan
        if plan is None or state.next_window >= len(plan.windows):
            return
        now_open = plan.grid.align_open(self._now_ms())
        spans: list[tuple[int, int]] = []
        for window in plan.windows[state.next_window:]:
            end = now_open if window.end_ms is None else window.end_ms + 1
            if end <= window.start_ms:
                continue
            if spans and spans[-1][1] >= window.start_ms:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((window.start_ms, end))

        async def record(conn: Connection) -> None:
            async with conn.transaction():
                for a, b in spans:
                    settled = await ledger_db.ledger_ranges(conn, series_id, a, b)
                    for hole_start, hole_end in holes(settled, a, b):
                        await ledger_db.record_range(
                            conn, series_id, LedgerRange(
                                hole_start, hole_end, FAILED, checked_at=datetime.fromtimestamp(self._clock(), UTC),
                                detail=error[:300],
                            ),
                        )

        # One attempt: what is not recorded as failed is a hole all the same, and a series that
        # failed must not hold its place (or a write connection) waiting for the database.
        try:
            async with connection(self._pool) as conn:
                await record(conn)
        except DatabaseUnavailableError:
            log.warning("failed_range_not_recorded", symbol=pair.symbol, timeframe=pair.timeframe)

    async def _collect_pair(
        self,
        index: int,
        pair: Pair,
        plan: SeriesPlan,
        stored: klines_db.StoredEnd,
        result: PairResult,
        run: _Run,
        live: SeriesProgress,
        state: _PairState,
    ) -> None:
        windows = plan.windows
        live.pages_total = len(windows)
        run.progress.planned(index, len(windows))
        stored_until = stored.newest
        done = 0
        fetching = self._fetch_in_order(pair, plan.grid, windows, run.on_wait, plan.listing_unknown)
        async with aclosing(fetching) as fetched:
            async for window_pages in fetched:
                last = await self._write_window(pair, plan, window_pages, stored_until, result, run)
                if last is not None:
                    stored_until = last if stored_until is None else max(stored_until, last)
                done += 1
                state.next_window = done
                live.pages_done, live.candles_written = done, result.candles_written
                live.candles_quarantined = result.candles_quarantined
                await run.progress.page_done(index, done, len(windows) or 1)
        if not windows:
            await run.progress.page_done(index, 1, 1)
        log.info(
            "pair_collected", symbol=pair.symbol, timeframe=pair.timeframe, written=result.candles_written,
            quarantined=result.candles_quarantined, exchange_gaps=result.exchange_gaps,
        )

    async def _write_window(
        self,
        pair: Pair,
        plan: SeriesPlan,
        fetched: _Fetched,
        stored_until: int | None,
        result: PairResult,
        run: _Run,
    ) -> int | None:
        """Check, encode and store one window's candles with the ledger ranges they prove; returns
        the open time of the newest candle written (None: none)."""
        tf, series_id = pair.timeframe, plan.series_id
        if not fetched.gaps and not any(page.klines for page in fetched.pages):
            return None  # an empty window (before the listing, say): nothing to check or record
        async with self._cpu.turn():
            began = time.perf_counter()
            checked = self._checked_page(
                plan.grid, series_id, fetched, stored_until, prices_by_database=run.prices_by_database
            )
            if self._metrics is not None:
                self._metrics.ingest_phase("check_encode", time.perf_counter() - began)
        try:
            written = await self._store(checked, run)
        except RowRefusedError as exc:
            if not run.prices_by_database:
                raise  # every candle was checked here already: a bug, not a bad price
            # A price the checks left to PostgreSQL is bad: check every candle here, for the
            # reasons, and write the page without the refused ones.
            log.info("page_checked_again", symbol=pair.symbol, timeframe=tf, refused=exc.detail)
            async with self._cpu.turn():
                checked = self._checked_page(plan.grid, series_id, fetched, stored_until, prices_by_database=False)
            written = await self._store(checked, run)
        if written is None:
            return None
        rejected = checked.rejected
        result.candles_written += written
        result.candles_quarantined += len(rejected)
        result.exchange_gaps += len(fetched.gaps)
        if self._metrics is not None:
            self._metrics.candles_stored(self._client.name, tf, written)
            for _, reason in rejected:
                self._metrics.candle_quarantined(self._client.name, tf, reason)
        if rejected:
            log.warning(
                "candles_quarantined", symbol=pair.symbol, timeframe=tf, count=len(rejected), first=rejected[0][1]
            )
        return max((page.klines[-1].open_time for page in checked.pages if page.klines), default=None)

    def _checked_page(
        self, grid: Grid, series_id: int, fetched: _Fetched, stored_until: int | None, *, prices_by_database: bool
    ) -> _CheckedPage:
        """A window's candles checked (the rejected ones apart), encoded, with the ledger ranges they prove."""
        now = self._now_ms() + _FUTURE_TOLERANCE_MS
        pages: list[KlinePage] = []
        rejected: list[tuple[Kline, str]] = []
        for page in fetched.pages:
            valid, refused = check_klines(
                page.klines, grid, now, prices_by_database=prices_by_database, plain=page.copy_fields is not None
            )
            rejected += [(r.kline, r.reason) for r in refused]
            pages.append(page if not refused else page.keeping(valid))
        checked_at = datetime.fromtimestamp(self._clock(), UTC)
        ranges = [
            msgspec.structs.replace(r, checked_at=checked_at)
            for r in _verified_runs(grid, fetched.window, pages) + fetched.gaps
        ]
        encoded = klines_db.encode_page(series_id, pages, stored_until=stored_until)
        return _CheckedPage(series_id, pages, rejected, ranges, encoded)

    async def _store(self, page: _CheckedPage, run: _Run) -> int | None:
        """Write a checked page (in a batch with other series' pages); None when it holds nothing to write."""
        write = klines_db.PageWrite(page.encoded, page.ranges, page.rejected)
        if write.empty:
            return None
        candles = sum(len(p.klines) for p in page.pages)
        return await run.writer.write(write, candles)

    async def _fetch_in_order(
        self, pair: Pair, grid: Grid, windows: list[Window], on_wait: WaitCallback, listing_unknown: bool
    ) -> AsyncGenerator[_Fetched, None]:
        """Fetch up to `pages_ahead` windows concurrently; yield them in window order."""
        in_flight: deque[asyncio.Task[_Fetched]] = deque()
        try:
            for window in windows:
                in_flight.append(
                    asyncio.create_task(self._fetch_window(pair, grid, window, on_wait, listing_unknown))
                )
                if len(in_flight) >= self._pages_ahead:
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _fetch_window(
        self, pair: Pair, grid: Grid, window: Window, on_wait: WaitCallback, listing_unknown: bool = False
    ) -> _Fetched:
        """All answers for one window, oldest first, without repeated candles, and its exchange gaps.

        A bounded window holds at most one page of candle slots, so one request covers it. The
        open-ended last window pages on while the exchange returns full pages (its clock may be
        ahead of ours); a page ending in a candle that was still open is continued from that
        candle, so the later answer (which may have seen it close) replaces it.
        """
        page_size = self._page_limit(grid, window, grid.align_open(self._now_ms()))
        pages: list[KlinePage] = []
        start = window.start_ms
        while True:
            with self._fetching:
                page = await self._client.fetch_klines(
                    pair.symbol, pair.timeframe, start_ms=start, end_ms=window.end_ms, limit=page_size, on_wait=on_wait
                )
            if pages and page.klines and pages[-1].klines[-1].open_time == page.klines[0].open_time:
                pages.append(pages.pop().without_last())
            pages.append(page)
            if len(page.klines) < page_size or window.end_ms is not None or page.venue_says_last_is_open:
                break
            last = page.klines[-1].open_time
            # Re-read an open last candle (unless it is all this page moved on by).
            start = last if page.last_is_open() and last > start else last + 1
        gaps = await self._confirm_gaps(pair, grid, window, pages, on_wait, listing_unknown)
        return _Fetched(window=window, pages=pages, gaps=gaps)

    async def _confirm_gaps(
        self,
        pair: Pair,
        grid: Grid,
        window: Window,
        pages: list[KlinePage],
        on_wait: WaitCallback,
        listing_unknown: bool,
    ) -> list[LedgerRange]:
        """Runs of closed candle slots the answers skipped, each confirmed empty by a second fetch.

        The second fetch asks for the first candle at or after the run's start: the run is an
        exchange gap only if that candle lies past its end (the exchange has candles after it, and
        none in it). A run after the last candle of an open-ended window is no gap: the exchange
        may not have published those candles yet.
        """
        limit = _closed_limit(grid, window, pages)
        first = grid.align_up(window.start_ms)
        present = _present_runs(grid, pages)
        candidates: list[tuple[int, int]] = []
        at = first
        if listing_unknown:
            # The window may lie before the listing (fetched concurrently, it cannot know whether
            # an earlier one had candles): only runs between two of its candles can be gaps.
            if not present:
                return []
            at = present[0][0]
        for run_start, run_end in present:
            if run_start >= limit:
                break
            if run_start > at:
                candidates.append((at, run_start))
            at = max(at, run_end)
        if at < limit and window.end_ms is not None and not listing_unknown:
            candidates.append((at, limit))
        gaps: list[LedgerRange] = []
        checks = _GAP_RECHECKED if window.recheck else _GAP_CONFIRMED
        for gap_start, gap_end in candidates:
            after = await self._first_open_from(pair, grid, gap_start, gap_end, on_wait)
            if after is not None and after >= gap_end:
                gaps.append(LedgerRange(gap_start, gap_end, EXCHANGE_GAP, checks=checks))
        return gaps

    async def _first_open_from(
        self, pair: Pair, grid: Grid, start: int, gap_end: int, on_wait: WaitCallback
    ) -> int | None:
        """Open time of the venue's first candle at or after `start` (None: none up to now).

        Asked in bounded windows, which every venue pages the same way (some count a page in slots,
        not candles): the first covers the gap and the slot after it, so one request settles a gap
        shorter than a page; the next ones walk on a page of slots at a time, up to _GAP_SCAN_PAGES.
        """
        page = self._client.max_page
        now = self._now_ms()
        slots = min(grid.slots_between(start, gap_end) + 1, page)
        for _ in range(_GAP_SCAN_PAGES):
            if start > now:
                return None
            end = grid.shift(start, slots) - 1
            again = await self._client.fetch_klines(
                pair.symbol, pair.timeframe, start_ms=start, end_ms=end, limit=slots, on_wait=on_wait
            )
            if again.klines:
                return again.klines[0].open_time
            start, slots = end + 1, page
        return None


# Requests a gap confirmation may spend walking past the gap to the venue's next candle.
_GAP_SCAN_PAGES = 3


class _Busy:
    """Wall time during which at least one of some concurrent operations was under way (`with busy:`
    around each); each stretch is handed to `done` when the last one ends."""

    def __init__(self, done: Callable[[float], None]) -> None:
        self._done = done
        self._active = 0
        self._since = 0.0

    def __enter__(self) -> None:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def __exit__(self, *exc: object) -> None:
        self._active -= 1
        if self._active == 0:
            self._done(time.perf_counter() - self._since)


class _Run(msgspec.Struct):
    """What every series of one run shares."""

    request: HistoryRequest
    progress: _Progress
    on_wait: WaitCallback
    task_id: uuid.UUID | None
    prices_by_database: bool
    """Plain candles' prices are left to the klines CHECK constraint (False: it is missing)."""
    writer: PageWriter


class _PairState(msgspec.Struct):
    plan: SeriesPlan | None = None
    next_window: int = 0
    """Index of the first window not written yet."""


def _fixed_step(grid: Grid) -> int:
    """A candle's length in ms; 0 for months (calendar months: next_open does the maths)."""
    return 0 if grid.months else grid.step_ms


def _consecutive(klines: Sequence[Kline], step: int) -> bool:
    """Whether the candles' open times are first, first + step, first + 2 step… (compared in C)."""
    if not klines:
        return True
    first = klines[0].open_time
    return [k.open_time for k in klines] == list(range(first, first + len(klines) * step, step))


def _present_runs(grid: Grid, pages: Sequence[KlinePage]) -> list[tuple[int, int]]:
    """The aligned open times the answers hold, as sorted, disjoint runs of consecutive slots
    [start, end) (misaligned candles are quarantined, not counted). An answer of consecutive
    candles is one run, found without a step per candle."""
    step = _fixed_step(grid)
    spans: list[tuple[int, int]] = []
    if step and all(_consecutive(page.klines, step) for page in pages):
        offset = grid.offset_ms
        spans = [
            (page.klines[0].open_time, page.klines[-1].open_time + step)
            for page in pages
            if page.klines and (page.klines[0].open_time - offset) % step == 0
        ]
    else:
        times = sorted({k.open_time for page in pages for k in page.klines})
        for t in times:
            if not grid.is_open_time(t):
                continue
            end = t + step if step else grid.next_open(t)
            spans.append((t, end))
    spans.sort()
    runs: list[tuple[int, int]] = []
    for start, end in spans:
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


def _last_slot_before(klines: Sequence[Kline], step: int, limit: int) -> int:
    """The open time of the last of these consecutive candles that opens before `limit`."""
    first = klines[0].open_time
    return first + (limit - 1 - first) // step * step


def _slots(grid: Grid, window: Window, current_open: int) -> int:
    """Candle slots a window asks for (an open-ended one: up to and including the open candle)."""
    first = grid.align_up(window.start_ms)
    if window.end_ms is not None:
        return grid.slots_between(first, window.end_ms + 1)
    return grid.slots_between(first, current_open) + 1


def _closed_limit(grid: Grid, window: Window, pages: Sequence[KlinePage]) -> int:
    """Open time past the last slot of the window that had closed when the exchange answered."""
    as_of = min((p.as_of_ms for p in pages), default=0)
    limit = grid.align_open(as_of)  # the slot open at as_of, and those after it, had not closed
    if window.end_ms is not None:
        limit = min(limit, grid.align_up(window.end_ms + 1))
    return limit


def _verified_runs(grid: Grid, window: Window, pages: Sequence[KlinePage]) -> list[LedgerRange]:
    """Runs of consecutive closed, valid candles of the window: each becomes a verified range."""
    limit = _closed_limit(grid, window, pages)
    first = grid.align_up(window.start_ms)
    runs: list[LedgerRange] = []
    run_start: int | None = None
    expected = -1
    step = _fixed_step(grid)
    for page in pages:
        closed = page.klines[: page.closed_count()]
        if step and closed and _consecutive(closed, step):
            # One run for the whole page, clipped to [first, limit): no step per candle.
            start = max(closed[0].open_time, first)
            if start < first or (start - closed[0].open_time) % step:
                start += step - (start - closed[0].open_time) % step
            end = min(closed[-1].open_time + step, limit)
            if start < end:
                if run_start is None or start != expected:
                    if run_start is not None:
                        runs.append(LedgerRange(run_start, expected, VERIFIED))
                    run_start = start
                expected = end if end == closed[-1].open_time + step else _last_slot_before(closed, step, end) + step
            continue
        for kline in closed:
            t = kline.open_time
            if t < first or t >= limit:
                continue
            if run_start is None or t != expected:
                if run_start is not None:
                    runs.append(LedgerRange(run_start, expected, VERIFIED))
                run_start = t
            expected = t + step if step else grid.next_open(t)
    if run_start is not None:
        runs.append(LedgerRange(run_start, expected, VERIFIED))
    return runs
