"""Coverage reports over a venue's reach: what lies before it is `unavailable`, never a hole."""

from __future__ import annotations

from service.collection.coverage import LedgerRange
from service.collection.coverage_report import coverage_report
from service.exchanges.grid import Grid

HOUR = 3_600_000
GRID = Grid.of("1h")
NOW = 1_000 * HOUR + 1_234


def test_holes_before_the_venues_reach_are_unavailable_and_the_series_is_complete() -> None:
    """Kraken serves its 720 most recent candles: a window reaching further back reports that part
    as unavailable (counted, shown as a range), not as a hole; the reachable part is verified."""
    reach = NOW // HOUR * HOUR - 719 * HOUR
    window_start, window_end = reach - 100 * HOUR, NOW // HOUR * HOUR
    verified = [LedgerRange(reach, window_end, "verified")]
    report = coverage_report(
        GRID, verified, window_start, window_end, now_ms=NOW, newest_verified_end=window_end, reach_start=reach
    )
    assert report.holes == []
    assert report.complete
    assert report.candles_unavailable == 100
    assert report.candles_verified == 719
    assert report.completeness_percent == 100.0
    assert [(r.range.start, r.range.end, r.range.kind, r.candles) for r in report.ranges] == [
        (window_start, reach, "unavailable", 100),
        (reach, window_end, "verified", 719),
    ]


def test_a_hole_inside_the_reach_stays_a_hole() -> None:
    """Only the part before the reach is unavailable: a missing stretch after it is a hole to repair."""
    reach = 500 * HOUR
    window_start, window_end = 400 * HOUR, 1_000 * HOUR
    ledger = [LedgerRange(reach, 700 * HOUR, "verified"), LedgerRange(710 * HOUR, window_end, "verified")]
    report = coverage_report(
        GRID, ledger, window_start, window_end, now_ms=NOW, newest_verified_end=window_end, reach_start=reach
    )
    assert report.holes == [(700 * HOUR, 710 * HOUR, 10)]
    assert report.candles_unavailable == 100
    assert not report.complete


def test_without_a_reach_every_missing_candle_is_a_hole() -> None:
    """A venue that serves all its history (reach None): the same gap before the data is a hole."""
    report = coverage_report(
        GRID, [LedgerRange(500 * HOUR, 1_000 * HOUR, "verified")], 400 * HOUR, 1_000 * HOUR,
        now_ms=NOW, newest_verified_end=1_000 * HOUR,
    )
    assert report.holes == [(400 * HOUR, 500 * HOUR, 100)]
    assert report.candles_unavailable == 0
