"""A fake Binance REST API, spot (``/api/v3``) and USD-M futures (``/fapi/v1``): a real aiohttp
server that tests own and script.

Why: the collector must be exercised against the exact bodies, headers and rate-limit behaviour of
Binance without touching the network, and the benchmark needs a server cheap enough that it measures
the service, not the fake. Use it in-process (``async with FakeBinance() as fake: ...``) or as its own
process (``python -m tests.fakes.binance --port 0 --symbols 10 --candles 1000``), which prints its
base URL as the first stdout line and serves until SIGTERM.

One instance answers both products, each its own market: its own symbols, candles, weight limit
(spot 6000, USD-M 2400 per minute), minute counters and IP ban. Every market-data method takes
``product="spot"`` (the default) or ``product="usdm"``. USD-M follows its own rules: limit default
500 and at most 1500, klines weighed by limit (1/2/5/10), no ``1s``, exchangeInfo listing contracts
(``contractType``, ``marginAsset``) with the quarterlies beside the perpetuals, and a 12th kline
field that is not "0".
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import random
import re
import sys
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from aiohttp import web

from tests.fakes.venue_server import VenueServer, base_parser, dumps, serve_until_signalled, take_fault

JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
HTML_CONTENT_TYPE: Final = "text/html"
WINDOW_MS: Final = 60_000

# Binance's 16 spot kline intervals, in its own order.
INTERVALS: Final[tuple[str, ...]] = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)  # fmt: skip
_S: Final = 1_000
_M: Final = 60 * _S
_H: Final = 60 * _M
_D: Final = 24 * _H
# Fixed-length intervals; "1M" is a calendar month and handled apart.
INTERVAL_MS: Final[dict[str, int]] = {
    "1s": _S, "1m": _M, "3m": 3 * _M, "5m": 5 * _M, "15m": 15 * _M, "30m": 30 * _M,
    "1h": _H, "2h": 2 * _H, "4h": 4 * _H, "6h": 6 * _H, "8h": 8 * _H, "12h": 12 * _H,
    "1d": _D, "3d": 3 * _D, "1w": 7 * _D,
}  # fmt: skip
# USD-M's 15: spot's without 1s.
USDM_INTERVALS: Final[tuple[str, ...]] = INTERVALS[1:]
_MONDAY_OFFSET_MS: Final = 4 * _D  # 1970-01-01 was a Thursday; weeks open on Monday 00:00 UTC.

# Field names of the 12-field kline row, for update_kline().
KLINE_FIELDS: Final[tuple[str, ...]] = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
    "taker_buy_base_volume", "taker_buy_quote_volume", "ignore",
)  # fmt: skip
_INT_FIELDS: Final = frozenset({0, 6, 8})

_SYMBOL_RE: Final = re.compile(r"[A-Z0-9_.\-]{1,20}")
_INT_RE: Final = re.compile(r"[0-9]{1,20}")
_KNOWN_QUOTES: Final = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "DAI")

FaultKind = Literal["500", "502", "503", "504", "drop", "bad_json", "timeout", "429", "418"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))

Product = Literal["spot", "usdm"]
PRODUCTS: Final[tuple[Product, ...]] = ("spot", "usdm")
PREFIXES: Final[dict[Product, str]] = {"spot": "/api/v3", "usdm": "/fapi/v1"}
MAX_LIMIT: Final[dict[Product, int]] = {"spot": 1000, "usdm": 1500}
USDM_WEIGHT_LIMIT: Final = 2400
_DEFAULT_LIMIT: Final[dict[Product, int]] = {"spot": 6000, "usdm": USDM_WEIGHT_LIMIT}
# What a USD-M perpetual's deliveryDate says (2100-12-25), and the quarterly the fake's process lists.
_PERPETUAL_DELIVERY_MS: Final = 4_133_404_800_000
QUARTERLY: Final = "BTCUSDT_261225"

KlineRow = list[Any]
_Result = tuple[int, bytes]


# ---------------------------------------------------------------------------------------------
# Interval arithmetic
# ---------------------------------------------------------------------------------------------


def _month_start(ms: int, months_ahead: int = 0) -> int:
    """Open time of the calendar month holding ``ms``, shifted by ``months_ahead`` months."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    index = dt.year * 12 + (dt.month - 1) + months_ahead
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000


def interval_open(interval: str, ms: int) -> int:
    """Open time of the ``interval`` candle holding ``ms``, aligned as Binance aligns it."""
    if interval == "1M":
        return _month_start(ms)
    step = INTERVAL_MS[interval]
    if interval == "1w":
        return (ms - _MONDAY_OFFSET_MS) // step * step + _MONDAY_OFFSET_MS
    return ms // step * step


def interval_shift(interval: str, open_ms: int, n: int) -> int:
    """Open time ``n`` candles after (or before, if negative) the aligned ``open_ms``."""
    if interval == "1M":
        return _month_start(open_ms, n)
    return open_ms + n * INTERVAL_MS[interval]


# ---------------------------------------------------------------------------------------------
# Records and scripts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake answered (or dropped), kept so tests can assert on traffic."""

    time_ms: int
    path: str
    params: dict[str, str]
    status: int  # 0: no HTTP response (dropped or hung)
    weight_after: int
    fault: str | None = None


