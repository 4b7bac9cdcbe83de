"""Binance spot REST client: klines, exchangeInfo, ticker prices.

Every request passes the weight limiter, carries a timeout, and is retried with capped exponential
backoff and jitter (stamina) on timeouts, dropped connections, 5xx and garbled bodies; never on
other 4xx. 429 and 418 are not failures of the request but orders to wait: the limiter pauses every
caller, then the request is sent again. A 429 also states the exchange's current weight limit, which
the limiter adopts at once, and starts a refresh of the limits from exchangeInfo in the background.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Callable
from itertools import repeat
from typing import Any, TypeVar

import aiohttp
import msgspec

from service.cpu_turns import CpuTurns
from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    InvalidRequestError,
    LimiterState,
    RequestObserver,
    TransientExchangeError,
    WaitCallback,
)
from service.exchanges.grid import Grid
from service.exchanges.limiter import WINDOW_SECONDS, WeightLimiter
from service.exchanges.requests import Answer, Resend, VenueRequests, Verdict, Wait, http_verdict
from service.exchanges.venues import VENUES, Exchange, VenueSpec
from service.logging import get_logger
from service.records import Kline, KlinePage, ListingState, SymbolInfo, TickerPrice

__all__ = [
    "EXCHANGE_INFO_WEIGHT", "KLINES_WEIGHT", "BinanceClient", "copy_fields",
    "fallback_weight_limit", "grid",
]

log = get_logger(__name__)

T = TypeVar("T")

KLINES_WEIGHT = 2
# Binance's weeks open on Monday; the epoch was a Thursday.
_MONDAY_OFFSET_MS = 4 * 86_400_000
EXCHANGE_INFO_WEIGHT = 20
TICKER_PRICE_WEIGHT_ONE = 2
TICKER_PRICE_WEIGHT_ALL = 4
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")
# The -1003 message of a 429 for request weight, e.g. "current limit is 6000 request weight per 1 MINUTE".
_CURRENT_WEIGHT_LIMIT = re.compile(r"current limit is (\d+) request weight per 1 MINUTE")


# The intervals of /api/v3/klines, by their unified names (the same spelling on Binance).
_SPOT_TIMEFRAMES = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")


def _usdm_klines_weight(limit: int) -> int:
    """USD-M weighs a klines request by its limit: [1,100) 1, [100,500) 2, [500,1000] 5, above 10."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class _Product(msgspec.Struct, frozen=True):
    """What differs between Binance's markets: paths, caps, weights, intervals."""

    prefix: str
    max_page: int
    timeframes: tuple[str, ...]
    klines_weight: Callable[[int], int]
    exchange_info_weight: int
    ticker_weight_one: int
    ticker_weight_all: int
    fallback_limit: int
    """The weight limit believed until exchangeInfo tells (spot's older 1200; USD-M's 2400)."""


_PRODUCTS = {
    "spot": _Product(
        prefix="/api/v3", max_page=1000, timeframes=_SPOT_TIMEFRAMES, klines_weight=lambda _: KLINES_WEIGHT,
        exchange_info_weight=EXCHANGE_INFO_WEIGHT, ticker_weight_one=TICKER_PRICE_WEIGHT_ONE,
        ticker_weight_all=TICKER_PRICE_WEIGHT_ALL, fallback_limit=1200,
    ),
    "usdm": _Product(
        prefix="/fapi/v1", max_page=1500, timeframes=_SPOT_TIMEFRAMES[1:], klines_weight=_usdm_klines_weight,
        exchange_info_weight=1, ticker_weight_one=1, ticker_weight_all=2, fallback_limit=2400,
    ),
}


def grid(timeframe: str) -> Grid:
    """Where Binance opens a timeframe's candles: on multiples of its length since the epoch, but
    weeks on Monday (the epoch was a Thursday) and months on the 1st."""
    return Grid.of(timeframe, offset_ms=_MONDAY_OFFSET_MS if timeframe == "1w" else 0)


def fallback_weight_limit(spec: VenueSpec) -> int:
    """The weight limit a Binance venue's limiter starts from, before exchangeInfo tells the real one."""
    return _PRODUCTS[spec.product].fallback_limit


class _RateLimit(msgspec.Struct):
    rateLimitType: str  # noqa: N815 - Binance's field names
    interval: str
    intervalNum: int  # noqa: N815
    limit: int


class _Symbol(msgspec.Struct):
    symbol: str
    status: str
    baseAsset: str  # noqa: N815
    quoteAsset: str  # noqa: N815
    contractType: str | None = None  # noqa: N815 - USD-M: PERPETUAL, CURRENT_QUARTER…
    marginAsset: str | None = None  # noqa: N815 - USD-M: what it settles in


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_Symbol]
    rateLimits: list[_RateLimit] = []  # noqa: N815 - msgspec copies defaults


