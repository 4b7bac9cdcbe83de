"""Pure ingest checks: which candles of a page may be written, and why the others may not.

Every candle is checked before it is written (issue 14); the rejected ones go to quarantine with
their reason. A value accepted here must also be accepted by PostgreSQL (`numeric` input, COPY
text format, and the `klines_candle_valid` CHECK constraint), so the decimal grammar below is
the strict intersection of what both sides read the same way:

- ASCII digits, one optional point, an optional sign, an optional exponent of at most three
  digits, and leading or trailing spaces ('1e5', ' 1 ', '+1', '-0', '1.', '.5' are accepted);
- not NaN, infinities, underscores ('1_000'), non-ASCII digits or spaces, tabs or newlines
  (COPY's separators), nor values longer than 100 characters (PostgreSQL refuses exponents
  past its numeric range; a bounded length and exponent keep far inside it).

It runs on the event loop for every page of a backfill, so the common case (decimals that are all
plain digits and points, as the exchange writes them) takes a fast path that only parses and
compares; a candle that fails it, or is not plain, is checked field by field for its reason. Both
paths give the same answer for every candle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import cast

import msgspec

from service.exchanges.grid import Grid
from service.records import Kline

__all__ = ["Rejected", "check_klines"]


class Rejected(msgspec.Struct, frozen=True):
    """A candle that failed a check, and the first check it failed."""

    kline: Kline
    reason: str


_MAX_DECIMAL_CHARS = 100
_DECIMAL = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})? *")
_MAX_BIGINT = 2**63 - 1
_ZERO = Decimal(0)
_VOLUMES = ("volume", "quote_volume", "taker_buy_base_volume", "taker_buy_quote_volume")
_PRICES = ("open", "high", "low", "close")

# A page whose JSON holds nothing but digits, points, quotes, brackets, commas and "null": every
# decimal in it is unsigned plain digits (so finite, >= 0, and read alike by PostgreSQL) once it
# parses at all. No run of digits and points longer than the decimal length limit either.
# The JSON is classed byte by byte in C (bytes.translate): a regex over the ~150 KB of a page
# took 3 ms. Digits and points become "d", the JSON punctuation ",", anything else "!".
_encode = msgspec.json.encode
_BYTE_CLASS = bytes(
    ord("d") if chr(b) in "0123456789." else ord(",") if chr(b) in '[]",nul' else ord("!") for b in range(256)
)
_LONG_RUN = b"d" * (_MAX_DECIMAL_CHARS + 1)
_CHUNK = 50


def check_klines(
    klines: Sequence[Kline], grid: Grid, now_ms: int, *, prices_by_database: bool = False, plain: bool = False
) -> tuple[list[Kline], list[Rejected]]:
    """Split a page into the candles that may be written (in their order) and the rejected ones.

    A candle is valid when its open_time is on the venue's `grid`, its close_time is the next
    open time - 1 ms, it has opened by `now_ms`, every price and volume is a finite decimal
    (see the module docstring), low <= open, close <= high, low >= 0, volumes >= 0 and
    trades >= 0.

    `prices_by_database`: the decimals of plain candles are not read here; PostgreSQL reads them
    (numeric input) and checks their order (the klines_candle_valid constraint) as the page is
    written. It refuses a bad one with the whole page, which must then be checked again without
    this, for the candles to keep and each refused one's reason. Parsing eight decimals per
    candle was a quarter of the service's CPU in a backfill.

    `plain`: the caller knows every decimal of the page is plain (KlinePage.copy_fields). A plain
    page of consecutive candles, then, is checked by comparing whole lists in C, not candle by candle.
    """
    valid: list[Kline] = []
    rejected: list[Rejected] = []
    if grid.months:  # calendar months: few candles a page, each checked field by field
        for kline in klines:
            reason = _reason(kline, grid, now_ms)
            if reason is None:
                valid.append(kline)
            else:
                rejected.append(Rejected(kline, reason))
        return valid, rejected

    step = grid.step_ms
    offset = grid.offset_ms
    last_ms = step - 1
    if prices_by_database and plain and _consecutive_and_final(klines, step, offset, now_ms):
        return list(klines), []
    number = Decimal
    # Plainness is judged per chunk, then per candle in a chunk that is not plain: one odd row
    # costs its chunk a little, not the whole page.
    for chunk_start in range(0, len(klines), _CHUNK):
        chunk = klines[chunk_start : chunk_start + _CHUNK]
        chunk_is_plain = plain or _is_plain(chunk)
        for k in chunk:
            t = k.open_time
            if (
                prices_by_database
                and chunk_is_plain
                and (t - offset) % step == 0
                and k.close_time == t + last_ms
                and t <= now_ms
                and (k.trades is None or k.trades <= _MAX_BIGINT)
            ):
                valid.append(k)
                continue
            try:
                if (
                    (chunk_is_plain or _is_plain(k))
                    and (t - offset) % step == 0
                    and k.close_time == t + last_ms
                    and t <= now_ms
                    and (k.trades is None or k.trades <= _MAX_BIGINT)
                ):
                    low = number(k.low)
                    open_ = number(k.open)
                    high = number(k.high)
                    close = number(k.close)
                    number(k.volume)
                    if k.quote_volume is not None:
                        number(k.quote_volume)
                    if k.taker_buy_base_volume is not None:
                        number(k.taker_buy_base_volume)
                    if k.taker_buy_quote_volume is not None:
                        number(k.taker_buy_quote_volume)
                    if low <= open_ <= high and low <= close <= high:
                        valid.append(k)
                        continue
            except InvalidOperation:
                pass
            reason = _reason(k, grid, now_ms)
            if reason is None:  # not reached: the fast path accepts every valid plain candle
                valid.append(k)
            else:
                rejected.append(Rejected(k, reason))
    return valid, rejected


def _consecutive_and_final(klines: Sequence[Kline], step: int, offset: int, now_ms: int) -> bool:
    """Whether the candles are consecutive slots of the grid from an aligned first one, each closing
    1 ms before the next opens, none opening after `now_ms`, and every trades count a bigint."""
    if not klines:
        return True
    first, n = klines[0].open_time, len(klines)
    if (first - offset) % step or klines[-1].open_time > now_ms:
        return False
    if [k.open_time for k in klines] != list(range(first, first + n * step, step)):
        return False
    close = first + step - 1
    if [k.close_time for k in klines] != list(range(close, close + n * step, step)):
        return False
    trades = [k.trades for k in klines]
    if None in trades:
        return False
    counts = cast(list[int], trades)
    return min(counts) >= 0 and max(counts) <= _MAX_BIGINT


def _is_plain(klines: Sequence[Kline] | Kline) -> bool:
    """Whether every decimal of these candles (or this one) is unsigned digits and points, at most
    100 characters."""
    classes = _encode(klines).translate(_BYTE_CLASS)
    return b"!" not in classes and _LONG_RUN not in classes


def _decimal(raw: str) -> Decimal | None:
    """The value of `raw` if both Python and PostgreSQL read it as the same finite decimal."""
    if len(raw) > _MAX_DECIMAL_CHARS or _DECIMAL.fullmatch(raw) is None:
        return None
    return Decimal(raw)


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")


def _reason(k: Kline, grid: Grid, now_ms: int) -> str | None:
    """The first check `k` fails, or None: times, then prices, then volumes and trades."""
    t = k.open_time
    if not grid.is_open_time(t):
        return f"open_time not aligned to {grid.timeframe}"
    if k.close_time != grid.close_time(t):
        return "close_time is not next open - 1 ms"
    if t > now_ms:
        return "candle in the future"

    prices: list[Decimal] = []
    for name in _PRICES:
        raw: str = getattr(k, name)
        value = _decimal(raw)
        if value is None:
            return f"{name} is not a finite decimal: {_shown(raw)}"
        prices.append(value)
    open_, high, low, close = prices
    if low > open_:
        return "low above open"
    if low > close:
        return "low above close"
    if open_ > high:
        return "open above high"
    if close > high:
        return "close above high"
    if low < _ZERO:
        return "negative low"

    for name in _VOLUMES:
        raw_volume: str | None = getattr(k, name)
        if raw_volume is None:
            continue
        volume = _decimal(raw_volume)
        if volume is None:
            return f"{name} is not a finite decimal: {_shown(raw_volume)}"
        if volume < _ZERO:
            return f"negative {name}"

    if k.trades is not None:
        if k.trades < 0:
            return "negative trades"
        if k.trades > _MAX_BIGINT:
            return "trades out of range"
    return None
