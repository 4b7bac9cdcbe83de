"""GET /api/v1/live: the stream connections of live configs, and how fresh each streamed series is.

Any process answers for every venue: the process streaming a venue publishes its state about once
a second (service/db/live.py); a state older than a few seconds is left out (its process is gone).
"""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Controller, get

from service.api.deps import RuntimeDep
from service.api.enums import ExchangeChoice
from service.api.openapi import error_responses
from service.api.schemas import Schema
from service.auth.guards import requires_reader
from service.db import live as live_db
from service.db.pool import connection
from service.exchanges.grid import TimeframeName

__all__ = ["LiveController"]

#: A venue's published state older than this belongs to a process that stopped streaming it.
STATE_MAX_AGE_SECONDS = 10.0


class LiveSeries(Schema):
    symbol: str
    timeframe: TimeframeName
    stream: str
    """The stream's name as the venue spells it (`btcusdt@kline_1m`)."""
    fresh: bool
    """Every candle up to the stream's is stored: true once the series was healed over REST after
    the connection's last (re)connect."""
    last_closed_open_time: datetime | None
    """Open time of the newest candle the stream closed (null: none yet)."""
    lag_seconds: float | None
    """Seconds from that candle's close to now: how long ago the series' newest final candle ended."""


class LiveConnection(Schema):
    exchange: ExchangeChoice
    connected: bool
    connected_since: datetime | None
    streams: list[str]
    stream_count: int
    messages: int
    """Messages received since the process started this connection's streams."""
    messages_per_second: float
    """Over the last second."""
    last_message_at: datetime | None
    reconnects: int
    series: list[LiveSeries]


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _at_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


class LiveController(Controller):
    path = "/api/v1/live"
    tags = ["klines"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="listLiveConnections", summary="Stream connections of live configs, and each series' freshness",
        responses=error_responses(401),
    )
    async def live(self, runtime: RuntimeDep) -> list[LiveConnection]:
        async with connection(runtime.pool) as conn:
            states = await live_db.live_states(conn, max_age_seconds=STATE_MAX_AGE_SECONDS)
        return [
            LiveConnection(
                exchange=ExchangeChoice(c.exchange), connected=c.connected_since is not None,
                connected_since=_at(c.connected_since), streams=c.streams, stream_count=len(c.streams),
                messages=c.messages, messages_per_second=c.messages_per_second, last_message_at=_at(c.last_message_at),
                reconnects=c.reconnects,
                series=[
                    LiveSeries(
                        symbol=x.symbol, timeframe=x.timeframe, stream=x.stream, fresh=x.fresh,
                        last_closed_open_time=_at_ms(x.last_closed_open_ms),
                        lag_seconds=x.lag_seconds,
                    )
                    for x in c.series
                ],
            )
            for c in states
        ]
