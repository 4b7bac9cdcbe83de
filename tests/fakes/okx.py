"""A fake OKX v5 REST API (market data): a real aiohttp server that tests own and script.

It answers like OKX, strictly: the `{"code","msg","data"}` envelope with every value a string;
candles newest first, paged by `after` (older than, exclusive) and `before` (newer than, exclusive);
at most 300 rows a request (a larger `limit` is clamped, as OKX does); `market/candles` reaching only
the latest 1,440 slots of a bar and `market/history-candles` only closed candles; `confirm` "0" on
the open candle; Hong Kong alignment for the plain 6H/12H/1D/1W/1M bars and UTC for their `…utc`
twins; each endpoint's own sliding 2 s rate limit per IP (candles 40, history-candles 20,
instruments and tickers 20) answered with HTTP 429 `{"msg":"Too Many Requests","code":"50011"}`;
51001 for an unknown instrument (in an HTTP 200), 51000 for a bad parameter, 50014 for a missing one.

Two clocks: the market clock (`now_ms`, `set_time`, `advance`) decides which candles exist and which
is open; the rate windows run on `limit_now_ms`, wall time unless given, so a test that freezes the
market can still send more than one window's worth of requests.

In-process: ``async with FakeOkx() as fake: ...``. Own process, for benchmarks:
``python -m tests.fakes.okx --port 0 --symbols 10 --candles 1000`` prints its base URL as the first
stdout line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import calendar
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

from tests.fakes.venue_server import (
    SlidingWindow,
    VenueServer,
    base_parser,
    serve_until_signalled,
    take_fault,
    wall_ms,
)  # fmt: skip

CANDLES: Final = "/api/v5/market/candles"
HISTORY_CANDLES: Final = "/api/v5/market/history-candles"
INSTRUMENTS: Final = "/api/v5/public/instruments"
TICKERS: Final = "/api/v5/market/tickers"
TICKER: Final = "/api/v5/market/ticker"
JSON_CONTENT_TYPE: Final = "application/json"

#: Requests per 2 s per IP, by endpoint, as OKX documents them.
RATE_LIMITS: Final[dict[str, int]] = {CANDLES: 40, HISTORY_CANDLES: 20, INSTRUMENTS: 20, TICKERS: 20, TICKER: 20}
RATE_WINDOW_MS: Final = 2_000
MAX_LIMIT: Final = 300
DEFAULT_LIMIT: Final = 100
CANDLES_REACH: Final = 1_440

_S: Final = 1_000
_M: Final = 60 * _S
_H: Final = 60 * _M
_D: Final = 24 * _H
_HK: Final = 8 * _H  # Hong Kong time, UTC+8


@dataclass(frozen=True, slots=True)
class Bar:
    """Where one bar's candles open: offset + k * step, or calendar months in a time zone."""

    step_ms: int | None  # None: calendar months
    offset_ms: int = 0
    zone_ms: int = 0  # months: the zone's offset from UTC


#: The bars this fake serves, by OKX's code. The plain 6H…1M open on Hong Kong time (UTC+8).
BARS: Final[dict[str, Bar]] = {
    "1m": Bar(_M), "3m": Bar(3 * _M), "5m": Bar(5 * _M), "15m": Bar(15 * _M), "30m": Bar(30 * _M),
    "1H": Bar(_H), "2H": Bar(2 * _H), "4H": Bar(4 * _H),
    "6H": Bar(6 * _H, -_HK % (6 * _H)), "12H": Bar(12 * _H, -_HK % (12 * _H)), "1D": Bar(_D, -_HK % _D),
    "1W": Bar(7 * _D, (4 * _D - _HK) % (7 * _D)), "1M": Bar(None, zone_ms=_HK),
    "6Hutc": Bar(6 * _H), "12Hutc": Bar(12 * _H), "1Dutc": Bar(_D), "1Wutc": Bar(7 * _D, 4 * _D), "1Mutc": Bar(None),
}  # fmt: skip
#: The bar of each unified timeframe name (for the command line).
UNIFIED_BARS: Final[dict[str, str]] = {
    "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H",
    "6h": "6Hutc", "12h": "12Hutc", "1d": "1Dutc", "1w": "1Wutc", "1M": "1Mutc",
}  # fmt: skip
#: A candle row as stored: [ts, o, h, l, c, vol, volCcy, volCcyQuote]; `confirm` is added when served.
ROW_FIELDS: Final = ("ts", "o", "h", "l", "c", "vol", "volCcy", "volCcyQuote")

