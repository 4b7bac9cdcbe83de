"""A fake of Binance's kline WebSocket streams, spot and USD-M futures on one server: a real aiohttp
server that tests own and script.

Why: the collector's live path must be exercised against the exact frames, control replies, limits and
disconnections of Binance's market streams without touching the network. Use it in-process
(``async with FakeBinanceStream() as fake: ...``); it serves nothing until a test pushes candles.

Paths, as on ``stream.binance.com`` (spot, under `url`) and ``fstream.binance.com/market`` (USD-M,
under `usdm_url`, which is ``url + "/market"``):

- raw ``/ws/<streamName>`` (or bare ``/ws``, to SUBSCRIBE later): each event is the bare payload;
- combined ``/stream?streams=<s1>/<s2>/…`` (or no ``streams``): each event is wrapped
  ``{"stream":"<streamName>","data":<payload>}``; ``SET_PROPERTY ["combined", bool]`` switches.

Only kline streams exist here: ``<symbol>@kline_<interval>`` with a lowercase symbol and one of
Binance's intervals (USD-M has no ``1s``), optionally with the ``@+08:00`` suffix. Anything else in a
URL refuses the handshake (400); in a SUBSCRIBE it is answered ``{"code":2,"msg":"Invalid request:
invalid stream"}`` as Binance answers an unknown stream.

What it enforces per connection, as Binance does:

- at most `max_streams` (1024) streams: a SUBSCRIBE that would go beyond gets an error (code 2) and
  subscribes none of its streams; a URL naming more refuses the handshake;
- at most `max_messages_per_second` incoming messages (spot 5, USD-M 10) in any one-second window,
  counting text and binary messages, pings and pongs: the message over the limit closes the connection
  (1008 "Too many requests", as Binance closes it) and counts as a violation;
- a ping every `ping_interval` seconds; a ping not answered within `pong_timeout` by a pong echoing its
  payload (a pong answers its ping and the older ones; others are unsolicited and keep nothing alive)
  closes the connection. Mind that the client's pongs count against the message limit: keep
  `ping_interval` well above 1/limit s (0.2 s for spot) or raise the limit.
- control messages as ``{"method":…,"params":[…],"id":…}`` (id: an int64, an alphanumeric string of
  at most 36 characters, or null), answered ``{"result":…,"id":…}`` or
  ``{"error":{"code":…,"msg":…},"id":…}`` with Binance's documented codes and messages.

The limits and the keepalive run on the monotonic clock; `now_ms` (injectable, or frozen and moved
with `set_time`/`advance`) only stamps what the venue says: event times and `connected_ms`.

Scripting: `push` (a kline, from a REST row or the ``k`` fields), `push_raw`, `shutdown_notice`,
`drop_all` (a network cut), `stall` (the server goes silent, pings too, without closing). Records:
`connections` (open) and `closed_connections`, each with its streams, counters and control messages;
the counters `connections_opened`, `subscribe_messages`, `messages_sent`, `violations`, `pings_sent`,
`pong_timeouts`; and, from the shared base, every handshake in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.binance import INTERVALS, PRODUCTS, USDM_INTERVALS, Product
from tests.fakes.stream_server import ENDS, StreamConnectionBase, StreamServer, decimal_string, mono_ms
from tests.fakes.venue_server import dumps

USDM_PREFIX: Final = "/market"
MAX_STREAMS: Final = 1024
MAX_MESSAGES_PER_SECOND: Final[dict[Product, int]] = {"spot": 5, "usdm": 10}
RATE_WINDOW_MS: Final = 1_000
CLOSE_TIMEOUT_S: Final = 2.0  # how long a closing server waits for the client's close frame

_KLINE_STREAM_RE: Final = re.compile(r"([a-z0-9_.\-]{1,30})@kline_([0-9]{1,2}[smhdwM])(@\+08:00)?")
_ID_STRING_RE: Final = re.compile(r"[A-Za-z0-9]{1,36}")
_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_KEYS: Final = frozenset({"method", "params", "id"})
_INT64: Final = range(-(2**63), 2**63)
# The ``k`` object's fields in Binance's order; the REST row's 12 fields map to t o h l c v T q n V Q B.
K_FIELDS: Final[tuple[str, ...]] = ("t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B")
_ROW_FIELDS: Final[tuple[str, ...]] = ("t", "o", "h", "l", "c", "v", "T", "q", "n", "V", "Q", "B")
_INT_K: Final = frozenset({"t", "T", "f", "L", "n"})
_DECIMAL_K: Final = frozenset({"o", "c", "h", "l", "v", "q", "V", "Q", "B"})


# ---------------------------------------------------------------------------------------------
# Stream names and payloads
# ---------------------------------------------------------------------------------------------


def parse_kline_stream(stream: str, product: Product = "spot") -> tuple[str, str] | None:
    """(SYMBOL, interval) of a valid kline stream name for ``product``, else None."""
    m = _KLINE_STREAM_RE.fullmatch(stream)
    if m is None:
        return None
    symbol, interval = m.group(1), m.group(2)
    if interval not in (INTERVALS if product == "spot" else USDM_INTERVALS):
        return None
    return symbol.upper(), interval


def kline_payload(
    stream: str,
    kline: Mapping[str, Any] | Sequence[Any],
    *,
    closed: bool = False,
    event_time: int,
    first_trade_id: int | None = None,
    last_trade_id: int | None = None,
) -> dict[str, Any]:
    """The kline event Binance sends on ``stream``.

    ``kline`` is either the 12-field REST row ([open_time, open, high, low, close, volume, close_time,
    quote_volume, trades, taker_base, taker_quote, ignore]) or the ``k`` fields; what it lacks comes
    from the stream name (``s``, ``i``), ``closed`` (``x``) and the trade ids: ``f``/``L`` as given,
    else -1/-1 for a candle without trades (as Binance sends them) or ``L - f + 1 == n`` from an
    arbitrary first id. Prices and volumes become decimal strings.
    """
    parsed = parse_kline_stream(stream) or parse_kline_stream(stream, "usdm")
    if parsed is None:
        raise ValueError(f"not a kline stream name: {stream!r}")
    symbol, interval = parsed
    if isinstance(kline, Mapping):
        given = dict(kline)
    else:
        if len(kline) != len(_ROW_FIELDS):
            raise ValueError(f"a REST kline row has {len(_ROW_FIELDS)} fields, got {len(kline)}: {kline!r}")
        given = dict(zip(_ROW_FIELDS, kline, strict=True))
    given.setdefault("s", symbol)
    given.setdefault("i", interval)
    given.setdefault("x", closed)
    trades = int(given.get("n", 0))
    if "f" not in given:
        given["f"] = first_trade_id if first_trade_id is not None else (-1 if trades == 0 else int(given["t"]) // 1000)
    if "L" not in given:
        f = int(given["f"])
        given["L"] = last_trade_id if last_trade_id is not None else (-1 if trades == 0 or f < 0 else f + trades - 1)
    missing = [key for key in K_FIELDS if key not in given]
    if missing:
        raise ValueError(f"kline lacks {missing}")
    k: dict[str, Any] = {}
    for key in K_FIELDS:
        value = given.pop(key)
        k[key] = int(value) if key in _INT_K else decimal_string(value) if key in _DECIMAL_K else value
    k.update(given)  # extra fields, after Binance's own
    return {"e": "kline", "E": event_time, "s": k["s"], "k": k}


def _reply(result: Any, request_id: Any) -> bytes:
    return dumps({"result": result, "id": request_id})


def _error(code: int, msg: str, request_id: Any = None) -> bytes:
    return dumps({"error": {"code": code, "msg": msg}, "id": request_id})


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value in _INT64
    return isinstance(value, str) and _ID_STRING_RE.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRecord:
    """One WebSocket handshake: 101 when the connection opened, 400 when its URL was refused."""

    time_ms: int
    product: Product
    path: str  # with the query
    status: int


@dataclass(eq=False)
class StreamConnection(StreamConnectionBase):
    """One client connection: its streams (in subscription order), its traffic and, once closed, why.

    ``messages_received`` is what the limit counts (text, binary, ping, pong); ``messages_sent`` the text
    messages (events, replies, notices; pings not included). ``closed_reason``, once closed: "client" (closed
    or lost from its side), "rate_limit", "pong_timeout", "drop" (drop_all) or "stop".
    """

    product: Product
    combined: bool  # events wrapped {"stream","data"}: /stream, or SET_PROPERTY combined
    max_messages_per_second: int
    pings_sent: int = 0
    pongs_received: int = 0  # every pong, solicited or not
    _pending_pings: dict[bytes, float] = field(default_factory=dict, repr=False)  # payload -> loop time sent

    def _answer_pong(self, payload: bytes) -> None:
        """A pong echoing a pending ping answers it and every older one."""
        if payload not in self._pending_pings:
            return
        for sent in list(self._pending_pings):
            del self._pending_pings[sent]
            if sent == payload:
                return


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeBinanceStream(StreamServer[HandshakeRecord, StreamConnection]):
    """Binance's spot and USD-M kline streams on 127.0.0.1: subscriptions, limits, keepalive, pushes."""

    def __init__(
        self,
        *,
        now_ms: Callable[[], int] | None = None,
        max_messages_per_second: int = MAX_MESSAGES_PER_SECOND["spot"],
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        usdm_max_messages_per_second: int = MAX_MESSAGES_PER_SECOND["usdm"],
        max_streams: int = MAX_STREAMS,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        super().__init__(now_ms=now_ms, host=host, port=port, record_requests=record_requests)
        # Incoming messages allowed per second, per product; a connection keeps the figure it opened with.
        self.message_limits: dict[Product, int] = {
            "spot": max_messages_per_second, "usdm": usdm_max_messages_per_second,
        }  # fmt: skip
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_streams = max_streams
        self.pings_sent = 0
        self.pong_timeouts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        for product in PRODUCTS:
            prefix = USDM_PREFIX if product == "usdm" else ""
            app.router.add_get(f"{prefix}/ws", self._raw_handler(product))
            app.router.add_get(f"{prefix}/ws/{{stream}}", self._raw_handler(product))
            app.router.add_get(f"{prefix}/stream", self._combined_handler(product))

    @property
    def url(self) -> str:
        """Spot's base: the client adds ``/ws/<stream>`` or ``/stream?streams=…``."""
        return f"ws://{self.host}:{self.port}"

    @property
    def usdm_url(self) -> str:
        """USD-M's base, as ``wss://fstream.binance.com/market``."""
        return self.url + USDM_PREFIX

    # -- what tests read ------------------------------------------------------------------------

    def subscriptions_of(self, product: Product) -> set[str]:
        return {stream for conn in self._open.values() if conn.product == product for stream in conn._streams}

    def _venue_stats(self) -> dict[str, Any]:
        return {**super()._venue_stats(), "pings_sent": self.pings_sent, "pong_timeouts": self.pong_timeouts}

    async def wait_subscribed(
        self, streams: str | Iterable[str], timeout: float = 5.0, *, product: Product | None = None
    ) -> None:
        """Until every one of ``streams`` is subscribed on some open connection (of ``product``)."""

        def have() -> set[str]:
            return self.subscriptions if product is None else self.subscriptions_of(product)

        await self._wait_subscribed(streams, timeout, have)

    # -- what tests do --------------------------------------------------------------------------

    async def push(
        self,
        stream: str,
        kline: Mapping[str, Any] | Sequence[Any],
        *,
        closed: bool = False,
        product: Product | None = None,
        first_trade_id: int | None = None,
        last_trade_id: int | None = None,
    ) -> int:
        """Send a kline event (see `kline_payload`; ``E`` is now_ms()) to every open connection subscribed
        to ``stream`` (of ``product``; None: both). Returns how many it reached."""
        payload = kline_payload(
            stream, kline, closed=closed, event_time=self.now_ms(), first_trade_id=first_trade_id,
            last_trade_id=last_trade_id,
        )  # fmt: skip
        return await self.push_raw(stream, payload, product=product)

    async def push_raw(self, stream: str, payload: Mapping[str, Any], *, product: Product | None = None) -> int:
        """Send ``payload`` as an event of ``stream`` (wrapped on combined connections) to its subscribers."""
        data = dumps(payload)
        wrapped = b'{"stream":' + dumps(stream) + b',"data":' + data + b"}"
        return await self._broadcast(
            lambda conn: wrapped if conn.combined else data,
            lambda conn: conn.subscribed(stream) and (product is None or conn.product == product),
        )

    async def shutdown_notice(self) -> int:
        """Send ``serverShutdown`` (reconnect now) to every open connection; they stay open."""
        data = dumps({"e": "serverShutdown", "E": self.now_ms()})
        wrapped = b'{"stream":"!serverShutdown","data":' + data + b"}"
        return await self._broadcast(lambda conn: wrapped if conn.combined else data)

    def _resume(self) -> None:
        """A stall (`stall`) sends no events, replies, notices or pings and times no pong out; when it ends,
        the pings' clocks reset."""
        for conn in self._open.values():
            conn._pending_pings.clear()

    # -- connections ----------------------------------------------------------------------------

    def _raw_handler(self, product: Product) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            stream = request.match_info.get("stream")
            return await self._accept(request, product, combined=False, streams=[] if stream is None else [stream])

        return handler

    def _combined_handler(self, product: Product) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            # From the raw query: a "+" (as in "@+08:00") is a plus here, not a space.
            streams: list[str] = []
            for part in request.rel_url.raw_query_string.split("&"):
                key, _, value = part.partition("=")
                if key == "streams" and value:
                    streams = unquote(value).split("/")
            return await self._accept(request, product, combined=True, streams=streams)

        return handler

    def _refuse(self, request: web.Request, product: Product, msg: str) -> web.Response:
        self._note(400, lambda: HandshakeRecord(self.now_ms(), product, request.path_qs, 400))
        return web.Response(status=400, body=_error(2, msg), content_type="application/json")

    async def _accept(
        self, request: web.Request, product: Product, *, combined: bool, streams: list[str]
    ) -> web.StreamResponse:
        self.request_count += 1
        if any(parse_kline_stream(s, product) is None for s in streams):
            return self._refuse(request, product, "Invalid request: invalid stream")
        unique = dict.fromkeys(streams)
        if len(unique) > self.max_streams:
            return self._refuse(request, product, f"Invalid request: too many streams (at most {self.max_streams})")
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=CLOSE_TIMEOUT_S)
        transport = request.transport
        await ws.prepare(request)
        now = self.now_ms()
        self._note(101, lambda: HandshakeRecord(now, product, request.path_qs, 101))
        conn = StreamConnection(
            id=self._take_id(), product=product, path=request.path_qs, combined=combined, connected_ms=now,
            max_messages_per_second=self.message_limits[product], _streams=unique, _ws=ws,
            _transport=transport,
        )  # fmt: skip
        return await self._serve_connection(conn, ws, self._keepalive)

    async def _serve(self, conn: StreamConnection, ws: web.WebSocketResponse) -> None:
        """Read the client's messages until the connection ends."""
        while conn.open:
            msg = await ws.receive()
            if msg.type in ENDS:
                return
            conn.messages_received += 1
            if not conn._window.admit(mono_ms(), conn.max_messages_per_second, RATE_WINDOW_MS):
                self.violations += 1
                self._end(conn, "rate_limit")
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"Too many requests")
                return
            if msg.type is WSMsgType.PING:
                if not self.stalled:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                conn.pongs_received += 1
                conn._answer_pong(bytes(msg.data))
            elif msg.type is WSMsgType.TEXT:
                await self._send(conn, self._control(conn, msg.data))
            elif msg.type is WSMsgType.BINARY:
                await self._send(conn, self._control(conn, msg.data.decode("utf-8", "replace")))

    async def _keepalive(self, conn: StreamConnection) -> None:
        """Ping every `ping_interval`; close the connection when a ping waits over `pong_timeout`."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        seq = 0
        while conn.open:
            deadline = next_ping
            if conn._pending_pings and not self.stalled:
                deadline = min(deadline, next(iter(conn._pending_pings.values())) + self.pong_timeout)
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # things may have moved meanwhile (a pong, a stall): look again
            now = loop.time()
            overdue = conn._pending_pings and now >= next(iter(conn._pending_pings.values())) + self.pong_timeout
            if overdue and not self.stalled:
                self.pong_timeouts += 1
                self._end(conn, "pong_timeout")
                if conn._ws is not None:
                    await conn._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"Pong timeout")
                return
            if now >= next_ping:
                next_ping = now + self.ping_interval
                if not self.stalled and conn._ws is not None:
                    seq += 1
                    payload = str(seq).encode()
                    try:
                        await conn._ws.ping(payload)
                    except (ConnectionError, RuntimeError):
                        return
                    conn._pending_pings[payload] = now
                    conn.pings_sent += 1
                    self.pings_sent += 1

    # -- control messages -----------------------------------------------------------------------

    def _control(self, conn: StreamConnection, text: str) -> bytes:
        """The answer to one control message."""
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            conn.control_messages.append(text)
            return _error(3, f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}")
        conn.control_messages.append(request)
        if not isinstance(request, dict):
            return _error(2, "Invalid request: invalid type, expected struct Request at line 1 column 1")
        request_id = request.get("id")
        if "method" not in request:
            return _error(2, f"Invalid request: missing field `method` at line 1 column {len(text)}")
        method = request["method"]
        if method not in _METHODS:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            msg = f"Invalid request: unknown variant `{method}`, expected one of {expected} at line 1 column 28"
            return _error(2, msg)
        if method == "SUBSCRIBE":
            self.subscribe_messages += 1
        if "id" not in request or not _valid_id(request_id):
            return _error(2, "Invalid request: request ID must be an unsigned integer")
        if set(request) - _KEYS:
            return _error(2, "Invalid request: too many parameters", request_id)
        params = request.get("params", [])
        if not isinstance(params, list):
            return _error(2, "Invalid request: invalid type for `params`, expected a sequence", request_id)
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                return _error(2, "Invalid request: too many parameters", request_id)
            return _reply(conn.streams, request_id)
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            return self._property(conn, method, params, request_id)
        if not all(isinstance(s, str) and parse_kline_stream(s, conn.product) is not None for s in params):
            return _error(2, "Invalid request: invalid stream", request_id)
        if method == "SUBSCRIBE":
            if len(conn._streams.keys() | set(params)) > self.max_streams:
                return _error(
                    2, f"Invalid request: too many streams, at most {self.max_streams} per connection", request_id
                )
            conn._streams.update(dict.fromkeys(params))
        else:
            for stream in params:
                conn._streams.pop(stream, None)
        return _reply(None, request_id)

    def _property(self, conn: StreamConnection, method: str, params: list[Any], request_id: Any) -> bytes:
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string", request_id)
        if params[0] != "combined":
            return _error(0, "Unknown property", request_id)
        if method == "GET_PROPERTY":
            if len(params) != 1:
                return _error(2, "Invalid request: too many parameters", request_id)
            return _reply(conn.combined, request_id)
        if len(params) != 2:
            return _error(2, "Invalid request: too many parameters", request_id)
        if not isinstance(params[1], bool):
            return _error(1, "Invalid value type: expected Boolean", request_id)
        conn.combined = params[1]
        return _reply(None, request_id)
