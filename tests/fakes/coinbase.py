"""A fake Coinbase Exchange public REST API: a real aiohttp server that tests own and script.

It answers as api.exchange.coinbase.com does (shared/exchange-samples/coinbase, shared/notes/exchanges.md):

- `GET /products/{id}/candles?granularity=&start=&end=`: granularity one of 60, 300, 900, 3600, 21600,
  86400, else 400 `{"message":"Unsupported granularity"}`; start and end (ISO 8601 or epoch seconds)
  count only together (one alone: both ignored, the 300 buckets ending now); a range of more than
  300 buckets is 400 `granularity too small for the requested time range. Count of aggregations
  requested exceeds 300`. Rows newest first, `[time (epoch s), low, high, open, close, volume]` as
  JSON numbers written exactly as stored (so a test can serve `1e-8` or `0.30000000000000004`);
  buckets without trades are missing; the bucket holding an unaligned start is included (Coinbase:
  "some of those candles may precede your declared start"); nothing after the fake's now.
- Candles of a granularity never set are aggregated from the product's 1m candles (low/high/open/
  close/summed volume), so every timeframe tells the same story (a listing search relies on it).
- `GET /products` (every product, delisted ones too) and `GET /products/{id}/ticker`.
- An unknown product: 404 `{"message":"NotFound"}`.
- The public limit, 10 requests in any sliding second per IP (the documented bursts to 15 are not
  granted: a client that needs them is over the sustained rate), answered with 429
  `{"message":"Public rate limit exceeded"}`; refused requests do not count. Coinbase documents no
  ban for public endpoints, so there is none.
- Faults: 5xx (Coinbase's JSON 500/503, the CDN's HTML 502/504), a dropped connection, a hang,
  a truncated body, a forced 429.

In-process: ``async with FakeCoinbase() as fake: ...``; own process: ``python -m tests.fakes.coinbase
--port 0 --symbols 10 --candles 1000`` prints its base URL as the first stdout line and serves until
SIGTERM. The wording of the 400s for a bad start/end or start after end is not documented (guessed).
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
from decimal import Decimal
from typing import Any, Final, Literal, get_args

from aiohttp import web

from tests.fakes.venue_server import SlidingWindow, VenueServer, base_parser, serve_until_signalled, take_fault

__all__ = [
    "FAULT_KINDS", "GRANULARITY", "MAX_CANDLES", "RATE_LIMIT", "WINDOW_MS", "FakeCoinbase", "Fault", "Product",
    "RequestRecord", "bench_symbols", "main", "number_text",
]  # fmt: skip

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
#: Unified timeframe -> granularity in seconds: the only six Coinbase serves.
GRANULARITY: Final[dict[str, int]] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
MAX_CANDLES: Final = 300
RATE_LIMIT: Final = 10
WINDOW_MS: Final = 1000
CANDLE_FIELDS: Final[tuple[str, ...]] = ("low", "high", "open", "close", "volume")
_BASE_GRANULARITY: Final = 60
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_EPOCH: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]+)?")

FaultKind = Literal["500", "502", "503", "504", "drop", "timeout", "bad_json", "429"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
Route = Literal["candles", "ticker", "products"]
#: What a candle value may be given as: a JSON number's text (served verbatim), an int or a Decimal.
Number = str | int | Decimal

_NOT_FOUND: Final = b'{"message":"NotFound"}'
_RATE_LIMITED: Final = b'{"message":"Public rate limit exceeded"}'
_TOO_MANY: Final = (
    b'{"message":"granularity too small for the requested time range. Count of aggregations requested exceeds 300"}'
)
_FAULT_BODIES: Final[dict[str, bytes]] = {
    "500": b'{"message":"Internal server error"}',
    "503": b'{"message":"Service Unavailable"}',
    "502": b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n",
    "504": b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n",
    "bad_json": b"[[1514273220,15399.99,154",
}


def _message(text: str) -> bytes:
    return json.dumps({"message": text}, separators=(",", ":")).encode()


def number_text(value: Number) -> str:
    """The JSON number text a value is served as; a str must already be one (`1e-8`, `15400`)."""
    if isinstance(value, bool):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"JSON has no {value}")
        return format(value, "f")
    if isinstance(value, str) and _JSON_NUMBER.fullmatch(value):
        return value
    raise ValueError(f"not a JSON number: {value!r}")


def _parse_time(raw: str) -> int | None:
    """Epoch seconds of a start/end parameter: ISO 8601 (UTC unless an offset is given) or epoch seconds."""
    if _EPOCH.fullmatch(raw):
        return math.floor(Decimal(raw))
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _granularity(timeframe: str) -> int:
    try:
        return GRANULARITY[timeframe]
    except KeyError:
        raise ValueError(f"Coinbase has no {timeframe!r} candles; one of {tuple(GRANULARITY)}") from None


# ---------------------------------------------------------------------------------------------
# Records and scripts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake answered (or dropped)."""

    time_ms: int
    route: str
    path: str
    params: dict[str, str]
    status: int  # 0: no HTTP response (dropped or hung)
    fault: str | None = None