class _ExchangeLimits(msgspec.Struct):
    """exchangeInfo read for its limits only: the symbol list is skipped, not built."""

    rateLimits: list[_RateLimit] = []  # noqa: N815 - Binance's field name; msgspec copies defaults


class _ErrorBody(msgspec.Struct):
    code: int
    msg: str


_klines_decoder = msgspec.json.Decoder(list[Kline])
_info_decoder = msgspec.json.Decoder(_ExchangeInfo)
_limits_decoder = msgspec.json.Decoder(_ExchangeLimits)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_prices_decoder = msgspec.json.Decoder(list[TickerPrice])
_price_decoder = msgspec.json.Decoder(TickerPrice)


# Binance's statuses: TRADING trades; a halt, a break or cancel-only pauses; the rest (and a symbol
# gone from exchangeInfo) is delisted.
_PAUSED_STATUSES = frozenset({"HALT", "BREAK", "END_OF_DAY", "CANCEL_ONLY", "PRE_TRADING", "POST_TRADING"})


def _listing_state(status: str) -> ListingState:
    return "trading" if status == "TRADING" else "paused" if status in _PAUSED_STATUSES else "delisted"


class BinanceClient:
    """The Binance implementation of `ExchangeClient`, for spot (`/api/v3`) and USD-M futures
    (`/fapi/v1`): the venue row's product picks paths, caps, weights and intervals."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        limiter: WeightLimiter,
        *,
        base_url: str,
        timeout: float,
        retry_attempts: int,
        retry_wait_initial: float,
        cpu: CpuTurns,
        weight_limit_override: int | None = None,
        observer: RequestObserver | None = None,
        spec: VenueSpec = VENUES[Exchange.BINANCE],
    ) -> None:
        self.name = spec.id
        self._spec = spec
        self._product = _PRODUCTS[spec.product]
        self._grids = {tf: grid(tf) for tf in self._product.timeframes}
        self._limiter = limiter
        self._requests = VenueRequests(
            spec.id, session, limiter, base_url=base_url, timeout=timeout, retry_attempts=retry_attempts,
            retry_wait_initial=retry_wait_initial, cpu=cpu, judge=self._judge, observer=observer,
        )
        self._weight_limit_override = weight_limit_override
        self._observer = observer
        # Whether a limit came from the exchange yet; before, the limiter runs on the fallback guess.
        self._limit_learnt = False
        # The background limit refresh a 429 starts: kept referenced, one at a time, one per window.
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_window = -1
        self._closed = False

    @property
    def limiter(self) -> WeightLimiter:
        return self._limiter

    @property
    def max_page(self) -> int:
        return self._product.max_page

    @property
    def timeframes(self) -> tuple[str, ...]:
        return self._product.timeframes

    def grid(self, timeframe: str) -> Grid:
        return self._grids[timeframe]

    def reach_start(self, timeframe: str, now_ms: int) -> int | None:
        return None  # every candle since listing

    def limiter_state(self) -> LimiterState:
        return self._limiter.state

    async def aclose(self) -> None:
        """Cancel a limit refresh still under way and start no more; call before the session closes."""
        self._closed = True
        task, self._refresh_task = self._refresh_task, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError here nor swallows our own.
            await asyncio.wait([task])

    async def refresh_limits(self) -> None:
        """Learn the exchange's current weight limit from exchangeInfo (the symbols are left alone)."""
        info: _ExchangeLimits = await self._get(
            f"{self._product.prefix}/exchangeInfo", {}, self._product.exchange_info_weight, None,
            lambda body, _: _decode(_limits_decoder, body, "exchangeInfo"),
        )
        self._adopt_weight_limit(info.rateLimits)

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
        params: dict[str, str] = {
            "symbol": symbol, "interval": timeframe, "startTime": str(start_ms), "limit": str(limit),
        }
        if end_ms is not None:
            params["endTime"] = str(end_ms)
        what = f"klines {symbol} {timeframe}"

        def parse(body: bytes, sent_at: float) -> KlinePage:
            # Binance's numbers are plain decimals; a backslash could only smuggle a tab or newline
            # into the COPY stream, so such a body is refused before decoding.
            if b"\\" in body:
                raise TransientExchangeError(f"{what}: unexpected escape in response body")
            klines: list[Kline] = _decode(_klines_decoder, body, what)
            return KlinePage(
                klines=klines, as_of_ms=int(sent_at * 1000) - CLOCK_SKEW_ALLOWANCE_MS,
                copy_fields=copy_fields(body, len(klines)),
            )

        return await self._get(
            f"{self._product.prefix}/klines", params, self._product.klines_weight(limit), on_wait, parse
        )

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        # Binance answers startTime=0 with the series' first candle.
        page = await self.fetch_klines(symbol, timeframe, start_ms=0, end_ms=None, limit=1, on_wait=on_wait)
        return page.klines[0].open_time if page.klines else None

    def klines_weight(self, limit: int) -> int:
        return self._product.klines_weight(min(limit, self._product.max_page))

    @property
    def marks_open_candle(self) -> bool:
        return False  # a candle is final by its close time

    async def fetch_symbols(self) -> list[SymbolInfo]:
        info: _ExchangeInfo = await self._get(
            f"{self._product.prefix}/exchangeInfo", {}, self._product.exchange_info_weight, None,
            lambda body, _: _decode(_info_decoder, body, "exchangeInfo"),
        )
        self._adopt_weight_limit(info.rateLimits)
        return [
            SymbolInfo(
                symbol=s.symbol, base_asset=s.baseAsset, quote_asset=s.quoteAsset, status=s.status,
                state=_listing_state(s.status), settle_asset=s.marginAsset if self._spec.perpetual else None,
            )
            for s in info.symbols
            # USD-M lists quarterly contracts too; the venue is its perpetuals.
            if not self._spec.perpetual or s.contractType == "PERPETUAL"
        ]

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        if symbols is not None and len(symbols) == 1:
            price: TickerPrice = await self._get(
                f"{self._product.prefix}/ticker/price", {"symbol": symbols[0]}, self._product.ticker_weight_one, None,
                lambda body, _: _decode(_price_decoder, body, "ticker/price"),
            )
            return [price]
        prices: list[TickerPrice] = await self._get(
            f"{self._product.prefix}/ticker/price", {}, self._product.ticker_weight_all, None,
            lambda body, _: _decode(_prices_decoder, body, "ticker/price"),
        )
        if symbols is not None:
            wanted = set(symbols)
            prices = [p for p in prices if p.symbol in wanted]
        return prices

    def _adopt_weight_limit(self, limits: list[_RateLimit]) -> None:
        stated = next(
            (
                rl.limit for rl in limits
                if rl.rateLimitType == "REQUEST_WEIGHT" and rl.interval == "MINUTE" and rl.intervalNum == 1
            ),
            None,
        )
        # The override caps our use, but a lower limit stated by the exchange wins: above it lie 429s and bans.
        limit = min((x for x in (self._weight_limit_override, stated) if x is not None), default=None)
        if limit is None:
            return
        previous = self._limiter.limit
        self._limiter.set_limit(limit)
        if limit != previous:
            self._log_limit_change(limit, previous, source="exchangeInfo")
        self._limit_learnt = True

    def _log_limit_change(self, limit: int, previous: int | None, *, source: str) -> None:
        # Below a limit the exchange stated before, it was lowered there: worth a warning. Below the
        # start-up fallback it is merely learnt.
        if self._limit_learnt and previous is not None and limit < previous:
            log.warning("weight_limit_lowered", limit=limit, previous=previous, source=source)
        else:
            log.info("weight_limit_learnt", limit=limit, previous=previous, source=source)

    def _rate_limited(self, retry_after: str | None, body: bytes) -> None:
        """A 429: adopt the limit it states, pause every caller, and refresh the limits in the background.

        Runs before this coroutine next awaits, so no request waiting in the limiter is sent on the
        old budget or before the pause is set.
        """
        stated = _stated_weight_limit(body)
        previous = self._limiter.limit
        seconds = _seconds(retry_after, default=self._seconds_to_next_window())
        if self._observer is not None:
            self._observer.paused(self.name, "429", seconds)
        self._limiter.rate_limited(seconds, limit=stated)
        if self._limiter.limit != previous and self._limiter.limit is not None:
            self._log_limit_change(self._limiter.limit, previous, source="429")
            self._limit_learnt = True
        self._refresh_limits_after_429()

    def _refresh_limits_after_429(self) -> None:
        """Start a background exchangeInfo refresh: at most one per minute window, one at a time.

        The 429 told the limit already; the refresh confirms it (and catches a limit raised again)
        without holding up the request that met the 429.
        """
        window = int(self._limiter.clock() // WINDOW_SECONDS)
        if window == self._refresh_window:
            return
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_window = window
        self.refresh_limits_soon()

    def refresh_limits_soon(self) -> None:
        """Learn the limits from exchangeInfo in the background (unless a refresh is under way)."""
        if self._closed or (self._refresh_task is not None and not self._refresh_task.done()):
            return
        # A fresh context: the refresh belongs to no collection task, so its log lines carry no task_id.
        self._refresh_task = asyncio.get_running_loop().create_task(
            self._refresh_limits_quietly(), name=f"{self.name}-limit-refresh", context=contextvars.Context()
        )

    async def _refresh_limits_quietly(self) -> None:
        try:
            await self.refresh_limits()
        except Exception as exc:
            # Never an unretrieved task exception; the budget from the 429 stands, the hourly symbol
            # refresh tries again.
            log.warning("weight_limit_refresh_failed", error=f"{exc.__class__.__name__}: {exc}"[:500])

    async def _get(
        self,
        path: str,
        params: dict[str, str],
        weight: int,
        on_wait: WaitCallback | None,
        parse: Callable[[bytes, float], T],
    ) -> T:
        """Send through the shared request loop (limiter, retries, parse inside the retry); `parse`
        gets the body and the epoch time at which its request was sent."""
        return await self._requests.get(path, params, weight, on_wait, parse)

    def _judge(self, answer: Answer) -> Verdict:
        """Binance's answers: the weight it counts, its 429 (which states the new limit) and 418."""
        used = answer.headers.get("X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            self._limiter.observe_used(int(used), sent_at=answer.sent_at)
        if answer.status == 429:
            self._rate_limited(answer.headers.get("Retry-After"), answer.body)
            return Resend("429")
        if answer.status == 418:
            return Wait(self._ban_seconds(answer.headers.get("Retry-After"), answer.body), "banned", "418")
        return http_verdict(answer, lambda refused: _invalid_request(refused.path, refused.status, refused.body))

    def _seconds_to_next_window(self) -> float:
        # The limiter's clock, so tests that drive time drive this too.
        now = self._limiter.clock()
        return (int(now // WINDOW_SECONDS) + 1) * WINDOW_SECONDS - now

    def _ban_seconds(self, retry_after: str | None, body: bytes) -> float:
        if retry_after is not None:
            return _seconds(retry_after, default=60.0)
        try:
            message = _error_decoder.decode(body).msg
        except (msgspec.DecodeError, msgspec.ValidationError):
            return 60.0
        match = _BANNED_UNTIL.search(message)
        if match is None:
            return 60.0
        return max(int(match.group(1)) / 1000 - self._limiter.clock(), 0.0)


# A klines body whose every byte is a digit or point ("d"), JSON punctuation of arrays of strings
# and integers (","), or anything else ("!"); classed in C (bytes.translate), not per candle.
_BYTE_CLASS = bytes(
    ord("d") if chr(b) in "0123456789." else ord(",") if chr(b) in '[]",' else ord("!") for b in range(256)
)
# A run of digits and points longer than the ingest's 100-character bound on a decimal.
_LONG_RUN = b"d" * 101
# "," -> tab and "]" -> newline; quotes and "[" dropped: [[a,"b",…,"0"],[c,…]] -> a\tb…\t0\n\tc…
_TO_COPY_TEXT = bytes.maketrans(b",]", b"\t\n")
_ROW_END = b"\t0\n"  # the ignored 12th field, always "0", and the end of its row
_FIELDS = 11


def copy_fields(body: bytes, count: int) -> list[bytes] | None:
    """The candles of a klines body as COPY text fields (KlinePage.copy_fields), cut in a few passes
    of C over the bytes, not per candle; None if the body is not the plain compact form Binance
    sends (whitespace, a null, a sign, an exponent, a 12th field other than "0", a value over 100
    characters…): the caller then builds the rows from the decoded candles.

    `count` is how many candles the body decoded to (msgspec already checked each row's types).
    """
    classes = body.translate(_BYTE_CLASS)
    if count == 0 or b"!" in classes or _LONG_RUN in classes or not body.startswith(b"[[") or not body.endswith(b"]]"):
        return None
    text = body.translate(_TO_COPY_TEXT, b'"[')
    rows = text[:-1].split(_ROW_END)  # the last "]" of the body left one newline too many
    if len(rows) != count + 1 or rows[-1]:
        return None
    rows.pop()
    rows[0] = b"\t" + rows[0]  # every other row starts with the tab that was the comma between rows
    # Exactly 11 fields in every row: a row with more or fewer would shift the columns of COPY.
    if set(map(bytes.count, rows, repeat(b"\t", count))) != {_FIELDS}:
        return None
    return rows


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TransientExchangeError(f"{what}: malformed response ({exc})") from None


def _stated_weight_limit(body: bytes) -> int | None:
    """The weight limit per minute a 429's message states, if it states one."""
    try:
        message = _error_decoder.decode(body).msg
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    match = _CURRENT_WEIGHT_LIMIT.search(message)
    return None if match is None else int(match.group(1))


def _seconds(header: str | None, *, default: float) -> float:
    try:
        return max(float(header), 0.0) if header is not None else default
    except ValueError:
        return default


def _invalid_request(path: str, status: int, body: bytes) -> InvalidRequestError:
    try:
        error = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return InvalidRequestError(f"{path}: HTTP {status} from the exchange", status=status)
    return InvalidRequestError(f"{error.msg} (Binance code {error.code})", code=error.code, status=status)
