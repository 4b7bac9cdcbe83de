"""The coverage ledger's rules, pure: what is left to fetch (the holes). How ranges merge: db/ledger.py.

A series' ledger is a sorted list of non-overlapping half-open ranges of candle open times
[start, end), each of one kind:
- `verified`: every candle in it is stored and closed;
- `exchange_gap`: the exchange has no candles there, and a second fetch confirmed it;
- `failed`: fetching it failed after every retry.
A hole is any part of a window that is neither verified nor an exchange gap (failed ranges are holes).
A report also shows `unavailable`: what lies before the venue's reach (never stored, never a hole).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from service.records import LedgerRange, RangeKind

__all__ = ["EXCHANGE_GAP", "FAILED", "KINDS", "UNAVAILABLE", "VERIFIED", "LedgerRange", "RangeKind", "holes"]

VERIFIED: Final = "verified"
EXCHANGE_GAP: Final = "exchange_gap"
FAILED: Final = "failed"
UNAVAILABLE: Final = "unavailable"
KINDS: tuple[RangeKind, ...] = ("verified", "exchange_gap", "failed", "unavailable")
# Kinds that need no fetch: a window is complete where these cover it.
_SETTLED = frozenset({VERIFIED, EXCHANGE_GAP})


def holes(ranges: Iterable[LedgerRange], start: int, end: int) -> list[tuple[int, int]]:
    """Parts of [start, end) that are neither verified nor an exchange gap, oldest first.

    `ranges` must be sorted and non-overlapping (as the ledger stores them).
    """
    found: list[tuple[int, int]] = []
    at = start
    for r in ranges:
        if r.kind not in _SETTLED or r.end <= at:
            continue
        if r.start >= end:
            break
        if r.start > at:
            found.append((at, r.start))
        at = max(at, r.end)
    if at < end:
        found.append((at, end))
    return found
