"""A fake Kraken spot public REST API: a real aiohttp server that tests own and script.

Strict where Kraken is: OHLC serves only the 720 most recent candles of an interval (the current one
included) whatever `since` says; `since` is exclusive; the last row is the current, uncommitted
candle, always present, whose values move while its period runs; errors are HTTP 200 envelopes
(`{"error":["EQuery:Unknown asset pair"]}`); the public limit (one request per second per IP) is a
sliding window answered with `EAPI:Rate limit exceeded`. Bodies have the shapes of the samples in
krakenfx/api-specs (compact JSON, prices as strings, times in seconds).

In-process: ``async with FakeKraken() as fake: ...``; its own process:
``python -m tests.fakes.kraken --port 0 --symbols 10 --candles 720`` prints its base URL as the first
stdout line and serves until SIGTERM.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final, Literal, get_args

from aiohttp import web

from tests.fakes.venue_server import SlidingWindow, VenueServer, base_parser, serve_until_signalled, take_fault

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
#: OHLC intervals in minutes, Kraken's only ones.
INTERVALS: Final[tuple[int, ...]] = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
#: The same by unified timeframe name, for callers that think in those.
UNIFIED: Final[dict[str, int]] = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440, "1w": 10080, "15d": 21600,
}  # fmt: skip
#: OHLC serves this many of the most recent candles, never older ones.
SERVED: Final = 720
ROW_FIELDS: Final[tuple[str, ...]] = ("time", "open", "high", "low", "close", "vwap", "volume", "count")

ERR_UNKNOWN_PAIR: Final = "EQuery:Unknown asset pair"
ERR_INVALID_ARGUMENTS: Final = "EGeneral:Invalid arguments"
ERR_RATE_LIMIT: Final = "EAPI:Rate limit exceeded"
ERR_UNAVAILABLE: Final = "EService:Unavailable"
ERR_BUSY: Final = "EService:Busy"

FaultKind = Literal[
    "500", "502", "503", "504", "drop", "timeout", "bad_json", "rate_limit", "unavailable", "busy", "raw",
]  # fmt: skip
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
_ENVELOPE_FAULTS: Final = {"rate_limit": ERR_RATE_LIMIT, "unavailable": ERR_UNAVAILABLE, "busy": ERR_BUSY}

#: One OHLC row as Kraken writes it: [time s, open, high, low, close, vwap, volume, count].
Row = list[Any]
_Result = tuple[int, bytes]

_KNOWN_QUOTES: Final = ("ZUSD", "ZEUR", "ZGBP", "XXBT", "USDT", "USDC", "USD", "EUR", "XBT", "ETH")
_CLOUDFLARE_HTML: Final = b"<html>\r\n<head><title>%d</title></head>\r\n<body>cloudflare</body>\r\n</html>\r\n"
_BAD_JSON_BODY: Final = b'{"error":[],"result":{"XXBTZUSD":[[1688671200,"30306.1'


def _dumps(obj: object) -> bytes:
    """Compact JSON, as Kraken writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _error_body(*errors: str) -> bytes:
    # Live, an error answer has no `result` key at all.
    return _dumps({"error": list(errors)})


def _ok(result: object) -> _Result:
    return 200, _dumps({"error": [], "result": result})


def interval_of(interval: int | str) -> int:
    """Kraken's interval in minutes from minutes or a unified name (`1h` -> 60)."""
    minutes = UNIFIED.get(interval) if isinstance(interval, str) else interval
    if minutes not in INTERVALS:
        raise ValueError(f"unknown Kraken interval {interval!r}; one of {INTERVALS} or {tuple(UNIFIED)}")
    return minutes


