"""GET /api/v1/coverage: what the coverage ledger says about one series over a window."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, get

from service.api.deps import CoverageReportsDep, JobsDep
from service.api.enums import ExchangeChoice
from service.api.openapi import error_responses
from service.api.schemas import ExchangeQuery, Schema, SymbolQuery, TimeframeQuery, ms_to_datetime, text_query
from service.auth.guards import requires_reader
from service.collection.coverage import RangeKind
from service.collection.coverage_report import ConfiguredCoverage, SeriesCoverage
from service.exchanges.grid import TimeframeName
from service.exchanges.venues import DEFAULT_VENUE

__all__ = ["CoverageController", "CoverageOut", "SeriesCoverageSummary", "coverage_summary"]


class CoverageRangeOut(Schema):
    """A ledger range, clipped to the window."""

    start: datetime
    """Open time of its first candle."""
    end: datetime
    """Open time just past its last candle (exclusive)."""
    kind: RangeKind
    """verified: every candle stored and closed; exchange_gap: the exchange has no candles there
    (confirmed by a second fetch, or buckets without trades a venue leaves out); failed: fetching
    failed after every retry (a hole); unavailable: older than the venue still serves (Kraken's 720
    most recent candles): not a hole, never fetched."""
    candles: int
    """Candle slots of the range inside the window."""
    checks: int
    """exchange_gap: how many fetches found it empty; otherwise 1."""
    checked_at: datetime | None
    detail: str | None


class HoleOut(Schema):
    """Part of the window neither verified nor an exchange gap (never fetched, or failed)."""

    start: datetime
    end: datetime
    """Exclusive."""
    candles: int


class CoverageOut(Schema):
    exchange: ExchangeChoice
    symbol: str
    """The exchange's name of the symbol (BTCUSDT, also when asked as BTC/USDT)."""
    timeframe: TimeframeName
    listing_start: datetime | None
    """Open time of the exchange's first candle of the series; null until a collection learnt it."""
    window_start: datetime
    """Candles opening at or after this time are reported (aligned to the timeframe)."""
    window_end: datetime
    """... and before this one (exclusive): at most the open of the current candle, so every
    candle in the window has closed."""
    candles_expected: int
    """Candle slots in the window (calendar months for 1M)."""
    candles_verified: int
    candles_exchange_gap: int
    candles_missing: int
    """Slots in holes."""
    candles_unavailable: int
    """Slots older than the venue still serves (0 on venues that serve all their history)."""
    completeness_percent: float
    """(verified + exchange_gap + unavailable) / expected × 100, rounded down to 2 decimals; 100 when
    expected is 0."""
    freshness_lag_seconds: float | None
    """Now minus the end of the series' newest verified range; null when nothing is verified."""
    complete: bool
    """No hole in the window."""
    ranges: list[CoverageRangeOut]
    """Every ledger range overlapping the window, clipped to it, oldest first."""
    holes: list[HoleOut]
    """Oldest first."""


class SeriesCoverageSummary(Schema):
    """One configured series' coverage, from its ledger's earliest range up to now."""

    config_id: int
    exchange: ExchangeChoice
    symbol: str
    timeframe: TimeframeName
    collected: bool
    """false: the ledger has nothing for this series yet; the figures below are then null or 0."""
    window_start: datetime | None
    """Start of the ledger's earliest range; null when nothing is recorded."""
    completeness_percent: float | None
    candles_missing: int
    holes: int
    """How many holes the window has."""
    freshness_lag_seconds: float | None


def coverage_out(found: SeriesCoverage) -> CoverageOut:
    report = found.report
    return CoverageOut(
        exchange=found.exchange, symbol=found.symbol, timeframe=found.timeframe,
        listing_start=None if found.listing_start is None else ms_to_datetime(found.listing_start),
        window_start=ms_to_datetime(report.window_start), window_end=ms_to_datetime(report.window_end),
        candles_expected=report.candles_expected, candles_verified=report.candles_verified,
        candles_exchange_gap=report.candles_exchange_gap, candles_missing=report.candles_missing,
        candles_unavailable=report.candles_unavailable,
        completeness_percent=report.completeness_percent, freshness_lag_seconds=report.freshness_lag_seconds,
        complete=report.complete,
        ranges=[
            CoverageRangeOut(
                start=ms_to_datetime(r.range.start), end=ms_to_datetime(r.range.end), kind=r.range.kind,
                candles=r.candles, checks=r.range.checks, checked_at=r.range.checked_at, detail=r.range.detail,
            )
            for r in report.ranges
        ],
        holes=[HoleOut(start=ms_to_datetime(s), end=ms_to_datetime(e), candles=c) for s, e, c in report.holes],
    )


def coverage_summary(entries: list[ConfiguredCoverage]) -> list[SeriesCoverageSummary]:
    summary: list[SeriesCoverageSummary] = []
    for entry in entries:
        report = entry.report
        summary.append(SeriesCoverageSummary(
            config_id=entry.config_id, exchange=entry.exchange, symbol=entry.symbol, timeframe=entry.timeframe,
            collected=report is not None,
            window_start=None if report is None else ms_to_datetime(report.window_start),
            completeness_percent=None if report is None else report.completeness_percent,
            candles_missing=0 if report is None else report.candles_missing,
            holes=0 if report is None else len(report.holes),
            freshness_lag_seconds=None if report is None else report.freshness_lag_seconds,
        ))
    return summary


class CoverageController(Controller):
    path = "/api/v1/coverage"
    tags = ["klines"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="getCoverage",
        summary="Coverage of one series over a window: ledger ranges, holes, completeness, freshness",
        responses=error_responses(400, 401, 404, 422),
    )
    async def coverage(
        self,
        coverage_reports: CoverageReportsDep,
        jobs: JobsDep,
        symbol: SymbolQuery,
        timeframe: TimeframeQuery,
        exchange: ExchangeQuery = DEFAULT_VENUE,
        start: Annotated[
            str | None,
            text_query(
                max_length=64,
                description='ISO 8601 (naive means UTC) or "listing"; default: the start of the earliest ledger range',
            ),
        ] = None,
        end: Annotated[
            str | None,
            text_query(max_length=64, description="ISO 8601 (naive means UTC), exclusive; default and cap: now"),
        ] = None,
    ) -> CoverageOut:
        jobs.venues.timeframes(exchange, [timeframe])  # a 422 naming the venue's set (or the unknown venue)
        found = await coverage_reports.series(exchange, symbol, timeframe, start=start, end=end)
        return coverage_out(found)
