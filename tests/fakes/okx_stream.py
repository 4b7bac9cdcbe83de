"""A fake of OKX v5's candle channels on the ``/ws/v5/business`` WebSocket: a real aiohttp server that tests
own and script.

Why: the collector's live OKX path must be exercised against the exact frames, control replies, limits and
disconnections of OKX's public WebSocket without touching the network. Use it in-process
(``async with FakeOkxStream() as fake: ...``); it serves nothing until a test pushes candles. Its API has
the shape of `tests.fakes.binance_stream.FakeBinanceStream` wherever OKX allows.

Endpoints, as on ``ws.okx.com:8443``: `url` is the full ``…/ws/v5/business`` endpoint (the client connects
to it as is); `public_url` is ``…/ws/v5/public``, where a candle subscription is refused with 64001 (the
candle channels migrated to ``/business``), as OKX refuses it.

OKX has no stream name: a subscription is an arg ``{"channel":"candle1m","instId":"BTC-USDT"}``. This fake
and its tests key one as the stream ``"candle1m:BTC-USDT"`` (`stream_name`, `parse_stream`).

Control messages (text; a binary message is read as UTF-8 text):

- ``{"op":"subscribe","args":[{"channel":…,"instId":…},…],"id":"…"}`` (``id`` optional: up to 32
  alphanumerics, echoed first in every answer) is answered once per arg, in order:
  ``{"event":"subscribe","arg":{"channel":…,"instId":…},"connId":"…"}``, or for an arg naming no candle
  channel of `CHANNELS` (or an instrument that does not exist) the error event
  ``{"event":"error","code":"60018","msg":"Wrong URL or channel:…,instId:… doesn't exist. …","connId":"…"}``;
  each arg takes effect on its own. ``unsubscribe`` likewise (``"event":"unsubscribe"``).
- the text ``ping`` is answered with the text ``pong``.
- anything else is an error event: 60012 "Invalid request: <text>" (not JSON, not an object, no ``op``, no
  list ``args``, a bad ``id``), 60013 "Invalid args" (an empty list, an arg not an object with string
  ``channel`` and ``instId``), 60019 "Invalid op: <op>".

What it enforces, as OKX does:

- at most `max_requests_per_hour` (480) subscribe, unsubscribe and login requests per connection in any
  hour: the request over the limit is answered 60014 "Requests too frequent." and ignored (a violation);
- at most `max_request_bytes` (64 KB) per message: a longer one closes the connection (1009 "Request
  message exceeds the maximum frame length"; a violation);
- the connection closes (4004 "No data received in 30s") after `idle_timeout` (30 s) seconds without a
  message from the client: any frame counts (a text ``ping``, a subscribe, a WebSocket ping);
- at most `max_connects_per_second` (3) handshakes per second (all clients are one IP here): the one over
  is refused with HTTP 429 before the upgrade (a violation; None: no limit).

Both limits and the idle timeout run on the monotonic clock; `now_ms` (injectable, or frozen and moved
with `set_time`/`advance`) only stamps what the venue says: `connected_ms` and the handshake records.

Scripting: `push` (a candle, from a Binance REST row or OKX's fields), `push_raw`, `notice` /
`shutdown_notice` (64008, a service upgrade: reconnect), `drop_all` (a network cut), `stall` (the server goes
silent without closing). Records: `connections` (open) and `closed_connections`, each with its streams,
counters and control messages; the counters `connections_opened`, `subscribe_messages`, `messages_sent`,
`violations`, `idle_timeouts`, `pings_received`, `connects_refused`; and, from the shared base, every
handshake in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import WSMsgType, web

from tests.fakes.stream_server import ENDS, StreamConnectionBase, StreamServer, decimal_string, mono_ms
from tests.fakes.venue_server import SlidingWindow, dumps

BUSINESS_PATH: Final = "/ws/v5/business"
PUBLIC_PATH: Final = "/ws/v5/public"
Endpoint = Literal["business", "public"]

#: Every candle channel: OKX's bars with the ``candle`` prefix. The plain 6H and longer are Hong Kong time
#: (UTC+8); the ``…utc`` ones are UTC.
CHANNELS: Final[frozenset[str]] = frozenset(
    "candle" + bar
    for bar in (
        "1s", "1m", "3m", "5m", "15m", "30m", "1H", "2H", "4H",
        "6H", "12H", "1D", "2D", "3D", "5D", "1W", "1M", "3M", "6M", "1Y",
        "6Hutc", "12Hutc", "1Dutc", "2Dutc", "3Dutc", "1Wutc", "1Mutc", "3Mutc",
    )
)  # fmt: skip
MAX_REQUESTS_PER_HOUR: Final = 480  # subscribe + unsubscribe + login, per connection
HOUR_MS: Final = 3_600_000
MAX_REQUEST_BYTES: Final = 64 * 1024
IDLE_TIMEOUT_S: Final = 30.0
MAX_CONNECTS_PER_SECOND: Final = 3
CLOSE_TIMEOUT_S: Final = 2.0  # how long a closing server waits for the client's close frame

CLOSE_IDLE: Final = 4004
CLOSE_IDLE_REASON: Final = b"No data received in 30s"
CLOSE_TOO_LONG: Final = 1009
CLOSE_TOO_LONG_REASON: Final = b"Request message exceeds the maximum frame length"
MIGRATED_MSG: Final = (
    "This channel has been migrated to the '/business' URL. Please subscribe using the new URL. More details can "
    "refer to: https://www.okx.com/help-center/changes-to-v5-api-websocket-subscription-parameter-and-url"
)
UPGRADE_MSG: Final = "The connection will soon be closed for a service upgrade. Please reconnect."

#: A candle's fields in OKX's order; all strings.
DATA_FIELDS: Final[tuple[str, ...]] = ("ts", "o", "h", "l", "c", "vol", "volCcy", "volCcyQuote", "confirm")
# A Binance REST row: open_time, open, high, low, close, volume, close_time, quote_volume, trades, taker_base,
# taker_quote, ignore. What OKX has of it: ts o h l c vol volCcy volCcyQuote (the quote volume twice).
_FROM_BINANCE_ROW: Final[tuple[int, ...]] = (0, 1, 2, 3, 4, 5, 7, 7)
_BINANCE_ROW_LEN: Final = 12

_INST_ID_RE: Final = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)+")
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,32}")
_OPS: Final = ("subscribe", "unsubscribe", "login")
_TOO_MANY_CONNECTS: Final = dumps({"msg": "Too Many Requests", "code": "50011"})


# ---------------------------------------------------------------------------------------------
# Streams and payloads
# ---------------------------------------------------------------------------------------------


def stream_name(channel: str, inst_id: str) -> str:
    """The fake's key of a subscription: ``"candle1m:BTC-USDT"``."""
    return f"{channel}:{inst_id}"