@dataclass(slots=True)
class WindowStats:
    """Per exchange-clock minute: weight used and how often the limit bit."""

    used: int = 0
    requests: int = 0
    count_429: int = 0
    count_418: int = 0
    violations: int = 0  # real limit overruns only; these drive ban_after_429s


@dataclass(slots=True)
class Fault:
    """A scripted failure; applies to matching requests until ``remaining`` reaches 0."""

    kind: FaultKind
    path: str | None = "/api/v3/klines"
    remaining: int = 1
    match: dict[str, str] | None = None
    retry_after: float = 1.0
    every: int = 1  # apply to every n-th matching request; the others pass through
    body: bytes | None = None
    seen: int = 0
    applied: int = 0

    def matches(self, path: str, params: Mapping[str, str]) -> bool:
        """Whether this still-armed fault targets the request."""
        if self.remaining <= 0 or (self.path is not None and self.path != path):
            return False
        return self.match is None or all(params.get(k) == v for k, v in self.match.items())


@dataclass(slots=True)
class _Symbol:
    base: str
    quote: str
    status: str
    contract_type: str | None = None  # USD-M only: PERPETUAL, CURRENT_QUARTER, NEXT_QUARTER
    margin_asset: str | None = None  # USD-M only: what the contract settles in


@dataclass(slots=True)
class _Market:
    """One product's state: its listing, candles, limit, minute counters and ban."""

    product: Product
    weight_limit: int | None
    advertised_weight_limit: int | None = None
    symbols: dict[str, _Symbol] = field(default_factory=dict)
    series: dict[str, dict[str, _Series]] = field(default_factory=dict)
    symbols_json: bytes | None = None
    windows: dict[int, WindowStats] = field(default_factory=dict)
    ban_until_ms: int | None = None

    @property
    def intervals(self) -> tuple[str, ...]:
        return INTERVALS if self.product == "spot" else USDM_INTERVALS

    def stated_limit(self) -> int:
        """The limit the 429 message and exchangeInfo state."""
        return self.weight_limit if self.weight_limit is not None else _DEFAULT_LIMIT[self.product]


@dataclass(slots=True)
class _Series:
    """Rows of one symbol/interval, sorted, pre-encoded so a page is a bisect plus a join."""

    open_times: list[int] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)

    def merge(self, pairs: list[tuple[int, bytes]]) -> None:
        """Insert or replace rows by open time, keeping the order."""
        pairs.sort(key=lambda p: p[0])
        if not self.open_times or pairs[0][0] > self.open_times[-1]:
            last = None
            for t, blob in pairs:
                if t == last:
                    self.encoded[-1] = blob
                    continue
                self.open_times.append(t)
                self.encoded.append(blob)
                last = t
            return
        merged = dict(zip(self.open_times, self.encoded, strict=True))
        merged.update(pairs)
        self.open_times = sorted(merged)
        self.encoded = [merged[t] for t in self.open_times]


@dataclass(frozen=True, slots=True)
class _Route:
    path: str
    weight: Callable[[Mapping[str, str]], int]
    handler: Callable[[Mapping[str, str], int], _Result]
    product: Product = "spot"


# ---------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------


def _error(code: int, msg: str, status: int = 400) -> _Result:
    return status, dumps({"code": code, "msg": msg})


def _mandatory(name: str) -> _Result:
    return _error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _illegal(name: str, legal: str) -> _Result:
    return _error(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def _illegal_symbol() -> _Result:
    return _illegal("symbol", "^[A-Z0-9-_.]{1,20}$")


def _encode_row(row: Sequence[Any]) -> bytes:
    return dumps(list(row))


def _encode_json_row(row: Sequence[Any]) -> bytes:
    """An unchecked row, still strict JSON (no NaN or Infinity literals) so the client can decode it."""
    return json.dumps(list(row), separators=(",", ":"), allow_nan=False).encode()


def _check_row(row: Sequence[Any]) -> None:
    """Refuse rows Binance would never send, so tests cannot feed the service impossible data."""
    if len(row) != 12:
        raise ValueError(f"a kline row has 12 fields, got {len(row)}: {row!r}")
    for i, value in enumerate(row):
        if i in _INT_FIELDS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"field {KLINE_FIELDS[i]} must be an int: {row!r}")
        elif not isinstance(value, str):
            raise ValueError(f"field {KLINE_FIELDS[i]} must be a string: {row!r}")


def _guess_assets(symbol: str) -> tuple[str, str]:
    symbol = symbol.split("_", 1)[0]  # a USD-M quarterly: BTCUSDT_261225
    for quote in _KNOWN_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""


def _symbol_info(name: str, sym: _Symbol) -> dict[str, Any]:
    """One exchangeInfo symbol object, with the keys of the real sample."""
    return {
        "symbol": name,
        "status": sym.status,
        "baseAsset": sym.base,
        "baseAssetPrecision": 8,
        "quoteAsset": sym.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(_ORDER_TYPES),
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "opoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": False,
        "amendAllowed": False,
        "pegInstructionsAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE"],
    }


