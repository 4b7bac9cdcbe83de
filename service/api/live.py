"""GET /api/v1/live: the stream connections of live configs, and how fresh each streamed series is.

Shows the streams of the process that answers: with the default deployment (one `serve`) that is
every live stream; where workers collect, each shows its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Controller, get

from service.api.deps import RuntimeDep
from service.api.enums import ExchangeChoice
from service.api.openapi import error_responses
from service.api.schemas import Schema
from service.auth.guards import requires_reader
from service.exchanges.grid import TimeframeName

__all__ = ["LiveController"]


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


class LiveController(Controller):
    path = "/api/v1/live"
    tags = ["klines"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="listLiveConnections", summary="Stream connections of live configs, and each series' freshness",
        responses=error_responses(401),
    )
    async def live(self, runtime: RuntimeDep) -> list[LiveConnection]:
        answer: list[LiveConnection] = []
        for venue, live in runtime.live.running.items():
            now = live.now()
            client = runtime.exchanges[venue]
            for shard in live.shards:
                state = shard.state
                series: list[LiveSeries] = []
                for name in sorted(state.streams):
                    found = live.series.get(name)
                    if found is None:
                        continue
                    closed = found.last_closed_open_ms
                    lag = None
                    if closed is not None:
                        lag = round(now - client.grid(found.timeframe).next_open(closed) / 1000, 3)
                    series.append(LiveSeries(
                        symbol=found.symbol, timeframe=found.timeframe, stream=name, fresh=found.fresh,
                        last_closed_open_time=None if closed is None else _at(closed / 1000), lag_seconds=lag,
                    ))  # fmt: skip
                answer.append(LiveConnection(
                    exchange=ExchangeChoice(venue), connected=state.connected_since is not None,
                    connected_since=_at(state.connected_since), streams=sorted(state.streams),
                    stream_count=len(state.streams), messages=state.messages,
                    messages_per_second=state.messages_per_second(now), last_message_at=_at(state.last_message_at),
                    reconnects=state.reconnects, series=series,
                ))  # fmt: skip
        return answer