def parse_stream(stream: str) -> tuple[str, str]:
    """(channel, instId) of a stream name; ValueError when it is not one of a candle channel."""
    channel, sep, inst_id = stream.partition(":")
    if not sep or channel not in CHANNELS or not inst_id:
        raise ValueError(f"not a candle stream name (channel:instId): {stream!r}")
    return channel, inst_id


def candle_row(kline: Mapping[str, Any] | Sequence[Any], *, closed: bool = False) -> list[str]:
    """OKX's 9 strings [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm] of one candle.

    ``kline`` is a Binance REST row (12 fields: volume becomes ``vol``, the quote volume both ``volCcy`` and
    ``volCcyQuote``), OKX's fields as a list (9, or 8 without ``confirm``) or a mapping of `DATA_FIELDS`.
    ``confirm`` comes from ``closed`` ("1" closed, "0" open) unless ``kline`` has its own.
    """
    if isinstance(kline, Mapping):
        unknown = set(kline) - set(DATA_FIELDS)
        if unknown:
            raise ValueError(f"not OKX candle fields: {sorted(unknown)}")
        missing = [key for key in DATA_FIELDS[:-1] if key not in kline]
        if missing:
            raise ValueError(f"candle lacks {missing}")
        values = [kline[key] for key in DATA_FIELDS[:-1]]
        confirm = kline.get("confirm")
    elif len(kline) == _BINANCE_ROW_LEN:
        values = [kline[i] for i in _FROM_BINANCE_ROW]
        confirm = None
    elif len(kline) in (len(DATA_FIELDS), len(DATA_FIELDS) - 1):
        values = list(kline[: len(DATA_FIELDS) - 1])
        confirm = kline[len(DATA_FIELDS) - 1] if len(kline) == len(DATA_FIELDS) else None
    else:
        raise ValueError(f"a candle is a 12-field Binance row or OKX's 8 or 9 fields, got {len(kline)}: {kline!r}")
    if confirm is None:
        confirm = "1" if closed else "0"
    elif isinstance(confirm, bool):
        confirm = "1" if confirm else "0"
    return [decimal_string(v) for v in values] + [decimal_string(confirm)]


