"""What the fakes of the venues' kline WebSockets share (Binance, Bybit, OKX).

`StreamServer` is a `VenueServer` that keeps WebSocket connections: their bookkeeping (ids, the open ones,
the closed ones and why, a watcher task per connection), the counters every venue has, the waits tests use,
and the scripted faults that act the same everywhere (`drop_all`, `stall`, `stop`). `StreamConnectionBase`
is the record of one connection. Each fake keeps its venue's protocol in its own module: routes and
handshakes, control messages and their replies, limits, keepalive or idle rules, payload shapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.venue_server import SlidingWindow, VenueServer

__all__ = ["ENDS", "StreamConnectionBase", "StreamServer", "decimal_string", "mono_ms"]

#: The message types that end a connection's read loop.
ENDS: Final = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})

R = TypeVar("R")


def mono_ms() -> int:
    """The monotonic clock, in ms: what the limits and the idle rules run on."""
    return time.monotonic_ns() // 1_000_000


def decimal_string(value: Any) -> str:
    """A price or volume as the venues write it: a decimal string, never a float's exponent."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"expected a decimal string or number, got {value!r}")
    return format(Decimal(repr(value)) if isinstance(value, float) else Decimal(value), "f")


@dataclass(eq=False, kw_only=True)
class StreamConnectionBase:
    """One client connection: its streams (in subscription order), its traffic and, once closed, why. A venue
    adds its own fields and counters."""

    id: int
    path: str  # the handshake's path and query
    connected_ms: int  # the venue clock (now_ms) at the handshake
    messages_received: int = 0  # every frame the venue counts (see the venue's module)
    messages_sent: int = 0  # text messages
    # Every control message as parsed (the raw text when it was not JSON), in arrival order.
    control_messages: list[Any] = field(default_factory=list)
    # None while open; then "client" (closed or lost from its side), "drop" (drop_all), "stop" or a venue's own.
    closed_reason: str | None = None
    _streams: dict[str, None] = field(default_factory=dict, repr=False)
    _window: SlidingWindow = field(default_factory=SlidingWindow, repr=False)  # the venue's rate limit
    _ws: web.WebSocketResponse | None = field(default=None, repr=False)
    _transport: asyncio.BaseTransport | None = field(default=None, repr=False)

    @property
    def streams(self) -> list[str]:
        """The subscribed stream names, in the order they were first subscribed."""
        return list(self._streams)

    def subscribed(self, stream: str) -> bool:
        return stream in self._streams

    @property
    def open(self) -> bool:
        return self.closed_reason is None


C = TypeVar("C", bound=StreamConnectionBase)