@dataclass(slots=True)
class Fault:
    """A scripted failure of ``route`` (None: any), for requests whose query has all of ``match``."""

    kind: FaultKind
    route: Route | None = "candles"
    remaining: int = 1
    match: dict[str, str] | None = None
    every: int = 1  # every n-th matching request; the others pass
    retry_after: float | None = None  # a forced 429's Retry-After header (Coinbase sends none)
    seen: int = 0
    applied: int = 0

    def matches(self, route: str, params: Mapping[str, str]) -> bool:
        if self.remaining <= 0 or (self.route is not None and self.route != route):
            return False
        return self.match is None or all(params.get(k) == v for k, v in self.match.items())


@dataclass(slots=True)
class Product:
    id: str
    base: str
    quote: str
    status: str = "online"
    trading_disabled: bool = False
    cancel_only: bool = False
    post_only: bool = False
    limit_only: bool = False
    auction_mode: bool = False
    price: str | None = None  # the ticker's price; None: the close of the latest served candle

    def as_json(self) -> dict[str, Any]:
        """The object GET /products lists, with the keys Coinbase sends."""
        return {
            "id": self.id,
            "base_currency": self.base,
            "quote_currency": self.quote,
            "quote_increment": "0.01",
            "base_increment": "0.00000001",
            "display_name": f"{self.base}/{self.quote}",
            "min_market_funds": "1",
            "margin_enabled": False,
            "post_only": self.post_only,
            "limit_only": self.limit_only,
            "cancel_only": self.cancel_only,
            "status": self.status,
            "status_message": "",
            "trading_disabled": self.trading_disabled,
            "fx_stablecoin": False,
            "max_slippage_percentage": "0.02000000",
            "auction_mode": self.auction_mode,
            "high_bid_limit_percentage": "",
        }


@dataclass(slots=True)
class _Series:
    """Candles of one product and granularity, by open time (epoch s); values as JSON number text."""

    times: list[int] = field(default_factory=list)
    values: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # low, high, open, close, volume
    encoded: list[bytes] = field(default_factory=list)

    def merge(self, rows: Iterable[tuple[int, tuple[str, str, str, str, str]]]) -> None:
        """Insert or replace rows by open time."""
        merged = dict(zip(self.times, self.values, strict=True))
        merged.update(rows)
        self.times = sorted(merged)
        self.values = [merged[t] for t in self.times]
        self.encoded = [_encode(t, v) for t, v in zip(self.times, self.values, strict=True)]

    def remove(self, start_s: int, end_s: int) -> int:
        lo = bisect.bisect_left(self.times, start_s)
        hi = max(lo, bisect.bisect_left(self.times, end_s))
        del self.times[lo:hi], self.values[lo:hi], self.encoded[lo:hi]
        return hi - lo


def _encode(t: int, values: tuple[str, str, str, str, str]) -> bytes:
    return f"[{t},{','.join(values)}]".encode()


def _aggregate(base: _Series, granularity: int) -> _Series:
    """Coarser candles from 1m ones, as the venue's aggregation of the same trades would give them."""
    rows: dict[int, tuple[str, str, str, str, str]] = {}
    volumes: dict[int, Decimal] = {}
    for t, (low, high, open_, close, volume) in zip(base.times, base.values, strict=True):
        bucket = t - t % granularity
        held = rows.get(bucket)
        if held is None:
            rows[bucket] = (low, high, open_, close, volume)
            volumes[bucket] = Decimal(volume)
            continue
        lo = low if Decimal(low) < Decimal(held[0]) else held[0]
        hi = high if Decimal(high) > Decimal(held[1]) else held[1]
        volumes[bucket] += Decimal(volume)
        rows[bucket] = (lo, hi, held[2], close, held[4])
    out = _Series()
    out.merge((t, (*v[:4], number_text(volumes[t]))) for t, v in rows.items())
    return out


