"""What the collection needs from an exchange: a small protocol, neutral records, and the errors."""

from __future__ import annotations

from typing import Protocol

import msgspec

__all__ = [
    "ExchangeClient",
    "ExchangeError",
    "InvalidRequestError",
    "Kline",
    "KlinePage",
    "SymbolInfo",
    "TickerPrice",
    "TransientExchangeError",
    "WaitCallback",
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

    def closed_count(self) -> int:
        """How many leading candles had closed when the exchange answered (close_time before as_of)."""
        n = len(self.klines)
        while n and self.klines[n - 1].close_time >= self.as_of_ms:
            n -= 1
        return n


class SymbolInfo(msgspec.Struct, frozen=True):
    symbol: str
    base_asset: str
    quote_asset: str
    status: str


class TickerPrice(msgspec.Struct, frozen=True):
    symbol: str
    price: str


class ExchangeError(Exception):
    """A request to the exchange failed; the message says how."""


class InvalidRequestError(ExchangeError):
    """The exchange refused the request itself (4xx such as -1121 Invalid symbol): retrying cannot help."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class TransientExchangeError(ExchangeError):
    """A timeout, dropped connection, 5xx or garbled body: worth retrying."""


class WaitCallback(Protocol):
    """Told when a request must wait for the exchange (rate limit or ban) and until when (epoch s)."""

    def __call__(self, reason: str, until: float) -> None: ...


class ExchangeClient(Protocol):
    """Everything exchange-specific stays behind this protocol."""

    name: str

    async def fetch_klines(
        self,
        symbol: str,
        timeframe: str,
        *,
        start_ms: int,
        end_ms: int | None,
        limit: int,
        on_wait: WaitCallback | None = None,
    ) -> KlinePage:
        """Candles with start_ms <= open_time (<= end_ms), oldest first, at most `limit`.

        Timestamps before the exchange's first candle (or before 1970) are the caller's to clamp.
        """
        ...

    async def fetch_symbols(self) -> list[SymbolInfo]:
        """Every listed symbol. Also refreshes what the client knows of the exchange's limits."""
        ...

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        """Last traded prices."""
        ...

    @property
    def max_page(self) -> int:
        """Most candles one fetch_klines call returns."""
        ...