class StreamServer(VenueServer[R], Generic[R, C]):
    """The server part of a fake kline WebSocket; `R` is its handshake record, `C` its connection record. A
    subclass accepts a connection in its own handler and hands it to `_serve_connection`, reads it in `_serve`
    and adds its own counters to `_venue_stats`."""

    def __init__(self, *, now_ms: Callable[[], int] | None, host: str, port: int, record_requests: bool) -> None:
        super().__init__(
            latency_ms=0.0, fault_timeout_s=0.0, now_ms=now_ms, host=host, port=port, record_requests=record_requests
        )
        self.stalled = False
        self.connections_opened = 0
        self.subscribe_messages = 0
        self.messages_sent = 0
        self.violations = 0
        self.closed_connections: list[C] = []
        self._open: dict[int, C] = {}
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """Close every connection (1001 going away), then the server."""
        conns = list(self._open.values())
        for conn in conns:
            self._end(conn, "stop")
        await asyncio.gather(
            *(conn._ws.close(code=WSCloseCode.GOING_AWAY) for conn in conns if conn._ws is not None),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().stop()

    # -- what tests read ------------------------------------------------------------------------

    @property
    def connections(self) -> list[C]:
        """The open connections, oldest first."""
        return list(self._open.values())

    @property
    def subscriptions(self) -> set[str]:
        """Every stream name subscribed on some open connection."""
        return {stream for conn in self._open.values() for stream in conn._streams}

    def _venue_stats(self) -> dict[str, Any]:
        """The counters every venue has; a venue adds its own after them."""
        return {
            "connections": len(self._open),
            "connections_opened": self.connections_opened,
            "subscriptions": len(self.subscriptions),
            "subscribe_messages": self.subscribe_messages,
            "messages_sent": self.messages_sent,
            "violations": self.violations,
        }

    async def wait_subscribed(self, streams: str | Iterable[str], timeout: float = 5.0) -> None:
        """Until every one of ``streams`` is subscribed on some open connection."""
        await self._wait_subscribed(streams, timeout, lambda: self.subscriptions)

    async def _wait_subscribed(
        self, streams: str | Iterable[str], timeout: float, have: Callable[[], set[str]], noun: str = "streams"
    ) -> None:
        """Until every one of ``streams`` is in ``have()``; the timeout names the missing ``noun``."""
        wanted = {streams} if isinstance(streams, str) else set(streams)

        def missing() -> set[str]:
            return wanted - have()

        await self._wait(lambda: not missing(), timeout, lambda: f"{noun} never subscribed: {sorted(missing())}")

    async def wait_connections(self, count: int = 1, timeout: float = 5.0) -> list[C]:
        """Until at least ``count`` connections are open; returns them."""
        await self._wait(
            lambda: len(self._open) >= count, timeout, lambda: f"{len(self._open)} connections open, not {count}"
        )
        return self.connections

    async def _wait(self, done: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise TimeoutError(why()) from None

    # -- what tests do --------------------------------------------------------------------------

    async def _broadcast(self, data: Callable[[C], bytes], to: Callable[[C], bool] | None = None) -> int:
        """Send every open connection (that ``to`` accepts, when given) its ``data``. Returns how many it
        reached."""
        sent = 0
        for conn in list(self._open.values()):
            if to is None or to(conn):
                sent += await self._send(conn, data(conn))
        return sent

    async def _send_to_subscribers(self, stream: str, data: bytes) -> int:
        """Send ``data`` to every open connection subscribed to ``stream``. Returns how many it reached."""
        return await self._broadcast(lambda conn: data, lambda conn: conn.subscribed(stream))

    async def drop_all(self) -> int:
        """Cut every open connection as the network would: the TCP connection is reset, no close frame.
        Returns how many."""
        conns = list(self._open.values())
        for conn in conns:
            self._end(conn, "drop")
            transport = conn._transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            elif transport is not None:
                transport.close()
        await asyncio.sleep(0)
        return len(conns)

    def stall(self, stalled: bool = True) -> None:
        """Go silent (True): nothing is sent (see the venue's `_resume` for what else stops), but nothing
        closes and control messages still take effect. False resumes."""
        self.stalled = stalled
        if not stalled:
            self._resume()

    def _resume(self) -> None:
        """What a venue resets when a stall ends."""

    # -- connections ----------------------------------------------------------------------------

    def _take_id(self) -> int:
        """The next connection's id."""
        conn_id = self._next_id
        self._next_id += 1
        return conn_id

    async def _serve_connection(
        self, conn: C, ws: web.WebSocketResponse, watcher: Callable[[C], Coroutine[Any, Any, None]]
    ) -> web.WebSocketResponse:
        """Count ``conn`` open, watch it with ``watcher`` (a task, cancelled when it ends or at `stop`) and
        `_serve` it until it ends ("client", unless something ended it first)."""
        self._open[conn.id] = conn
        self.connections_opened += 1
        watch = asyncio.create_task(watcher(conn))
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)
        try:
            await self._serve(conn, ws)
        finally:
            watch.cancel()
            self._end(conn, "client")
        return ws

    async def _serve(self, conn: C, ws: web.WebSocketResponse) -> None:
        """Read the client's messages until the connection ends."""
        raise NotImplementedError

    def _end(self, conn: C, reason: str) -> None:
        """Mark ``conn`` closed (the first reason stays) and forget it as open."""
        if conn.closed_reason is None:
            conn.closed_reason = reason
            self._open.pop(conn.id, None)
            self.closed_connections.append(conn)

    async def _send(self, conn: C, data: bytes) -> bool:
        """One text message to ``conn``, unless stalled or gone."""
        if self.stalled or not conn.open or conn._ws is None:
            return False
        try:
            await conn._ws.send_frame(data, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            return False
        conn.messages_sent += 1
        self.messages_sent += 1
        return True
