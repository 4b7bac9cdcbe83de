"""Bybit v5 REST client: kline, instruments-info, tickers, for one `category` (the venue row's product).

Bybit's quirks, and what the client does about them:

- The kline list comes newest first, and a window holding more rows than `limit` answers with its
  newest `limit`; so every page asks for a window of exactly `limit` slots from its start and
  turns the answer around.
- The newest row of an answer that reaches the current period is the open candle; the others are
  final (KlinePage.closed).
- Spot publishes no listing time: the first candle is found coarse to fine (every month since 1970
  in one answer, then the first day, hour, minute of the first candle found), at most four requests.
- The limit is per IP, 600 requests in any 5 s; beyond it the IP gets HTTP 403 and a ban of at least
  ten minutes. Requests are paced below it (less the margin); a 403 pauses every request for 600 s.
- Errors come inside HTTP 200 as `retCode`: 10001 is a bad request (an unknown symbol, a bad
  parameter), 10006/10018 are rate limits, 10000/10016 are the server's own failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    ExchangeError,
    InvalidRequestError,
    TransientExchangeError,
    WaitCallback,
)
from service.exchanges.grid import STEP_MS, Grid
from service.exchanges.requests import Answer, Verdict, Wait, http_verdict
from service.exchanges.venues import VenueSpec
from service.exchanges.windowed import WindowedClient
from service.exchanges.windowed import decode as _decode
from service.records import Kline, KlinePage, ListingState, SymbolInfo, TickerPrice

__all__ = ["BAN_SECONDS", "INTERVALS", "MAX_PAGE", "REQUEST_LIMIT", "WINDOW_SECONDS", "BybitClient"]

T = TypeVar("T")

#: Requests per IP in any WINDOW_SECONDS (docs/v5/rate-limit/rate-limit.mdx, "HTTP IP limit").
REQUEST_LIMIT = 600
WINDOW_SECONDS = 5.0
#: A 403 "access too frequent" bans the IP for "at least 10 minutes".
BAN_SECONDS = 600.0
#: Most candles one kline request returns ([1, 1000]).
MAX_PAGE = 1000

#: Bybit's interval code of each unified timeframe it serves, shortest first.
INTERVALS: dict[str, str] = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120", "4h": "240",
    "6h": "360", "12h": "720", "1d": "D", "1w": "W", "1M": "M",
}  # fmt: skip

# Where Bybit's weeks open is not documented (shared notes: "UTC alignment assumed [verify]"), so
# weeks sit on the epoch grid (Thursdays) until the venue's answers say otherwise.
_WEEK_OFFSET_MS = 0

_KLINE_PATH = "/v5/market/kline"
_INSTRUMENTS_PATH = "/v5/market/instruments-info"
_TICKERS_PATH = "/v5/market/tickers"

# Coarse to fine, the timeframes a listing search narrows through (each after the monthly one).
_SEARCH_LEVELS = ("1d", "1h", "1m")
# A cursor loop that never ends is a venue fault, not a long list.
_MAX_SYMBOL_PAGES = 100

# retCodes that mean "slow down" (10006 per UID, 10018 per IP), "IP banned", and "our server failed".
_RATE_LIMITED_CODES = frozenset({10006, 10018})
_BANNED_CODES = frozenset({10009})
_SERVER_CODES = frozenset({10000, 10016})
_OK_PREFIX = b'{"retCode":0,'


class _Envelope(msgspec.Struct):
    retCode: int  # noqa: N815 - Bybit's field names
    retMsg: str = ""  # noqa: N815


class _Row(msgspec.Struct, array_like=True, gc=False):
    """One kline row: [startTime, open, high, low, close, volume, turnover], all strings."""

    start: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    turnover: str


class _KlineResult(msgspec.Struct):
    rows: list[_Row] = msgspec.field(name="list")


class _KlineAnswer(msgspec.Struct):
    result: _KlineResult


class _Instrument(msgspec.Struct):
    symbol: str
    status: str
    baseCoin: str  # noqa: N815
    quoteCoin: str  # noqa: N815
    contractType: str | None = None  # noqa: N815 - linear/inverse: LinearPerpetual, LinearFutures…
    settleCoin: str | None = None  # noqa: N815


class _InstrumentsResult(msgspec.Struct):
    instruments: list[_Instrument] = msgspec.field(name="list")
    nextPageCursor: str = ""  # noqa: N815


class _InstrumentsAnswer(msgspec.Struct):
    result: _InstrumentsResult


class _Ticker(msgspec.Struct):
    symbol: str
    lastPrice: str  # noqa: N815


class _TickersResult(msgspec.Struct):
    tickers: list[_Ticker] = msgspec.field(name="list")


class _TickersAnswer(msgspec.Struct):
    result: _TickersResult


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_kline_decoder = msgspec.json.Decoder(_KlineAnswer)
_instruments_decoder = msgspec.json.Decoder(_InstrumentsAnswer)
_tickers_decoder = msgspec.json.Decoder(_TickersAnswer)

# Trading trades; a pre-launch or a contract being delivered is there but not (fully) trading; the
# rest (Closed, and a symbol gone from the list) is delisted.
_PAUSED_STATUSES = frozenset({"PreLaunch", "Delivering"})


def _listing_state(status: str) -> ListingState:
    return "trading" if status == "Trading" else "paused" if status in _PAUSED_STATUSES else "delisted"


class BybitClient(WindowedClient):
    """The Bybit v5 implementation of `ExchangeClient` for one category: spot, or linear perpetuals
    (the venue row's product; its `perpetual` flag keeps perpetual contracts and their settle coin)."""

    _max_page = MAX_PAGE
    _request_limit = REQUEST_LIMIT
    _window_seconds = WINDOW_SECONDS
    _marks_open_candle = True  # the newest row of an answer reaching the current period

    def _setup(self, spec: VenueSpec) -> None:
        self._category = spec.product

    def _make_grids(self, spec: VenueSpec) -> dict[str, Grid]:
        # Bybit does not document where its weeks open: each series learns it from the answers.
        return {
            tf: Grid.of(tf, offset_ms=_WEEK_OFFSET_MS if tf == "1w" else 0, anchored=tf != "1w") for tf in INTERVALS
        }

    def _judge(self, answer: Answer) -> Verdict:
        return _judge(answer)

    # -- candles ------------------------------------------------------------------------------------

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
        grid = self._grids[timeframe]
        limit = max(1, min(limit, MAX_PAGE))
        # Where the grid is only a guess (weeks), start_ms is where the series' learnt grid opens a
        # candle: aligning it to the guess would skip that candle.
        first = grid.align_up(start_ms) if grid.anchored else start_ms
        # Exactly `limit` slots from the first: Bybit answers a wider window with its newest rows.
        last = grid.shift(first, limit) - 1
        if end_ms is not None:
            last = min(last, end_ms)
        if last < first:
            return self._empty_page()
        what = f"klines {symbol} {timeframe}"

        def parse(rows: list[_Row], sent_at: float) -> KlinePage:
            now_ms = int(sent_at * 1000)
            klines = _klines(rows, grid, first, last, what)[:limit]
            # The answer reaches the current period: its newest row is the candle still open.
            reaches_now = last >= grid.align_open(now_ms - CLOCK_SKEW_ALLOWANCE_MS)
            closed = len(klines) - 1 if reaches_now and klines else len(klines)
            return KlinePage(klines=klines, as_of_ms=now_ms - CLOCK_SKEW_ALLOWANCE_MS, closed=closed)

        return await self._kline_rows(symbol, timeframe, first, last, limit, on_wait, parse)

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        """The first candle's open time, narrowed coarse to fine: every month since 1970 fits one
        answer (1000 months reach 2053); the oldest month holds the first day, that day the first
        hour, that hour the first minute. At most four requests, each answer a few dozen rows."""
        grid = self._grids[timeframe]
        oldest = await self._oldest_open(symbol, "1M", 0, int(self._clock() * 1000), on_wait)
        if oldest is None or timeframe == "1M":
            return oldest
        outer = self._grids["1M"]
        # Each level strictly coarser than the timeframe, then the timeframe itself.
        for level in [*(tf for tf in _SEARCH_LEVELS if STEP_MS[tf] > grid.step_ms), timeframe]:
            inner = self._grids[level]
            # The candle holding `oldest` opens where the grid says; where it is a guess (weeks), up to
            # a step before: a week that began in the month before the first monthly candle.
            start = inner.align_open(oldest) if inner.anchored else oldest - inner.step_ms + 1
            found = await self._oldest_open(symbol, level, start, outer.close_time(oldest), on_wait)
            if found is None:
                # The coarser candle promises one here; without it, start early rather than late.
                return grid.align_open(oldest)
            oldest, outer = found, inner
        return oldest

    async def _oldest_open(
        self, symbol: str, timeframe: str, start: int, end: int, on_wait: WaitCallback | None
    ) -> int | None:
        """The open time of the oldest row in [start, end] (a window of at most MAX_PAGE rows)."""

        def parse(rows: list[_Row], sent_at: float) -> int | None:
            if not rows:
                return None
            if not rows[-1].start.isdigit():
                raise TransientExchangeError(f"klines {symbol} {timeframe}: malformed start time")
            return int(rows[-1].start)

        return await self._kline_rows(symbol, timeframe, start, end, MAX_PAGE, on_wait, parse)

    async def _kline_rows(
        self,
        symbol: str,
        timeframe: str,
        start: int,
        end: int,
        limit: int,
        on_wait: WaitCallback | None,
        parse: Callable[[list[_Row], float], T],
    ) -> T:
        params = {
            "category": self._category, "symbol": symbol, "interval": INTERVALS[timeframe],
            "start": str(start), "end": str(end), "limit": str(limit),
        }  # fmt: skip
        what = f"klines {symbol} {timeframe}"

        def decode(body: bytes, sent_at: float) -> T:
            # The rows are plain decimals and digits; a backslash could only smuggle a control
            # character into the COPY stream, so such a body is refused before decoding.
            if b"\\" in body:
                raise TransientExchangeError(f"{what}: unexpected escape in response body")
            answer: _KlineAnswer = _decode(_kline_decoder, body, what)
            return parse(answer.result.rows, sent_at)

        return await self._get(_KLINE_PATH, params, on_wait, decode, what)

    # -- symbols and prices ---------------------------------------------------------------------------

    async def fetch_symbols(self) -> list[SymbolInfo]:
        params = {"category": self._category}
        instruments: list[_Instrument] = []
        for _ in range(_MAX_SYMBOL_PAGES):
            page: _InstrumentsResult = await self._requests.get(
                _INSTRUMENTS_PATH, params, 1, None,
                lambda body, _: _decode(_instruments_decoder, body, "instruments-info").result,
            )  # fmt: skip
            instruments.extend(page.instruments)
            if not page.nextPageCursor or page.nextPageCursor == params.get("cursor"):
                break
            params = {"category": self._category, "cursor": page.nextPageCursor}
        else:
            raise ExchangeError(f"instruments-info: still paging after {_MAX_SYMBOL_PAGES} pages")
        perpetual = self._spec.perpetual
        return [
            SymbolInfo(
                symbol=i.symbol, base_asset=i.baseCoin, quote_asset=i.quoteCoin, status=i.status,
                state=_listing_state(i.status), settle_asset=i.settleCoin if perpetual else None,
            )
            for i in instruments
            # linear lists dated futures too; a perpetual venue is its perpetuals.
            if not perpetual or (i.contractType or "").endswith("Perpetual")
        ]  # fmt: skip

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        params = {"category": self._category}
        if symbols is not None and len(symbols) == 1:
            params["symbol"] = symbols[0]
        what = f"tickers {params['symbol']}" if "symbol" in params else "tickers"
        tickers: list[_Ticker] = await self._get(
            _TICKERS_PATH, params, None, lambda body, _: _decode(_tickers_decoder, body, "tickers").result.tickers, what
        )
        wanted = None if symbols is None else set(symbols)
        return [TickerPrice(t.symbol, t.lastPrice) for t in tickers if wanted is None or t.symbol in wanted]


def _klines(rows: list[_Row], grid: Grid, first: int, last: int, what: str) -> list[Kline]:
    """Bybit's rows (newest first) as Klines oldest first, those opening in [first, last] only."""
    step = None if grid.months else grid.step_ms
    klines: list[Kline] = []
    for row in reversed(rows):
        if not row.start.isdigit():
            raise TransientExchangeError(f"{what}: malformed start time {row.start[:40]!r}")
        open_time = int(row.start)
        if open_time < first or open_time > last:
            continue
        close_time = open_time + step - 1 if step is not None else grid.close_time(open_time)
        klines.append(
            Kline(
                open_time, row.open, row.high, row.low, row.close, row.volume, close_time,
                quote_volume=row.turnover,
            )
        )  # fmt: skip
    return klines


def _judge(answer: Answer) -> Verdict:
    """Bybit's answers: 403 is the IP ban; the envelope's retCode says the rest."""
    if answer.status == 403:
        return Wait(BAN_SECONDS, reason="banned", status="403")
    verdict = http_verdict(answer, _refused)
    if verdict is not None or answer.body.startswith(_OK_PREFIX):
        return verdict
    try:
        envelope = _envelope_decoder.decode(answer.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return TransientExchangeError(f"{answer.path}: malformed response ({exc})")
    code = envelope.retCode
    if code == 0:
        return None
    if code in _RATE_LIMITED_CODES:
        return Wait(WINDOW_SECONDS, reason="rate_limited", status=str(code))
    if code in _BANNED_CODES:
        return Wait(BAN_SECONDS, reason="banned", status=str(code))
    if code in _SERVER_CODES:
        return TransientExchangeError(f"{answer.path}: {envelope.retMsg} (Bybit code {code})")
    return InvalidRequestError(f"{envelope.retMsg} (Bybit code {code})", code=code, status=answer.status)


def _refused(answer: Answer) -> InvalidRequestError:
    try:
        envelope = _envelope_decoder.decode(answer.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return InvalidRequestError(f"{answer.path}: HTTP {answer.status} from the exchange", status=answer.status)
    return InvalidRequestError(
        f"{envelope.retMsg} (Bybit code {envelope.retCode})", code=envelope.retCode, status=answer.status
    )
