"""Planning windows: pure maths on times."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from service.collection.planner import Window, history_start, plan_windows, resume_start
from service.exchanges.grid import TIMEFRAMES, Grid

NOW = int(datetime(2026, 11, 24, 10, 17, 42, tzinfo=UTC).timestamp() * 1000)


def grid(timeframe: str) -> Grid:
    """Binance's grid: weeks open on Monday (the epoch was a Thursday)."""
    return Grid.of(timeframe, offset_ms=4 * 86_400_000 if timeframe == "1w" else 0)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [
        ("1m", ms(2026, 11, 24, 8, 38)),  # 100 candles: 08:38 … 10:17
        ("1h", ms(2026, 11, 20, 7)),
        ("1d", ms(2026, 8, 17)),
        ("1w", ms(2024, 12, 30)),  # a Monday, as Binance aligns weeks
        ("1M", ms(2018, 8, 1)),
    ],
)
def test_history_start_fetches_exactly_the_requested_candles(timeframe: str, expected: int) -> None:
    """A new series starts DEFAULT_HISTORY_CANDLES candles back, on the exchange's candle boundaries."""
    assert history_start(grid(timeframe), NOW, 100) == expected


def test_resume_rereads_the_last_stored_candle() -> None:
    """A series with data resumes at its last stored open_time (that candle may have been open)."""
    assert resume_start(ms(2026, 11, 24, 10, 0), grid("1m"), NOW, 100) == ms(2026, 11, 24, 10, 0)
    assert resume_start(None, grid("1m"), NOW, 100) == history_start(grid("1m"), NOW, 100)


def test_windows_cover_the_range_without_gaps_or_overlaps() -> None:
    """Windows hold at most one page each, touch end to end, and the last one is open-ended."""
    start = NOW - 2500 * 60_000
    windows = plan_windows(start, NOW, grid("1m"), 1000)
    assert windows[0].start_ms == start
    for before, after in itertools.pairwise(windows):
        assert before.end_ms is not None
        assert before.end_ms + 1 == after.start_ms
        assert (before.end_ms - before.start_ms + 1) == 1000 * 60_000
    assert windows[-1].end_ms is None
    assert len(windows) == 3


def test_a_short_range_is_one_open_window() -> None:
    """An incremental run that is nearly caught up makes one request."""
    assert plan_windows(NOW - 5 * 60_000, NOW, grid("1m"), 1000) == [Window(NOW - 5 * 60_000, None)]


def test_every_timeframe_has_a_length() -> None:
    """Every unified timeframe (the union of the venues' sets) is planned."""
    assert len(TIMEFRAMES) == 17
    assert all(Grid.of(tf).step_ms > 0 for tf in TIMEFRAMES)


@pytest.mark.parametrize("timeframe", ["1d", "3d", "1w", "1M"])
def test_a_history_deeper_than_1970_starts_at_the_epoch(timeframe: str) -> None:
    """History reaching before 1970 is clamped to 0: the series starts at its first candle."""
    assert history_start(grid(timeframe), NOW, 100_000) == 0
    assert plan_windows(0, NOW, grid(timeframe), 1000)[0].start_ms == 0
