"""Timeframes and where their candles open: the grid a venue lays its candles on.

The unified timeframe names are the union of every venue's set; each venue serves a subset and
says how it aligns them (its client hands out a `Grid` per timeframe). The planner, coverage and
validation do their time arithmetic through a Grid, never by naming a venue.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import msgspec

__all__ = ["STEP_MS", "TIMEFRAMES", "Grid", "Timeframe", "TimeframeName"]

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
# A month is not a fixed length; for sizing pages the longest one is the safe bound.
_MONTH_MAX_MS = 31 * _DAY


class Timeframe(StrEnum):
    """Every timeframe some venue serves, by its unified name (`1d`, never a venue's `1Dutc` or `D`)."""

    SECOND_1 = "1s"
    MINUTE_1 = "1m"
    MINUTE_3 = "3m"
    MINUTE_5 = "5m"
    MINUTE_15 = "15m"
    MINUTE_30 = "30m"
    HOUR_1 = "1h"
    HOUR_2 = "2h"
    HOUR_4 = "4h"
    HOUR_6 = "6h"
    HOUR_8 = "8h"
    HOUR_12 = "12h"
    DAY_1 = "1d"
    DAY_3 = "3d"
    WEEK_1 = "1w"
    DAY_15 = "15d"
    MONTH_1 = "1M"


TIMEFRAMES: tuple[str, ...] = tuple(t.value for t in Timeframe)

#: A timeframe held as a plain str, as venues and the database take it (one a venue lacks is refused
#: with a 422 listing that venue's set); the enum in the metadata is what the OpenAPI document shows.
TimeframeName = Annotated[str, Timeframe]

#: The length of each fixed timeframe; `1M` (calendar months) is absent.
STEP_MS: dict[str, int] = {
    "1s": _SECOND, "1m": _MINUTE, "3m": 3 * _MINUTE, "5m": 5 * _MINUTE, "15m": 15 * _MINUTE,
    "30m": 30 * _MINUTE, "1h": _HOUR, "2h": 2 * _HOUR, "4h": 4 * _HOUR, "6h": 6 * _HOUR,
    "8h": 8 * _HOUR, "12h": 12 * _HOUR, "1d": _DAY, "3d": 3 * _DAY, "1w": 7 * _DAY, "15d": 15 * _DAY,
}
assert set(STEP_MS) | {"1M"} == set(TIMEFRAMES)


def _month_index(ms: int) -> int:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.year * 12 + (moment.month - 1)


def _month_open(index: int) -> int:
    year, month = divmod(max(index, 12), 12)  # no year before 1 (long before any candle)
    return calendar.timegm((year, month + 1, 1, 0, 0, 0)) * 1000


class Grid(msgspec.Struct, frozen=True):
    """Where the candles of one timeframe open on one venue: `offset + k * step` (epoch ms) for a
    fixed timeframe, the first of each UTC month for `1M`."""

    timeframe: str
    offset_ms: int = 0
    """Open times are offset + k * step: 0 where candles open on multiples of their length since the
    epoch (a Thursday), 4 days for weeks opening on Monday. In [0, step)."""
    anchored: bool = True
    """False where the venue does not document its grid (Kraken's weeks and 15 days): the offset is
    a first guess, and each series learns its own from the venue's answers (`anchored_at`)."""

    @classmethod
    def of(cls, timeframe: str, *, offset_ms: int = 0, anchored: bool = True) -> Grid:
        step = STEP_MS.get(timeframe)
        return cls(timeframe, offset_ms % step if step else 0, anchored or not step)

    @property
    def months(self) -> bool:
        """Calendar months: candles of different lengths."""
        return self.timeframe == "1M"

    @property
    def step_ms(self) -> int:
        """Length of one candle (for months, the longest: the safe bound when sizing pages)."""
        return _MONTH_MAX_MS if self.months else STEP_MS[self.timeframe]

    def anchored_at(self, open_ms: int) -> Grid:
        """This grid moved so that a candle opens at `open_ms` (an anchor learnt from the venue's answer)."""
        return Grid(self.timeframe) if self.months else Grid.of(self.timeframe, offset_ms=open_ms)

    def with_learnt(self, offset_ms: int | None) -> Grid:
        """The grid a series uses: this one, or where the series learnt its candles open (`offset_ms`,
        kept for grids the venue does not document)."""
        return self if self.anchored or offset_ms is None else self.anchored_at(offset_ms)

    def is_open_time(self, ms: int) -> bool:
        return self.align_open(ms) == ms

    def align_open(self, ms: int) -> int:
        """Open time of the candle holding the instant `ms`."""
        if self.months:
            return _month_open(_month_index(ms))
        step = STEP_MS[self.timeframe]
        return (ms - self.offset_ms) // step * step + self.offset_ms

    def align_up(self, ms: int) -> int:
        """The first open time at or after the instant `ms`."""
        opened = self.align_open(ms)
        return opened if opened == ms else self.next_open(opened)

    def next_open(self, open_ms: int) -> int:
        """Open time of the candle after the one opening at `open_ms` (its close_time + 1 ms)."""
        if self.months:
            return _month_open(_month_index(open_ms) + 1)
        return open_ms + STEP_MS[self.timeframe]

    def close_time(self, open_ms: int) -> int:
        """The close time a candle opening at `open_ms` carries (its last millisecond)."""
        return self.next_open(open_ms) - 1

    def shift(self, open_ms: int, candles: int) -> int:
        """The open time `candles` slots after (negative: before) the one opening at `open_ms`."""
        if self.months:
            return _month_open(_month_index(open_ms) + candles)
        return open_ms + candles * STEP_MS[self.timeframe]

    def slots_between(self, start_ms: int, end_ms: int) -> int:
        """How many candles open in [start_ms, end_ms) (both aligned open times)."""
        if end_ms <= start_ms:
            return 0
        if self.months:
            return _month_index(end_ms - 1) - _month_index(start_ms) + 1
        step = STEP_MS[self.timeframe]
        return (end_ms - start_ms + step - 1) // step
