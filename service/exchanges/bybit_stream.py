"""Bybit v5's public kline stream (spot): `kline.{interval}.{symbol}` topics on `<ws_url>`
(`wss://stream.bybit.com/v5/public/spot`), subscribed with `{"op":"subscribe","args":[...]}` of at
most 10 topics (spot's limit), kept alive by our `{"op":"ping"}` every 20 s. A push carries the
candle as it stands and `confirm: true` once it is closed. Facts: the project's notes on exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec

from service.exchanges.bybit import INTERVALS
from service.exchanges.grid import Grid
from service.exchanges.streams import StreamCandle, StreamMessage
from service.records import Kline

__all__ = ["BybitKlineStream"]

_TIMEFRAMES = {code: tf for tf, code in INTERVALS.items()}


class _Candle(msgspec.Struct, frozen=True):
    start: int
    interval: str
    open: str
    close: str
    high: str
    low: str
    volume: str
    turnover: str
    confirm: bool


class _Push(msgspec.Struct, frozen=True):
    topic: str | None = None
    data: list[_Candle] | None = None
    op: str | None = None  # a reply: subscribe, ping
    success: bool | None = None
    ret_msg: str | None = None
    req_id: str | None = None


_decode_push = msgspec.json.Decoder(_Push)


class BybitKlineStream:
    """`KlineStream` of Bybit spot."""

    max_streams_per_connection = 400
    max_per_subscribe = 10
    control_messages_per_second = 5.0
    max_connection_seconds = 23 * 3600.0

    def __init__(self, ws_url: str, grid: Callable[[str], Grid]) -> None:
        self._ws_url = ws_url
        self._grid = grid

    def stream_name(self, symbol: str, timeframe: str) -> str:
        return f"kline.{INTERVALS[timeframe]}.{symbol}"

    def connect_url(self) -> str:
        return self._ws_url

    def subscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"req_id": str(message_id), "op": "subscribe", "args": names})

    def unsubscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"req_id": str(message_id), "op": "unsubscribe", "args": names})

    def keepalive(self) -> tuple[float, str] | None:
        return 20.0, '{"op":"ping"}'

    def parse(self, data: bytes) -> StreamMessage:
        push = _decode_push.decode(data)
        if push.op == "subscribe" and push.success is False:
            return StreamMessage([], refused=(push.req_id, push.ret_msg or "refused"))
        if push.topic is None or push.data is None or not push.topic.startswith("kline."):
            return StreamMessage([])
        _, code, symbol = push.topic.split(".", 2)
        timeframe = _TIMEFRAMES.get(code)
        if timeframe is None:
            return StreamMessage([])
        grid = self._grid(timeframe)
        return StreamMessage([
            StreamCandle(
                symbol, timeframe,
                Kline(c.start, c.open, c.high, c.low, c.close, c.volume, grid.close_time(c.start), c.turnover),
                c.confirm,
            )
            for c in push.data
        ])  # fmt: skip
