"""A fake of Bybit v5's public spot kline WebSocket: a real aiohttp server that tests own and script.

Why: the collector's live Bybit path must be exercised against the exact frames, operation replies, limits
and disconnections of ``wss://stream.bybit.com/v5/public/spot`` without touching the network. Use it
in-process (``async with FakeBybitStream() as fake: ...``); it serves nothing until a test pushes candles.
Its API has the shape of `FakeBinanceStream`'s wherever that applies.

One endpoint, `url` (``ws://127.0.0.1:PORT/v5/public/spot``), which the client connects to as is; a
connection starts with no topics. Only kline topics exist here: ``kline.<interval>.<SYMBOL>`` with one of
Bybit's intervals (1 3 5 15 30 60 120 240 360 720 D W M) and an uppercase symbol.

Operations, as JSON text ``{"req_id":"…","op":…,"args":[…]}`` (``req_id`` optional, echoed when given),
each answered ``{"success":…,"ret_msg":…,"conn_id":…,"req_id":…,"op":…}``:

- ``subscribe`` / ``unsubscribe``: at most `max_args` (10, spot's limit) args per request; more is refused
  (``"args size >10"``) and subscribes none. A request naming a topic already subscribed is refused
  (``"error:already subscribed,topic:…"``), as is one naming a topic that is not a kline topic
  (``"error:handler not found,topic:…"``) or a kline topic with an unknown interval or a bad symbol
  (``"Params Error"``); a refused request changes nothing. Unsubscribing a topic not subscribed succeeds.
- ``ping`` (the client's heartbeat; Bybit recommends one every 20 s) is answered with ``"ret_msg":"pong"``.

What it enforces per connection:

- a connection from which nothing (text, binary, ping or pong frame) arrives for `idle_timeout` seconds
  (default 30; None: never) is closed (1000 "idle timeout") and counts in `idle_timeouts`;
- optionally at most `max_messages_per_second` incoming messages in any one-second window (None, the
  default: unlimited, as Bybit documents no such limit for public streams): the message over the limit
  closes the connection (1008 "Too many requests") and counts as a violation.

The limits and the idle timeout run on the monotonic clock; `now_ms` (injectable, or frozen and moved with
`set_time`/`advance`) only stamps what the venue says: ``ts``, the kline's ``timestamp`` and `connected_ms`.

Scripting: `push` (a kline, from a REST row or Bybit's fields), `push_raw`, `drop_all` (a network cut),
`stall` (the server goes silent without closing). Records: `connections` (open) and `closed_connections`,
each with its topics (`streams`), counters and control messages; the counters `connections_opened`,
`subscribe_messages`, `messages_sent`, `violations`, `pings_received`, `idle_timeouts`; and, from the shared
base, every handshake in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.bybit import INTERVALS, interval_shift
from tests.fakes.stream_server import ENDS, StreamConnectionBase, StreamServer, decimal_string, mono_ms
from tests.fakes.venue_server import dumps

__all__ = [
    "BYBIT_KLINE_FIELDS", "MAX_ARGS", "SPOT_PATH", "BybitStreamConnection", "FakeBybitStream", "HandshakeRecord",
    "kline_payload", "parse_kline_topic",
]  # fmt: skip

SPOT_PATH: Final = "/v5/public/spot"
MAX_ARGS: Final = 10  # spot: args per subscribe request
IDLE_TIMEOUT_S: Final = 30.0
RATE_WINDOW_MS: Final = 1_000
CLOSE_TIMEOUT_S: Final = 2.0  # how long a closing server waits for the client's close frame

_KLINE_TOPIC_RE: Final = re.compile(r"kline\.([^.]+)\.([^.]*)")
_SYMBOL_RE: Final = re.compile(r"[A-Z0-9]{2,30}")
# A kline object's fields in Bybit's order.
BYBIT_KLINE_FIELDS: Final[tuple[str, ...]] = (
    "start", "end", "interval", "open", "close", "high", "low", "volume", "turnover", "confirm", "timestamp",
)  # fmt: skip
# Binance's 12-field REST row: [open_time, open, high, low, close, volume, close_time, quote_volume, trades,
# taker_base, taker_quote, ignore]; Bybit's 7-field REST row: [start, open, high, low, close, volume, turnover].
_BINANCE_ROW: Final = {"start": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5, "turnover": 7}
_BYBIT_ROW: Final = {"start": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5, "turnover": 6}
_DECIMAL_FIELDS: Final = frozenset({"open", "close", "high", "low", "volume", "turnover"})


# ---------------------------------------------------------------------------------------------
# Topics and payloads
# ---------------------------------------------------------------------------------------------


def parse_kline_topic(topic: str) -> tuple[str, str] | None:
    """(interval, SYMBOL) of a valid spot kline topic, else None."""
    m = _KLINE_TOPIC_RE.fullmatch(topic)
    if m is None or m.group(1) not in INTERVALS or _SYMBOL_RE.fullmatch(m.group(2)) is None:
        return None
    return m.group(1), m.group(2)


def kline_payload(
    topic: str, kline: Mapping[str, Any] | Sequence[Any], *, closed: bool = False, ts: int
) -> dict[str, Any]:
    """The push Bybit sends on ``topic``: ``{"topic","data":[kline],"ts","type":"snapshot"}``.

    ``kline`` is a REST row (Binance's 12 fields, or Bybit's 7: start, open, high, low, close, volume,
    turnover) or a mapping of Bybit's kline fields. What it lacks comes from the topic (``interval``), the
    interval's length (``end`` = the next candle's start - 1 ms; a calendar month for M), ``closed``
    (``confirm``) and ``ts`` (``timestamp``). Times become ints, prices and volumes decimal strings.
    """
    parsed = parse_kline_topic(topic)
    if parsed is None:
        raise ValueError(f"not a Bybit kline topic: {topic!r}")
    interval = parsed[0]
    if isinstance(kline, Mapping):
        given = dict(kline)
    else:
        if len(kline) not in (12, 7):
            raise ValueError(f"a REST kline row has 12 (Binance) or 7 (Bybit) fields, got {len(kline)}: {kline!r}")
        index = _BINANCE_ROW if len(kline) == 12 else _BYBIT_ROW
        given = {key: kline[i] for key, i in index.items()}
    if "start" not in given:
        raise ValueError(f"kline lacks 'start': {kline!r}")
    start = int(given["start"])
    given.setdefault("end", interval_shift(interval, start, 1) - 1)
    given.setdefault("interval", interval)
    given.setdefault("confirm", closed)
    given.setdefault("timestamp", ts)
    missing = [key for key in BYBIT_KLINE_FIELDS if key not in given]
    if missing:
        raise ValueError(f"kline lacks {missing}")
    k: dict[str, Any] = {}
    for key in BYBIT_KLINE_FIELDS:
        value = given.pop(key)
        if key in ("start", "end", "timestamp"):
            value = int(value)
        elif key in _DECIMAL_FIELDS:
            value = decimal_string(value)
        k[key] = value
    k.update(given)  # extra fields, after Bybit's own
    return {"topic": topic, "data": [k], "ts": ts, "type": "snapshot"}


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRecord:
    """One WebSocket handshake (always 101: other paths are aiohttp's 404 and not recorded)."""

    time_ms: int
    path: str  # with the query
    status: int


@dataclass(eq=False)
class BybitStreamConnection(StreamConnectionBase):
    """One client connection: its topics (`streams`, in subscription order), its traffic and, once closed, why.

    ``messages_received`` counts every frame (text, binary, ping, pong); ``messages_sent`` the text messages
    (pushes and replies). ``closed_reason``, once closed: "client" (closed or lost from its side),
    "rate_limit", "idle_timeout", "drop" (drop_all) or "stop".
    """

    conn_id: str  # what the replies carry as "conn_id"
    max_messages_per_second: int | None
    pings_received: int = 0  # JSON {"op":"ping"} requests
    _last_heard: float = field(default=0.0, repr=False)  # loop time of the last incoming frame


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeBybitStream(StreamServer[HandshakeRecord, BybitStreamConnection]):
    """Bybit v5's public spot kline stream on 127.0.0.1: subscriptions, heartbeat, idle timeout, pushes."""

    def __init__(
        self,
        *,
        now_ms: Callable[[], int] | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT_S,
        max_messages_per_second: int | None = None,
        max_args: int = MAX_ARGS,
        host: str = "127.0.0.1",
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        super().__init__(now_ms=now_ms, host=host, port=port, record_requests=record_requests)
        self.idle_timeout = idle_timeout  # read at each check: a test may change it on a live fake
        self.max_messages_per_second = max_messages_per_second  # a connection keeps the figure it opened with
        self.max_args = max_args
        self.pings_received = 0
        self.idle_timeouts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get(SPOT_PATH, self._accept)

    @property
    def url(self) -> str:
        """The spot endpoint, as ``wss://stream.bybit.com/v5/public/spot``: connect to it as is."""
        return f"ws://{self.host}:{self.port}{SPOT_PATH}"

    # -- what tests read ------------------------------------------------------------------------

    def _venue_stats(self) -> dict[str, Any]:
        return {**super()._venue_stats(), "pings_received": self.pings_received, "idle_timeouts": self.idle_timeouts}

    async def wait_subscribed(self, streams: str | Iterable[str], timeout: float = 5.0) -> None:
        """Until every one of ``streams`` (topics) is subscribed on some open connection."""
        await self._wait_subscribed(streams, timeout, lambda: self.subscriptions, "topics")

    # -- what tests do --------------------------------------------------------------------------

    async def push(self, topic: str, kline: Mapping[str, Any] | Sequence[Any], *, closed: bool = False) -> int:
        """Send a kline push (see `kline_payload`; ``ts`` and a missing ``timestamp`` are now_ms()) to every
        open connection subscribed to ``topic``. Returns how many it reached."""
        return await self.push_raw(topic, kline_payload(topic, kline, closed=closed, ts=self.now_ms()))

    async def push_raw(self, topic: str, payload: Mapping[str, Any] | str | bytes) -> int:
        """Send ``payload`` (a mapping, sent as compact JSON, or the text as is) to the subscribers of
        ``topic``. Returns how many it reached."""
        if isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload if isinstance(payload, bytes) else dumps(payload)
        return await self._send_to_subscribers(topic, data)

    def _resume(self) -> None:
        """A stall (`stall`) sends no pushes or replies (pongs included) and times no one out as idle; when it
        ends, the idle clocks reset."""
        now = asyncio.get_running_loop().time()
        for conn in self._open.values():
            conn._last_heard = now

    # -- connections ----------------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        self.request_count += 1
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=CLOSE_TIMEOUT_S)
        transport = request.transport
        await ws.prepare(request)
        now = self.now_ms()
        self._note(101, lambda: HandshakeRecord(now, request.path_qs, 101))
        conn_id = self._take_id()
        conn = BybitStreamConnection(
            id=conn_id, conn_id=f"fakeconn{conn_id:012d}-spot", path=request.path_qs, connected_ms=now,
            max_messages_per_second=self.max_messages_per_second, _last_heard=asyncio.get_running_loop().time(),
            _ws=ws, _transport=transport,
        )  # fmt: skip
        return await self._serve_connection(conn, ws, self._watch_idle)

    async def _serve(self, conn: BybitStreamConnection, ws: web.WebSocketResponse) -> None:
        """Read the client's messages until the connection ends."""
        loop = asyncio.get_running_loop()
        while conn.open:
            msg = await ws.receive()
            if msg.type in ENDS:
                return
            conn.messages_received += 1
            conn._last_heard = loop.time()
            limit = conn.max_messages_per_second
            if limit is not None and not conn._window.admit(mono_ms(), limit, RATE_WINDOW_MS):
                self.violations += 1
                self._end(conn, "rate_limit")
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"Too many requests")
                return
            if msg.type is WSMsgType.PING:
                if not self.stalled:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await self._send(conn, self._operation(conn, msg.data))
            elif msg.type is WSMsgType.BINARY:
                await self._send(conn, self._operation(conn, msg.data.decode("utf-8", "replace")))
            # a PONG frame only counts as activity

    async def _watch_idle(self, conn: BybitStreamConnection) -> None:
        """Close the connection once nothing has come from the client for `idle_timeout` seconds."""
        loop = asyncio.get_running_loop()
        while conn.open:
            timeout = self.idle_timeout
            if timeout is None or self.stalled:
                await asyncio.sleep(0.05)
                continue
            delay = conn._last_heard + timeout - loop.time()
            if delay > 0:
                await asyncio.sleep(min(delay, 1.0))  # look again: a message, a stall or a new timeout
                continue
            self.idle_timeouts += 1
            self._end(conn, "idle_timeout")
            if conn._ws is not None:
                await conn._ws.close(code=WSCloseCode.OK, message=b"idle timeout")
            return

    # -- operations -----------------------------------------------------------------------------

    def _operation(self, conn: BybitStreamConnection, text: str) -> bytes:
        """The reply to one operation."""
        try:
            request = json.loads(text)
        except json.JSONDecodeError:
            conn.control_messages.append(text)
            return self._reply(conn, False, "error:unmarshal request failed", None, "")
        conn.control_messages.append(request)
        if not isinstance(request, dict):
            return self._reply(conn, False, "error:unmarshal request failed", None, "")
        req_id = request.get("req_id")
        op = request.get("op")
        if op == "ping":
            conn.pings_received += 1
            self.pings_received += 1
            return self._reply(conn, True, "pong", req_id, "ping")
        if op not in ("subscribe", "unsubscribe"):
            return self._reply(conn, False, f"error:unsupported op,op:{op}", req_id, op if isinstance(op, str) else "")
        if op == "subscribe":
            self.subscribe_messages += 1
        args = request.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            return self._reply(conn, False, "Params Error", req_id, op)
        if op == "subscribe" and len(args) > self.max_args:
            return self._reply(conn, False, f"args size >{self.max_args}", req_id, op)
        for topic in args:
            if not topic.startswith("kline."):
                return self._reply(conn, False, f"error:handler not found,topic:{topic}", req_id, op)
            if parse_kline_topic(topic) is None:
                return self._reply(conn, False, "Params Error", req_id, op)
        if op == "subscribe":
            for topic in args:
                if topic in conn._streams:
                    return self._reply(conn, False, f"error:already subscribed,topic:{topic}", req_id, op)
            conn._streams.update(dict.fromkeys(args))
        else:
            for topic in args:
                conn._streams.pop(topic, None)
        return self._reply(conn, True, "", req_id, op)

    @staticmethod
    def _reply(conn: BybitStreamConnection, success: bool, ret_msg: str, req_id: Any, op: str) -> bytes:
        """``{"success","ret_msg","conn_id","req_id","op"}``; ``req_id`` only when the request had one."""
        reply: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id}
        if req_id is not None:
            reply["req_id"] = req_id
        reply["op"] = op
        return dumps(reply)
