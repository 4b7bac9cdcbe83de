"""Kraken spot REST client: OHLC, AssetPairs, Ticker (public endpoints of api.kraken.com).

What sets Kraken apart:

- OHLC serves only the 720 most recent candles of an interval, whatever `since` asks: older history
  cannot be fetched (`reach_start`), so a page is one request and a window older than the reach is
  empty. `since` is exclusive (rows with time > since); the answer is oldest first.
- The last row of every OHLC answer is the current, uncommitted candle (always present, whatever
  `since` says): the page counts it as not final.
- Errors come inside an HTTP 200 as `{"error":["EQuery:Unknown asset pair"]}`; `EAPI:Rate limit
  exceeded` is an order to wait, `EService:Unavailable`/`Busy` are worth a retry.
- Public endpoints allow about one request per second per IP (ccxt: "public: 1 req/s"); no header
  tells the count, so the limiter paces below it.
- Pairs have a key (XXBTZUSD, what is stored and sent), an altname (XBTUSD) and a wsname (XBT/USD);
  legacy assets carry an X/Z prefix (XXBT, ZUSD) and Kraken spells bitcoin XBT and dogecoin XDG.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    InvalidRequestError,
    TransientExchangeError,
    WaitCallback,
)
from service.exchanges.grid import Grid
from service.exchanges.requests import Answer, Verdict, Wait, http_verdict
from service.exchanges.sharing import SharedBudgets
from service.exchanges.venues import VenueSpec
from service.exchanges.windowed import WindowedClient
from service.exchanges.windowed import decode as _decode
from service.exchanges.windows import WindowLimiter
from service.records import Kline, KlinePage, ListingState, SymbolInfo, TickerPrice
from service.settings import VenueSettings

__all__ = ["MAX_PAGE", "PUBLIC_LIMIT", "PUBLIC_WINDOW_SECONDS", "RATE_LIMITED_WAIT_SECONDS", "KrakenClient"]

#: OHLC serves the 720 most recent candles (the current one included), never more, never older.
MAX_PAGE = 720
#: Public endpoints: about one request per second per IP (ccxt `kraken`: "public: 1 req/s").
PUBLIC_LIMIT = 1
PUBLIC_WINDOW_SECONDS = 1.0
#: How long every request holds after `EAPI:Rate limit exceeded` (Kraken states no time).
RATE_LIMITED_WAIT_SECONDS = 3.0
#: After `EGeneral:Temporary lockout`, Kraken's word for a ban.
LOCKOUT_WAIT_SECONDS = 60.0

_OHLC = "/0/public/OHLC"
_ASSET_PAIRS = "/0/public/AssetPairs"
_TICKER = "/0/public/Ticker"

# OHLC intervals in minutes, by unified timeframe (Kraken has no others).
_INTERVALS: dict[str, int] = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440, "1w": 10080, "15d": 21600,
}  # fmt: skip
# Query parameters a product adds to every request: spot is Kraken's default asset class (forex);
# tokenized assets would be a row with `asset_class=tokenized_asset`.
_PRODUCT_PARAMS: dict[str, dict[str, str]] = {"spot": {}}

# Kraken's legacy four-letter asset codes (X for crypto, Z for fiat); newer assets carry no prefix,
# so only these lose it (ZEUS, XCN… stay as they are).
_LEGACY_ASSETS: dict[str, str] = {
    "XXBT": "XBT", "XETH": "ETH", "XETC": "ETC", "XLTC": "LTC", "XXRP": "XRP", "XXLM": "XLM", "XXDG": "XDG",
    "XXMR": "XMR", "XZEC": "ZEC", "XREP": "REP", "XMLN": "MLN", "XICN": "ICN", "XNMC": "NMC", "XXVN": "XVN",
    "ZUSD": "USD", "ZEUR": "EUR", "ZGBP": "GBP", "ZCAD": "CAD", "ZJPY": "JPY", "ZAUD": "AUD", "ZKRW": "KRW",
}  # fmt: skip
# Kraken's own names for assets the rest of the world spells otherwise.
_RENAMED_ASSETS: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

# AssetPairs `status`: matching goes on (online, and limit/reduce-only restrict orders, not trades);
# cancel-only, post-only and maintenance match nothing; delisted is gone. An unknown word pauses.
_TRADING_STATUSES = frozenset({"online", "limit_only", "reduce_only"})
_DELISTED_STATUSES = frozenset({"delisted"})

_SUCCESS_PREFIX = b'{"error":[]'


def unified_asset(code: str) -> str:
    """The unified name of a Kraken asset code: XXBT and XBT -> BTC, ZUSD -> USD, XDG -> DOGE, SOL -> SOL."""
    plain = _LEGACY_ASSETS.get(code, code)
    return _RENAMED_ASSETS.get(plain, plain)


def _listing_state(status: str) -> ListingState:
    if status in _TRADING_STATUSES:
        return "trading"
    return "delisted" if status in _DELISTED_STATUSES else "paused"


class _Envelope(msgspec.Struct):
    error: list[str] = []


class _Candle(msgspec.Struct, array_like=True, frozen=True):
    time: int
    open: str
    high: str
    low: str
    close: str
    vwap: str
    volume: str
    count: int


class _OhlcAnswer(msgspec.Struct):
    # One pair key with its rows, and `last` (the newest committed candle's time).
    result: dict[str, list[_Candle] | int]


class _Pair(msgspec.Struct):
    altname: str
    base: str
    quote: str
    wsname: str | None = None
    status: str = "online"


class _PairsAnswer(msgspec.Struct):
    result: dict[str, _Pair]


class _Ticker(msgspec.Struct):
    c: list[str]
    """Last trade: [price, lot volume]."""


class _TickerAnswer(msgspec.Struct):
    result: dict[str, _Ticker]


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_ohlc_decoder = msgspec.json.Decoder(_OhlcAnswer)
_pairs_decoder = msgspec.json.Decoder(_PairsAnswer)
_ticker_decoder = msgspec.json.Decoder(_TickerAnswer)


def _judge(answer: Answer) -> Verdict:
    """Kraken's answers: errors inside an HTTP 200 envelope, named `E<Category>:<message>`."""
    if answer.status == 429:
        return Wait(RATE_LIMITED_WAIT_SECONDS, reason="rate_limited", status="429")
    verdict = http_verdict(answer, _refused_by_http)
    if verdict is not None:
        return verdict
    if answer.body.startswith(_SUCCESS_PREFIX):
        return None
    try:
        errors = _envelope_decoder.decode(answer.body).error
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return TransientExchangeError(f"{answer.path}: malformed response ({exc})")
    return _error_verdict(answer, errors) if errors else None


