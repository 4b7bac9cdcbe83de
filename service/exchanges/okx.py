"""OKX v5 REST client: candles, instruments and tickers of one instType (the venue row's product).

What OKX does its own way, and what this client does about it:

- Candles come from two endpoints, each with its own limit per IP (counted apart, each a sliding
  window of 2 s): `market/candles` (40 requests) reaches only the latest 1,440 candles of a bar;
  `market/history-candles` (20 requests) reaches the older ones. A window that lies within the
  latest 1,440 slots (less a few slots of margin for our clock and a wait in the limiter) goes to
  `candles`, any other to `history-candles`. Both serve at most 300 rows a request.
- Rows come newest first and page backwards: `after` = older than (exclusive), `before` = newer
  than (exclusive). The client asks for the window that holds exactly the oldest `limit` slots from
  start_ms and turns the answer around.
- Every row says whether it is final (`confirm` "1"; "0" is the open candle): KlinePage.closed.
- 6h, 12h, 1d, 1w and 1M are asked for in their UTC variants (`6Hutc`…`1Mutc`): the plain codes are
  aligned on Hong Kong time. Weeks open on Monday 00:00 UTC, months on the 1st; the rest on
  multiples of their length since the epoch.
- Rate-limit answers are HTTP 429 with code 50011 and no Retry-After: the endpoint's limiter pauses
  for one window. 5xx and the venue's "busy" codes are retried; any other code (51001 unknown
  instrument, 51000 bad parameter…) is a final refusal.
- Values are strings in the body and stay the venue's decimal text. Spot's `vol` is in the base
  currency; a derivative's `vol` counts contracts, so there the base volume is `volCcy`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from itertools import pairwise
from typing import Any, Final, TypeVar

import msgspec

from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    InvalidRequestError,
    LimiterState,
    TransientExchangeError,
    WaitCallback,
)
from service.exchanges.grid import Grid
from service.exchanges.requests import Answer, Verdict, Wait, http_verdict
from service.exchanges.sharing import SharedBudgets
from service.exchanges.venues import VenueSpec
from service.exchanges.windowed import WindowedClient
from service.exchanges.windows import WindowLimiter
from service.records import Kline, KlinePage, ListingState, SymbolInfo, TickerPrice
from service.settings import VenueSettings

__all__ = ["BARS", "MAX_PAGE", "OkxClient"]

T = TypeVar("T")

CANDLES: Final = "/api/v5/market/candles"
HISTORY_CANDLES: Final = "/api/v5/market/history-candles"
INSTRUMENTS: Final = "/api/v5/public/instruments"
TICKERS: Final = "/api/v5/market/tickers"
TICKER: Final = "/api/v5/market/ticker"

#: OKX's bar per unified timeframe: never a Hong-Kong-aligned code (`1D`, `1W`…), always its `…utc` twin.
#: Left out: `1s` (history-candles only, the last three months) and `3d` (`3Dutc`, whose anchor is undocumented).
BARS: Final[dict[str, str]] = {
    "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H",
    "6h": "6Hutc", "12h": "12Hutc", "1d": "1Dutc", "1w": "1Wutc", "1M": "1Mutc",
}  # fmt: skip
MAX_PAGE: Final = 300
# `candles` serves only the latest 1,440 rows of a bar; a window is sent there only when it starts this
# many slots inside that reach (our clock may lag the venue's, and a request may wait in the limiter).
_CANDLES_REACH: Final = 1440
_REACH_MARGIN: Final = 5
# Each endpoint's documented limit per IP, in requests per 2 s; the candles limit is the venue's headline
# figure, which VenueSettings.weight_limit overrides (the others scale with it).
_WINDOW_SECONDS: Final = 2.0
_LIMITS: Final[dict[str, int]] = {CANDLES: 40, HISTORY_CANDLES: 20, INSTRUMENTS: 20, TICKERS: 20, TICKER: 20}
# 1970-01-01 was a Thursday; 1Wutc weeks open on Monday 00:00 UTC.
_MONDAY_OFFSET_MS: Final = 4 * 86_400_000
# Where a row's `vol` is the base currency; for derivatives it counts contracts and `volCcy` is the base.
#: The instTypes whose `vol` counts the base currency (for the others it counts contracts).
VOL_IN_BASE: Final = frozenset({"SPOT", "MARGIN"})
# The venue's "try again" codes: service unavailable, endpoint timeout, system busy, system error.
_TRANSIENT_CODES: Final = frozenset({"50001", "50004", "50013", "50026"})
_RATE_LIMITED: Final = "50011"
# Instrument states; an unknown one pauses (never trades, never delists by surprise).
_STATES: Final[dict[str, ListingState]] = {
    "live": "trading", "suspend": "paused", "preopen": "paused", "expired": "delisted",
}  # fmt: skip


class _Row(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm], all strings; older answers lack the last two."""

    ts: str
    open: str
    high: str
    low: str
    close: str
    vol: str
    vol_ccy: str
    vol_ccy_quote: str | None = None
    confirm: str | None = None


