"""Coverage reports: what the ledger says about a series over a window (GET /api/v1/coverage), and a
summary of every configured series (the admin status).

The window is half-open [start, end) of candle open times, aligned to the timeframe (calendar months
for 1M), and never reaches past the current candle: every candle in it has closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from service.collection.coverage import EXCHANGE_GAP, FAILED, UNAVAILABLE, VERIFIED, LedgerRange, holes
from service.collection.ranges import LISTING, HistoryStart, parse_end, parse_start
from service.db import coverage as coverage_db
from service.db import ledger as ledger_db
from service.db import symbols as symbols_db
from service.db.pool import Pool, connection
from service.errors import InvalidInputError, NotFoundError
from service.exchanges.grid import Grid
from service.exchanges.venue_set import VenueSet

__all__ = [
    "ConfiguredCoverage", "CoverageReport", "CoverageReports", "ReportedRange", "SeriesCoverage", "coverage_report",
    "report_window",
]


class ReportedRange(msgspec.Struct, frozen=True):
    """A ledger range clipped to a report's window, with the candle slots it spans there."""

    range: LedgerRange
    candles: int


class CoverageReport(msgspec.Struct, frozen=True):
    """What the ledger says about one series over [window_start, window_end)."""

    window_start: int
    window_end: int
    candles_expected: int
    candles_verified: int
    candles_exchange_gap: int
    candles_missing: int
    completeness_percent: float
    candles_unavailable: int
    freshness_lag_seconds: float | None
    ranges: list[ReportedRange]
    holes: list[tuple[int, int, int]]
    """(start, end, candles) of each hole, oldest first."""

    @property
    def complete(self) -> bool:
        return not self.holes


