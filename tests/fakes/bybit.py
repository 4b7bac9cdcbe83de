"""A fake Bybit v5 market REST API: a real aiohttp server that tests own and script.

It answers as Bybit does (shared/exchange-samples/bybit): the `{retCode, retMsg, result, retExtInfo,
time}` envelope inside HTTP 200, retCode 10001 for a bad parameter or an unknown symbol ("Not
supported symbols"), kline rows of seven strings newest first, a window with more rows than `limit`
answered with its newest `limit` (a `start` alone: the oldest `limit` from it), `limit` up to 1000
(more is clamped), every interval (one not stored is rolled up from a finer stored one, as the venue
builds them all from the same trades), instruments-info listing only `Trading` symbols unless asked, with cursor paging
for linear/inverse (500 a page) and none for spot. The current candle is served (open) as soon as
the clock reaches it; future candles are not.

The IP limit is enforced as Bybit does: 600 requests in any 5 s (sliding); the request beyond it
answers HTTP 403 "access too frequent" and bans the IP for 10 minutes, every request meanwhile 403.

Use it in-process (``async with FakeBybit() as fake: ...``) or as its own process
(``python -m tests.fakes.bybit --port 0 --symbols 10 --candles 1000``), which prints its base URL
as the first stdout line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import random
import sys
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, get_args

from aiohttp import web

from tests.fakes.binance import RequestRecord, bench_symbols
from tests.fakes.venue_server import SlidingWindow, VenueServer, base_parser, serve_until_signalled, take_fault

__all__ = ["INTERVALS", "FakeBybit", "Fault", "interval_code", "interval_open", "interval_shift", "main"]

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
WINDOW_MS: Final = 5_000
REQUEST_LIMIT: Final = 600
BAN_SECONDS: Final = 600.0
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 200
SYMBOLS_PAGE: Final = 500
CATEGORIES: Final = ("spot", "linear", "inverse")

_M: Final = 60_000
_D: Final = 1440 * _M
#: Bybit's interval codes and their lengths; "M" is a calendar month.
INTERVALS: Final[dict[str, int | None]] = {
    "1": _M, "3": 3 * _M, "5": 5 * _M, "15": 15 * _M, "30": 30 * _M, "60": 60 * _M, "120": 120 * _M,
    "240": 240 * _M, "360": 360 * _M, "720": 720 * _M, "D": _D, "W": 7 * _D, "M": None,
}  # fmt: skip
_UNIFIED: Final[dict[str, str]] = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120", "4h": "240",
    "6h": "360", "12h": "720", "1d": "D", "1w": "W", "1M": "M",
}  # fmt: skip
KLINE_FIELDS: Final = ("start", "open", "high", "low", "close", "volume", "turnover")

FaultKind = Literal["500", "502", "503", "504", "drop", "timeout", "bad_json", "403", "10006", "10016", "10018"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
_FAULT_MESSAGES: Final = {
    "10006": "Too many visits!",
    "10016": "Internal System Error.",
    "10018": "Exceeded the IP Rate Limit.",
}
_GATEWAY_HTML: Final = b"<html><head><title>%d</title></head><body><center><h1>%d</h1></center></body></html>"
_BAD_JSON_BODY: Final = b'{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[["16700'
_BANNED_BODY: Final = b"access too frequent"

_Result = tuple[int, bytes]


def interval_code(interval: str) -> str:
    """Bybit's code for ``interval``, given as a code ("60", "D") or a unified name ("1h", "1d")."""
    code = _UNIFIED.get(interval, interval)
    if code not in INTERVALS:
        raise ValueError(f"unknown Bybit interval {interval!r}; one of {list(INTERVALS)} or {list(_UNIFIED)}")
    return code


def _month_open(ms: int, months_ahead: int = 0) -> int:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    index = moment.year * 12 + moment.month - 1 + months_ahead
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000


def interval_open(code: str, ms: int, week_offset_ms: int = 0) -> int:
    """Open time of the candle of ``code`` holding ``ms`` (weeks shifted by ``week_offset_ms``)."""
    step = INTERVALS[code]
    if step is None:
        return _month_open(ms)
    offset = week_offset_ms if code == "W" else 0
    return (ms - offset) // step * step + offset


