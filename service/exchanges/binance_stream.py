"""Binance's kline streams, spot and USD-M (web-socket-streams.md; facts in the project's notes).

Combined streams on `<ws_url>/stream`, subscribed after connecting with SUBSCRIBE messages of at most
200 names (one SUBSCRIBE of 437 was seen to fail silently), at most one control message a second
(the venue closes a connection that sends more than 5 messages a second, pongs included; 10 on
USD-M), at most 400 streams a connection (1024 allowed: a drop then hurts fewer series). Each
event is `{"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": {...}}}`; `k.x` marks the candle
closed. A `serverShutdown` event asks to reconnect. A connection lives at most 24 h.
"""

from __future__ import annotations

import json

import msgspec

from service.exchanges.streams import StreamCandle, StreamMessage
from service.records import Kline

__all__ = ["BinanceKlineStream"]


class _K(msgspec.Struct, frozen=True):
    t: int
    T: int
    s: str
    i: str
    o: str
    c: str
    h: str
    l: str  # noqa: E741 - the venue's field name
    v: str
    n: int
    x: bool
    q: str
    V: str
    Q: str


class _Data(msgspec.Struct, frozen=True):
    e: str
    k: _K | None = None


class _Event(msgspec.Struct, frozen=True):
    stream: str | None = None
    data: _Data | None = None
    # A reply to a control message: {"result": null, "id": 1}, or {"error": {...}, "id": 1}.
    id: int | str | None = None
    error: dict[str, object] | None = None


_decode_event = msgspec.json.Decoder(_Event)


class BinanceKlineStream:
    """`KlineStream` of a Binance market (spot or USD-M): the same protocol on another host."""

    max_streams_per_connection = 400
    max_per_subscribe = 200
    control_messages_per_second = 1.0
    max_connection_seconds = 23 * 3600.0

    def __init__(self, ws_url: str) -> None:
        self._ws_url = ws_url.rstrip("/")

    def stream_name(self, symbol: str, timeframe: str) -> str:
        return f"{symbol.lower()}@kline_{timeframe}"

    def connect_url(self) -> str:
        return f"{self._ws_url}/stream"

    def subscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"method": "SUBSCRIBE", "params": names, "id": message_id})

    def unsubscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"method": "UNSUBSCRIBE", "params": names, "id": message_id})

    def keepalive(self) -> tuple[float, str] | None:
        return None  # the venue pings every 20 s; aiohttp answers with a pong

    def parse(self, data: bytes) -> StreamMessage:
        event = _decode_event.decode(data)
        if event.error is not None:
            return StreamMessage([], refused=(None if event.id is None else str(event.id), str(event.error)[:300]))
        if event.data is None:
            return StreamMessage([])
        if event.data.e == "serverShutdown":
            return StreamMessage([], reconnect=True)
        k = event.data.k
        if event.data.e != "kline" or k is None:
            return StreamMessage([])
        kline = Kline(k.t, k.o, k.h, k.l, k.c, k.v, k.T, k.q, k.n, k.V, k.Q)
        return StreamMessage([StreamCandle(k.s, k.i, kline, k.x)])