def coverage_report(
    grid: Grid,
    ranges: Sequence[LedgerRange],
    window_start: int,
    window_end: int,
    *,
    now_ms: int,
    newest_verified_end: int | None,
    reach_start: int | None = None,
) -> CoverageReport:
    """The report of [window_start, window_end) (aligned open times) from the series' sorted ledger
    `ranges`; `newest_verified_end` is the end of the series' newest verified range anywhere (not
    only in the window), for the freshness lag. `reach_start`: the oldest open time the venue still
    serves (None: all of it); the holes before it are reported `unavailable`, not as holes."""
    clipped: list[ReportedRange] = []
    counted = {VERIFIED: 0, EXCHANGE_GAP: 0, FAILED: 0, UNAVAILABLE: 0}
    for r in ranges:
        start, end = max(r.start, window_start), min(r.end, window_end)
        if end <= start:
            continue
        candles = grid.slots_between(start, end)
        counted[r.kind] += candles
        clipped.append(ReportedRange(msgspec.structs.replace(r, start=start, end=end), candles))
    found = []
    for s, e in holes(ranges, window_start, window_end):
        if reach_start is not None and s < reach_start:
            # Out of the venue's reach: said plainly, never a hole a repair would chase forever.
            cut = min(e, reach_start)
            candles = grid.slots_between(s, cut)
            counted[UNAVAILABLE] += candles
            clipped.append(ReportedRange(LedgerRange(s, cut, UNAVAILABLE), candles))
            s = cut
        if s < e:
            found.append((s, e, grid.slots_between(s, e)))
    clipped.sort(key=lambda r: r.range.start)
    expected = grid.slots_between(window_start, window_end)
    settled = counted[VERIFIED] + counted[EXCHANGE_GAP] + counted[UNAVAILABLE]
    # Rounded down: 100 means complete, never "99.996 % rounded up".
    percent = 100.0 if expected == 0 else min(settled * 10_000 // expected, 10_000) / 100
    lag = None if newest_verified_end is None else max(now_ms - newest_verified_end, 0) / 1000
    return CoverageReport(
        window_start=window_start, window_end=window_end, candles_expected=expected,
        candles_verified=counted[VERIFIED], candles_exchange_gap=counted[EXCHANGE_GAP],
        candles_missing=sum(c for *_, c in found), completeness_percent=percent,
        candles_unavailable=counted[UNAVAILABLE],
        freshness_lag_seconds=lag, ranges=clipped, holes=found,
    )


def report_window(
    grid: Grid,
    *,
    start: HistoryStart | None,
    end: int | None,
    now_ms: int,
    listing_start: int | None,
    earliest_start: int | None,
) -> tuple[int, int]:
    """[start, end) of a report as open times: candles opening at or after `start` and before `end`.

    `end` defaults to, and is capped at, the open of the current candle; `start` defaults to the
    start of the ledger's earliest range (nothing recorded: an empty window at the end).
    """
    if isinstance(start, int) and end is not None and end < start:
        raise InvalidInputError("end must not be before start", field="end")
    current = grid.align_open(now_ms)
    # Compared before aligning: a time past year 9999 once aligned has no calendar month.
    window_end = current if end is None or end >= current else grid.align_up(end)
    if start is None:
        return min(window_end if earliest_start is None else earliest_start, window_end), window_end
    if start == LISTING:
        if listing_start is None:
            raise InvalidInputError(
                'start "listing": the listing of this series is not known yet (it is learnt by a '
                'collection with start "listing")', field="start",
            )
        window_start = grid.align_up(listing_start)
    elif start > window_end:
        raise InvalidInputError("start must not be after end (or after the current candle)", field="start")
    else:
        window_start = grid.align_up(start)
    if window_start > window_end:
        raise InvalidInputError("start must not be after end (or after the current candle)", field="start")
    return window_start, window_end


class SeriesCoverage(msgspec.Struct, frozen=True):
    exchange: str
    symbol: str
    """The exchange's name of the symbol (BTCUSDT, also when asked as BTC/USDT)."""
    timeframe: str
    listing_start: int | None
    report: CoverageReport


class ConfiguredCoverage(msgspec.Struct, frozen=True):
    config_id: int
    exchange: str
    symbol: str
    timeframe: str
    report: CoverageReport | None
    """None while the ledger has nothing for the series (never collected, or not since the ledger exists)."""


class CoverageReports:
    """Reads the ledger and reports on it, at the service's clock."""

    def __init__(self, pool: Pool, venues: VenueSet, clock: Callable[[], float]) -> None:
        self._pool = pool
        self._venues = venues
        self._clock = clock

    async def series(
        self, exchange: str, symbol: str, timeframe: str, *, start: str | None, end: str | None
    ) -> SeriesCoverage:
        """The report of one series; InvalidInputError for a bad start or end, NotFoundError if the
        series was never collected."""
        start_at = None if start is None else parse_start(start)
        end_at = None if end is None else parse_end(end)
        now_ms = int(self._clock() * 1000)
        async with connection(self._pool) as conn:
            # The venue's own id first (what clients mostly send); another spelling costs one more read.
            name = symbols_db.normalise_symbol_name(symbol)
            series = await coverage_db.find_series(conn, exchange, name, timeframe)
            if series is None:
                resolved = await symbols_db.find_symbol(conn, exchange, symbol)
                if resolved is not None and resolved != name:
                    name = resolved
                    series = await coverage_db.find_series(conn, exchange, name, timeframe)
            if series is None:
                raise NotFoundError(
                    f"{symbol} {timeframe} on {exchange} was never collected: no coverage to report",
                    symbol=symbol, timeframe=timeframe,
                )
            grid = self._venues.grid(exchange, timeframe).with_learnt(series["grid_offset_ms"])
            window_start, window_end = report_window(
                grid, start=start_at, end=end_at, now_ms=now_ms,
                listing_start=series["listing_start"], earliest_start=series["earliest_start"],
            )
            ranges = await ledger_db.ledger_ranges(conn, series["id"], window_start, window_end)
        report = coverage_report(
            grid, ranges, window_start, window_end,
            now_ms=now_ms, newest_verified_end=series["newest_verified_end"],
            reach_start=self._venues[exchange].reach_start(timeframe, now_ms),
        )
        return SeriesCoverage(exchange, name, timeframe, series["listing_start"], report)

    async def configured(self) -> list[ConfiguredCoverage]:
        """Each configured series' report from its ledger's earliest range up to now (two queries)."""
        now_ms = int(self._clock() * 1000)
        async with connection(self._pool) as conn:
            configured = await coverage_db.configured_series(conn)
            ids = [row["series_id"] for row in configured if row["earliest_start"] is not None]
            ledgers = await coverage_db.ranges_of_series(conn, ids) if ids else {}
        summary: list[ConfiguredCoverage] = []
        for row in configured:
            report = None
            if row["earliest_start"] is not None and row["exchange"] in self._venues:
                grid = self._venues.grid(row["exchange"], row["timeframe"]).with_learnt(row["grid_offset_ms"])
                window_end = grid.align_open(now_ms)
                report = coverage_report(
                    grid, ledgers.get(row["series_id"], []), min(row["earliest_start"], window_end), window_end,
                    now_ms=now_ms, newest_verified_end=row["newest_verified_end"],
                    reach_start=self._venues[row["exchange"]].reach_start(row["timeframe"], now_ms),
                )
            summary.append(
                ConfiguredCoverage(row["config_id"], row["exchange"], row["symbol"], row["timeframe"], report)
            )
        return summary
