"""Pure planning: which time windows to fetch for a series, given what is stored and what time it is.

Time arithmetic goes through the series' `Grid` (the venue's own alignment), never a timeframe name.
"""

from __future__ import annotations

import msgspec

from service.exchanges.grid import Grid

__all__ = ["Window", "history_start", "plan_span", "plan_windows", "resume_start"]


class Window(msgspec.Struct, frozen=True):
    """Fetch candles with start_ms <= open_time <= end_ms; end_ms None: up to the present."""

    start_ms: int
    end_ms: int | None
    recheck: bool = False
    """A re-check of a range the ledger holds as an exchange gap (the exchange may have re-published it)."""


def history_start(grid: Grid, now_ms: int, candles: int) -> int:
    """Open time of the candle `candles - 1` periods before the current one, so `candles` are fetched.

    Never before 1970: venues refuse negative times, and a deeper history than the series has simply
    starts at its first candle.
    """
    return max(grid.shift(grid.align_open(now_ms), -(candles - 1)), 0)


def resume_start(resume_at_ms: int | None, grid: Grid, now_ms: int, history_candles: int) -> int:
    """Where a run starts: the oldest candle stored as open, else the newest stored one (both are
    read again: they may have changed), else `history_candles` back."""
    if resume_at_ms is not None:
        return resume_at_ms
    return history_start(grid, now_ms, history_candles)


def plan_windows(start_ms: int, now_ms: int, grid: Grid, page: int) -> list[Window]:
    """Split [start_ms, now] into windows of at most `page` candles; the last one is open-ended.

    Windows can be fetched concurrently; each is exact (endTime), and the open-ended last window
    also takes whatever the exchange has beyond our clock.
    """
    span = page * grid.step_ms
    windows: list[Window] = []
    start = start_ms
    while start + span <= now_ms:
        windows.append(Window(start, start + span - 1))
        start += span
    windows.append(Window(start, None))
    return windows


def plan_span(start_ms: int, end_ms: int, grid: Grid, page: int, *, recheck: bool = False) -> list[Window]:
    """Split the bounded range [start_ms, end_ms) of open times into windows of at most `page` candles."""
    windows: list[Window] = []
    start = start_ms
    while start < end_ms:
        # Months differ in length: a window of 1M candles ends on a month boundary.
        end = min(grid.shift(start, page), end_ms)
        windows.append(Window(start, end - 1, recheck))
        start = end
    return windows