def interval_shift(code: str, open_ms: int, n: int) -> int:
    """Open time ``n`` candles after the one opening at ``open_ms``."""
    step = INTERVALS[code]
    return _month_open(open_ms, n) if step is None else open_ms + n * step


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _plain(x: float) -> str:
    """A price as Bybit writes it: no exponent, no trailing zeros ("17071.5", "0.0032", "3")."""
    text = f"{x:.8f}".rstrip("0").rstrip(".")
    return text or "0"


def _envelope(result: object, now: int, code: int = 0, msg: str = "OK") -> bytes:
    return _dumps({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now})


def _error(code: int, msg: str, now: int) -> _Result:
    return 200, _envelope({}, now, code, msg)


@dataclass(slots=True)
class Fault:
    """A scripted failure; applies to matching requests until ``remaining`` reaches 0."""

    kind: FaultKind
    path: str | None = "/v5/market/kline"
    remaining: int = 1
    match: dict[str, str] | None = None
    every: int = 1
    body: bytes | None = None
    seen: int = 0
    applied: int = 0

    def matches(self, path: str, params: Mapping[str, str]) -> bool:
        if self.remaining <= 0 or (self.path is not None and self.path != path):
            return False
        return self.match is None or all(params.get(k) == v for k, v in self.match.items())


@dataclass(slots=True)
class _Instrument:
    symbol: str
    base: str
    quote: str
    status: str
    contract_type: str | None
    settle: str | None

    def as_json(self, category: str) -> dict[str, Any]:
        """One instruments-info object, with the keys of the samples."""
        if category == "spot":
            return {
                "symbolId": zlib.crc32(self.symbol.encode()) % 100_000, "symbol": self.symbol,
                "baseCoin": self.base, "quoteCoin": self.quote, "innovation": "0", "status": self.status,
                "marginTrading": "utaOnly", "stTag": "0",
                "lotSizeFilter": {"basePrecision": "0.000001", "quotePrecision": "0.0000001", "minOrderQty": "0.000011",
                                  "maxOrderQty": "83", "minOrderAmt": "5", "maxOrderAmt": "8000000"},
                "priceFilter": {"tickSize": "0.1"},
                "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
                "symbolType": "",
            }  # fmt: skip
        return {
            "symbol": self.symbol, "contractType": self.contract_type or "LinearPerpetual", "status": self.status,
            "baseCoin": self.base, "quoteCoin": self.quote, "launchTime": "1585526400000", "deliveryTime": "0",
            "deliveryFeeRate": "", "priceScale": "2",
            "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
            "priceFilter": {"minPrice": "0.10", "maxPrice": "199999.80", "tickSize": "0.10"},
            "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001", "qtyStep": "0.001",
                              "postOnlyMaxOrderQty": "1190.000", "maxMktOrderQty": "500.000",
                              "minNotionalValue": "5"},
            "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": self.settle or self.quote,
            "copyTrading": "both", "upperFundingRate": "0.00375", "lowerFundingRate": "-0.00375",
            "isPreListing": False, "preListingInfo": None, "displayName": "", "symbolType": "",
        }  # fmt: skip


@dataclass(slots=True)
class _Series:
    """The rows of one symbol and interval, by open time, each pre-encoded."""

    open_times: list[int] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    version: int = 0
    """Bumped by every change, so rolled-up intervals know to roll again."""

    def put(self, rows: Iterable[Sequence[str]]) -> None:
        merged = dict(zip(self.open_times, self.encoded, strict=True))
        for row in rows:
            merged[int(row[0])] = _dumps(list(row))
        self.open_times = sorted(merged)
        self.encoded = [merged[t] for t in self.open_times]
        self.version += 1

    def row(self, open_time: int) -> tuple[int, list[str]]:
        i = bisect.bisect_left(self.open_times, open_time)
        if i >= len(self.open_times) or self.open_times[i] != open_time:
            raise KeyError(f"no kline opening at {open_time}")
        return i, json.loads(self.encoded[i])


def _check_row(row: Sequence[Any]) -> list[str]:
    """Refuse rows Bybit would never send: seven strings, the first a whole number of ms."""
    if len(row) != len(KLINE_FIELDS) or not all(isinstance(v, str) for v in row) or not row[0].isdigit():
        raise ValueError(f"a Bybit kline row is seven strings, the first an open time in ms: {row!r}")
    return list(row)