FaultKind = Literal["429", "500", "502", "503", "drop", "timeout", "bad_json"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
_Result = tuple[int, bytes]


def _month_open(ms: int, zone_ms: int, months_ahead: int = 0) -> int:
    local = datetime.fromtimestamp((ms + zone_ms) / 1000, tz=UTC)
    index = local.year * 12 + local.month - 1 + months_ahead
    return calendar.timegm((index // 12, index % 12 + 1, 1, 0, 0, 0)) * 1000 - zone_ms


def bar_open(bar: str, ms: int) -> int:
    """Open time of the `bar` candle holding the instant `ms`."""
    b = BARS[bar]
    if b.step_ms is None:
        return _month_open(ms, b.zone_ms)
    return (ms - b.offset_ms) // b.step_ms * b.step_ms + b.offset_ms


def bar_shift(bar: str, open_ms: int, n: int) -> int:
    """Open time `n` candles after (negative: before) the one opening at `open_ms`."""
    b = BARS[bar]
    return _month_open(open_ms, b.zone_ms, n) if b.step_ms is None else open_ms + n * b.step_ms


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _envelope(data: bytes) -> bytes:
    return b'{"code":"0","msg":"","data":' + data + b"}"


def _error(code: str, msg: str, status: int = 200) -> _Result:
    return status, _dumps({"code": code, "msg": msg, "data": []})


def _bad(name: str) -> _Result:
    return _error("51000", f"Parameter {name} error", 400)


def _empty(name: str) -> _Result:
    return _error("50014", f"Parameter {name} can not be empty.", 400)


_UNKNOWN_INSTRUMENT: Final = _error("51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist.")
_TOO_MANY: Final = _dumps({"msg": "Too Many Requests", "code": "50011"})
_FAULT_BODIES: Final[dict[str, tuple[int, bytes, str]]] = {
    "500": (500, _dumps({"code": "50026", "msg": "System error, please try again later.", "data": []}),
            JSON_CONTENT_TYPE),
    "503": (503, _dumps({"code": "50001", "msg": "Service temporarily unavailable, please try again later.",
                         "data": []}), JSON_CONTENT_TYPE),
    "502": (502, b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n", "text/html"),
    "bad_json": (200, b'{"code":"0","msg":"","data":[["1597026383085","3.7', JSON_CONTENT_TYPE),
}  # fmt: skip


def _num(x: float, places: int = 8) -> str:
    """A decimal as OKX writes it: no trailing zeros."""
    text = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake answered (or dropped)."""

    time_ms: int  # the market clock
    path: str
    params: dict[str, str]
    status: int  # 0: no HTTP response (dropped or hung)
    code: str | None  # OKX's code in the body, when it has one
    fault: str | None = None


@dataclass(slots=True)
class Fault:
    """A scripted failure, for `remaining` matching requests."""

    kind: FaultKind
    path: str | None
    remaining: int
    match: dict[str, str] | None = None
    every: int = 1
    seen: int = 0
    applied: int = 0

    def matches(self, path: str, params: Mapping[str, str]) -> bool:
        if self.remaining <= 0 or (self.path is not None and self.path != path):
            return False
        return self.match is None or all(params.get(k) == v for k, v in self.match.items())


@dataclass(slots=True)
class Instrument:
    inst_id: str
    inst_type: str
    base: str
    quote: str
    state: str
    list_time: int | None
    settle: str
    ct_val: str

    def as_json(self) -> dict[str, str]:
        """The instrument as public/instruments lists it (spot: base and quote; derivatives: family)."""
        spot = self.inst_type in ("SPOT", "MARGIN")
        family = "" if spot else f"{self.base}-{self.quote}"
        listed = "" if self.list_time is None else str(self.list_time)
        return {
            "alias": "", "auctionEndTime": "", "baseCcy": self.base if spot else "", "category": "1",
            "ctMult": "" if spot else "1", "ctType": "" if spot else "linear", "ctVal": "" if spot else self.ct_val,
            "ctValCcy": "" if spot else self.base, "expTime": "", "instFamily": family, "instId": self.inst_id,
            "instType": self.inst_type, "lever": "10", "listTime": listed,
            "lotSz": "0.00000001", "maxIcebergSz": "9999999999", "maxLmtAmt": "20000000", "maxLmtSz": "9999999999",
            "maxMktAmt": "1000000", "maxMktSz": "1000000", "maxStopSz": "1000000", "maxTriggerSz": "9999999999",
            "maxTwapSz": "9999999999", "minSz": "0.00001", "optType": "", "quoteCcy": self.quote if spot else "",
            "ruleType": "normal", "settleCcy": "" if spot else self.settle, "state": self.state, "stk": "",
            "tickSz": "0.1", "uly": family,
        }  # fmt: skip


@dataclass(slots=True)
class _Series:
    """One instrument's candles of one bar, sorted; rows pre-encoded up to (not with) `confirm`."""

    open_times: list[int] = field(default_factory=list)
    next_opens: list[int] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)  # b'["ts","o",…,"volCcyQuote",'

    def merge(self, bar: str, pairs: list[tuple[int, bytes]]) -> None:
        """Insert or replace encoded rows by open time."""
        pairs.sort(key=lambda p: p[0])
        if pairs and (not self.open_times or pairs[0][0] > self.open_times[-1]):
            merged = dict(pairs)  # after every stored row: appended (the last of equal ts wins)
            self.open_times.extend(merged)
            self.encoded.extend(merged.values())
            self.next_opens.extend(_next_opens(bar, list(merged)))
            return
        merged = dict(zip(self.open_times, self.encoded, strict=True))
        merged.update(pairs)
        self.open_times = sorted(merged)
        self.next_opens = _next_opens(bar, self.open_times)
        self.encoded = [merged[t] for t in self.open_times]

    def row(self, i: int) -> list[str]:
        row: list[str] = json.loads(self.encoded[i] + b'"1"]')[:-1]
        return row


def _next_opens(bar: str, open_times: list[int]) -> list[int]:
    step = BARS[bar].step_ms
    if step is not None and all(bar_open(bar, t) == t for t in open_times):
        return [t + step for t in open_times]
    return [bar_shift(bar, bar_open(bar, t), 1) for t in open_times]


def _encode_row(row: Sequence[str]) -> bytes:
    """A checked row, encoded up to its `confirm`."""
    if len(row) != len(ROW_FIELDS) or not all(isinstance(v, str) for v in row) or not row[0].isdigit():
        raise ValueError(f"a candle row is {len(ROW_FIELDS)} strings {ROW_FIELDS}, ts in ms: {row!r}")
    return _dumps(list(row))[:-1] + b","


def _encoded(rows: Iterable[Sequence[str]]) -> list[tuple[int, bytes]]:
    return [(int(row[0]), _encode_row(row)) for row in rows]


class FakeOkx(VenueServer[RequestRecord]):
    """OKX v5 market data on 127.0.0.1 with a controllable clock, rate limits and faults."""

    def __init__(
        self,
        *,
        now_ms: Callable[[], int] | None = None,
        limit_now_ms: Callable[[], int] | None = None,
        rate_limits: Mapping[str, int] | None = RATE_LIMITS,
        latency_ms: float = 0.0,
        fault_timeout_s: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        super().__init__(
            latency_ms=latency_ms, fault_timeout_s=fault_timeout_s, now_ms=now_ms, host=host, port=port,
            record_requests=record_requests,
        )  # fmt: skip
        self.limit_now_ms: Callable[[], int] = limit_now_ms or wall_ms
        self.rate_limits = dict(rate_limits) if rate_limits is not None else None
        self.faults: list[Fault] = []
        self.requests_by_path: dict[str, int] = {}
        """Requests per endpoint, refused ones included."""
        self.refused_by_path: dict[str, int] = {}
        """Requests per endpoint its rate limit refused (50011)."""
        self.max_in_window: dict[str, int] = {}
        """Per endpoint, the most requests its limit let through in one sliding window."""
        #: Called with the query of every candles request once its body is built, before it is sent.
        self.after_candles: Callable[[Mapping[str, str]], None] | None = None
        self._instruments: dict[str, Instrument] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._sent: dict[str, SlidingWindow] = {path: SlidingWindow() for path in RATE_LIMITS}
        self._routes: dict[str, Callable[[Mapping[str, str], int], _Result]] = {
            CANDLES: lambda p, now: self._candles(p, now, history=False),
            HISTORY_CANDLES: lambda p, now: self._candles(p, now, history=True),
            INSTRUMENTS: self._instruments_route,
            TICKERS: self._tickers,
            TICKER: self._ticker,
        }

    def _add_routes(self, app: web.Application) -> None:
        for path in self._routes:
            app.router.add_get(path, self._handler(path))

    # -- instruments and candles ------------------------------------------------------------------

    def add_symbol(
        self,
        inst_id: str,
        base: str | None = None,
        quote: str | None = None,
        *,
        state: str = "live",
        list_time: int | None = None,
        inst_type: str | None = None,
        settle: str | None = None,
        ct_val: str = "0.01",
    ) -> Instrument:
        """List an instrument (replacing one of the same id). Assets default to the id's parts
        (BTC-USDT, BTC-USDT-SWAP); the type to SWAP for a `-SWAP` id, else SPOT; settle to the quote."""
        parts = inst_id.split("-")
        kind = inst_type or ("SWAP" if inst_id.endswith("-SWAP") else "SPOT")
        b, q = base or parts[0], quote or (parts[1] if len(parts) > 1 else "")
        inst = Instrument(inst_id, kind, b, q, state, list_time, settle or ("" if kind == "SPOT" else q), ct_val)
        self._instruments[inst_id] = inst
        return inst

    def remove_symbol(self, inst_id: str) -> None:
        """Gone: its requests answer 51001."""
        self._instruments.pop(inst_id, None)

    def set_state(self, inst_id: str, state: str) -> None:
        self._instruments[inst_id].state = state

    def _instrument(self, inst_id: str) -> Instrument:
        return self._instruments.get(inst_id) or self.add_symbol(inst_id)

    def set_klines(self, inst_id: str, bar: str, rows: Iterable[Sequence[str]]) -> None:
        """Replace the candles of inst_id/bar with rows of 8 strings (ROW_FIELDS); `confirm` follows the clock."""
        self._check_bar(bar)
        self._instrument(inst_id)
        self._series[inst_id, bar] = _Series()
        self._series[inst_id, bar].merge(bar, _encoded(rows))

    def add_klines(self, inst_id: str, bar: str, rows: Iterable[Sequence[str]]) -> None:
        """Insert rows, replacing stored ones with the same ts."""
        self._check_bar(bar)
        self._instrument(inst_id)
        self._series.setdefault((inst_id, bar), _Series()).merge(bar, _encoded(rows))

    def get_klines(self, inst_id: str, bar: str) -> list[list[str]]:
        """Every stored row (served or future), oldest first; for assertions."""
        series = self._series.get((inst_id, bar))
        return [] if series is None else [series.row(i) for i in range(len(series.open_times))]

    def generate_klines(
        self,
        inst_id: str,
        bar: str,
        start_ms: int,
        count: int,
        *,
        seed: int | None = None,
        start_price: float | None = None,
    ) -> list[list[str]]:
        """Store `count` deterministic, plausible candles of `bar` (an OKX code: 1m, 1H, 1Dutc…) from the
        one holding `start_ms`; return them. Derivatives' `vol` counts contracts of ctVal."""
        self._check_bar(bar)
        inst = self._instrument(inst_id)
        spot = inst.inst_type in ("SPOT", "MARGIN")
        rng = random.Random(zlib.crc32(f"{inst_id}:{bar}".encode()) if seed is None else seed)
        price = start_price if start_price is not None else 10 ** rng.uniform(-1, 4)
        step = BARS[bar].step_ms or 30 * _D
        sigma = min(0.08, 0.001 * math.sqrt(step / _M))
        open_t = bar_open(bar, start_ms)
        rows: list[list[str]] = []
        pairs: list[tuple[int, bytes]] = []
        ct_val = Decimal(inst.ct_val)
        for _ in range(count):
            o = price
            c = o * math.exp(rng.gauss(0.0, sigma))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            if spot:
                base = rng.uniform(0.5, 150.0)
                vol, vol_ccy = _num(base), _num(base * (o + c) / 2)
                quote = vol_ccy
            else:
                contracts = rng.randint(1, 20_000)
                vol, vol_ccy = str(contracts), format((contracts * ct_val).normalize(), "f")
                quote = _num(float(vol_ccy) * (o + c) / 2)
            row = [str(open_t), _num(o), _num(h), _num(lo), _num(c), vol, vol_ccy, quote]
            rows.append(row)
            # Generated values are digits and points: no JSON escaping needed.
            pairs.append((open_t, ('["' + '","'.join(row) + '",').encode()))
            price = float(row[4])
            open_t = bar_shift(bar, open_t, 1)
        if pairs:
            self._series.setdefault((inst_id, bar), _Series()).merge(bar, pairs)
        return rows

    def update_kline(self, inst_id: str, bar: str, ts: int, **fields: str) -> list[str]:
        """Change a stored candle (the open candle moving on): fields by ROW_FIELDS name (o, h, l, c, vol…)."""
        series = self._series[inst_id, bar]
        i = bisect.bisect_left(series.open_times, ts)
        if i >= len(series.open_times) or series.open_times[i] != ts:
            raise KeyError(f"no {inst_id} {bar} candle opening at {ts}")
        row = series.row(i)
        for name, value in fields.items():
            if name not in ROW_FIELDS[1:]:
                raise KeyError(f"cannot update candle field {name!r}")
            row[ROW_FIELDS.index(name)] = value
        series.encoded[i] = _encode_row(row)
        return row

    @staticmethod
    def _check_bar(bar: str) -> None:
        if bar not in BARS:
            raise ValueError(f"unknown OKX bar {bar!r}; one of {sorted(BARS)}")

    # -- faults and traffic -----------------------------------------------------------------------

    def add_fault(
        self, kind: FaultKind, path: str | None = CANDLES, count: int = 1, match: Mapping[str, Any] | None = None
    ) -> Fault:
        """Script `count` failures of `kind` on `path` (None: any) for requests whose query has all of
        `match`; they come before limits. aiohttp re-sends an idempotent request once after a dropped
        connection, so a "drop" the client should see needs count=2."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        fault = Fault(kind, path, count, None if match is None else {k: str(v) for k, v in match.items()})
        self.faults.append(fault)
        return fault

    def codes(self, path: str | None = None) -> list[str | None]:
        """OKX's code of each recorded answer (of `path`), in order."""
        return [r.code for r in self.requests if path is None or r.path == path]

    def _venue_stats(self) -> dict[str, Any]:
        return {
            "requests_by_path": dict(sorted(self.requests_by_path.items())),
            "refused_by_path": dict(sorted(self.refused_by_path.items())),
            "max_in_window": dict(sorted(self.max_in_window.items())),
        }

    # -- serving ----------------------------------------------------------------------------------

    def _handler(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, path)

        return handler

    async def _serve(self, request: web.Request, path: str) -> web.StreamResponse:
        async def answer() -> web.StreamResponse:
            now = self.now_ms()
            params = dict(request.query)
            self.requests_by_path[path] = self.requests_by_path.get(path, 0) + 1
            fault = take_fault(self.faults, path, params)
            if fault is not None:
                return await self._fault(request, fault.kind, path, params, now)
            if self._over_limit(path):
                self.refused_by_path[path] = self.refused_by_path.get(path, 0) + 1
                return self._respond(path, params, now, 429, _TOO_MANY)
            status, body = self._routes[path](params, now)
            if path in (CANDLES, HISTORY_CANDLES) and self.after_candles is not None:
                self.after_candles(params)
            return self._respond(path, params, now, status, body)

        return await self._counted(answer)

    def _over_limit(self, path: str) -> bool:
        """Count the request in its endpoint's sliding window; True (not counted) if that breaks the limit."""
        if self.rate_limits is None:
            return False
        sent = self._sent[path]
        if not sent.admit(self.limit_now_ms(), self.rate_limits[path], RATE_WINDOW_MS):
            return True
        self.max_in_window[path] = max(self.max_in_window.get(path, 0), len(sent))
        return False

    def _respond(
        self,
        path: str,
        params: dict[str, str],
        now: int,
        status: int,
        body: bytes,
        content_type: str = JSON_CONTENT_TYPE,
        fault: str | None = None,
    ) -> web.Response:
        self._record(path, params, now, status, _code_of(body), fault)
        return web.Response(status=status, body=body, content_type=content_type)

    def _record(
        self, path: str, params: dict[str, str], now: int, status: int, code: str | None, fault: str | None
    ) -> None:
        self._note(status, lambda: RequestRecord(now, path, params, status, code, fault))

    async def _fault(
        self, request: web.Request, kind: str, path: str, params: dict[str, str], now: int
    ) -> web.StreamResponse:
        if kind == "429":
            return self._respond(path, params, now, 429, _TOO_MANY, fault=kind)
        if kind in _FAULT_BODIES:
            status, body, content_type = _FAULT_BODIES[kind]
            return self._respond(path, params, now, status, body, content_type, fault=kind)
        self._record(path, params, now, 0, None, kind)  # "drop" and "timeout": no HTTP answer
        return await self._no_answer(request, kind)

    # -- routes -----------------------------------------------------------------------------------

    def _candles(self, params: Mapping[str, str], now: int, *, history: bool) -> _Result:
        inst_id = params.get("instId", "")
        if not inst_id:
            return _empty("instId")
        bar = params.get("bar", "1m")
        if bar not in BARS:
            return _bad("bar")
        bounds: dict[str, int] = {}
        for name in ("after", "before", "limit"):
            raw = params.get(name)
            if raw is not None and raw != "":
                if not raw.isdigit() or len(raw) > 19:
                    return _bad(name)
                bounds[name] = int(raw)
        limit = bounds.get("limit", DEFAULT_LIMIT)
        if limit < 1:
            return _bad("limit")
        limit = min(limit, MAX_LIMIT)
        if inst_id not in self._instruments:
            return _UNKNOWN_INSTRUMENT
        series = self._series.get((inst_id, bar))
        if series is None:
            return 200, _envelope(b"[]")
        times = series.open_times
        # What exists now: opened by now; history-candles holds closed candles only, `candles` the latest 1,440.
        hi = bisect.bisect_right(series.next_opens, now) if history else bisect.bisect_right(times, now)
        lo = 0 if history else bisect.bisect_left(times, bar_shift(bar, bar_open(bar, now), 1 - CANDLES_REACH))
        if "after" in bounds:
            hi = min(hi, bisect.bisect_left(times, bounds["after"]))
        if "before" in bounds:
            lo = max(lo, bisect.bisect_right(times, bounds["before"]))
        lo = max(lo, hi - limit)  # the newest `limit` of the range
        rows = [
            series.encoded[i] + (b'"1"]' if series.next_opens[i] <= now else b'"0"]') for i in range(hi - 1, lo - 1, -1)
        ]
        return 200, _envelope(b"[" + b",".join(rows) + b"]")

    def _instruments_route(self, params: Mapping[str, str], now: int) -> _Result:
        inst_type = params.get("instType", "")
        if not inst_type:
            return _empty("instType")
        if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            return _bad("instType")
        listed = [i for i in self._instruments.values() if i.inst_type == inst_type]
        inst_id = params.get("instId")
        if inst_id:
            listed = [i for i in listed if i.inst_id == inst_id]
            if not listed:
                return _UNKNOWN_INSTRUMENT
        return 200, _envelope(_dumps([i.as_json() for i in listed]))

    def _ticker_json(self, inst: Instrument, now: int) -> dict[str, str]:
        last = self._last_price(inst.inst_id, now)
        return {
            "instType": inst.inst_type, "instId": inst.inst_id, "last": last, "lastSz": "0.1" if last else "",
            "askPx": last, "askSz": "1" if last else "", "bidPx": last, "bidSz": "1" if last else "",
            "open24h": last, "high24h": last, "low24h": last, "volCcy24h": "0", "vol24h": "0",
            "ts": str(now), "sodUtc0": last, "sodUtc8": last,
        }  # fmt: skip

    def _last_price(self, inst_id: str, now: int) -> str:
        """The close of the newest 1m candle that exists, else of the newest of any bar; "" with none."""
        found: list[tuple[bool, int, str]] = []
        for (name, bar), series in self._series.items():
            i = bisect.bisect_right(series.open_times, now) - 1
            if name == inst_id and i >= 0:
                found.append((bar == "1m", series.open_times[i], series.row(i)[4]))
        return max(found)[2] if found else ""

    def _tickers(self, params: Mapping[str, str], now: int) -> _Result:
        inst_type = params.get("instType", "")
        if not inst_type:
            return _empty("instType")
        listed = [i for i in self._instruments.values() if i.inst_type == inst_type]
        return 200, _envelope(_dumps([self._ticker_json(i, now) for i in listed]))

    def _ticker(self, params: Mapping[str, str], now: int) -> _Result:
        inst_id = params.get("instId", "")
        if not inst_id:
            return _empty("instId")
        if inst_id not in self._instruments:
            return _UNKNOWN_INSTRUMENT
        return 200, _envelope(_dumps([self._ticker_json(self._instruments[inst_id], now)]))


def _code_of(body: bytes) -> str | None:
    start = body.find(b'"code":"')
    if start < 0:
        return None
    end = body.find(b'"', start + 8)
    return body[start + 8 : end].decode() if end > 0 else None


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------

_BENCH_BASES: Final = ("BTC", "ETH", "OKB", "SOL", "XRP", "ADA", "DOGE", "TRX", "LINK", "DOT")


def bench_symbols(n: int, inst_type: str = "SPOT") -> list[str]:
    """The instruments `--symbols n` lists: ten real names, then X0010-USDT, X0011-USDT, … (`-SWAP` for SWAP)."""
    tail = "-SWAP" if inst_type == "SWAP" else ""
    return [f"{_BENCH_BASES[i] if i < len(_BENCH_BASES) else f'X{i:04d}'}-USDT{tail}" for i in range(n)]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("python -m tests.fakes.okx", __doc__)
    parser.add_argument("--no-rate-limit", action="store_true", help="never answer 50011")
    parser.add_argument("--inst-type", default="SPOT", choices=("SPOT", "SWAP"))
    parser.add_argument("--symbols", type=int, default=0, help="list this many instruments (see bench_symbols)")
    parser.add_argument("--timeframes", default="1m", help="comma-separated unified names (1m, 1h, 1d…) or OKX bars")
    parser.add_argument("--candles", type=int, default=0, help="candles per instrument and bar, ending now")
    parser.add_argument("--future-candles", type=int, default=0, help="extra candles served as time passes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no per-request records")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeOkx(
        rate_limits=None if args.no_rate_limit else RATE_LIMITS,
        latency_ms=args.latency_ms,
        host=args.host,
        port=args.port,
        record_requests=not args.no_record,
    )
    now = fake.now_ms()
    bars = [UNIFIED_BARS.get(tf.strip(), tf.strip()) for tf in args.timeframes.split(",") if tf.strip()]
    for inst_id in bench_symbols(args.symbols, args.inst_type):
        first = min((bar_shift(bar, bar_open(bar, now), -(args.candles - 1)) for bar in bars), default=now)
        fake.add_symbol(inst_id, list_time=first if args.candles > 0 else None)
        for bar in bars:
            if args.candles + args.future_candles > 0:
                start = bar_shift(bar, bar_open(bar, now), -(args.candles - 1))
                fake.generate_klines(inst_id, bar, start, args.candles + args.future_candles, seed=args.seed)
    await serve_until_signalled(fake)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    asyncio.run(_run(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