def _check_row(row: Sequence[Any]) -> None:
    """Refuse rows Kraken would never send, so tests cannot feed impossible data."""
    if len(row) != len(ROW_FIELDS):
        raise ValueError(f"an OHLC row has 8 fields, got {len(row)}: {row!r}")
    for i, value in enumerate(row):
        if i in (0, 7):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"field {ROW_FIELDS[i]} must be an int: {row!r}")
        elif not isinstance(value, str):
            raise ValueError(f"field {ROW_FIELDS[i]} must be a string: {row!r}")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake answered (or dropped), kept so tests can assert on traffic."""

    time_ms: int
    path: str
    params: dict[str, str]
    status: int  # 0: no HTTP response (dropped or hung)
    error: str | None = None  # the envelope's first error, if any
    fault: str | None = None


@dataclass(slots=True)
class Fault:
    """A scripted failure; applies to matching requests until ``remaining`` reaches 0."""

    kind: FaultKind
    path: str | None = "/0/public/OHLC"
    remaining: int = 1
    match: dict[str, str] | None = None
    every: int = 1  # apply to every n-th matching request; the others pass through
    body: bytes | None = None  # "raw": this body, verbatim, with HTTP 200
    seen: int = 0
    applied: int = 0

    def matches(self, path: str, params: Mapping[str, str]) -> bool:
        if self.remaining <= 0 or (self.path is not None and self.path != path):
            return False
        return self.match is None or all(params.get(k) == v for k, v in self.match.items())


@dataclass(slots=True)
class _Pair:
    altname: str
    wsname: str | None
    base: str
    quote: str
    status: str


@dataclass(slots=True)
class _Series:
    """Rows of one pair and interval, sorted by time (seconds), each kept pre-encoded."""

    times: list[int] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)

    def merge(self, rows: Iterable[Row]) -> None:
        """Insert or replace rows by time."""
        merged = dict(zip(self.times, self.rows, strict=True))
        merged.update((row[0], row) for row in rows)
        self.times = sorted(merged)
        self.rows = [merged[t] for t in self.times]
        self.encoded = [_dumps(row) for row in self.rows]


# Kraken's legacy asset codes carry an X (crypto) or Z (fiat) prefix that its display names drop.
_LEGACY_ASSETS: Final = frozenset({
    "XXBT", "XETH", "XETC", "XLTC", "XXRP", "XXLM", "XXDG", "XXMR", "XZEC", "XREP", "XMLN",
    "ZUSD", "ZEUR", "ZGBP", "ZCAD", "ZJPY", "ZAUD",
})  # fmt: skip


def _asset_name(code: str) -> str:
    """Kraken's display name of an asset code (XXBT -> XBT, ZUSD -> USD, SOL -> SOL), as in altname and wsname."""
    return code[1:] if code in _LEGACY_ASSETS else code


def _guess_assets(key: str) -> tuple[str, str]:
    for quote in _KNOWN_QUOTES:
        if key.endswith(quote) and len(key) > len(quote):
            return key[: -len(quote)], quote
    return key, ""


