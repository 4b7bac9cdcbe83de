"""Kline streams: what a venue's WebSocket pushes, behind one protocol (venue-specific parts only).

A `KlineStream` names the venue's streams, says where to connect and how to (un)subscribe within the
venue's limits, and turns each message into candles (`StreamCandle`: the candle and whether the
venue marks it closed) or a notice to reconnect. The connection, its pacing and what is done with
the candles belong to the live engine (service/collection/live.py).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from service.records import Kline

__all__ = ["KlineStream", "StreamCandle", "StreamMessage"]


class StreamCandle(msgspec.Struct, frozen=True):
    """One candle as a stream pushed it."""

    symbol: str
    """The venue's own id (BTCUSDT), as stored."""
    timeframe: str
    """The unified timeframe name."""
    kline: Kline
    closed: bool
    """The venue marks it final (Binance `k.x`): its values no longer change."""


class StreamMessage(msgspec.Struct, frozen=True):
    """What one message of the stream said."""

    candles: list[StreamCandle]
    reconnect: bool = False
    """The venue asks to reconnect now (Binance's `serverShutdown`)."""
    refused: tuple[str | None, str] | None = None
    """The venue refused a control message: (the id it was sent with, if the answer names it; why)."""


class KlineStream(Protocol):
    """One venue's kline stream protocol."""

    @property
    def max_streams_per_connection(self) -> int:
        """Streams one connection carries (fewer than the venue allows, so a drop hurts less)."""
        ...

    @property
    def control_messages_per_second(self) -> float:
        """The pace of our subscribe messages, well within the venue's incoming-message limit."""
        ...

    @property
    def max_connection_seconds(self) -> float:
        """The venue cuts a connection after this long (Binance 24 h): rotate before it."""
        ...

    def stream_name(self, symbol: str, timeframe: str) -> str:
        """The venue's spelling of a series' stream (`btcusdt@kline_1m`)."""
        ...

    def connect_url(self) -> str:
        """Where a connection opens (without streams: they are subscribed afterwards)."""
        ...

    def subscribe(self, names: list[str], message_id: int) -> str:
        """The control message (text) that subscribes `names` (at most `max_per_subscribe`)."""
        ...

    def unsubscribe(self, names: list[str], message_id: int) -> str:
        ...

    @property
    def max_per_subscribe(self) -> int:
        """Stream names one control message carries."""
        ...

    def keepalive(self) -> tuple[float, str] | None:
        """(seconds, text): a message the client sends that often to keep the connection (Bybit's
        `{"op":"ping"}`, OKX's `ping`); None where the venue pings and the client answers (Binance)."""
        ...

    def parse(self, data: bytes) -> StreamMessage:
        """One text message; StreamMessage([]) for replies and events that carry no candle."""
        ...