def candle_payload(stream: str, kline: Mapping[str, Any] | Sequence[Any], *, closed: bool = False) -> dict[str, Any]:
    """The push OKX sends on ``stream``: ``{"arg":{"channel","instId"},"data":[[9 strings]]}``."""
    channel, inst_id = parse_stream(stream)
    return {"arg": {"channel": channel, "instId": inst_id}, "data": [candle_row(kline, closed=closed)]}


def _event(request_id: str | None, body: dict[str, Any], conn_id: str) -> bytes:
    """An event as OKX orders it: ``id`` (when the request had one) first, ``connId`` last."""
    head: dict[str, Any] = {} if request_id is None else {"id": request_id}
    return dumps({**head, **body, "connId": conn_id})


def _error(code: str, msg: str, conn_id: str, request_id: str | None = None) -> bytes:
    return _event(request_id, {"event": "error", "code": code, "msg": msg}, conn_id)


def _conn_id(n: int) -> str:
    """An 8-hex-digit connId, as OKX's look, stable per connection number."""
    return format(zlib.crc32(f"okx-conn-{n}".encode()), "08x")


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRecord:
    """One WebSocket handshake: 101 when the connection opened, 429 when it was over the connection limit."""

    time_ms: int
    endpoint: Endpoint
    path: str  # with the query
    status: int