def _usdm_symbol_info(name: str, sym: _Symbol) -> dict[str, Any]:
    """One USD-M exchangeInfo symbol object, with the keys of the real /fapi/v1/exchangeInfo."""
    perpetual = sym.contract_type == "PERPETUAL"
    return {
        "symbol": name,
        "pair": name.split("_", 1)[0],
        "contractType": sym.contract_type,
        "deliveryDate": _PERPETUAL_DELIVERY_MS if perpetual else _quarter_delivery_ms(name),
        "onboardDate": 1_569_398_400_000,
        "status": sym.status,
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": sym.base,
        "quoteAsset": sym.quote,
        "marginAsset": sym.margin_asset,
        "pricePrecision": 2,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


def _quarter_delivery_ms(name: str) -> int:
    """08:00 UTC on the date a quarterly's name ends with (BTCUSDT_261225: 2026-12-25)."""
    tail = name.rsplit("_", 1)[-1]
    if len(tail) != 6 or not tail.isdigit():
        return _PERPETUAL_DELIVERY_MS
    day = datetime(2000 + int(tail[:2]), int(tail[2:4]), int(tail[4:]), 8, tzinfo=UTC)
    return int(day.timestamp()) * 1000


def _usdm_klines_weight(params: Mapping[str, str]) -> int:
    """USD-M weighs klines by limit: [1,100) 1, [100,500) 2, [500,1000] 5, above 10 (default 500)."""
    raw = params.get("limit", "500")
    limit = int(raw) if _INT_RE.fullmatch(raw) else 500
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


_ORDER_TYPES: Final = (
    "LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT",
)  # fmt: skip
_UNKNOWN_ERROR: Final = dumps({"code": -1000, "msg": "An unknown error occurred while processing the request."})
_GATEWAY_HTML: Final[dict[int, bytes]] = {
    502: b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
    504: b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n",
}
_BAD_JSON_BODY: Final = b'[[1499040000000,"0.0163'


# ---------------------------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------------------------


class FakeBinance(VenueServer[RequestRecord]):
    """Binance spot and USD-M REST on 127.0.0.1 with a controllable clock, weight limits, bans and faults."""

    def __init__(
        self,
        *,
        weight_limit: int | None = 6000,
        latency_ms: float = 0.0,
        ban_after_429s: int | None = None,
        ban_seconds: float = 120.0,
        fault_timeout_s: float = 30.0,
        now_ms: Callable[[], int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
        advertised_weight_limit: int | None = None,
        usdm_weight_limit: int | None = USDM_WEIGHT_LIMIT,
    ) -> None:
        super().__init__(
            latency_ms=latency_ms, fault_timeout_s=fault_timeout_s, now_ms=now_ms, host=host, port=port,
            record_requests=record_requests,
        )  # fmt: skip
        # What exchangeInfo announces: by default the enforced limit, or Binance's (spot 6000, USD-M
        # 2400) when unlimited.
        self._markets: dict[Product, _Market] = {
            "spot": _Market("spot", weight_limit, advertised_weight_limit),
            "usdm": _Market("usdm", usdm_weight_limit),
        }
        self.ban_after_429s = ban_after_429s
        self.ban_seconds = ban_seconds
        self.faults: list[Fault] = []

        # Called with the query of every klines request once its body is built (before it is sent):
        # a test moves the exchange (its clock, its candles) between the answer and the service's write.
        self.after_klines: Callable[[Mapping[str, str]], None] | None = None

        spot, usdm = self._markets["spot"], self._markets["usdm"]
        self._routes = {
            r.path: r
            for r in (
                _Route("/api/v3/ping", lambda p: 1, lambda p, now: (200, b"{}")),
                _Route("/api/v3/time", lambda p: 1, lambda p, now: (200, dumps({"serverTime": now}))),
                _Route("/api/v3/exchangeInfo", lambda p: 20, lambda p, now: self._exchange_info(spot, now)),
                _Route("/api/v3/klines", lambda p: 2, lambda p, now: self._klines_then_hook(spot, p, now)),
                _Route(
                    "/api/v3/ticker/price",
                    lambda p: 2 if "symbol" in p else 4,
                    lambda p, now: self._ticker_price(spot, p, now),
                ),
                _Route("/fapi/v1/ping", lambda p: 1, lambda p, now: (200, b"{}"), "usdm"),
                _Route("/fapi/v1/time", lambda p: 1, lambda p, now: (200, dumps({"serverTime": now})), "usdm"),
                _Route("/fapi/v1/exchangeInfo", lambda p: 1, lambda p, now: self._exchange_info(usdm, now), "usdm"),
                _Route(
                    "/fapi/v1/klines", _usdm_klines_weight, lambda p, now: self._klines_then_hook(usdm, p, now), "usdm"
                ),
                _Route(
                    "/fapi/v1/ticker/price",
                    lambda p: 1 if "symbol" in p else 2,
                    lambda p, now: self._ticker_price(usdm, p, now),
                    "usdm",
                ),
            )
        }

    # -- the two markets ------------------------------------------------------------------------

    def market(self, product: Product = "spot") -> _Market:
        """One product's state (symbols, candles, limit, windows, ban)."""
        try:
            return self._markets[product]
        except KeyError:
            raise ValueError(f"unknown Binance product {product!r}; one of {PRODUCTS}") from None

    @property
    def weight_limit(self) -> int | None:
        """Spot's enforced weight per minute (None: unlimited)."""
        return self._markets["spot"].weight_limit

    @weight_limit.setter
    def weight_limit(self, value: int | None) -> None:
        self._markets["spot"].weight_limit = value

    @property
    def advertised_weight_limit(self) -> int | None:
        return self._markets["spot"].advertised_weight_limit

    @advertised_weight_limit.setter
    def advertised_weight_limit(self, value: int | None) -> None:
        self._markets["spot"].advertised_weight_limit = value

    @property
    def usdm_weight_limit(self) -> int | None:
        """USD-M's enforced weight per minute (None: unlimited), counted apart from spot's."""
        return self._markets["usdm"].weight_limit

    @usdm_weight_limit.setter
    def usdm_weight_limit(self, value: int | None) -> None:
        self._markets["usdm"].weight_limit = value

    @property
    def windows(self) -> dict[int, WindowStats]:
        """Spot's minute counters, keyed by window start (ms)."""
        return self._markets["spot"].windows

    @property
    def usdm_windows(self) -> dict[int, WindowStats]:
        """USD-M's minute counters, keyed by window start (ms)."""
        return self._markets["usdm"].windows

    @property
    def ban_until_ms(self) -> int | None:
        return self._markets["spot"].ban_until_ms

    @ban_until_ms.setter
    def ban_until_ms(self, value: int | None) -> None:
        self._markets["spot"].ban_until_ms = value

    # -- market data ----------------------------------------------------------------------------

    def add_symbol(
        self,
        symbol: str,
        base: str,
        quote: str,
        status: str = "TRADING",
        *,
        product: Product = "spot",
        contract_type: str | None = None,
        margin_asset: str | None = None,
    ) -> None:
        """List a symbol in exchangeInfo (replaces an earlier listing of the same name).

        USD-M: a contract, PERPETUAL unless `contract_type` says otherwise (or the name carries a
        delivery date, ``BTCUSDT_261225``: CURRENT_QUARTER), settling in `margin_asset` (the quote by default).
        """
        market = self.market(product)
        if product == "usdm":
            contract_type = contract_type or ("CURRENT_QUARTER" if "_" in symbol else "PERPETUAL")
            margin_asset = margin_asset or quote
        elif contract_type is not None or margin_asset is not None:
            raise ValueError("contract_type and margin_asset are USD-M's (product='usdm')")
        market.symbols[symbol] = _Symbol(base, quote, status, contract_type, margin_asset)
        market.symbols_json = None

    def remove_symbol(self, symbol: str, *, product: Product = "spot") -> None:
        """Delist: gone from exchangeInfo, its klines answer -1121."""
        market = self.market(product)
        market.symbols.pop(symbol, None)
        market.symbols_json = None

    @property
    def symbols(self) -> list[str]:
        """Listed spot symbols, in listing order."""
        return list(self._markets["spot"].symbols)

    def symbols_of(self, product: Product) -> list[str]:
        """A product's listed symbols, in listing order."""
        return list(self.market(product).symbols)

    def _ensure_symbol(self, symbol: str, product: Product) -> None:
        if symbol not in self.market(product).symbols:
            self.add_symbol(symbol, *_guess_assets(symbol), product=product)

    def _series_of(self, symbol: str, interval: str, product: Product) -> _Series:
        """The stored series (made if new) of a listed-or-now-listed symbol, after checking the interval."""
        self._check_interval(interval, product)
        self._ensure_symbol(symbol, product)
        return self.market(product).series.setdefault(symbol, {}).setdefault(interval, _Series())

    def set_klines(
        self, symbol: str, interval: str, rows: Iterable[Sequence[Any]], *, product: Product = "spot"
    ) -> None:
        """Replace the stored candles of symbol/interval with raw 12-field Binance rows."""
        self._check_interval(interval, product)
        self._ensure_symbol(symbol, product)
        series = _Series()
        pairs = []
        for row in rows:
            _check_row(row)
            pairs.append((int(row[0]), _encode_row(row)))
        if pairs:
            series.merge(pairs)
        self.market(product).series.setdefault(symbol, {})[interval] = series

    def add_klines(
        self, symbol: str, interval: str, rows: Iterable[Sequence[Any]], *, product: Product = "spot"
    ) -> None:
        """Insert raw rows, replacing stored ones with the same open time."""
        self._check_interval(interval, product)
        self._ensure_symbol(symbol, product)
        pairs = []
        for row in rows:
            _check_row(row)
            pairs.append((int(row[0]), _encode_row(row)))
        if pairs:
            self._series_of(symbol, interval, product).merge(pairs)

    def get_klines(self, symbol: str, interval: str, *, product: Product = "spot") -> list[KlineRow]:
        """All stored rows (served or future), decoded; for assertions."""
        series = self.market(product).series.get(symbol, {}).get(interval)
        return [] if series is None else [json.loads(b) for b in series.encoded]

    def generate_klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        count: int,
        seed: int | None = None,
        start_price: float | None = None,
        *,
        product: Product = "spot",
    ) -> list[KlineRow]:
        """Store ``count`` deterministic, plausible candles from ``start_ms`` (aligned down); return them.

        Same arguments give the same rows; the default seed derives from symbol and interval. USD-M
        rows carry a non-zero 12th field, as /fapi/v1/klines may.
        """
        self._check_interval(interval, product)
        self._ensure_symbol(symbol, product)
        usdm = product == "usdm"
        rng = random.Random(zlib.crc32(f"{symbol}:{interval}".encode()) if seed is None else seed)
        price = start_price if start_price is not None else 10 ** rng.uniform(-1, 4)
        step = INTERVAL_MS.get(interval)
        sigma = min(0.08, 0.001 * math.sqrt((step or 30 * _D) / _M))  # random-walk scale per candle
        open_t = interval_open(interval, start_ms)
        rows: list[KlineRow] = []
        pairs: list[tuple[int, bytes]] = []
        for _ in range(count):
            next_t = open_t + step if step is not None else _month_start(open_t, 1)
            o = price
            c = o * math.exp(rng.gauss(0.0, sigma))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            vol = rng.uniform(0.5, 150.0)
            taker = vol * rng.uniform(0.3, 0.7)
            mid = (o + c) / 2
            trades = rng.randint(5, 3000)
            row: KlineRow = [
                open_t, f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{vol:.8f}", next_t - 1,
                f"{vol * mid:.8f}", trades, f"{taker:.8f}", f"{taker * mid:.8f}",
                f"{vol * mid * 7.3:.8f}" if usdm else "0",
            ]  # fmt: skip
            rows.append(row)
            pairs.append((open_t, _encode_row(row)))
            price = float(row[4])
            open_t = next_t
        if pairs:
            self._series_of(symbol, interval, product).merge(pairs)
        return rows

    def update_kline(
        self, symbol: str, interval: str, open_time: int, *, product: Product = "spot", **fields: Any
    ) -> KlineRow:
        """Change a stored candle (e.g. the open candle moving on); numbers become 8-decimal strings."""
        series, i, row = self._stored_row(symbol, interval, open_time, fields, product)
        for name, value in fields.items():
            idx = KLINE_FIELDS.index(name)
            row[idx] = int(value) if idx in _INT_FIELDS else value if isinstance(value, str) else f"{value:.8f}"
        _check_row(row)
        series.encoded[i] = _encode_row(row)
        return row

    def corrupt_kline(
        self, symbol: str, interval: str, open_time: int, *, product: Product = "spot", **fields: Any
    ) -> KlineRow:
        """Serve a stored candle with these field values, stored verbatim and unchecked.

        For the service's ingest checks: ``low="99999999"`` (low above open), ``volume="-1"``,
        ``open="abc"``, ``close_time=<wrong int>``. The row stays 12 fields of valid JSON, so it
        decodes; a non-string where a price belongs makes the client refuse the whole page instead.
        """
        series, i, row = self._stored_row(symbol, interval, open_time, fields, product)
        for name, value in fields.items():
            row[KLINE_FIELDS.index(name)] = value
        series.encoded[i] = _encode_json_row(row)
        return row

    def add_raw_kline(self, symbol: str, interval: str, row: Sequence[Any], *, product: Product = "spot") -> None:
        """Store one 12-field row without any check but JSON validity (e.g. an unaligned open_time),
        replacing a stored one with the same open time."""
        self._check_interval(interval, product)
        if len(row) != len(KLINE_FIELDS) or not isinstance(row[0], int):
            raise ValueError(f"a raw kline row has 12 fields and an int open_time: {row!r}")
        pair = (row[0], _encode_json_row(row))
        self._series_of(symbol, interval, product).merge([pair])

    def remove_klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, *, product: Product = "spot"
    ) -> int:
        """Delete the stored candles with start_ms <= open_time < end_ms (an exchange-side gap,
        e.g. a maintenance window); return how many were removed."""
        series = self.market(product).series.get(symbol, {}).get(interval)
        if series is None:
            return 0
        lo = bisect.bisect_left(series.open_times, start_ms)
        hi = max(lo, bisect.bisect_left(series.open_times, end_ms))
        del series.open_times[lo:hi]
        del series.encoded[lo:hi]
        return hi - lo

    def generate_klines_with_gaps(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        count: int,
        gaps: Sequence[tuple[int, int]],
        seed: int | None = None,
        *,
        product: Product = "spot",
    ) -> list[KlineRow]:
        """``generate_klines`` over ``count`` candle slots, then each [start, end) of ``gaps`` removed
        (the exchange has no candles there); return the rows kept."""
        rows = self.generate_klines(symbol, interval, start_ms, count, seed=seed, product=product)
        for start, end in gaps:
            self.remove_klines(symbol, interval, start, end, product=product)
        return [row for row in rows if not any(start <= row[0] < end for start, end in gaps)]

    def _stored_row(
        self, symbol: str, interval: str, open_time: int, fields: Mapping[str, Any], product: Product
    ) -> tuple[_Series, int, KlineRow]:
        """The series, index and decoded row of a stored candle, once ``fields`` are known names."""
        series = self.market(product).series.get(symbol, {}).get(interval)
        i = -1 if series is None else bisect.bisect_left(series.open_times, open_time)
        if series is None or i >= len(series.open_times) or series.open_times[i] != open_time:
            raise KeyError(f"no {symbol} {interval} kline opening at {open_time}")
        for name in fields:
            if name not in KLINE_FIELDS or name == "open_time":
                raise KeyError(f"cannot update kline field {name!r}")
        row: KlineRow = json.loads(series.encoded[i])
        return series, i, row

    # -- faults, bans, stats --------------------------------------------------------------------

    def add_fault(
        self,
        kind: FaultKind,
        path: str | None = "/api/v3/klines",
        count: int = 1,
        match: Mapping[str, Any] | None = None,
        *,
        retry_after: float = 1.0,
        every: int = 1,
        body: bytes | None = None,
    ) -> Fault:
        """Script ``count`` failures of ``kind`` on ``path`` (None: any route, spot's or USD-M's;
        USD-M's klines: ``/fapi/v1/klines``), for requests whose query has all of ``match``. Faults
        apply first-armed-first, before limits and bans.

        Note: aiohttp clients retry an idempotent request once after a disconnect, so a "drop" the
        client should actually see needs ``count=2``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if count < 1 or every < 1:
            raise ValueError("count and every must be >= 1")
        fault = Fault(
            kind=kind,
            path=path,
            remaining=count,
            match=None if match is None else {k: str(v) for k, v in match.items()},
            retry_after=retry_after,
            every=every,
            body=body,
        )
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every scripted fault."""
        self.faults.clear()

    def ban(self, seconds: float, *, product: Product = "spot") -> None:
        """Start an IP ban of one product's API now (spot and USD-M ban apart): every request to it
        answers 418 until it ends."""
        self.market(product).ban_until_ms = self.now_ms() + int(seconds * 1000)

    def unban(self, *, product: Product = "spot") -> None:
        """Lift the ban."""
        self.market(product).ban_until_ms = None

    @property
    def weight_by_window(self) -> dict[int, int]:
        """Spot's weight used per minute window, keyed by window start (ms)."""
        return {start: w.used for start, w in self.windows.items()}

    def weight_by_window_of(self, product: Product) -> dict[int, int]:
        """A product's weight used per minute window, keyed by window start (ms)."""
        return {start: w.used for start, w in self.market(product).windows.items()}

    def used_weight(self, *, product: Product = "spot") -> int:
        """Weight used in the current window."""
        now = self.now_ms()
        w = self.market(product).windows.get(now - now % WINDOW_MS)
        return 0 if w is None else w.used

    def reset_stats(self) -> None:
        """Forget traffic (records, counts, windows) but keep data, faults and bans."""
        self.requests.clear()
        self.status_counts.clear()
        for market in self._markets.values():
            market.windows.clear()
        self.request_count = 0
        self.max_in_flight = self.in_flight

    def _venue_stats(self) -> dict[str, Any]:
        return {
            # minute_epoch = floor(ms / 60000)
            "weight_by_minute": {str(start // WINDOW_MS): w.used for start, w in self.windows.items()},
            "usdm_weight_by_minute": {str(start // WINDOW_MS): w.used for start, w in self.usdm_windows.items()},
        }

    # -- serving --------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        for path, route in self._routes.items():
            app.router.add_get(path, self._make_handler(route))

    def _make_handler(self, route: _Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, route)

        return handler

    async def _stats(self, request: web.Request) -> web.Response:
        """The base's, with Binance's Content-Type."""
        return web.Response(body=dumps(self.stats()), headers={"Content-Type": JSON_CONTENT_TYPE})

    async def _serve(self, request: web.Request, route: _Route) -> web.StreamResponse:
        async def answer() -> web.StreamResponse:
            now = self.now_ms()
            params = dict(request.query)
            market = self._markets[route.product]
            start = now - now % WINDOW_MS
            window = market.windows.get(start)
            if window is None:
                window = market.windows[start] = WindowStats()
            window.requests += 1

            fault = take_fault(self.faults, route.path, params)
            if fault is not None:
                return await self._fault_response(request, fault, market, route.path, params, now, window)

            if market.ban_until_ms is not None:
                if now < market.ban_until_ms:
                    return self._ban_response(market, route.path, params, now, window, market.ban_until_ms, None)
                market.ban_until_ms = None

            weight = route.weight(params)
            limit = market.weight_limit
            if limit is not None and window.used + weight > limit:
                window.violations += 1
                if self.ban_after_429s is not None and window.violations >= self.ban_after_429s:
                    market.ban_until_ms = now + int(self.ban_seconds * 1000)
                retry = max(1, math.ceil((start + WINDOW_MS - now) / 1000))
                return self._too_much(market, route.path, params, now, window, retry, None)

            window.used += weight
            status, body = route.handler(params, now)
            return self._respond(market, route.path, params, now, window, status, body)

        return await self._counted(answer)

    def _record(
        self, path: str, params: dict[str, str], now: int, window: WindowStats, status: int, fault: str | None
    ) -> None:
        if status == 429:
            window.count_429 += 1
        elif status == 418:
            window.count_418 += 1
        self._note(status, lambda: RequestRecord(now, path, params, status, window.used, fault))

    def _respond(
        self,
        market: _Market,
        path: str,
        params: dict[str, str],
        now: int,
        window: WindowStats,
        status: int,
        body: bytes,
        *,
        content_type: str = JSON_CONTENT_TYPE,
        weight_headers: bool = True,
        extra: Mapping[str, str] | None = None,
        fault: str | None = None,
    ) -> web.Response:
        self._record(path, params, now, window, status, fault)
        headers = {"Content-Type": content_type}
        if weight_headers:
            used = str(window.used)
            if market.product == "spot":  # USD-M sends only the -1M one
                headers["X-MBX-USED-WEIGHT"] = used
            headers["X-MBX-USED-WEIGHT-1M"] = used
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=body, headers=headers)

    def _too_much(
        self,
        market: _Market,
        path: str,
        params: dict[str, str],
        now: int,
        window: WindowStats,
        retry: float,
        fault: str | None,
    ) -> web.Response:
        limit = market.stated_limit()
        msg = (
            f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
            "Please use WebSocket Streams for live updates to avoid polling the API."
        )
        body = dumps({"code": -1003, "msg": msg})
        return self._respond(
            market, path, params, now, window, 429, body, extra={"Retry-After": _secs(retry)}, fault=fault
        )

    def _ban_response(
        self,
        market: _Market,
        path: str,
        params: dict[str, str],
        now: int,
        window: WindowStats,
        until: int,
        fault: str | None,
    ) -> web.Response:
        msg = (
            f"Way too much request weight used; IP banned until {until}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
        retry = max(1, math.ceil((until - now) / 1000))
        body = dumps({"code": -1003, "msg": msg})
        return self._respond(
            market, path, params, now, window, 418, body, extra={"Retry-After": str(retry)}, fault=fault
        )

    async def _fault_response(
        self,
        request: web.Request,
        fault: Fault,
        market: _Market,
        path: str,
        params: dict[str, str],
        now: int,
        window: WindowStats,
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "429":
            return self._too_much(market, path, params, now, window, fault.retry_after, kind)
        if kind == "418":
            until = now + int(fault.retry_after * 1000)
            return self._ban_response(market, path, params, now, window, until, kind)
        if kind == "500":
            return self._respond(market, path, params, now, window, 500, fault.body or _UNKNOWN_ERROR, fault=kind)
        if kind == "503":
            msg = "Server is currently overloaded with other requests. Please try again in a few minutes."
            body = fault.body or dumps({"code": -1008, "msg": msg})
            return self._respond(market, path, params, now, window, 503, body, fault=kind)
        if kind in ("502", "504"):
            status = int(kind)
            body = fault.body or _GATEWAY_HTML[status]
            html = HTML_CONTENT_TYPE
            return self._respond(
                market, path, params, now, window, status, body, content_type=html, weight_headers=False, fault=kind
            )
        if kind == "bad_json":
            return self._respond(market, path, params, now, window, 200, fault.body or _BAD_JSON_BODY, fault=kind)
        # "drop" and "timeout": no HTTP response at all.
        self._record(path, params, now, window, 0, kind)
        return await self._no_answer(request, kind)

    # -- routes ---------------------------------------------------------------------------------

    def _exchange_info(self, market: _Market, now: int) -> _Result:
        if market.symbols_json is None:
            info = _symbol_info if market.product == "spot" else _usdm_symbol_info
            market.symbols_json = dumps([info(n, s) for n, s in market.symbols.items()])
        limit = market.advertised_weight_limit or market.weight_limit or _DEFAULT_LIMIT[market.product]
        request_weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit}
        head: dict[str, Any]
        if market.product == "spot":
            head = {"timezone": "UTC", "serverTime": now, "rateLimits": [
                request_weight,
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 1, "limit": 10},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ], "exchangeFilters": []}  # fmt: skip
        else:
            head = {"timezone": "UTC", "serverTime": now, "futuresType": "U_MARGINED", "rateLimits": [
                request_weight,
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ], "exchangeFilters": [], "assets": [
                {"asset": a, "marginAvailable": True, "autoAssetExchange": "0"}
                for a in sorted({s.margin_asset for s in market.symbols.values() if s.margin_asset})
            ]}  # fmt: skip
        return 200, dumps(head)[:-1] + b',"symbols":' + market.symbols_json + b"}"

    def _klines_then_hook(self, market: _Market, params: Mapping[str, str], now: int) -> _Result:
        result = self._klines(market, params, now)
        if self.after_klines is not None:
            self.after_klines(params)
        return result

    def _klines(self, market: _Market, params: Mapping[str, str], now: int) -> _Result:
        symbol = params.get("symbol")
        if not symbol:
            return _mandatory("symbol")
        if not _SYMBOL_RE.fullmatch(symbol):
            return _illegal_symbol()
        interval = params.get("interval")
        if not interval:
            return _mandatory("interval")
        numbers: dict[str, int] = {}
        for name in ("startTime", "endTime", "limit"):
            raw = params.get(name)
            if raw is not None:
                if not _INT_RE.fullmatch(raw):
                    return _illegal(name, "^[0-9]{1,20}$")
                numbers[name] = int(raw)
        if interval not in market.intervals:
            return _error(-1120, "Invalid interval.")
        limit = numbers.get("limit", 500)
        if not 1 <= limit <= MAX_LIMIT[market.product]:
            return _error(-1130, "Data sent for parameter 'limit' is not valid.")
        if symbol not in market.symbols:
            return _error(-1121, "Invalid symbol.")
        start, end = numbers.get("startTime"), numbers.get("endTime")
        if start is not None and end is not None and start > end:
            return _error(-1023, "Start time is greater than end time.")
        series = market.series.get(symbol, {}).get(interval)
        if series is None:
            return 200, b"[]"
        times = series.open_times
        hi = bisect.bisect_right(times, now)  # the future does not exist yet
        if end is not None:
            hi = min(hi, bisect.bisect_right(times, end))
        if start is not None:
            lo = bisect.bisect_left(times, start)
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        if lo >= hi:
            return 200, b"[]"
        return 200, b"[" + b",".join(series.encoded[lo:hi]) + b"]"

    def _latest_price(self, market: _Market, symbol: str, now: int) -> str:
        by_interval = market.series.get(symbol, {})
        candidates = [by_interval["1m"]] if "1m" in by_interval else list(by_interval.values())
        best_t, best = -1, "0.00000000"
        for series in candidates:
            i = bisect.bisect_right(series.open_times, now) - 1
            if i >= 0 and series.open_times[i] > best_t:
                best_t, best = series.open_times[i], json.loads(series.encoded[i])[4]
        return best

    def _ticker_price(self, market: _Market, params: Mapping[str, str], now: int) -> _Result:
        def price(symbol: str) -> dict[str, Any]:
            found: dict[str, Any] = {"symbol": symbol, "price": self._latest_price(market, symbol, now)}
            if market.product == "usdm":
                found["time"] = now
            return found

        if "symbol" in params:
            symbol = params["symbol"]
            if not symbol:
                return _mandatory("symbol")
            if not _SYMBOL_RE.fullmatch(symbol):
                return _illegal_symbol()
            if symbol not in market.symbols:
                return _error(-1121, "Invalid symbol.")
            return 200, dumps(price(symbol))
        names: list[str] = list(market.symbols)
        if market.product == "spot" and "symbols" in params:
            try:
                asked = json.loads(params["symbols"])
            except ValueError:
                asked = None
            if not isinstance(asked, list) or not all(isinstance(s, str) and _SYMBOL_RE.fullmatch(s) for s in asked):
                return _illegal("symbols", '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$')
            if any(s not in market.symbols for s in asked):
                return _error(-1121, "Invalid symbol.")
            names = asked
        return 200, dumps([price(s) for s in names])

    def _check_interval(self, interval: str, product: Product) -> None:
        intervals = self.market(product).intervals
        if interval not in intervals:
            raise ValueError(f"unknown Binance {product} interval {interval!r}; one of {intervals}")


def _secs(seconds: float) -> str:
    """Retry-After as Binance writes it: whole seconds."""
    return str(max(0, math.ceil(seconds)))


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------

_BENCH_NAMES: Final = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT", "LINKUSDT", "DOTUSDT",
)  # fmt: skip


def bench_symbols(n: int) -> list[str]:
    """The symbols ``--symbols n`` lists: ten real names, then ``X0010USDT``, ``X0011USDT``, ..."""
    return [_BENCH_NAMES[i] if i < len(_BENCH_NAMES) else f"X{i:04d}USDT" for i in range(n)]


def _scenario_steady(fake: FakeBinance) -> None:
    """No faults: the service should only meet the weight limit."""


def _scenario_flaky(fake: FakeBinance) -> None:
    """Every 25th klines request is a gateway 502."""
    fake.add_fault("502", count=10**9, every=25)


def _scenario_ban_prone(fake: FakeBinance) -> None:
    """The first 429 in a minute turns into a 60 s ban: overrunning the limit is expensive."""
    fake.ban_after_429s = 1
    fake.ban_seconds = 60.0


SCENARIOS: Final[dict[str, Callable[[FakeBinance], None]]] = {
    "steady": _scenario_steady,
    "flaky": _scenario_flaky,
    "ban-prone": _scenario_ban_prone,
}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("python -m tests.fakes.binance", __doc__)
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument("--no-weight-limit", action="store_true", help="never answer 429")
    parser.add_argument("--advertised-weight-limit", type=int, default=None, help="limit exchangeInfo announces")
    parser.add_argument("--usdm-weight-limit", type=int, default=USDM_WEIGHT_LIMIT, help="USD-M's own limit")
    parser.add_argument(
        "--products",
        default="spot",
        help="comma-separated products (spot, usdm) that list --symbols with candles; both are served either way."
        f" USD-M also lists the quarterly {QUARTERLY} (no candles), which a client of the perpetuals must drop",
    )
    parser.add_argument("--ban-after-429s", type=int, default=None)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    parser.add_argument("--symbols", type=int, default=0, help="list this many symbols (see bench_symbols)")
    parser.add_argument("--timeframes", default="1m", help="comma-separated intervals to generate")
    parser.add_argument("--candles", type=int, default=0, help="candles per symbol/timeframe, ending now")
    parser.add_argument("--future-candles", type=int, default=0, help="extra candles served as time passes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no per-request records")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeBinance(
        weight_limit=None if args.no_weight_limit else args.weight_limit,
        advertised_weight_limit=args.advertised_weight_limit,
        usdm_weight_limit=None if args.no_weight_limit else args.usdm_weight_limit,
        latency_ms=args.latency_ms,
        ban_after_429s=args.ban_after_429s,
        host=args.host,
        port=args.port,
        record_requests=not args.no_record,
    )
    SCENARIOS[args.scenario](fake)
    now = fake.now_ms()
    timeframes = [tf.strip() for tf in args.timeframes.split(",") if tf.strip()]
    products = [p.strip() for p in args.products.split(",") if p.strip()]
    for product in products:
        if product not in PRODUCTS:
            raise SystemExit(f"unknown product {product!r}; one of {', '.join(PRODUCTS)}")
    for product in products:
        for symbol in bench_symbols(args.symbols):
            fake.add_symbol(symbol, *_guess_assets(symbol), product=product)
            for tf in timeframes:
                total = args.candles + args.future_candles
                if total > 0:
                    first = interval_shift(tf, interval_open(tf, now), -(args.candles - 1))
                    fake.generate_klines(symbol, tf, first, total, seed=args.seed, product=product)
        if product == "usdm":
            fake.add_symbol(QUARTERLY, *_guess_assets(QUARTERLY), product="usdm", contract_type="CURRENT_QUARTER")
    await serve_until_signalled(fake)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    asyncio.run(_run(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
