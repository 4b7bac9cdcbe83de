"""Exchange-neutral records: what exchanges answer and what the database stores, shared by both."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

__all__ = [
    "BudgetGrant", "Kline", "KlinePage", "LedgerRange", "ListingState", "LiveConnectionState", "LiveSeriesState",
    "RangeKind", "SymbolInfo", "TickerPrice", "WindowGrant",
]


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
    closed: int | None = None
    """How many leading candles are final, where the venue says so itself (OKX's `confirm`; the newest
    row of Bybit and Kraken); None: those whose close_time is before `as_of_ms` (Binance, Coinbase)."""

    def without_last(self) -> KlinePage:
        """This page without its last candle (a later answer holds it again)."""
        fields = None if self.copy_fields is None else self.copy_fields[:-1]
        closed = None if self.closed is None else min(self.closed, len(self.klines) - 1)
        return KlinePage(klines=self.klines[:-1], as_of_ms=self.as_of_ms, copy_fields=fields, closed=closed)

    def keeping(self, klines: list[Kline]) -> KlinePage:
        """This page with only `klines` (a subset, in order): the venue's word on which are final
        carries over; the COPY fields, cut for the whole page, do not."""
        closed = self.closed
        if closed is not None:
            last_final = self.klines[closed - 1].open_time if closed else None
            closed = 0 if last_final is None else sum(1 for k in klines if k.open_time <= last_final)
        return KlinePage(klines=klines, as_of_ms=self.as_of_ms, closed=closed)

    def closed_count(self) -> int:
        """How many leading candles had closed when the exchange answered: as the venue said, and
        never one whose close_time is not before as_of (a venue's flag cannot close the future)."""
        n = len(self.klines) if self.closed is None else min(self.closed, len(self.klines))
        while n and self._open(self.klines[n - 1]):
            n -= 1
        return n

    @property
    def venue_says_last_is_open(self) -> bool:
        """The venue itself marks the page's last candle as its open one (OKX's confirm, Kraken's
        uncommitted row): nothing newer exists there yet, so a full page needs no next request."""
        return self.closed is not None and self.closed < len(self.klines)

    def last_is_open(self) -> bool:
        """Whether the page ends in a candle that was still open when the exchange answered."""
        return bool(self.klines) and self.closed_count() < len(self.klines)

    def _open(self, kline: Kline) -> bool:
        return kline.close_time >= self.as_of_ms


#: Where an instrument stands on its venue; configs of a symbol that is not trading are paused.
ListingState = Literal["trading", "paused", "delisted"]


class SymbolInfo(msgspec.Struct, frozen=True):
    """One instrument of a venue's market."""

    symbol: str
    """The venue's own id (BTCUSDT, BTC-USDT, XXBTZUSD): what is stored and sent."""
    base_asset: str
    """Unified asset names (BTC, never Kraken's XBT or XXBT): `BASE/QUOTE` finds the instrument."""
    quote_asset: str
    status: str
    """The venue's own word for its state (TRADING, BREAK, live, online…), shown to users."""
    state: ListingState = "trading"
    aliases: tuple[str, ...] = ()
    """Other spellings the venue uses for it (Kraken's altname XBTUSD and wsname XBT/USD)."""
    settle_asset: str | None = None
    """Perpetuals: the asset they settle in (`BTC/USDT:USDT`); None for spot."""


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


class WindowGrant(msgspec.Struct, frozen=True):
    """What a venue's sliding request window, shared by every process on one IP, answered to one
    reservation."""

    granted: bool
    """Whether the request now counts in the window (it may be sent)."""
    used: int
    """Requests (cost units) counted in the window by every process together, this one included."""
    retry_at: float | None
    """When refused for the budget: when enough of the window expires for it to fit."""
    paused_until: float | None
    """Epoch seconds until which every process holds its requests (a ban or limit answer one met)."""
    paused_reason: str | None


class LiveSeriesState(msgspec.Struct, frozen=True):
    """One streamed series as its venue's live streams last saw it."""

    symbol: str
    timeframe: str
    stream: str
    fresh: bool
    last_closed_open_ms: int | None
    lag_seconds: float | None


class LiveConnectionState(msgspec.Struct, frozen=True):
    """One stream connection (or a venue's REST closer) as the process streaming it last saw it;
    times are epoch seconds."""

    exchange: str
    connected_since: float | None
    streams: list[str]
    messages: int
    messages_per_second: float
    last_message_at: float | None
    reconnects: int
    series: list[LiveSeriesState]


#: A ledger range's kind. `unavailable` is never stored: a report shows it where the venue no longer
#: serves the history (Kraken's 720 most recent candles), so that part is neither a hole nor fetched.
RangeKind = Literal["verified", "exchange_gap", "failed", "unavailable"]


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
