"""OKX v5's candle channels (`candle1m`, …, the `…utc` ones from 6 hours up), which exist only on
`<ws_url>` = `wss://ws.okx.com:8443/ws/v5/business`. Subscribed with `{"op":"subscribe","args":
[{"channel":…,"instId":…}]}` (480 requests an hour per connection: many channels to a request, one
request a second), kept alive by the text `ping` (the venue drops a connection silent for 30 s).
A push row is `[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`, all strings; `confirm` "1"
marks the candle closed. A stream is named `candle1m:BTC-USDT` here (OKX has no single name).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec

from service.exchanges.grid import Grid
from service.exchanges.okx import BARS, VOL_IN_BASE
from service.exchanges.streams import StreamCandle, StreamMessage
from service.records import Kline

__all__ = ["OkxKlineStream"]

_TIMEFRAMES = {f"candle{bar}": tf for tf, bar in BARS.items()}


class _Arg(msgspec.Struct, frozen=True):
    channel: str
    instId: str  # noqa: N815 - the venue's field name


class _Push(msgspec.Struct, frozen=True):
    arg: _Arg | None = None
    data: list[list[str]] | None = None
    event: str | None = None  # subscribe, error, notice
    msg: str | None = None
    id: str | None = None


_decode_push = msgspec.json.Decoder(_Push)


class OkxKlineStream:
    """`KlineStream` of OKX (spot: `vol` is in the base currency, `volCcyQuote` in the quote)."""

    max_streams_per_connection = 400
    max_per_subscribe = 200
    control_messages_per_second = 1.0
    max_connection_seconds = 23 * 3600.0

    def __init__(self, ws_url: str, grid: Callable[[str], Grid], *, product: str) -> None:
        self._ws_url = ws_url
        self._grid = grid
        self._volume_in_base = product in VOL_IN_BASE

    def stream_name(self, symbol: str, timeframe: str) -> str:
        return f"candle{BARS[timeframe]}:{symbol}"

    def connect_url(self) -> str:
        return self._ws_url

    def _args(self, names: list[str]) -> list[dict[str, str]]:
        return [dict(zip(("channel", "instId"), name.split(":", 1), strict=True)) for name in names]

    def subscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"id": str(message_id), "op": "subscribe", "args": self._args(names)})

    def unsubscribe(self, names: list[str], message_id: int) -> str:
        return json.dumps({"id": str(message_id), "op": "unsubscribe", "args": self._args(names)})

    def keepalive(self) -> tuple[float, str] | None:
        return 20.0, "ping"

    def parse(self, data: bytes) -> StreamMessage:
        if data == b"pong":
            return StreamMessage([])
        push = _decode_push.decode(data)
        if push.event == "notice":
            return StreamMessage([], reconnect=True)  # a service upgrade closes this connection soon
        if push.event == "error":
            return StreamMessage([], refused=(push.id, push.msg or "error"))
        if push.arg is None or push.data is None:
            return StreamMessage([])
        timeframe = _TIMEFRAMES.get(push.arg.channel)
        if timeframe is None:
            return StreamMessage([])
        grid = self._grid(timeframe)
        candles = []
        for row in push.data:
            ts, o, h, low, c, vol, vol_ccy, vol_quote, confirm = row[:9]
            open_ms = int(ts)
            kline = Kline(open_ms, o, h, low, c, vol if self._volume_in_base else vol_ccy, grid.close_time(open_ms),
                          vol_quote)  # fmt: skip
            candles.append(StreamCandle(push.arg.instId, timeframe, kline, confirm == "1"))
        return StreamMessage(candles)