def _error_verdict(answer: Answer, errors: list[str]) -> Verdict:
    said = ", ".join(errors)
    if "EAPI:Rate limit exceeded" in errors:
        return Wait(RATE_LIMITED_WAIT_SECONDS, reason="rate_limited", status="EAPI:Rate limit exceeded")
    if "EGeneral:Temporary lockout" in errors:
        return Wait(LOCKOUT_WAIT_SECONDS, reason="banned", status="EGeneral:Temporary lockout")
    if any(e.startswith("EService:") or e == "EGeneral:Internal error" for e in errors):
        return TransientExchangeError(f"{answer.path}: {said} (Kraken)")
    # EQuery:Unknown asset pair, EGeneral:Invalid arguments, and whatever else Kraken refuses.
    return InvalidRequestError(f"{said} (Kraken {answer.path})", status=answer.status)


def _refused_by_http(answer: Answer) -> InvalidRequestError:
    try:
        errors = _envelope_decoder.decode(answer.body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        errors = []
    said = ", ".join(errors) or f"HTTP {answer.status}"
    return InvalidRequestError(f"{said} (Kraken {answer.path})", status=answer.status)


class KrakenClient(WindowedClient):
    """The Kraken implementation of `ExchangeClient` (spot, public REST)."""

    _max_page = MAX_PAGE
    _request_limit = PUBLIC_LIMIT
    _window_seconds = PUBLIC_WINDOW_SECONDS
    _marks_open_candle = True  # the answer's last, uncommitted row

    def _setup(self, spec: VenueSpec) -> None:
        if spec.product not in _PRODUCT_PARAMS:
            raise ValueError(f"Kraken has no product {spec.product!r}; one of {', '.join(_PRODUCT_PARAMS)}")
        self._params = _PRODUCT_PARAMS[spec.product]

    def _make_grids(self, spec: VenueSpec) -> dict[str, Grid]:
        # Weeks and 15-day candles: Kraken documents no anchor; the epoch grid (a Thursday) until the
        # collector learns the anchor from an answer. The shorter ones open on multiples of their length.
        # Kraken documents no grid for its weeks and 15 days: each series learns where they open.
        return {tf: Grid.of(tf, anchored=tf not in ("1w", "15d")) for tf in _INTERVALS}

    def _make_limiter(
        self,
        settings: VenueSettings,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        shared: SharedBudgets | None,
    ) -> WindowLimiter:
        # The margin cannot cut a limit of one request, so it stretches the window instead: the same
        # rate, limit × (1 − margin) per window.
        return WindowLimiter(
            limit=settings.weight_limit or PUBLIC_LIMIT,
            window_seconds=PUBLIC_WINDOW_SECONDS / (1.0 - settings.weight_margin),
            margin=0.0,
            max_concurrency=settings.max_concurrency,
            clock=clock,
            sleep=sleep,
            shared=shared.window(self.name) if shared is not None else None,
        )

    def _judge(self, answer: Answer) -> Verdict:
        return _judge(answer)

    def reach_start(self, timeframe: str, now_ms: int) -> int | None:
        """The open time of the oldest of the 720 candles Kraken serves: 719 slots before the current one."""
        grid = self._grids[timeframe]
        return grid.shift(grid.align_open(now_ms), -(MAX_PAGE - 1))

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
        interval = _INTERVALS.get(timeframe)
        if interval is None:
            raise InvalidRequestError(f"Kraken has no {timeframe!r} candles; one of {' '.join(_INTERVALS)}")
        grid = self._grids[timeframe]
        limit = max(0, min(limit, MAX_PAGE))
        now_ms = int(self._clock() * 1000)
        # A window that ends a slot before the reach (the slot allows for Kraken's clock and an
        # unlearnt week anchor) holds nothing Kraken still serves: no request spent on it.
        reach = grid.shift(grid.align_open(now_ms), -MAX_PAGE)
        if limit == 0 or (end_ms is not None and (end_ms < reach or end_ms < start_ms)):
            return KlinePage(klines=[], as_of_ms=now_ms - CLOCK_SKEW_ALLOWANCE_MS, closed=0)
        # `since` is exclusive and in seconds: one second before the first open time wanted.
        since = max(0, -(-start_ms // 1000) - 1)
        params = {"pair": symbol, "interval": str(interval), "since": str(since), **self._params}
        what = f"OHLC {symbol} {timeframe}"

        def parse(body: bytes, sent_at: float) -> KlinePage:
            # Kraken's values are plain decimals; an escape could only smuggle a tab or a newline
            # into a stored value.
            if b"\\" in body:
                raise TransientExchangeError(f"{what}: unexpected escape in response body")
            answer: _OhlcAnswer = _decode(_ohlc_decoder, body, what)
            rows = [value for value in answer.result.values() if isinstance(value, list)]
            if len(rows) != 1:
                raise TransientExchangeError(f"{what}: malformed response ({len(rows)} candle lists)")
            return _page(rows[0], grid, start_ms, end_ms, limit, int(sent_at * 1000) - CLOCK_SKEW_ALLOWANCE_MS)

        return await self._get(_OHLC, params, on_wait, parse, what)

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        """The first candle Kraken serves: the listing where the pair is younger than the reach (720
        candles), else the oldest candle still served (older ones cannot be fetched at all)."""
        page = await self.fetch_klines(symbol, timeframe, start_ms=0, end_ms=None, limit=1, on_wait=on_wait)
        return page.klines[0].open_time if page.klines else None

    async def fetch_symbols(self) -> list[SymbolInfo]:
        answer: _PairsAnswer = await self._requests.get(
            _ASSET_PAIRS, dict(self._params), 1, None, lambda body, _: _decode(_pairs_decoder, body, "AssetPairs")
        )
        return [
            SymbolInfo(
                symbol=key,
                base_asset=unified_asset(pair.base),
                quote_asset=unified_asset(pair.quote),
                status=pair.status,
                state=_listing_state(pair.status),
                aliases=_aliases(key, pair),
            )
            for key, pair in answer.result.items()
            if not key.endswith(".d")  # the old dark-pool books: no candles of their own
        ]

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        if symbols is not None and not symbols:
            return []
        # One pair is asked by name (an unknown one is refused, named); several are read from the
        # whole list, since one unknown pair in a list fails the whole request.
        params = dict(self._params)
        if symbols is not None and len(symbols) == 1:
            params["pair"] = symbols[0]
        try:
            answer: _TickerAnswer = await self._requests.get(
                _TICKER, params, 1, None, lambda body, _: _decode(_ticker_decoder, body, "Ticker")
            )
        except InvalidRequestError as exc:
            if symbols is None:
                raise
            raise InvalidRequestError(f"Ticker {symbols[0]}: {exc}", code=exc.code, status=exc.status) from None
        wanted = None if symbols is None else set(symbols)
        return [
            TickerPrice(symbol=key, price=ticker.c[0])
            for key, ticker in answer.result.items()
            if ticker.c and (wanted is None or key in wanted)
        ]

    @property
    def limiter(self) -> WindowLimiter:
        return self._limiter


def _aliases(key: str, pair: _Pair) -> tuple[str, ...]:
    names = (pair.altname, pair.wsname)
    return tuple(dict.fromkeys(n for n in names if n and n != key))


def _page(rows: list[_Candle], grid: Grid, start_ms: int, end_ms: int | None, limit: int, as_of_ms: int) -> KlinePage:
    """The rows in [start_ms, end_ms], oldest first, at most `limit`; the answer's last row (the
    current, uncommitted candle) is not final when it is among them."""
    klines: list[Kline] = []
    previous = -1
    for row in rows:
        open_ms = row.time * 1000
        if open_ms <= previous:  # a repeated row (or one out of order) is never served twice
            continue
        previous = open_ms
        if open_ms < start_ms:
            continue
        if (end_ms is not None and open_ms > end_ms) or len(klines) == limit:
            break
        close_ms = grid.close_time(open_ms)
        klines.append(Kline(open_ms, row.open, row.high, row.low, row.close, row.volume, close_ms, None, row.count))
    reaches_open = bool(rows and klines) and klines[-1].open_time == rows[-1].time * 1000
    return KlinePage(klines=klines, as_of_ms=as_of_ms, closed=len(klines) - 1 if reaches_open else len(klines))