class _Candles(msgspec.Struct, frozen=True):
    code: str | int
    msg: str = ""
    data: list[_Row] = []


class _Head(msgspec.Struct, frozen=True):
    """The envelope without its data: what the judge reads."""

    code: str | int
    msg: str = ""


class _Instrument(msgspec.Struct, frozen=True, rename="camel"):
    inst_id: str
    state: str = ""
    base_ccy: str = ""
    quote_ccy: str = ""
    settle_ccy: str = ""
    inst_family: str = ""
    uly: str = ""
    list_time: str = ""


class _Instruments(msgspec.Struct, frozen=True):
    code: str | int
    msg: str = ""
    data: list[_Instrument] = []


class _Ticker(msgspec.Struct, frozen=True, rename="camel"):
    inst_id: str
    last: str = ""


class _Tickers(msgspec.Struct, frozen=True):
    code: str | int
    msg: str = ""
    data: list[_Ticker] = []


_candles_decoder = msgspec.json.Decoder(_Candles)
_head_decoder = msgspec.json.Decoder(_Head)
_instruments_decoder = msgspec.json.Decoder(_Instruments)
_tickers_decoder = msgspec.json.Decoder(_Tickers)
_OK_PREFIX: Final = b'{"code":"0",'


class OkxClient(WindowedClient):
    """The OKX v5 implementation of `ExchangeClient` for one instType (`spec.product`: SPOT, SWAP…)."""

    _max_page = MAX_PAGE
    _request_limit = _LIMITS[CANDLES]
    _window_seconds = _WINDOW_SECONDS
    _marks_open_candle = True  # confirm "0"

    def _setup(self, spec: VenueSpec) -> None:
        self._vol_in_base = spec.product in VOL_IN_BASE
        # Listing times (epoch ms) by instId, from the instrument list; None where the venue gives none.
        self._list_times: dict[str, int | None] = {}

    def _make_grids(self, spec: VenueSpec) -> dict[str, Grid]:
        return {tf: Grid.of(tf, offset_ms=_MONDAY_OFFSET_MS if tf == "1w" else 0) for tf in BARS}

    def _make_limiter(
        self,
        settings: VenueSettings,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        shared: SharedBudgets | None,
    ) -> WindowLimiter:
        """One limiter per endpoint, each at its documented limit scaled as the candles one is, and
        shared as `okx:<endpoint>`; requests name theirs (`_get`), and the candles one is the default."""
        scale = settings.weight_limit / _LIMITS[CANDLES] if settings.weight_limit is not None else 1.0
        self._limiters = {
            path: WindowLimiter(
                limit=max(1, round(documented * scale)),
                window_seconds=_WINDOW_SECONDS,
                margin=settings.weight_margin,
                max_concurrency=settings.max_concurrency,
                clock=clock,
                sleep=sleep,
                shared=shared.window(f"{self.name}:{path.rsplit('/', 1)[-1]}") if shared is not None else None,
            )
            for path, documented in _LIMITS.items()
        }
        return self._limiters[CANDLES]

    def _judge(self, answer: Answer) -> Verdict:
        return _judge(answer)

    def reach_start(self, timeframe: str, now_ms: int) -> int | None:
        return None  # history-candles serves what `candles` no longer reaches

    def limiter_state(self) -> LimiterState:
        """The endpoint that pauses longest, else the one nearest its limit (candles on a tie)."""
        states = [limiter.state for limiter in self._limiters.values()]
        paused = [s for s in states if s.paused_until is not None]
        if paused:
            return max(paused, key=lambda s: s.paused_until or 0.0)
        return max(states, key=lambda s: s.used_in_window / (s.budget or 1))

    # -- candles ----------------------------------------------------------------------------------

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
        limit = min(limit, MAX_PAGE)
        # The oldest `limit` slots from start_ms, and not past end_ms: open times in [start_ms, stop).
        stop = grid.shift(grid.align_up(start_ms), limit)
        if end_ms is not None:
            stop = min(stop, end_ms + 1)
        if limit < 1 or stop <= start_ms:
            return self._empty_page()
        params = {"instId": symbol, "bar": BARS[timeframe], "after": str(stop), "limit": str(limit)}
        if start_ms > 0:
            params["before"] = str(start_ms - 1)
        what = f"candles {symbol} {timeframe}"

        def parse(body: bytes, sent_at: float) -> KlinePage:
            return self._page(body, sent_at, grid, start_ms, stop, limit, what)

        return await self._get(self._candles_path(grid, start_ms), params, on_wait, parse, what)

    def _page(
        self, body: bytes, sent_at: float, grid: Grid, start_ms: int, stop: int, limit: int, what: str
    ) -> KlinePage:
        rows = _candle_rows(body, what)
        klines: list[Kline] = []
        confirms: list[str | None] = []
        for row in reversed(rows):  # newest first on the wire
            open_ms = _ms(row.ts, what)
            if not start_ms <= open_ms < stop:
                continue
            klines.append(
                Kline(
                    open_ms, row.open, row.high, row.low, row.close, row.vol if self._vol_in_base else row.vol_ccy,
                    grid.close_time(open_ms), row.vol_ccy_quote,
                )
            )  # fmt: skip
            confirms.append(row.confirm)
        if any(a.open_time >= b.open_time for a, b in pairwise(klines)):
            # Not newest first after all: order by open time, one candle per open time (the later row wins).
            by_open = {k.open_time: (k, c) for k, c in zip(klines, confirms, strict=True)}
            ordered = [by_open[t] for t in sorted(by_open)]
            klines, confirms = [k for k, _ in ordered], [c for _, c in ordered]
        klines, confirms = klines[:limit], confirms[:limit]
        closed: int | None = None
        if None not in confirms:
            closed = next((i for i, c in enumerate(confirms) if c != "1"), len(confirms))
        return KlinePage(klines=klines, as_of_ms=int(sent_at * 1000) - CLOCK_SKEW_ALLOWANCE_MS, closed=closed)

    def _candles_path(self, grid: Grid, oldest_ms: int) -> str:
        """`candles` if the oldest open time wanted lies within its reach (the latest 1,440 slots)."""
        now_ms = int(self._clock() * 1000)
        reach = grid.shift(grid.align_open(now_ms), -(_CANDLES_REACH - 1 - _REACH_MARGIN))
        return CANDLES if oldest_ms >= reach else HISTORY_CANDLES

    async def _open_times_before(
        self, symbol: str, timeframe: str, before_ms: int, on_wait: WaitCallback | None, path: str = HISTORY_CANDLES
    ) -> list[int]:
        """Open times of the newest (at most 300) candles opening before `before_ms`, oldest first.

        From history-candles by default: `candles` would answer short where its reach ends, and a short
        answer is read as "nothing older"."""
        params = {"instId": symbol, "bar": BARS[timeframe], "after": str(before_ms), "limit": str(MAX_PAGE)}
        what = f"candles {symbol} {timeframe}"

        def parse(body: bytes, _: float) -> list[int]:
            return sorted(_ms(row.ts, what) for row in _candle_rows(body, what))

        return await self._get(path, params, on_wait, parse, what)

    async def fetch_listing_start(
        self, symbol: str, timeframe: str, *, on_wait: WaitCallback | None = None
    ) -> int | None:
        """The instrument's listTime, confirmed by one request from it; without a listTime, or when the
        candles disagree with it, a search that halves the span with each request (about 16 for 1m
        candles since the epoch, on history-candles' 20 per 2 s)."""
        grid = self._grids[timeframe]
        list_time = await self._list_time(symbol, on_wait)
        now_ms = int(self._clock() * 1000)
        newest = grid.next_open(grid.align_open(now_ms))
        lo, hi = grid.align_up(0), None
        if list_time is not None and list_time <= now_ms:
            # The newest 300 candles before the 300th slot from the listing: fewer than 300 of them hold
            # every candle before it, so their oldest is the first.
            probe = grid.shift(grid.align_open(list_time), MAX_PAGE - 1)
            around = await self._open_times_before(symbol, timeframe, probe, on_wait)
            if 0 < len(around) < MAX_PAGE:
                return around[0]
            if around:
                hi = around[0]  # candles long before the listing time: the first opens at or before this
            else:
                lo = probe  # none before the probe: the first opens later, if at all
        first = await self._search_first(symbol, timeframe, lo, hi, newest, on_wait)
        if first is None:
            # history-candles holds no candle at all: a series that has only just opened is in `candles`.
            recent = await self._open_times_before(symbol, timeframe, newest, on_wait, CANDLES)
            first = recent[0] if recent else None
        return first

    async def _search_first(
        self, symbol: str, timeframe: str, lo: int, hi: int | None, newest: int, on_wait: WaitCallback | None
    ) -> int | None:
        """The first open time in history-candles, knowing no candle opens before `lo` and one opens at
        `hi` (if known).

        A request for the newest 300 candles before t answers: none (the first opens at or after t),
        fewer than 300 (the oldest of them is the first), or 300 (the first opens at or before the
        oldest of them).
        """
        grid = self._grids[timeframe]
        if hi is None:
            found = await self._open_times_before(symbol, timeframe, newest, on_wait)
            if len(found) < MAX_PAGE:
                return found[0] if found else None
            hi = found[0]
        while True:
            span = grid.slots_between(lo, hi)
            if span <= MAX_PAGE:
                found = await self._open_times_before(symbol, timeframe, hi, on_wait)
                return found[0] if found else hi
            probe = grid.shift(lo, span // 2)
            found = await self._open_times_before(symbol, timeframe, probe, on_wait)
            if not found:
                lo = probe
            elif len(found) < MAX_PAGE:
                return found[0]
            else:
                hi = found[0]

    # -- instruments and prices -------------------------------------------------------------------

    async def fetch_symbols(self) -> list[SymbolInfo]:
        instruments = await self._instruments({"instType": self._spec.product}, None, "instruments")
        self._list_times.update((i.inst_id, _list_time(i)) for i in instruments)
        return [self._symbol_info(i) for i in instruments]

    def _symbol_info(self, inst: _Instrument) -> SymbolInfo:
        base, quote = inst.base_ccy, inst.quote_ccy
        if not (base and quote):  # derivatives leave them empty: BTC-USDT from the instrument family
            family = (inst.inst_family or inst.uly).split("-")
            base, quote = family[0], family[1] if len(family) > 1 else ""
        return SymbolInfo(
            symbol=inst.inst_id,
            base_asset=base.upper(),
            quote_asset=quote.upper(),
            status=inst.state,
            state=_STATES.get(inst.state, "paused"),
            settle_asset=(inst.settle_ccy.upper() or None) if self._spec.perpetual else None,
        )

    async def _list_time(self, symbol: str, on_wait: WaitCallback | None) -> int | None:
        if symbol not in self._list_times:
            what = f"instrument {symbol}"
            found = await self._instruments({"instType": self._spec.product, "instId": symbol}, on_wait, what)
            match = [i for i in found if i.inst_id == symbol]
            if not match:
                raise InvalidRequestError(f"{what}: not listed by OKX as {self._spec.product}")
            self._list_times[symbol] = _list_time(match[0])
        return self._list_times[symbol]

    async def _instruments(
        self, params: Mapping[str, str], on_wait: WaitCallback | None, what: str
    ) -> list[_Instrument]:
        def parse(body: bytes, _: float) -> list[_Instrument]:
            instruments: list[_Instrument] = _data(_instruments_decoder, body, what)
            return instruments

        return await self._get(INSTRUMENTS, params, on_wait, parse, what)

    async def fetch_prices(self, symbols: list[str] | None = None) -> list[TickerPrice]:
        if symbols is not None and len(symbols) == 1:
            path, params, what = TICKER, {"instId": symbols[0]}, f"ticker {symbols[0]}"
        else:
            path, params, what = TICKERS, {"instType": self._spec.product}, "tickers"

        def parse(body: bytes, _: float) -> list[_Ticker]:
            tickers: list[_Ticker] = _data(_tickers_decoder, body, what)
            return tickers

        tickers: list[_Ticker] = await self._get(path, params, None, parse, what)
        wanted = None if symbols is None else set(symbols)
        return [TickerPrice(t.inst_id, t.last) for t in tickers if t.last and (wanted is None or t.inst_id in wanted)]

    # -- requests ---------------------------------------------------------------------------------

    def _limiter_for(self, path: str) -> WindowLimiter:
        return self._limiters[path]  # each endpoint is counted apart


def _judge(answer: Answer) -> Verdict:
    """OKX's answers: data under code "0"; 50011 (HTTP 429) a wait; 5xx and busy codes worth a retry;
    another code a refusal."""
    if answer.status == 200 and answer.body.startswith(_OK_PREFIX):
        return None
    head = _head(answer.body)
    code = None if head is None else str(head.code)
    if answer.status == 429 or code == _RATE_LIMITED:
        status = "429" if answer.status == 429 else _RATE_LIMITED
        return Wait(_WINDOW_SECONDS, reason="rate_limited", status=status)
    if answer.status >= 500 or code in _TRANSIENT_CODES:
        detail = f" (OKX code {code}: {head.msg})" if head is not None else ""
        return TransientExchangeError(f"{answer.path}: HTTP {answer.status} from the exchange{detail}")
    if answer.status >= 400:
        return http_verdict(answer, _refused)
    if head is None or code == "0":
        return None  # a garbled body is the parser's to refuse (and retried)
    return _refused(answer)


def _refused(answer: Answer) -> InvalidRequestError:
    head = _head(answer.body)
    if head is None:
        return InvalidRequestError(f"{answer.path}: HTTP {answer.status} from the exchange", status=answer.status)
    code = str(head.code)
    return InvalidRequestError(
        f"{head.msg} (OKX code {code})", code=int(code) if code.isdigit() else None, status=answer.status
    )


def _head(body: bytes) -> _Head | None:
    try:
        return _head_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _candle_rows(body: bytes, what: str) -> list[_Row]:
    # The values are plain decimals; a backslash could only smuggle a tab or newline into the COPY stream.
    if b"\\" in body:
        raise TransientExchangeError(f"{what}: unexpected escape in response body")
    rows: list[_Row] = _data(_candles_decoder, body, what)
    return rows


def _data(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    """The `data` of an envelope whose code is "0"."""
    try:
        envelope = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TransientExchangeError(f"{what}: malformed response ({exc})") from None
    if str(envelope.code) != "0":
        raise TransientExchangeError(f"{what}: unexpected code {envelope.code} ({envelope.msg})")
    return envelope.data


def _ms(text: str, what: str) -> int:
    if not text.isdigit():
        raise TransientExchangeError(f"{what}: malformed timestamp {text!r}")
    return int(text)


def _list_time(inst: _Instrument) -> int | None:
    return int(inst.list_time) if inst.list_time.isdigit() and int(inst.list_time) > 0 else None