class FakeKraken(VenueServer[RequestRecord]):
    """Kraken spot public REST on 127.0.0.1 with a controllable clock, the 720-candle reach, the
    public rate limit and faults."""

    def __init__(
        self,
        *,
        rate_limit: int | None = 1,
        rate_window_ms: int = 1000,
        live_current: bool = True,
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
        """Requests per `rate_window_ms` (sliding) before `EAPI:Rate limit exceeded`; None: unlimited."""
        self.rate_window_ms = rate_window_ms
        self.live_current = live_current
        """Serve the current candle as it stands mid-period (volume and trades so far, no move yet)
        rather than its final values."""

        self.faults: list[Fault] = []
        self.error_counts: dict[str, int] = {}
        # Arrival times (ms) of the requests the limit let through, oldest first.
        self._admitted = SlidingWindow()

        self._pairs: dict[str, _Pair] = {}
        self._series: dict[tuple[str, int], _Series] = {}
        self._routes: dict[str, Callable[[Mapping[str, str], int], _Result]] = {
            "/0/public/Time": self._time,
            "/0/public/AssetPairs": self._asset_pairs,
            "/0/public/Ticker": self._ticker,
            "/0/public/OHLC": self._ohlc,
        }

    def _add_routes(self, app: web.Application) -> None:
        for path in self._routes:
            app.router.add_get(path, self._serve)

    # -- market data ----------------------------------------------------------------------------

    def add_symbol(
        self,
        key: str,
        *,
        base: str | None = None,
        quote: str | None = None,
        altname: str | None = None,
        wsname: str | None = None,
        status: str = "online",
    ) -> None:
        """List a pair under its key (XXBTZUSD) in AssetPairs; base/quote are Kraken asset codes
        (XXBT, ZUSD), guessed from the key when left out; altname defaults to the key with legacy
        prefixes dropped, wsname to BASE/QUOTE."""
        guessed_base, guessed_quote = _guess_assets(key)
        base, quote = base or guessed_base, quote or guessed_quote
        alt_base, alt_quote = _asset_name(base), _asset_name(quote)
        self._pairs[key] = _Pair(
            altname=altname or f"{alt_base}{alt_quote}",
            wsname=wsname if wsname is not None else f"{alt_base}/{alt_quote}",
            base=base,
            quote=quote,
            status=status,
        )

    def remove_symbol(self, key: str) -> None:
        """Gone: AssetPairs no longer lists it and OHLC answers EQuery:Unknown asset pair."""
        self._pairs.pop(key, None)

    @property
    def symbols(self) -> list[str]:
        return list(self._pairs)

    def _pair_key(self, name: str) -> str | None:
        """The key of the pair Kraken knows as ``name`` (its key or altname)."""
        if name in self._pairs:
            return name
        return next((key for key, pair in self._pairs.items() if pair.altname == name), None)

    def set_klines(self, symbol: str, interval: int | str, rows: Iterable[Sequence[Any]]) -> None:
        """Replace the stored candles with exact 8-field Kraken rows (time in seconds, strings)."""
        minutes = interval_of(interval)
        self._ensure_symbol(symbol)
        checked = []
        for row in rows:
            _check_row(row)
            checked.append(list(row))
        series = _Series()
        series.merge(checked)
        self._series[(symbol, minutes)] = series

    def add_klines(self, symbol: str, interval: int | str, rows: Iterable[Sequence[Any]]) -> None:
        """Insert exact rows, replacing stored ones with the same time."""
        minutes = interval_of(interval)
        self._ensure_symbol(symbol)
        checked = []
        for row in rows:
            _check_row(row)
            checked.append(list(row))
        self._series.setdefault((symbol, minutes), _Series()).merge(checked)

    def get_klines(self, symbol: str, interval: int | str) -> list[Row]:
        """Every stored row (served, too old or still future), final values; for assertions."""
        series = self._series.get((symbol, interval_of(interval)))
        return [] if series is None else [list(row) for row in series.rows]

    def generate_klines(
        self,
        symbol: str,
        interval: int | str,
        start_ms: int,
        count: int,
        seed: int | None = None,
        start_price: float | None = None,
    ) -> list[Row]:
        """Store ``count`` deterministic, plausible candles from ``start_ms`` (aligned down to the
        interval since the epoch) and return them (final values)."""
        minutes = interval_of(interval)
        self._ensure_symbol(symbol)
        step_s = minutes * 60
        rng = random.Random(zlib.crc32(f"{symbol}:{minutes}".encode()) if seed is None else seed)
        price = start_price if start_price is not None else 10 ** rng.uniform(-1, 4)
        sigma = min(0.08, 0.001 * math.sqrt(minutes))
        t = start_ms // 1000 // step_s * step_s
        rows: list[Row] = []
        for _ in range(count):
            o = price
            c = o * math.exp(rng.gauss(0.0, sigma))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            vwap = (o + c + h + lo) / 4
            row: Row = [
                t, f"{o:.5f}", f"{h:.5f}", f"{lo:.5f}", f"{c:.5f}", f"{vwap:.5f}",
                f"{rng.uniform(0.5, 150.0):.8f}", rng.randint(1, 3000),
            ]  # fmt: skip
            rows.append(row)
            price = float(row[4])
            t += step_s
        self._series.setdefault((symbol, minutes), _Series()).merge(rows)
        return [list(row) for row in rows]

    def update_kline(self, symbol: str, interval: int | str, time_s: int, **fields: Any) -> Row:
        """Change a stored candle's final values (strings stay verbatim, numbers become 8 decimals)."""
        series = self._series.get((symbol, interval_of(interval)))
        i = -1 if series is None else bisect.bisect_left(series.times, time_s)
        if series is None or i >= len(series.times) or series.times[i] != time_s:
            raise KeyError(f"no {symbol} {interval} candle at {time_s}")
        row = list(series.rows[i])
        for name, value in fields.items():
            if name not in ROW_FIELDS or name == "time":
                raise KeyError(f"cannot update field {name!r}")
            idx = ROW_FIELDS.index(name)
            row[idx] = int(value) if idx == 7 else value if isinstance(value, str) else f"{value:.8f}"
        _check_row(row)
        series.rows[i], series.encoded[i] = row, _dumps(row)
        return row

    def served_rows(self, symbol: str, interval: int | str) -> list[Row]:
        """What OHLC would answer right now without `since` (the current row as served)."""
        minutes = interval_of(interval)
        return [json.loads(b) for b in self._window(symbol, minutes, None, self.now_ms())[0]]

    def _ensure_symbol(self, symbol: str) -> None:
        if symbol not in self._pairs:
            self.add_symbol(symbol)

    # -- faults and stats -----------------------------------------------------------------------

    def add_fault(
        self,
        kind: FaultKind,
        path: str | None = "/0/public/OHLC",
        count: int = 1,
        match: Mapping[str, Any] | None = None,
        *,
        every: int = 1,
        body: bytes | None = None,
    ) -> Fault:
        """Script ``count`` failures of ``kind`` on ``path`` (None: any route) for requests whose
        query has all of ``match``; they apply before the rate limit. `rate_limit`, `unavailable`
        and `busy` are Kraken's HTTP 200 envelopes; `raw` answers ``body`` verbatim (a recorded
        answer); the numbers are HTTP statuses.

        aiohttp clients re-send an idempotent request once after a disconnect: a "drop" the client
        should see needs ``count=2``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        match_text = None if match is None else {k: str(v) for k, v in match.items()}
        fault = Fault(kind=kind, path=path, remaining=count, match=match_text, every=every, body=body)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset_stats(self) -> None:
        self.requests.clear()
        self.status_counts.clear()
        self.error_counts.clear()
        self.request_count = 0
        self.max_in_flight = self.in_flight

    def _venue_stats(self) -> dict[str, Any]:
        return {"error_counts": dict(sorted(self.error_counts.items()))}

    # -- serving --------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> web.StreamResponse:
            now = self.now_ms()
            path, params = request.path, dict(request.query)
            fault = take_fault(self.faults, path, params)
            if fault is not None:
                return await self._fault_response(request, fault, path, params, now)
            if not self._admit(now):
                return self._respond(path, params, now, 200, _error_body(ERR_RATE_LIMIT))
            status, body = self._routes[path](params, now)
            return self._respond(path, params, now, status, body)

        return await self._counted(answer)

    def _admit(self, now: int) -> bool:
        """The public limit: at most `rate_limit` requests let through in any `rate_window_ms`."""
        if self.rate_limit is None:
            return True
        return self._admitted.admit(now, self.rate_limit, self.rate_window_ms)

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
        error = None
        if body.startswith(b'{"error":["'):
            error = json.loads(body)["error"][0]
            self.error_counts[error] = self.error_counts.get(error, 0) + 1
        self._record(path, params, now, status, error, fault)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def _record(
        self, path: str, params: dict[str, str], now: int, status: int, error: str | None, fault: str | None
    ) -> None:
        self._note(status, lambda: RequestRecord(now, path, params, status, error, fault))

    async def _fault_response(
        self, request: web.Request, fault: Fault, path: str, params: dict[str, str], now: int
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind in _ENVELOPE_FAULTS:
            return self._respond(path, params, now, 200, _error_body(_ENVELOPE_FAULTS[kind]), fault=kind)
        if kind in ("bad_json", "raw"):
            body = fault.body if kind == "raw" and fault.body is not None else _BAD_JSON_BODY
            return self._respond(path, params, now, 200, body, fault=kind)
        if kind in ("500", "502", "503", "504"):
            status = int(kind)
            body = _CLOUDFLARE_HTML % status
            return self._respond(path, params, now, status, body, content_type="text/html", fault=kind)
        # "drop" and "timeout": no HTTP response at all.
        self._record(path, params, now, 0, None, kind)
        return await self._no_answer(request, kind)

    # -- routes ---------------------------------------------------------------------------------

    def _time(self, params: Mapping[str, str], now: int) -> _Result:
        moment = datetime.fromtimestamp(now // 1000, UTC)
        return _ok({"unixtime": now // 1000, "rfc1123": moment.strftime("%a, %d %b %y %H:%M:%S +0000")})

    def _asked_pairs(self, params: Mapping[str, str]) -> list[str] | None:
        """The keys a `pair=A,B` parameter names (all listed pairs without one); None if one is unknown."""
        if "pair" not in params:
            return list(self._pairs)
        keys = [self._pair_key(name) for name in params["pair"].split(",")]
        return None if any(k is None for k in keys) else [k for k in keys if k is not None]

    def _asset_pairs(self, params: Mapping[str, str], now: int) -> _Result:
        keys = self._asked_pairs(params)
        if keys is None:
            return 200, _error_body(ERR_UNKNOWN_PAIR)
        result = {}
        for key in keys:
            pair = self._pairs[key]
            info: dict[str, Any] = {"altname": pair.altname}
            if pair.wsname:
                info["wsname"] = pair.wsname
            info |= {
                "aclass_base": "currency", "base": pair.base, "aclass_quote": "currency", "quote": pair.quote,
                "lot": "unit", "cost_decimals": 5, "pair_decimals": 5, "lot_decimals": 8, "lot_multiplier": 1,
                "leverage_buy": [], "leverage_sell": [], "fees": [[0, 0.26]], "fees_maker": [[0, 0.16]],
                "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40, "ordermin": "0.0001",
                "costmin": "0.5", "tick_size": "0.00001", "status": pair.status,
            }  # fmt: skip
            result[key] = info
        return _ok(result)

    def _ticker(self, params: Mapping[str, str], now: int) -> _Result:
        keys = self._asked_pairs(params)
        if keys is None:
            return 200, _error_body(ERR_UNKNOWN_PAIR)
        result = {}
        for key in keys:
            price = self._last_price(key, now)
            result[key] = {
                "a": [price, "1", "1.000"], "b": [price, "1", "1.000"], "c": [price, "0.00100000"],
                "v": ["1.00000000", "1.00000000"], "p": [price, price], "t": [1, 1],
                "l": [price, price], "h": [price, price], "o": price,
            }  # fmt: skip
        return _ok(result)

    def _last_price(self, key: str, now: int) -> str:
        """The close of the newest served candle of the pair's shortest stored interval."""
        stored = sorted(minutes for (symbol, minutes) in self._series if symbol == key)
        for minutes in stored:
            rows = self._window(key, minutes, None, now)[0]
            if rows:
                close: str = json.loads(rows[-1])[4]
                return close
        return "0.00000"

    def _ohlc(self, params: Mapping[str, str], now: int) -> _Result:
        name = params.get("pair")
        raw_interval = params.get("interval", "1")
        raw_since = params.get("since")
        if not name or not raw_interval.isdigit() or int(raw_interval) not in INTERVALS:
            return 200, _error_body(ERR_INVALID_ARGUMENTS)
        if raw_since is not None and not raw_since.isdigit():
            return 200, _error_body(ERR_INVALID_ARGUMENTS)
        key = self._pair_key(name)
        if key is None:
            return 200, _error_body(ERR_UNKNOWN_PAIR)
        minutes = int(raw_interval)
        rows, last = self._window(key, minutes, None if raw_since is None else int(raw_since), now)
        return 200, b'{"error":[],"result":{"' + key.encode() + b'":[' + b",".join(rows) + b'],"last":%d}}' % last

    def _window(self, key: str, minutes: int, since: int | None, now_ms: int) -> tuple[list[bytes], int]:
        """The encoded rows OHLC serves (the 720 slots up to the current one, time > since, the
        current row always) and `last` (the newest committed candle's time)."""
        step_s = minutes * 60
        current = now_ms // 1000 // step_s * step_s
        last = current - step_s
        series = self._series.get((key, minutes))
        if series is None:
            return [], last
        lo = bisect.bisect_left(series.times, current - (SERVED - 1) * step_s)
        hi = bisect.bisect_right(series.times, current)
        if since is not None:
            lo = max(lo, bisect.bisect_right(series.times, since))
        rows = series.encoded[lo:hi]
        if hi > 0 and series.times[hi - 1] == current:
            if lo >= hi:  # the current row is there whatever `since` says
                rows = series.encoded[hi - 1 : hi]
            if self.live_current:
                rows[-1] = _dumps(_in_progress(series.rows[hi - 1], (now_ms - current * 1000) / (step_s * 1000)))
        return rows, last


def _in_progress(row: Row, fraction: float) -> Row:
    """The current candle as it stands `fraction` into its period: no move yet (all prices the open),
    a share of the final volume and trades."""
    share = Decimal(fraction)
    volume = (Decimal(row[6]) * share).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
    o = row[1]
    return [row[0], o, o, o, o, o, f"{volume:f}", int(row[7] * fraction)]


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------

_BENCH_PAIRS: Final = (
    ("XXBTZUSD", "XXBT", "ZUSD"), ("XETHZUSD", "XETH", "ZUSD"), ("SOLUSD", "SOL", "ZUSD"),
    ("XXRPZUSD", "XXRP", "ZUSD"), ("ADAUSD", "ADA", "ZUSD"), ("XDGUSD", "XXDG", "ZUSD"),
    ("DOTUSD", "DOT", "ZUSD"), ("LINKUSD", "LINK", "ZUSD"), ("XLTCZUSD", "XLTC", "ZUSD"),
    ("XETHXXBT", "XETH", "XXBT"),
)  # fmt: skip


def bench_pairs(n: int) -> list[tuple[str, str, str]]:
    """(key, base, quote) of the pairs ``--symbols n`` lists: ten real ones, then ``A0010USD``…"""
    return [_BENCH_PAIRS[i] if i < len(_BENCH_PAIRS) else (f"A{i:04d}USD", f"A{i:04d}", "ZUSD") for i in range(n)]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("python -m tests.fakes.kraken", __doc__)
    parser.add_argument("--rate-limit", type=int, default=1, help="requests per --rate-window-ms")
    parser.add_argument("--rate-window-ms", type=int, default=1000)
    parser.add_argument("--no-rate-limit", action="store_true", help="never answer EAPI:Rate limit exceeded")
    parser.add_argument("--symbols", type=int, default=0, help="list this many pairs (see bench_pairs)")
    parser.add_argument("--timeframes", default="1m", help="comma-separated unified names or minutes")
    parser.add_argument("--candles", type=int, default=0, help="candles per pair/timeframe, ending now")
    parser.add_argument("--future-candles", type=int, default=0, help="extra candles served as time passes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no per-request records")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    fake = FakeKraken(
        rate_limit=None if args.no_rate_limit else args.rate_limit,
        rate_window_ms=args.rate_window_ms,
        latency_ms=args.latency_ms,
        host=args.host,
        port=args.port,
        record_requests=not args.no_record,
    )
    now_s = fake.now_ms() // 1000
    timeframes = [tf.strip() for tf in args.timeframes.split(",") if tf.strip()]
    for key, base, quote in bench_pairs(args.symbols):
        fake.add_symbol(key, base=base, quote=quote)
        for tf in timeframes:
            minutes = interval_of(int(tf) if tf.isdigit() else tf)
            total = args.candles + args.future_candles
            if total > 0:
                step_s = minutes * 60
                first = (now_s // step_s - (args.candles - 1)) * step_s
                fake.generate_klines(key, minutes, first * 1000, total, seed=args.seed)
    await serve_until_signalled(fake)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    asyncio.run(_run(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
