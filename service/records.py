"""Exchange-neutral records: what exchanges answer and what the database stores, shared by both."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

__all__ = ["BudgetGrant", "Kline", "KlinePage", "LedgerRange", "RangeKind", "SymbolInfo", "TickerPrice"]


class Kline(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One candle, in Binance's row order (extra trailing fields are ignored when decoding).

    Prices and volumes stay the exchange's decimal strings: they go to PostgreSQL `numeric` untouched.
    """

    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int
    quote_volume: str | None = None
    trades: int | None = None
    taker_buy_base_volume: str | None = None
    taker_buy_quote_volume: str | None = None


class KlinePage(msgspec.Struct, frozen=True):
    """The candles of one answer, and a moment no later than when the exchange produced it.

    Whether a candle is final is decided against `as_of_ms`, never against the time of writing: a
    candle that was still open when the exchange answered holds its open values, however late the
    page is written.
    """

    klines: list[Kline]
    as_of_ms: int
    """Epoch ms, taken just before the request that got this answer was sent."""
    copy_fields: list[bytes] | None = None
    """The same candles as COPY text, one item per kline, each field preceded by a tab:
    b"\\t<open_time>\\t<open>…\\t<taker_buy_quote_volume>" (Kline's order). Set only by a client that cuts
    them from its answer without per-candle work, and only when every decimal of the page is
    unsigned digits and points, at most 100 characters (the ingest's "plain" candles); None otherwise."""

    def without_last(self) -> KlinePage:
        """This page without its last candle (a later answer holds it again)."""
        fields = None if self.copy_fields is None else self.copy_fields[:-1]
        return KlinePage(klines=self.klines[:-1], as_of_ms=self.as_of_ms, copy_fields=fields)

    def closed_count(self) -> int:
        """How many leading candles had closed when the exchange answered (close_time before as_of)."""
        n = len(self.klines)
        while n and self._open(self.klines[n - 1]):
            n -= 1
        return n

    def last_is_open(self) -> bool:
        """Whether the page ends in a candle that was still open when the exchange answered."""
        return bool(self.klines) and self._open(self.klines[-1])

    def _open(self, kline: Kline) -> bool:
        return kline.close_time >= self.as_of_ms


class SymbolInfo(msgspec.Struct, frozen=True):
    symbol: str
    base_asset: str
    quote_asset: str
    status: str


class TickerPrice(msgspec.Struct, frozen=True):
    symbol: str
    price: str


class BudgetGrant(msgspec.Struct, frozen=True):
    """What the weight budget shared by every process on one IP answered to one reservation."""

    granted: int
    """Weight now reserved for the asking process in the window (0: none; never more than it asked)."""
    used: int
    """Weight reserved in the window by every process together (raised to the exchange's own count)."""
    limit: int | None
    """The weight limit per minute a process last learnt from the exchange (None: none learnt yet)."""
    paused_until: float | None
    """Epoch seconds until which every process holds its requests (a 429 or 418 one of them met)."""
    paused_reason: str | None


RangeKind = Literal["verified", "exchange_gap", "failed"]


class LedgerRange(msgspec.Struct, frozen=True):
    """One range of a series' ledger."""

    start: int
    """Open time (epoch ms) of its first candle slot."""
    end: int
    """Open time just past its last candle slot (exclusive)."""
    kind: RangeKind
    checks: int = 1
    """exchange_gap: how many fetches found it empty; otherwise 1."""
    checked_at: datetime | None = None
    detail: str | None = None
