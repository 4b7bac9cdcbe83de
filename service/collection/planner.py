"""Pure planning: which time windows to fetch for a series, given what is stored and what time it is."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

import msgspec

from service.settings import TIMEFRAMES

__all__ = [
    "Window",
    "align_open",
    "history_start",
    "interval_ms",
    "next_open",
    "plan_span",
    "plan_windows",
    "resume_start",
    "slots_between",
]

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

_FIXED_MS: dict[str, int] = {
    "1s": _SECOND, "1m": _MINUTE, "3m": 3 * _MINUTE, "5m": 5 * _MINUTE, "15m": 15 * _MINUTE,
    "30m": 30 * _MINUTE, "1h": _HOUR, "2h": 2 * _HOUR, "4h": 4 * _HOUR, "6h": 6 * _HOUR,
    "8h": 8 * _HOUR, "12h": 12 * _HOUR, "1d": _DAY, "3d": 3 * _DAY, "1w": 7 * _DAY,
}
# A month is not a fixed length; for sizing pages the longest one is the safe bound.
_MONTH_MAX_MS = 31 * _DAY
assert set(_FIXED_MS) | {"1M"} == set(TIMEFRAMES)


class Window(msgspec.Struct, frozen=True):
    """Fetch candles with start_ms <= open_time <= end_ms; end_ms None: up to the present."""

    start_ms: int
    end_ms: int | None
    recheck: bool = False
    """A re-check of a range the ledger holds as an exchange gap (the exchange may have re-published it)."""


def interval_ms(timeframe: str) -> int:
    """Length of one candle (for 1M, the longest month)."""
    return _MONTH_MAX_MS if timeframe == "1M" else _FIXED_MS[timeframe]


def _month_index(ms: int) -> int:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.year * 12 + (moment.month - 1)


def _month_open(index: int) -> int:
    year, month = divmod(index, 12)
    return calendar.timegm((year, month + 1, 1, 0, 0, 0)) * 1000


def grid_offset(timeframe: str) -> int:
    """Where a fixed timeframe's candles open, relative to the epoch: open times are offset + k * step.

    Binance aligns weeks on Monday; the epoch was a Thursday.
    """
    return 4 * _DAY if timeframe == "1w" else 0


def align_open(timeframe: str, ms: int) -> int:
    """Open time of the `timeframe` candle holding the instant `ms` (calendar months for 1M)."""
    if timeframe == "1M":
        return _month_open(_month_index(ms))
    step = _FIXED_MS[timeframe]
    offset = grid_offset(timeframe)
    return (ms - offset) // step * step + offset


def align_up(timeframe: str, ms: int) -> int:
    """The first candle open time at or after the instant `ms`."""
    opened = align_open(timeframe, ms)
    return opened if opened == ms else next_open(timeframe, opened)


def next_open(timeframe: str, open_ms: int) -> int:
    """Open time of the candle after the one opening at `open_ms` (its close_time + 1 ms)."""
    if timeframe == "1M":
        return _month_open(_month_index(open_ms) + 1)
    return open_ms + _FIXED_MS[timeframe]


def slots_between(timeframe: str, start_ms: int, end_ms: int) -> int:
    """How many candles open in [start_ms, end_ms) (both aligned open times)."""
    if end_ms <= start_ms:
        return 0
    if timeframe == "1M":
        return _month_index(end_ms - 1) - _month_index(start_ms) + 1
    step = _FIXED_MS[timeframe]
    return (end_ms - start_ms + step - 1) // step


def history_start(timeframe: str, now_ms: int, candles: int) -> int:
    """Open time of the candle `candles - 1` periods before the current one, so `candles` are fetched.

    Never before 1970: the exchange refuses negative times, and a deeper history than the series
    has simply starts at its first candle (asked from 0, Binance answers from the listing on).
    """
    if timeframe == "1M":
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        months = now.year * 12 + (now.month - 1) - (candles - 1)
        if months < 1970 * 12:
            return 0
        year, month = divmod(months, 12)
        return calendar.timegm((year, month + 1, 1, 0, 0, 0)) * 1000
    return max(align_open(timeframe, now_ms) - (candles - 1) * _FIXED_MS[timeframe], 0)


def resume_start(resume_at_ms: int | None, timeframe: str, now_ms: int, history_candles: int) -> int:
    """Where a run starts: the oldest candle stored as open, else the newest stored one (both are
    read again: they may have changed), else `history_candles` back."""
    if resume_at_ms is not None:
        return resume_at_ms
    return history_start(timeframe, now_ms, history_candles)


def plan_windows(start_ms: int, now_ms: int, timeframe: str, page: int) -> list[Window]:
    """Split [start_ms, now] into windows of at most `page` candles; the last one is open-ended.

    Windows can be fetched concurrently; each is exact (endTime), and the open-ended last window
    also takes whatever the exchange has beyond our clock.
    """
    span = page * interval_ms(timeframe)
    windows: list[Window] = []
    start = start_ms
    while start + span <= now_ms:
        windows.append(Window(start, start + span - 1))
        start += span
    windows.append(Window(start, None))
    return windows


def plan_span(start_ms: int, end_ms: int, timeframe: str, page: int, *, recheck: bool = False) -> list[Window]:
    """Split the bounded range [start_ms, end_ms) of open times into windows of at most `page` candles."""
    span = page * interval_ms(timeframe)
    windows: list[Window] = []
    start = start_ms
    while start < end_ms:
        # Months differ in length: a window of 1M candles ends on a month boundary.
        stop = _month_open(_month_index(start) + page) if timeframe == "1M" else start + span
        end = min(stop, end_ms)
        windows.append(Window(start, end - 1, recheck))
        start = end
    return windows