def _check_row(row: Sequence[Any], granularity: int) -> tuple[int, tuple[str, str, str, str, str]]:
    """A Coinbase row [time (epoch s), low, high, open, close, volume], refused if Coinbase could not send it."""
    if len(row) != 6:
        raise ValueError(f"a Coinbase candle has 6 fields, got {len(row)}: {row!r}")
    t = row[0]
    if not isinstance(t, int) or isinstance(t, bool) or t % granularity:
        raise ValueError(f"time must be epoch seconds on the {granularity} s grid: {row!r}")
    low, high, open_, close, volume = (number_text(v) for v in row[1:])
    return t, (low, high, open_, close, volume)


# ---------------------------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------------------------


class FakeCoinbase(VenueServer[RequestRecord]):
    """Coinbase Exchange public REST on 127.0.0.1 with a controllable clock, its rate limit and faults."""

    def __init__(
        self,
        *,
        rate_limit: int | None = RATE_LIMIT,
        max_candles: int = MAX_CANDLES,
        latency_ms: float = 0.0,
        fault_timeout_s: float = 30.0,
        now_ms: Callable[[], int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        super().__init__(
            latency_ms=latency_ms, fault_timeout_s=fault_timeout_s, now_ms=now_ms, host=host, port=port,
            record_requests=record_requests,
        )  # fmt: skip
        self.rate_limit = rate_limit
        self.max_candles = max_candles

        self.faults: list[Fault] = []
        self.max_in_window = 0
        """Most requests accepted within one sliding second."""

        self._accepted = SlidingWindow()  # accept times (ms) in the current sliding window
        self._products: dict[str, Product] = {}
        self._series: dict[tuple[str, int], _Series] = {}
        self._derived: dict[tuple[str, int], _Series] = {}
        self._products_json: bytes | None = None

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/products", self._handler("products", self._list_products))
        app.router.add_get("/products/{product_id}/candles", self._handler("candles", self._candles))
        app.router.add_get("/products/{product_id}/ticker", self._handler("ticker", self._ticker))
        app.router.add_get("/{tail:.*}", self._unknown_path)  # after /__stats

    # -- products -------------------------------------------------------------------------------

    def add_symbol(self, product_id: str, base: str | None = None, quote: str | None = None, **flags: Any) -> Product:
        """List a product (`BTC-USD`; base and quote default to its two halves). ``flags``: status,
        trading_disabled, cancel_only, post_only, limit_only, auction_mode, price."""
        if base is None or quote is None:
            head, _, tail = product_id.partition("-")
            base, quote = base or head, quote or tail
        product = Product(product_id, base, quote, **flags)
        self._products[product_id] = product
        self._products_json = None
        return product

    def set_status(self, product_id: str, **flags: Any) -> None:
        """Change a product's status or flags (e.g. ``status="delisted"``, ``cancel_only=True``)."""
        product = self._products[product_id]
        for name, value in flags.items():
            setattr(product, name, value)
        self._products_json = None

    @property
    def symbols(self) -> list[str]:
        return list(self._products)

    def _ensure_symbol(self, product_id: str) -> None:
        if product_id not in self._products:
            self.add_symbol(product_id)

    # -- candles --------------------------------------------------------------------------------

    def set_klines(self, product_id: str, timeframe: str, rows: Iterable[Sequence[Any]]) -> None:
        """Replace the candles of product/timeframe with Coinbase rows ``[time (epoch s), low, high,
        open, close, volume]``; a str value is served verbatim and must be a JSON number's text."""
        granularity = _granularity(timeframe)
        self._ensure_symbol(product_id)
        series = _Series()
        series.merge(_check_row(row, granularity) for row in rows)
        self._store(product_id, granularity, series)

    def add_klines(self, product_id: str, timeframe: str, rows: Iterable[Sequence[Any]]) -> None:
        """Insert Coinbase rows, replacing stored ones with the same time."""
        granularity = _granularity(timeframe)
        self._ensure_symbol(product_id)
        series = self._series.get((product_id, granularity)) or _Series()
        series.merge(_check_row(row, granularity) for row in rows)
        self._store(product_id, granularity, series)

    def generate_klines(
        self,
        product_id: str,
        timeframe: str,
        start_ms: int,
        count: int,
        *,
        seed: int | None = None,
        start_price: float | None = None,
        missing: float = 0.0,
    ) -> list[list[Any]]:
        """Store plausible candles over ``count`` slots from ``start_ms`` (aligned down), leaving out a
        share ``missing`` of them (buckets without a trade); return the rows stored, oldest first.
        Same arguments, same rows."""
        granularity = _granularity(timeframe)
        self._ensure_symbol(product_id)
        rng = random.Random(zlib.crc32(f"{product_id}:{timeframe}".encode()) if seed is None else seed)
        price = start_price if start_price is not None else 10 ** rng.uniform(-1, 4)
        sigma = min(0.08, 0.001 * math.sqrt(granularity / 60))
        t = start_ms // 1000 - (start_ms // 1000) % granularity
        rows: list[list[Any]] = []
        for _ in range(count):
            o = price
            c = float(_text(o * math.exp(rng.gauss(0.0, sigma))))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            volume = rng.uniform(0.001, 150.0)
            if rng.random() >= missing:
                rows.append([t, _text(lo), _text(h), _text(o), _text(c), _text(volume)])
                price = c
            t += granularity
        self.add_klines(product_id, timeframe, rows)
        return rows

    def update_kline(self, product_id: str, timeframe: str, open_ms: int, **values: Number) -> list[Any]:
        """Change a stored candle (the open candle moving on): fields low, high, open, close, volume."""
        granularity = _granularity(timeframe)
        series = self._series.get((product_id, granularity))
        t = open_ms // 1000
        i = -1 if series is None else bisect.bisect_left(series.times, t)
        if series is None or i >= len(series.times) or series.times[i] != t:
            raise KeyError(f"no stored {product_id} {timeframe} candle opening at {open_ms}")
        current = dict(zip(CANDLE_FIELDS, series.values[i], strict=True))
        for name, value in values.items():
            if name not in current:
                raise KeyError(f"no candle field {name!r}; one of {CANDLE_FIELDS}")
            current[name] = number_text(value)
        row = [t, *(current[f] for f in CANDLE_FIELDS)]
        self.add_klines(product_id, timeframe, [row])
        return row

    def remove_klines(self, product_id: str, timeframe: str, start_ms: int, end_ms: int) -> int:
        """Delete the stored candles opening in [start_ms, end_ms); return how many."""
        granularity = _granularity(timeframe)
        series = self._series.get((product_id, granularity))
        removed = 0 if series is None else series.remove(start_ms // 1000, end_ms // 1000)
        if series is not None:
            self._store(product_id, granularity, series)
        return removed

    def get_klines(self, product_id: str, timeframe: str) -> list[list[Any]]:
        """Every candle the fake holds for product/timeframe (served or future), oldest first, values
        as their JSON text; aggregated from 1m where the timeframe was never set."""
        series = self._serving(product_id, _granularity(timeframe))
        if series is None:
            return []
        return [[t, *v] for t, v in zip(series.times, series.values, strict=True)]

    def _store(self, product_id: str, granularity: int, series: _Series) -> None:
        self._series[product_id, granularity] = series
        if granularity == _BASE_GRANULARITY:
            for key in [k for k in self._derived if k[0] == product_id]:
                del self._derived[key]

    def _serving(self, product_id: str, granularity: int) -> _Series | None:
        series = self._series.get((product_id, granularity))
        if series is not None or granularity == _BASE_GRANULARITY:
            return series
        derived = self._derived.get((product_id, granularity))
        if derived is None:
            base = self._series.get((product_id, _BASE_GRANULARITY))
            if base is None:
                return None
            derived = self._derived[product_id, granularity] = _aggregate(base, granularity)
        return derived

    # -- faults and stats -----------------------------------------------------------------------

    def add_fault(
        self,
        kind: FaultKind,
        route: Route | None = "candles",
        count: int = 1,
        match: Mapping[str, Any] | None = None,
        *,
        every: int = 1,
        retry_after: float | None = None,
    ) -> Fault:
        """Script ``count`` failures of ``kind``; faults come before the rate limit. A "drop" the client
        should see needs ``count=2`` (aiohttp resends an idempotent request once after a disconnect)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if count < 1 or every < 1:
            raise ValueError("count and every must be >= 1")
        fault = Fault(
            kind=kind, route=route, remaining=count, every=every, retry_after=retry_after,
            match=None if match is None else {k: str(v) for k, v in match.items()},
        )  # fmt: skip
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, status: int) -> int:
        """How many answers had this HTTP status."""
        return self.status_counts.get(status, 0)

    def reset_stats(self) -> None:
        """Forget traffic (records, counts, the window) but keep data and faults."""
        self.requests.clear()
        self.status_counts.clear()
        self._accepted.clear()
        self.request_count = 0
        self.max_in_flight = self.in_flight
        self.max_in_window = 0

    def _venue_stats(self) -> dict[str, Any]:
        return {"max_in_window": self.max_in_window}

    # -- serving --------------------------------------------------------------------------------

    def _handler(
        self, route: Route, answer: Callable[[str | None, Mapping[str, str], int], tuple[int, bytes]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, route, answer)

        return handle

    async def _serve(
        self,
        request: web.Request,
        route: Route,
        answer: Callable[[str | None, Mapping[str, str], int], tuple[int, bytes]],
    ) -> web.StreamResponse:
        async def serve() -> web.StreamResponse:
            now = self.now_ms()
            params = dict(request.query)
            record = (now, route, request.path, params)
            fault = take_fault(self.faults, route, params) if self.faults else None
            if fault is not None:
                return await self._fault_response(request, fault, record)
            if self.rate_limit is not None:
                accepted = self._accepted
                if accepted.times and accepted.times[-1] > now:
                    accepted.clear()  # the test moved the clock back: a new window
                if not accepted.admit(now, self.rate_limit, WINDOW_MS):
                    return self._respond(record, 429, _RATE_LIMITED)
                self.max_in_window = max(self.max_in_window, len(accepted))
            status, body = answer(request.match_info.get("product_id"), params, now)
            return self._respond(record, status, body)

        return await self._counted(serve)

    def _record(self, record: tuple[int, str, str, dict[str, str]], status: int, fault: str | None) -> None:
        self._note(status, lambda: RequestRecord(*record, status=status, fault=fault))

    def _respond(
        self,
        record: tuple[int, str, str, dict[str, str]],
        status: int,
        body: bytes,
        *,
        fault: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self._record(record, status, fault)
        content_type = "text/html" if body.startswith(b"<html") else JSON_CONTENT_TYPE
        return web.Response(status=status, body=body, headers={"Content-Type": content_type, **(headers or {})})

    async def _fault_response(
        self, request: web.Request, fault: Fault, record: tuple[int, str, str, dict[str, str]]
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "429":
            headers = None if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            return self._respond(record, 429, _RATE_LIMITED, fault=kind, headers=headers)
        if kind in _FAULT_BODIES:
            status = 200 if kind == "bad_json" else int(kind)
            return self._respond(record, status, _FAULT_BODIES[kind], fault=kind)
        # "drop" and "timeout": no HTTP answer at all.
        self._record(record, 0, kind)
        return await self._no_answer(request, kind)

    async def _unknown_path(self, request: web.Request) -> web.Response:
        return web.Response(status=404, body=_NOT_FOUND, headers={"Content-Type": JSON_CONTENT_TYPE})

    # -- routes ---------------------------------------------------------------------------------

    def _product(self, product_id: str | None) -> Product | None:
        if product_id is None:
            return None
        return self._products.get(product_id) or self._products.get(product_id.upper())

    def _list_products(self, product_id: str | None, params: Mapping[str, str], now: int) -> tuple[int, bytes]:
        if self._products_json is None:
            self._products_json = json.dumps(
                [p.as_json() for p in self._products.values()], separators=(",", ":")
            ).encode()
        return 200, self._products_json

    def _candles(self, product_id: str | None, params: Mapping[str, str], now: int) -> tuple[int, bytes]:
        product = self._product(product_id)
        if product is None:
            return 404, _NOT_FOUND
        raw = params.get("granularity", "")
        granularity = int(raw) if raw.isdigit() else 0
        if granularity not in GRANULARITY.values():
            return 400, _message("Unsupported granularity")
        now_s = now // 1000
        start_raw, end_raw = params.get("start"), params.get("end")
        if start_raw is not None and end_raw is not None:  # one alone: both ignored, as documented
            start, end = _parse_time(start_raw), _parse_time(end_raw)
            if start is None:
                return 400, _message("Invalid start")
            if end is None:
                return 400, _message("Invalid end")
            if end < start:
                return 400, _message("start must be before end")
            if (end - start) / granularity > self.max_candles:
                return 400, _TOO_MANY
            low, high = start - start % granularity, min(end, now_s)
        else:
            high = now_s
            low = high - high % granularity - (self.max_candles - 1) * granularity
        series = self._serving(product.id, granularity)
        if series is None or high < low:
            return 200, b"[]"
        lo = bisect.bisect_left(series.times, low)
        hi = bisect.bisect_right(series.times, high)
        return 200, b"[" + b",".join(reversed(series.encoded[lo:hi])) + b"]"

    def _ticker(self, product_id: str | None, params: Mapping[str, str], now: int) -> tuple[int, bytes]:
        product = self._product(product_id)
        if product is None:
            return 404, _NOT_FOUND
        price = product.price if product.price is not None else self._last_close(product.id, now // 1000)
        text = format(Decimal(price), "f")
        body = {
            "ask": text, "bid": text, "volume": "1234.5678", "trade_id": 86326522, "price": text, "size": "0.001",
            "time": datetime.fromtimestamp(now / 1000, UTC).isoformat().replace("+00:00", "Z"), "rfq_volume": "0",
        }  # fmt: skip
        return 200, json.dumps(body, separators=(",", ":")).encode()

    def _last_close(self, product_id: str, now_s: int) -> str:
        best_t, best = -1, "0"
        for (pid, _), series in self._series.items():
            if pid != product_id:
                continue
            i = bisect.bisect_right(series.times, now_s) - 1
            if i >= 0 and series.times[i] > best_t:
                best_t, best = series.times[i], series.values[i][3]
        return best


def _text(x: float) -> str:
    """A generated price or volume as Coinbase writes numbers: at most 8 decimals, no trailing zeros."""
    text = f"{x:.8f}".rstrip("0").rstrip(".")
    return text or "0"


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------

_BENCH_NAMES: Final = (
    "BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD", "LTC-USD", "LINK-USD", "DOT-USD", "AVAX-USD",
)  # fmt: skip


def bench_symbols(n: int) -> list[str]:
    """The products ``--symbols n`` lists: ten real names, then ``X0010-USD``, ``X0011-USD``, ..."""
    return [_BENCH_NAMES[i] if i < len(_BENCH_NAMES) else f"X{i:04d}-USD" for i in range(n)]


def _scenario_steady(fake: FakeCoinbase) -> None:
    """No faults: the service should only meet the rate limit."""


def _scenario_flaky(fake: FakeCoinbase) -> None:
    """Every 25th candles request is a gateway 502."""
    fake.add_fault("502", count=10**9, every=25)


SCENARIOS: Final[dict[str, Callable[[FakeCoinbase], None]]] = {"steady": _scenario_steady, "flaky": _scenario_flaky}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("python -m tests.fakes.coinbase", __doc__)
    parser.add_argument("--rate-limit", type=int, default=RATE_LIMIT, help="requests per sliding second")
    parser.add_argument("--no-rate-limit", action="store_true", help="never answer 429")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    parser.add_argument("--symbols", type=int, default=0, help="list this many products (see bench_symbols)")
    parser.add_argument("--timeframes", default="1m", help="comma-separated timeframes to generate")
    parser.add_argument("--candles", type=int, default=0, help="candle slots per product/timeframe, ending now")
    parser.add_argument("--future-candles", type=int, default=0, help="extra slots served as time passes")
    parser.add_argument("--missing", type=float, default=0.0, help="share of slots without trades (no candle)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no per-request records")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeCoinbase(
        rate_limit=None if args.no_rate_limit else args.rate_limit,
        latency_ms=args.latency_ms,
        host=args.host,
        port=args.port,
        record_requests=not args.no_record,
    )
    SCENARIOS[args.scenario](fake)
    now = fake.now_ms()
    for product in bench_symbols(args.symbols):
        fake.add_symbol(product)
        for tf in (t.strip() for t in args.timeframes.split(",") if t.strip()):
            step_ms = _granularity(tf) * 1000
            total = args.candles + args.future_candles
            if total > 0:
                first = now - now % step_ms - (args.candles - 1) * step_ms
                fake.generate_klines(product, tf, first, total, seed=args.seed, missing=args.missing)
    await serve_until_signalled(fake)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    asyncio.run(_run(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
