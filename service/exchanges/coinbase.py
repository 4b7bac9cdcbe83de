"""Coinbase Exchange REST client: candles, products, tickers (api.exchange.coinbase.com).

The venue's quirks, and what the client does with them:

- Candles (`GET /products/{id}/candles?granularity=<s>&start=&end=`): granularity only 60, 300, 900,
  3600, 21600, 86400 (1m 5m 15m 1h 6h 1d); at most 300 candles a request (a wider range is refused
  with 400); start and end count only together. Rows come newest first as `[time (epoch s), low, high,
  open, close, volume]` in JSON numbers; buckets without a trade are missing. The client asks for the
  window of the oldest `limit` slots from start (end = start + (limit - 1) slots, inclusive, as ccxt
  does), keeps start <= open time <= end, and turns it around. The venue flags no open candle: a
  candle is final once its close_time is before the page's as_of (KlinePage.closed = None).
- Exact numbers: JSON numbers are decoded straight into Decimal from their text (msgspec reads the
  literal, never a float) and written back as plain positional decimal text (`1e-8` -> `0.00000001`,
  `1E+3` -> `1000`, `2.50` stays `2.50`): digits, one point and a sign only, as PostgreSQL numeric and
  the ingest's fast path read them. A value whose positional text would exceed the ingest's
  100-character bound keeps Decimal's scientific form instead (`1E-200`), for the ingest to judge.
- Limits: public endpoints allow 10 requests a second per IP (bursts to 15, never relied on); a
  sliding one-second WindowLimiter paces below it; a 429 `{"message":"Public rate limit exceeded"}`
  pauses every request for a second (or its Retry-After) and the request is sent again.
- Errors come as HTTP 4xx `{"message": "..."}` (an unknown product: 404 `NotFound`): refused, with
  the message and the path (which names the product); 5xx, dropped connections and garbled bodies
  are retried.
- Listing start: Coinbase publishes none, so the first candle is searched (fetch_listing_start).
- Prices: `/products/{id}/ticker` answers one product a request; fetch_prices asks only for the
  products named (none named: an empty list, see there).
"""

from __future__ import annotations

import asyncio
import calendar
import time
from decimal import Decimal

import msgspec

from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    InvalidRequestError,
    WaitCallback,
)
from service.exchanges.grid import STEP_MS, Grid
from service.exchanges.requests import Answer, Verdict, Wait, http_verdict
from service.exchanges.venues import VenueSpec
from service.exchanges.windowed import WindowedClient
from service.exchanges.windowed import decode as _decode
from service.exchanges.windows import WindowLimiter
from service.records import Kline, KlinePage, ListingState, SymbolInfo, TickerPrice

__all__ = ["CANDLES_PER_REQUEST", "GRANULARITY", "HISTORY_FLOOR_MS", "RATE_LIMIT", "CoinbaseClient", "decimal_text"]

#: Unified timeframe -> Coinbase granularity (seconds); nothing else is served.
GRANULARITY: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
CANDLES_PER_REQUEST = 300
#: Public REST: requests per second per IP (bursts to 15 are allowed but never counted on).
RATE_LIMIT = 10
_WINDOW_SECONDS = 1.0
#: A 429 carries no Retry-After: the window is one second.
_RATE_LIMITED_WAIT = 1.0
#: The listing search starts here: Coinbase Exchange (then GDAX) opened in January 2015, so no product
#: has a candle before; a margin of a year costs one request more.
HISTORY_FLOOR_MS = calendar.timegm((2014, 1, 1, 0, 0, 0)) * 1000
#: The ingest refuses decimals longer than this (service/collection/validation.py).
_MAX_DECIMAL_CHARS = 100
_DAY = "1d"


