"""What the collection needs from an exchange: a small protocol and the errors.

The records it speaks in (Kline, KlinePage, SymbolInfo, TickerPrice) live in service/records.py,
which the database layer shares without depending on any exchange.
"""

from __future__ import annotations

import math
from typing import Protocol

import msgspec

from service.exchanges.grid import Grid
from service.records import KlinePage, SymbolInfo, TickerPrice

__all__ = [
    "CLOCK_SKEW_ALLOWANCE_MS",
    "ExchangeClient",
    "ExchangeError",
    "InvalidRequestError",
    "LimiterState",
    "RequestObserver",
    "SharingBackoff",
    "TransientExchangeError",
    "WaitCallback",
]


# Our clock may run ahead of the exchange's: a candle counts as closed only if it closed this long
# before we asked. Misjudging the other way costs nothing: an open candle is re-read by the next run.
CLOCK_SKEW_ALLOWANCE_MS = 1000


class SharingBackoff:
    """How long a limiter whose budget shared through the database failed counts alone: 5 s after
    the first failure, twice as long after each further one, up to a minute; a round trip that
    succeeds shares again. The limiter says so in its own log events."""

    FIRST = 5.0
    MAX = 60.0

    def __init__(self) -> None:
        self.until = -math.inf
        """Counting alone until then (the limiter's clock)."""
        self._for = 0.0

    def failed(self, now: float) -> float | None:
        """A round trip failed at `now`: the seconds now spent alone if this is the first failure
        (the limiter logs it), else None."""
        first = self._for == 0.0
        self._for = self.FIRST if first else min(2 * self._for, self.MAX)
        self.until = now + self._for
        return self._for if first else None

    def succeeded(self) -> bool:
        """A round trip answered: whether the limiter was counting alone until now (it logs it)."""
        was_alone, self._for = self._for != 0.0, 0.0
        return was_alone


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


class RequestObserver(Protocol):
    """Told of every request's outcome and of every pause the exchange orders (for the metrics).

    Implemented outside exchanges/; must return at once and never raise.
    """

    def request_done(self, exchange: str, endpoint: str, status: str) -> None:
        """A request to `endpoint` (its path) ended with HTTP `status`, or `timeout` / `error` without one."""
        ...

    def paused(self, exchange: str, status: str, seconds: float) -> None:
        """The exchange answered `status` (429 or 418) and ordered a pause of `seconds`."""
        ...


class LimiterState(msgspec.Struct, frozen=True):
    """Where an exchange client stands against the exchange's request-weight budget right now."""

    limit: int | None
    """The exchange's weight limit per minute (None: not known, unlimited)."""
    budget: int | None
    """The part of the limit this service spends: the limit less a safety margin."""
    used_in_window: int
    """Weight spent in the current minute window, as the exchange counts it when it tells."""
    paused_until: float | None
    """Epoch seconds until which every request waits (429 or ban), None when not paused."""
    paused_reason: str | None
    window_seconds: float = 60.0
    """The window the venue counts its limit in (Binance a minute; Bybit 5 s, sliding)."""


class ExchangeClient(Protocol):
    """Everything exchange-specific stays behind this protocol: a venue's timeframes and their grids,
    paging, page caps, reach, the open-candle rule, symbols and their spellings, and its limits."""

    name: str
    """The venue's id, as the API names it (`binance`, `okx`, …)."""

    @property
    def timeframes(self) -> tuple[str, ...]:
        """The unified timeframe names this venue serves (service/exchanges/grid.py), shortest first."""
        ...

    def grid(self, timeframe: str) -> Grid:
        """Where this venue opens the candles of `timeframe` (one of `timeframes`)."""
        ...

    def reach_start(self, timeframe: str, now_ms: int) -> int | None:
        """The oldest open time the venue still serves for `timeframe` at `now_ms` (Kraken: the 720
        most recent candles); None where it serves all of its history."""
        ...

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
        """Candles with start_ms <= open_time (<= end_ms), oldest first, at most `limit`, each with its
        close_time (next open - 1 ms); the page says how many of them are final (KlinePage.closed).
        Where the venue pages backwards, the client turns it around: the oldest `limit` of the
        window come back.

        Timestamps before the exchange's first candle (or before 1970) are the caller's to clamp.
        """
        ...

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        """Open time (epoch ms) of the symbol's first candle of `timeframe` (None: it has none)."""
        ...

    def klines_weight(self, limit: int) -> int:
        """What a fetch_klines request for up to `limit` candles costs against the venue's limit, in
        its unit (for plans, and what `limit` the collector asks)."""
        ...

    @property
    def marks_open_candle(self) -> bool:
        """Whether a page that reaches the current period says itself which candle is still open
        (OKX's confirm, Bybit's and Kraken's newest row): a full last page then needs no next
        request. Otherwise (Binance, Coinbase) one more request reads on from its last candle."""
        ...

    async def fetch_symbols(self) -> list[SymbolInfo]:
        """Every listed instrument of the venue's market, with unified assets and its listing state.
        Also refreshes what the client knows of the venue's limits."""
        ...

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        """Last traded prices."""
        ...

    def limiter_state(self) -> LimiterState:
        """The request-weight budget as it stands now (for the status page)."""
        ...

    def refresh_limits_soon(self) -> None:
        """Learn the exchange's current rate limits in the background (a process that never runs a
        symbol refresh still needs them)."""
        ...

    async def aclose(self) -> None:
        """Stop background work (such as a limit refresh); call before the HTTP session closes."""
        ...

    @property
    def max_page(self) -> int:
        """Most candles one fetch_klines call returns."""
        ...