class FakeBybit(VenueServer[RequestRecord]):
    """Bybit v5 market REST on 127.0.0.1 with a controllable clock, the IP limit and its ban, and faults."""

    def __init__(
        self,
        *,
        rate_limit: int | None = REQUEST_LIMIT,
        ban_seconds: float = BAN_SECONDS,
        latency_ms: float = 0.0,
        week_offset_ms: int = 0,
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
        self.ban_seconds = ban_seconds
        self.week_offset_ms = week_offset_ms

        self.ban_until_ms: int | None = None
        self.faults: list[Fault] = []
        self.refused = 0
        """Requests answered 403 because of the limit or a ban (not scripted faults)."""
        self.max_in_window = 0
        """The most requests any 5 s window held."""

        self._window = SlidingWindow()
        self._instruments: dict[str, dict[str, _Instrument]] = {c: {} for c in CATEGORIES}
        self._series: dict[tuple[str, str, str], _Series] = {}
        # Intervals rolled up from a finer stored one: (rows served, source version, rows).
        self._rolled: dict[tuple[str, str, str, str], tuple[int, int, _Series]] = {}
        self._routes: dict[str, Callable[[Mapping[str, str], int], _Result]] = {
            "/v5/market/time": self._time,
            "/v5/market/kline": self._kline,
            "/v5/market/instruments-info": self._instruments_info,
            "/v5/market/tickers": self._tickers,
        }

    def _add_routes(self, app: web.Application) -> None:
        for path, route in self._routes.items():
            app.router.add_get(path, self._make_handler(path, route))

    # -- market data ----------------------------------------------------------------------------

    def add_symbol(
        self,
        symbol: str,
        base: str | None = None,
        quote: str | None = None,
        *,
        category: str = "spot",
        status: str = "Trading",
        contract_type: str | None = None,
        settle: str | None = None,
    ) -> None:
        """List an instrument in ``category`` (replacing an earlier listing of the same name)."""
        if base is None or quote is None:
            base, quote = symbol[:-4], symbol[-4:]  # BTCUSDT: the bench names all end in USDT
        self._instruments[category][symbol] = _Instrument(symbol, base, quote, status, contract_type, settle)

    def remove_symbol(self, symbol: str, *, category: str = "spot") -> None:
        """Delist: gone from instruments-info; its klines answer "Not supported symbols"."""
        self._instruments[category].pop(symbol, None)

    def set_klines(self, symbol: str, interval: str, rows: Iterable[Sequence[Any]], *, category: str = "spot") -> None:
        """Store Bybit rows (seven strings, any order), replacing those with the same open times."""
        checked = [_check_row(row) for row in rows]
        self._ensure_symbol(symbol, category)
        self._series.setdefault((category, symbol, interval_code(interval)), _Series()).put(checked)

    def get_klines(self, symbol: str, interval: str, *, category: str = "spot") -> list[list[str]]:
        """Every stored row (served or future), oldest first."""
        series = self._series.get((category, symbol, interval_code(interval)))
        return [] if series is None else [json.loads(b) for b in series.encoded]

    def generate_klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        count: int,
        *,
        category: str = "spot",
        seed: int | None = None,
        start_price: float | None = None,
    ) -> list[list[str]]:
        """Store ``count`` plausible candles from ``start_ms`` (aligned down), oldest first; return them.
        The same arguments give the same rows."""
        code = interval_code(interval)
        rng = random.Random(zlib.crc32(f"{symbol}:{code}".encode()) if seed is None else seed)
        price = start_price if start_price is not None else 10 ** rng.uniform(-2, 4)
        sigma = min(0.08, 0.001 * math.sqrt((INTERVALS[code] or 30 * _D) / _M))
        open_t = interval_open(code, start_ms, self.week_offset_ms)
        rows: list[list[str]] = []
        for _ in range(count):
            o = price
            c = o * math.exp(rng.gauss(0.0, sigma))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            vol = rng.uniform(0.5, 150.0)
            row = [str(open_t), _plain(o), _plain(h), _plain(lo), _plain(c), _plain(vol), _plain(vol * (o + c) / 2)]
            rows.append(row)
            price = float(row[4]) or o
            open_t = interval_shift(code, open_t, 1)
        self.set_klines(symbol, code, rows, category=category)
        return rows

    def update_kline(
        self, symbol: str, interval: str, open_time: int, *, category: str = "spot", **fields: str
    ) -> list[str]:
        """Change a stored candle (the open candle moving on): field=decimal string, by KLINE_FIELDS name."""
        series = self._series.get((category, symbol, interval_code(interval)))
        if series is None:
            raise KeyError(f"no {symbol} {interval} klines")
        i, row = series.row(open_time)
        for name, value in fields.items():
            if name not in KLINE_FIELDS[1:]:
                raise KeyError(f"cannot update kline field {name!r}")
            row[KLINE_FIELDS.index(name)] = value
        series.encoded[i] = _dumps(_check_row(row))
        series.version += 1
        return row

    def _ensure_symbol(self, symbol: str, category: str) -> None:
        if symbol not in self._instruments[category]:
            self.add_symbol(symbol, category=category)

    # -- faults, bans, stats --------------------------------------------------------------------

    def add_fault(
        self,
        kind: FaultKind,
        path: str | None = "/v5/market/kline",
        count: int = 1,
        match: Mapping[str, Any] | None = None,
        *,
        every: int = 1,
        body: bytes | None = None,
    ) -> Fault:
        """Script ``count`` failures of ``kind`` on ``path`` (None: any), for requests whose query has
        all of ``match``. "403" starts the real ban; "10006"/"10016"/"10018" are retCodes in HTTP 200.

        aiohttp retries an idempotent request once after a disconnect: a "drop" the client should
        see needs ``count=2``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        match_strings = None if match is None else {k: str(v) for k, v in match.items()}
        fault = Fault(kind, path, count, match_strings, every, body)
        self.faults.append(fault)
        return fault

    def ban(self, seconds: float | None = None) -> None:
        """Ban the IP now: every request answers 403 until it ends."""
        self.ban_until_ms = self.now_ms() + int((self.ban_seconds if seconds is None else seconds) * 1000)

    def unban(self) -> None:
        self.ban_until_ms = None

    def reset_stats(self) -> None:
        """Forget traffic (records, counts) but keep data, faults, the window and bans."""
        self.requests.clear()
        self.status_counts.clear()
        self.request_count = self.refused = self.max_in_window = 0
        self.max_in_flight = self.in_flight

    def _venue_stats(self) -> dict[str, Any]:
        return {"refused": self.refused, "max_in_window": self.max_in_window}

    # -- serving --------------------------------------------------------------------------------

    def _make_handler(
        self, path: str, route: Callable[[Mapping[str, str], int], _Result]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, path, route)

        return handler

    async def _serve(
        self, request: web.Request, path: str, route: Callable[[Mapping[str, str], int], _Result]
    ) -> web.StreamResponse:
        async def answer() -> web.StreamResponse:
            now = self.now_ms()
            params = dict(request.query)
            fault = take_fault(self.faults, path, params)
            if fault is not None:
                return await self._fault_response(request, fault, path, params, now)
            if self._limited(now):
                self.refused += 1
                return self._respond(path, params, now, 403, _BANNED_BODY, content_type="text/plain")
            status, body = route(params, now)
            return self._respond(path, params, now, status, body)

        return await self._counted(answer)

    def _limited(self, now: int) -> bool:
        """Count the request in the sliding window; whether it is refused (a ban, or the one too many)."""
        if self.ban_until_ms is not None:
            if now < self.ban_until_ms:
                return True
            self.ban_until_ms = None
        limit = self.rate_limit if self.rate_limit is not None else math.inf
        if not self._window.admit(now, limit, WINDOW_MS):
            self.ban_until_ms = now + int(self.ban_seconds * 1000)
            return True
        self.max_in_window = max(self.max_in_window, len(self._window))
        return False

    def _respond(
        self,
        path: str,
        params: dict[str, str],
        now: int,
        status: int,
        body: bytes,
        *,
        content_type: str = JSON_CONTENT_TYPE,
        fault: str | None = None,
    ) -> web.Response:
        self._record(path, params, now, status, fault)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def _record(self, path: str, params: dict[str, str], now: int, status: int, fault: str | None) -> None:
        held = len(self._window)
        self._note(status, lambda: RequestRecord(now, path, params, status, held, fault))

    async def _fault_response(
        self, request: web.Request, fault: Fault, path: str, params: dict[str, str], now: int
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "403":
            self.ban()
            return self._respond(path, params, now, 403, _BANNED_BODY, content_type="text/plain", fault=kind)
        if kind in _FAULT_MESSAGES:
            body = fault.body or _envelope({}, now, int(kind), _FAULT_MESSAGES[kind])
            return self._respond(path, params, now, 200, body, fault=kind)
        if kind in ("500", "502", "503", "504"):
            status = int(kind)
            body = fault.body or _GATEWAY_HTML % (status, status)
            return self._respond(path, params, now, status, body, content_type="text/html", fault=kind)
        if kind == "bad_json":
            return self._respond(path, params, now, 200, fault.body or _BAD_JSON_BODY, fault=kind)
        # "drop" and "timeout": no HTTP answer at all.
        self._record(path, params, now, 0, kind)
        return await self._no_answer(request, kind)

    # -- routes ---------------------------------------------------------------------------------

    def _time(self, params: Mapping[str, str], now: int) -> _Result:
        result = {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}
        return 200, _envelope(result, now)

    def _kline(self, params: Mapping[str, str], now: int) -> _Result:
        category = params.get("category", "linear")  # Bybit's default
        if category not in CATEGORIES:
            return _error(10001, "Illegal category", now)
        symbol = params.get("symbol", "")
        if not symbol:
            return _error(10001, "params error: symbol is required", now)
        code = params.get("interval", "")
        if code not in INTERVALS:
            return _error(10001, "Invalid period!", now)
        numbers: dict[str, int] = {}
        for name in ("start", "end", "limit"):
            raw = params.get(name)
            if raw is not None:
                if not raw.isdigit():
                    return _error(10001, f"params error: {name} invalid", now)
                numbers[name] = int(raw)
        limit = numbers.get("limit", DEFAULT_LIMIT)
        if limit < 1:
            return _error(10001, "params error: limit invalid", now)
        limit = min(limit, MAX_LIMIT)
        if symbol not in self._instruments[category]:
            return _error(10001, "Not supported symbols", now)
        start, end = numbers.get("start"), numbers.get("end")
        if start is not None and end is not None and start > end:
            return _error(10001, "params error: start must be less than end", now)
        series = self._served(category, symbol, code, now)
        rows: list[bytes] = []
        if series is not None:
            times = series.open_times
            hi = bisect.bisect_right(times, now if end is None else min(now, end))  # the future is not there yet
            lo = 0 if start is None else bisect.bisect_left(times, start)
            if start is not None and end is None:
                hi = min(hi, lo + limit)  # a start alone: the oldest `limit` from it
            else:
                lo = max(lo, hi - limit)  # a window: its newest `limit`
            rows = series.encoded[lo:hi] if lo < hi else []
        head = b'{"retCode":0,"retMsg":"OK","result":{"symbol":%s,"category":%s,"list":[' % (
            _dumps(symbol), _dumps(category),
        )  # fmt: skip
        tail = b']},"retExtInfo":{},"time":%d}' % now
        return 200, head + b",".join(reversed(rows)) + tail

    def _served(self, category: str, symbol: str, code: str, now: int) -> _Series | None:
        """The stored rows of ``code``; else, as the venue builds every interval from the same trades,
        those of the coarsest stored interval that divides it, rolled up (candles open at ``now``
        included, later ones not)."""
        stored = self._series.get((category, symbol, code))
        if stored is not None:
            return stored
        step = INTERVALS[code]
        finer = [
            c for c, s in INTERVALS.items()
            if s is not None and (step is None or (s < step and step % s == 0))
            and (category, symbol, c) in self._series
        ]  # fmt: skip
        if not finer:
            return None
        source = self._series[(category, symbol, finer[-1])]  # the coarsest: the fewest rows to roll
        served = bisect.bisect_right(source.open_times, now)
        key = (category, symbol, code, finer[-1])
        cached = self._rolled.get(key)
        if cached is not None and cached[0] == served and cached[1] == source.version:
            return cached[2]
        groups: dict[int, list[list[str]]] = {}
        for blob in source.encoded[:served]:
            row: list[str] = json.loads(blob)
            groups.setdefault(interval_open(code, int(row[0]), self.week_offset_ms), []).append(row)
        rolled = _Series()
        rolled.put(
            [
                str(t), rows[0][1], str(max(Decimal(r[2]) for r in rows)), str(min(Decimal(r[3]) for r in rows)),
                rows[-1][4], str(sum(Decimal(r[5]) for r in rows)), str(sum(Decimal(r[6]) for r in rows)),
            ]
            for t, rows in groups.items()
        )  # fmt: skip
        self._rolled[key] = (served, source.version, rolled)
        return rolled

    def _instruments_info(self, params: Mapping[str, str], now: int) -> _Result:
        category = params.get("category")
        if category not in CATEGORIES:
            return _error(10001, "Illegal category", now)
        status = params.get("status", "Trading")
        listed = [i for i in self._instruments[category].values() if i.status == status]
        if "symbol" in params:
            listed = [i for i in listed if i.symbol == params["symbol"]]
        result: dict[str, Any] = {"category": category}
        if category != "spot":  # spot does not page; linear and inverse do, 500 a page by default
            raw_limit = params.get("limit", str(SYMBOLS_PAGE))
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
                return _error(10001, "params error: limit invalid", now)
            cursor = params.get("cursor", "")
            offset = int(cursor.removeprefix("offset%3D")) if cursor.startswith("offset%3D") else 0
            listed, rest = listed[offset : offset + int(raw_limit)], listed[offset + int(raw_limit) :]
            result["nextPageCursor"] = f"offset%3D{offset + int(raw_limit)}" if rest else ""
        result["list"] = [i.as_json(category) for i in listed]
        return 200, _envelope(result, now)

    def _tickers(self, params: Mapping[str, str], now: int) -> _Result:
        category = params.get("category")
        if category not in CATEGORIES:
            return _error(10001, "Illegal category", now)
        names = list(self._instruments[category])
        if "symbol" in params:
            if params["symbol"] not in self._instruments[category]:
                return _error(10001, "Not supported symbols", now)
            names = [params["symbol"]]
        return 200, _envelope({"category": category, "list": [self._ticker(category, s, now) for s in names]}, now)

    def _ticker(self, category: str, symbol: str, now: int) -> dict[str, str]:
        last = "0"
        for code in INTERVALS:  # the finest interval with a served candle
            series = self._series.get((category, symbol, code))
            i = -1 if series is None else bisect.bisect_right(series.open_times, now) - 1
            if series is not None and i >= 0:
                last = json.loads(series.encoded[i])[4]
                break
        return {
            "symbol": symbol, "bid1Price": last, "bid1Size": "1", "ask1Price": last, "ask1Size": "1",
            "lastPrice": last, "prevPrice24h": last, "price24hPcnt": "0", "highPrice24h": last,
            "lowPrice24h": last, "turnover24h": "0", "volume24h": "0",
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("python -m tests.fakes.bybit", __doc__)
    parser.add_argument("--category", choices=CATEGORIES, default="spot")
    parser.add_argument("--rate-limit", type=int, default=REQUEST_LIMIT, help="requests per 5 s per IP")
    parser.add_argument("--no-rate-limit", action="store_true", help="never answer 403")
    parser.add_argument("--symbols", type=int, default=0, help="list this many symbols (BTCUSDT, …, X0010USDT…)")
    parser.add_argument("--timeframes", default="1m", help="comma-separated intervals (1m,1h or 1,60) to generate")
    parser.add_argument("--candles", type=int, default=0, help="candles per symbol/timeframe, ending now")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no per-request records")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeBybit(
        rate_limit=None if args.no_rate_limit else args.rate_limit,
        latency_ms=args.latency_ms,
        host=args.host,
        port=args.port,
        record_requests=not args.no_record,
    )
    now = fake.now_ms()
    contract = None if args.category == "spot" else "LinearPerpetual"
    for symbol in bench_symbols(args.symbols):
        fake.add_symbol(symbol, category=args.category, contract_type=contract)
        for tf in (tf.strip() for tf in args.timeframes.split(",") if tf.strip()):
            if args.candles > 0:
                code = interval_code(tf)
                first = interval_shift(code, interval_open(code, now), -(args.candles - 1))
                fake.generate_klines(symbol, code, first, args.candles, category=args.category, seed=args.seed)
    await serve_until_signalled(fake)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    asyncio.run(_run(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