class _Candle(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One row as Coinbase sends it: low and high before open. Extra trailing fields are ignored."""

    time: int
    low: Decimal
    high: Decimal
    open: Decimal
    close: Decimal
    volume: Decimal


class _Product(msgspec.Struct, frozen=True):
    id: str
    base_currency: str
    quote_currency: str
    status: str
    trading_disabled: bool = False
    cancel_only: bool = False
    auction_mode: bool = False
    display_name: str | None = None


class _Ticker(msgspec.Struct, frozen=True):
    price: Decimal


class _Message(msgspec.Struct, frozen=True):
    message: str


_candles_decoder = msgspec.json.Decoder(list[_Candle])
_products_decoder = msgspec.json.Decoder(list[_Product])
_ticker_decoder = msgspec.json.Decoder(_Ticker)
_message_decoder = msgspec.json.Decoder(_Message)


def decimal_text(value: Decimal) -> str:
    """The exact text of a decimal Coinbase sent: positional (`0.00000001`, never `1E-8`), digits as
    sent; Decimal's scientific form only where the positional one would exceed the ingest's bound."""
    text = format(value, "f")
    return text if len(text) <= _MAX_DECIMAL_CHARS else str(value)


def _iso(ms: int) -> str:
    """ISO 8601 UTC to the second, as the candles endpoint documents its start and end."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def _listing_state(product: _Product) -> ListingState:
    """`delisted` is gone; `online` trades unless trading is disabled or only cancels are taken; any
    other status (offline, internal, one not known yet) is paused until it comes back online. Post-only,
    limit-only and auction mode still make candles: trading."""
    if product.status == "delisted":
        return "delisted"
    if product.status == "online" and not product.trading_disabled and not product.cancel_only:
        return "trading"
    return "paused"


def _status(product: _Product) -> str:
    """The venue's status word, with the flag that pauses an online product (`online, cancel_only`)."""
    flags = [name for name in ("trading_disabled", "cancel_only") if getattr(product, name)]
    return ", ".join([product.status, *flags])


def _refused(answer: Answer) -> InvalidRequestError:
    try:
        message = _message_decoder.decode(answer.body).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = f"HTTP {answer.status} from the exchange"
    return InvalidRequestError(f"{answer.path}: {message} (HTTP {answer.status})", status=answer.status)


def _judge(answer: Answer) -> Verdict:
    if answer.status == 429:
        retry_after = answer.headers.get("Retry-After")
        try:
            seconds = max(float(retry_after), 0.0) if retry_after is not None else _RATE_LIMITED_WAIT
        except ValueError:
            seconds = _RATE_LIMITED_WAIT
        return Wait(seconds, reason="rate_limited", status="429")
    return http_verdict(answer, _refused)


class CoinbaseClient(WindowedClient):
    """The Coinbase Exchange implementation of `ExchangeClient` (spot products)."""

    _max_page = CANDLES_PER_REQUEST
    _request_limit = RATE_LIMIT
    _window_seconds = _WINDOW_SECONDS

    def _setup(self, spec: VenueSpec) -> None:
        if spec.product != "spot":
            raise ValueError(f"Coinbase Exchange serves spot products only, not {spec.product!r}")
        # The open time of each product's first daily candle, once found (it never moves).
        self._first_day: dict[str, int] = {}

    def _make_grids(self, spec: VenueSpec) -> dict[str, Grid]:
        return {tf: Grid.of(tf) for tf in GRANULARITY}  # buckets open on epoch multiples of their length

    def _judge(self, answer: Answer) -> Verdict:
        return _judge(answer)

    @property
    def limiter(self) -> WindowLimiter:
        return self._limiter

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
        granularity = GRANULARITY.get(timeframe)
        if granularity is None:
            raise InvalidRequestError(f"Coinbase has no {timeframe} candles; it serves {', '.join(GRANULARITY)}")
        grid = self._grids[timeframe]
        first = grid.align_up(start_ms)
        last = grid.shift(first, max(1, min(limit, CANDLES_PER_REQUEST)) - 1)
        if end_ms is not None:
            last = min(last, grid.align_open(end_ms))
        if last < first:
            return self._empty_page()
        params = {"granularity": str(granularity), "start": _iso(first), "end": _iso(last)}
        what = f"candles {symbol} {timeframe}"

        def parse(body: bytes, sent_at: float) -> KlinePage:
            rows: list[_Candle] = _decode(_candles_decoder, body, what)
            # Newest first, and the answer may hold buckets before start: keep the window, oldest first.
            wanted = sorted((r for r in rows if first <= r.time * 1000 <= last), key=lambda r: r.time)
            klines: list[Kline] = []
            for row in wanted:
                open_ms = row.time * 1000
                if klines and klines[-1].open_time == open_ms:
                    continue  # a bucket sent twice counts once
                klines.append(
                    Kline(
                        open_ms,
                        decimal_text(row.open),
                        decimal_text(row.high),
                        decimal_text(row.low),
                        decimal_text(row.close),
                        decimal_text(row.volume),
                        grid.close_time(open_ms),
                    )
                )
            return KlinePage(klines=klines, as_of_ms=int(sent_at * 1000) - CLOCK_SKEW_ALLOWANCE_MS)

        return await self._requests.get(f"/products/{symbol}/candles", params, 1, on_wait, parse)

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        """The open time of the first candle, searched: Coinbase publishes no listing time.

        Every granularity aggregates the same trades, so the first candle of any timeframe lies inside
        the first daily candle, and inside the first candle of every coarser timeframe. The search:

        1. The first daily candle: 300-day windows read forward from HISTORY_FLOOR_MS until one holds a
           candle (about 15 requests; remembered per product, so the product's other timeframes skip it).
           Buckets without a trade are missing, so an empty window proves nothing about the windows after
           it: the scan never stops on one, and an illiquid product's long silence costs no wrong answer.
        2. Refinement: inside the candle found, the finest timeframe whose slots fit one request
           (1d -> 5m, 288 slots; 5m -> 1m), one request a step, until the timeframe asked for.

        If a finer step finds nothing inside the coarser candle (the venue's history is incomplete), the
        coarser candle's open time is returned: a safe lower bound, whose empty slots are merely recorded
        as exchange gaps. None when the product has no candle at all.
        """
        if timeframe not in GRANULARITY:
            raise InvalidRequestError(f"Coinbase has no {timeframe} candles; it serves {', '.join(GRANULARITY)}")
        day = self._first_day.get(symbol)
        if day is None:
            now = int(self._clock() * 1000)
            day = await self._first_open(symbol, _DAY, HISTORY_FLOOR_MS, now + 1, on_wait)
            if day is None:
                return None
            self._first_day[symbol] = day
        found, span = day, _DAY
        while span != timeframe:
            finer = min(
                (
                    tf
                    for tf in GRANULARITY
                    if STEP_MS[timeframe] <= STEP_MS[tf] < STEP_MS[span]
                    and STEP_MS[span] // STEP_MS[tf] <= CANDLES_PER_REQUEST
                ),
                key=STEP_MS.__getitem__,
            )
            first = await self._first_open(symbol, finer, found, found + STEP_MS[span], on_wait)
            if first is None:
                return found
            found, span = first, finer
        return found

    async def _first_open(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, on_wait: WaitCallback | None
    ) -> int | None:
        """Open time of the first `timeframe` candle in [start_ms, end_ms), read forward a page at a time."""
        grid = self._grids[timeframe]
        cursor = grid.align_open(start_ms)
        while cursor < end_ms:
            page = await self.fetch_klines(
                symbol, timeframe, start_ms=cursor, end_ms=end_ms - 1, limit=CANDLES_PER_REQUEST, on_wait=on_wait
            )
            if page.klines:
                return page.klines[0].open_time
            cursor = grid.shift(cursor, CANDLES_PER_REQUEST)
        return None

    async def fetch_symbols(self) -> list[SymbolInfo]:
        products: list[_Product] = await self._requests.get(
            "/products", {}, 1, None, lambda body, _: _decode(_products_decoder, body, "products")
        )
        return [
            SymbolInfo(
                symbol=p.id,
                base_asset=p.base_currency,
                quote_asset=p.quote_currency,
                status=_status(p),
                state=_listing_state(p),
                aliases=(p.display_name,) if p.display_name and p.display_name != p.id else (),
            )
            for p in products
        ]

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        """Last trade prices of the products named, one ticker request each (the limiter paces them).

        Coinbase has no price list for every product: asking each of its ~700 would take over a minute
        of the request budget, so with no products named the answer is empty.
        """
        if not symbols:
            return []

        async def one(symbol: str) -> TickerPrice:
            ticker: _Ticker = await self._requests.get(
                f"/products/{symbol}/ticker",
                {},
                1,
                None,
                lambda body, _: _decode(_ticker_decoder, body, f"ticker {symbol}"),
            )
            return TickerPrice(symbol=symbol, price=decimal_text(ticker.price))

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(s)) for s in symbols]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure as itself (an unknown product: refused)
        return [t.result() for t in tasks]
