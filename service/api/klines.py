"""GET /api/v1/klines: stored candles, oldest first, values exactly as stored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, MediaType, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter

from service.api.deps import JobsDep, PoolDep
from service.api.enums import ExchangeChoice
from service.api.openapi import error_responses
from service.api.schemas import ExchangeQuery, Schema, SymbolQuery, TimeframeQuery, datetime_to_ms
from service.auth.guards import requires_reader
from service.db import klines as klines_db
from service.db import symbols as symbols_db
from service.db.pool import connection
from service.errors import InvalidInputError
from service.exchanges.grid import TimeframeName
from service.exchanges.venues import DEFAULT_VENUE

__all__ = ["KlinesController"]


class Candle(Schema):
    open_time: datetime
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: datetime
    quote_volume: str | None
    trades: int | None
    taker_buy_base_volume: str | None
    taker_buy_quote_volume: str | None
    is_closed: bool


class Candles(Schema):
    """The documented 200 body; PostgreSQL writes it (klines_db.fetch_klines_json): change both together."""

    exchange: ExchangeChoice
    symbol: str
    timeframe: TimeframeName
    count: int
    klines: list[Candle]


class KlinesController(Controller):
    path = "/api/v1/klines"
    tags = ["klines"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="getKlines", summary="Stored candles of one series, oldest first",
        # The body is built by PostgreSQL (see fetch_klines_json); the document still shows its shape.
        responses={
            200: ResponseSpec(Candles, description="Request fulfilled, document follows", generate_examples=False),
            **error_responses(400, 401, 422),
        },
    )
    async def klines(
        self,
        pool: PoolDep,
        jobs: JobsDep,
        symbol: SymbolQuery,
        timeframe: TimeframeQuery,
        exchange: ExchangeQuery = DEFAULT_VENUE,
        start: Annotated[datetime | None, QueryParameter(description="ISO 8601; naive means UTC")] = None,
        end: Annotated[datetime | None, QueryParameter(description="ISO 8601; naive means UTC")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 500,
    ) -> Response[bytes]:
        jobs.venues.timeframes(exchange, [timeframe])  # a 422 naming the venue's set (or the unknown venue)
        start_ms = None if start is None else datetime_to_ms(start)
        end_ms = None if end is None else datetime_to_ms(end)
        if start_ms is not None and end_ms is not None and end_ms < start_ms:
            raise InvalidInputError("end must not be before start")
        async with connection(pool) as conn:
            # The venue's own id is read at once (one round trip while holding the connection); only
            # another spelling (BTC/USDT, Kraken's XBTUSD) needs the symbol table, and a second read.
            body = await klines_db.fetch_klines_json(
                conn, exchange, symbols_db.normalise_symbol_name(symbol), timeframe,
                start_ms=start_ms, end_ms=end_ms, limit=limit,
            )
            if body is None and (name := await symbols_db.find_symbol(conn, exchange, symbol)) is not None:
                body = await klines_db.fetch_klines_json(
                    conn, exchange, name, timeframe, start_ms=start_ms, end_ms=end_ms, limit=limit
                )
        if body is None:
            raise InvalidInputError(f"unknown symbol {symbol!r} on {exchange}", unknown_symbols=[symbol])
        # Already a Candles document: bytes pass through Litestar untouched, nothing is encoded here.
        return Response(body, media_type=MediaType.JSON)