@dataclass(eq=False)
class StreamConnection(StreamConnectionBase):
    """One client connection: its streams (``channel:instId``, in subscription order), its traffic and, once
    closed, why.

    ``messages_received`` counts every frame (text, binary, ping, pong); ``messages_sent`` the text messages
    (pushes, events, pongs); ``control_messages`` every control message but the text "ping"; ``_window`` the
    subscribe/unsubscribe/login requests of the last hour. ``closed_reason``, once closed: "client" (closed or
    lost from its side), "idle" (4004), "too_long" (1009), "drop" (drop_all) or "stop".
    """

    conn_id: str  # OKX's connId, in every event it sends
    endpoint: Endpoint
    pings_received: int = 0  # the text "ping"
    requests_refused: int = 0  # subscribe/unsubscribe/login over the hourly limit
    _last_received: float = field(default=0.0, repr=False)  # loop time of the client's last frame


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeOkxStream(StreamServer[HandshakeRecord, StreamConnection]):
    """OKX v5's candle channels on 127.0.0.1: subscriptions, limits, idle timeout, pushes."""

    def __init__(
        self,
        *,
        now_ms: Callable[[], int] | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT_S,
        max_requests_per_hour: int = MAX_REQUESTS_PER_HOUR,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_connects_per_second: int | None = MAX_CONNECTS_PER_SECOND,
        instruments: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        super().__init__(now_ms=now_ms, host=host, port=port, record_requests=record_requests)
        self.idle_timeout = idle_timeout  # seconds without a client frame before 4004; None: never
        self.max_requests_per_hour = max_requests_per_hour
        self.max_request_bytes = max_request_bytes
        self.max_connects_per_second = max_connects_per_second
        # The instIds that exist (60018 for others); None: any of OKX's form (BTC-USDT, BTC-USDT-SWAP, …).
        self.instruments: set[str] | None = None if instruments is None else set(instruments)
        # subscribe_messages counts every message with "op":"subscribe", answered or not; violations, the
        # requests over the hourly limit, the too-long messages and the handshakes over the limit.
        self.idle_timeouts = 0
        self.pings_received = 0
        self.connects_refused = 0
        self._connects = SlidingWindow()

    # -- lifecycle ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        async def business(request: web.Request) -> web.StreamResponse:
            return await self._accept(request, "business")

        async def public(request: web.Request) -> web.StreamResponse:
            return await self._accept(request, "public")

        app.router.add_get(BUSINESS_PATH, business)
        app.router.add_get(PUBLIC_PATH, public)

    @property
    def url(self) -> str:
        """The full ``/ws/v5/business`` endpoint, where the candle channels are."""
        return f"ws://{self.host}:{self.port}{BUSINESS_PATH}"

    @property
    def public_url(self) -> str:
        """The full ``/ws/v5/public`` endpoint: it refuses candle channels (64001)."""
        return f"ws://{self.host}:{self.port}{PUBLIC_PATH}"

    # -- what tests read ------------------------------------------------------------------------

    def _venue_stats(self) -> dict[str, Any]:
        return {
            **super()._venue_stats(),
            "idle_timeouts": self.idle_timeouts,
            "pings_received": self.pings_received,
            "connects_refused": self.connects_refused,
        }

    # -- what tests do --------------------------------------------------------------------------

    async def push(self, stream: str, kline: Mapping[str, Any] | Sequence[Any], *, closed: bool = False) -> int:
        """Send one candle (see `candle_row`) on ``stream`` (``channel:instId``) to every open connection
        subscribed to it. Returns how many it reached."""
        return await self.push_raw(stream, candle_payload(stream, kline, closed=closed))

    async def push_raw(self, stream: str, payload: Mapping[str, Any] | str | bytes) -> int:
        """Send ``payload`` (JSON-encoded; a str or bytes as is) to the subscribers of ``stream``."""
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = dumps(payload)
        return await self._send_to_subscribers(stream, data)

    async def notice(self, code: str = "64008", msg: str = UPGRADE_MSG) -> int:
        """Send ``{"event":"notice","code":…,"msg":…,"connId":…}`` to every open connection; they stay open
        (OKX closes them about 60 s later: script that with `drop_all`). Returns how many it reached."""
        body = {"event": "notice", "code": code, "msg": msg}
        return await self._broadcast(lambda conn: _event(None, body, conn.conn_id))

    async def shutdown_notice(self) -> int:
        """The service-upgrade notice (64008), as `FakeBinanceStream.shutdown_notice` sends Binance's."""
        return await self.notice()

    def _resume(self) -> None:
        """A stall (`stall`) sends no pushes, replies, pongs or notices and times no one out as idle; when it
        ends, the idle clocks restart."""
        now = asyncio.get_running_loop().time()
        for conn in self._open.values():
            conn._last_received = now

    # -- connections ----------------------------------------------------------------------------

    async def _accept(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        self.request_count += 1
        limit = self.max_connects_per_second
        if limit is not None and not self._connects.admit(mono_ms(), limit, 1_000):
            self.violations += 1
            self.connects_refused += 1
            self._note(429, lambda: HandshakeRecord(self.now_ms(), endpoint, request.path_qs, 429))
            return web.Response(status=429, body=_TOO_MANY_CONNECTS, content_type="application/json")
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=CLOSE_TIMEOUT_S, max_msg_size=0)
        transport = request.transport
        await ws.prepare(request)
        now = self.now_ms()
        self._note(101, lambda: HandshakeRecord(now, endpoint, request.path_qs, 101))
        n = self._take_id()
        conn = StreamConnection(
            id=n, conn_id=_conn_id(n), endpoint=endpoint, path=request.path_qs, connected_ms=now,
            _last_received=asyncio.get_running_loop().time(), _ws=ws, _transport=transport,
        )  # fmt: skip
        return await self._serve_connection(conn, ws, self._idle_watchdog)

    async def _serve(self, conn: StreamConnection, ws: web.WebSocketResponse) -> None:
        """Read the client's messages until the connection ends."""
        loop = asyncio.get_running_loop()
        while conn.open:
            msg = await ws.receive()
            if msg.type in ENDS:
                return
            conn.messages_received += 1
            conn._last_received = loop.time()
            if msg.type is WSMsgType.PING:
                if not self.stalled:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                continue
            if msg.type is WSMsgType.PONG:
                continue
            text = msg.data if msg.type is WSMsgType.TEXT else bytes(msg.data).decode("utf-8", "replace")
            if len(text.encode()) > self.max_request_bytes:
                self.violations += 1
                self._end(conn, "too_long")
                await ws.close(code=CLOSE_TOO_LONG, message=CLOSE_TOO_LONG_REASON)
                return
            if text == "ping":
                conn.pings_received += 1
                self.pings_received += 1
                await self._send(conn, b"pong")
                continue
            for answer in self._control(conn, text):
                await self._send(conn, answer)

    async def _idle_watchdog(self, conn: StreamConnection) -> None:
        """Close ``conn`` (4004) once the client has sent nothing for `idle_timeout` seconds, unless stalled."""
        loop = asyncio.get_running_loop()
        while conn.open:
            timeout = self.idle_timeout
            if timeout is None or self.stalled:
                await asyncio.sleep(0.05 if timeout is None else min(timeout, 0.05))
                continue
            delay = conn._last_received + timeout - loop.time()
            if delay > 0:
                await asyncio.sleep(min(delay, 1.0))  # the timeout may change meanwhile: look again
                continue
            self.idle_timeouts += 1
            self._end(conn, "idle")
            if conn._ws is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn._ws.close(code=CLOSE_IDLE, message=CLOSE_IDLE_REASON)
            return

    # -- control messages -----------------------------------------------------------------------

    def _control(self, conn: StreamConnection, text: str) -> list[bytes]:
        """The answers to one control message (one per arg of a subscribe or unsubscribe)."""
        cid = conn.conn_id
        try:
            request = json.loads(text)
        except json.JSONDecodeError:
            conn.control_messages.append(text)
            return [_error("60012", f"Invalid request: {text}", cid)]
        conn.control_messages.append(request)
        if not isinstance(request, dict) or "op" not in request:
            return [_error("60012", f"Invalid request: {text}", cid)]
        op = request["op"]
        if op == "subscribe":
            self.subscribe_messages += 1
        request_id = request.get("id")
        if request_id is not None and not (isinstance(request_id, str) and _REQUEST_ID_RE.fullmatch(request_id)):
            return [_error("60012", f"Invalid request: {text}", cid)]
        if op not in _OPS:
            return [_error("60019", f"Invalid op: {op}", cid, request_id)]
        if not conn._window.admit(mono_ms(), self.max_requests_per_hour, HOUR_MS):
            self.violations += 1
            conn.requests_refused += 1
            return [_error("60014", "Requests too frequent.", cid, request_id)]
        if op == "login":
            return [_error("60009", "Login failure", cid, request_id)]
        args = request.get("args")
        if not isinstance(args, list):
            return [_error("60012", f"Invalid request: {text}", cid, request_id)]
        if not args:
            return [_error("60013", "Invalid args", cid, request_id)]
        return [self._one_arg(conn, op, arg, request_id) for arg in args]

    def _one_arg(self, conn: StreamConnection, op: str, arg: Any, request_id: str | None) -> bytes:
        cid = conn.conn_id
        if not (isinstance(arg, dict) and isinstance(arg.get("channel"), str) and isinstance(arg.get("instId"), str)):
            return _error("60013", "Invalid args", cid, request_id)
        channel: str = arg["channel"]
        inst_id: str = arg["instId"]
        if channel in CHANNELS and conn.endpoint == "public":
            return _error("64001", MIGRATED_MSG, cid, request_id)
        exists = inst_id in self.instruments if self.instruments is not None else _INST_ID_RE.fullmatch(inst_id)
        if channel not in CHANNELS or not exists:
            msg = (
                f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. Please use the correct URL, "
                "channel and parameters referring to API document."
            )
            return _error("60018", msg, cid, request_id)
        stream = stream_name(channel, inst_id)
        if op == "subscribe":
            conn._streams[stream] = None
        else:
            conn._streams.pop(stream, None)
        return _event(request_id, {"event": op, "arg": {"channel": channel, "instId": inst_id}}, cid)
