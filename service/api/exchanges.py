"""GET /api/v1/exchanges: the venues this deployment collects from, what each serves, and where each
stands against its limit."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Controller, get

from service.api.deps import RuntimeDep
from service.api.enums import ExchangeChoice
from service.api.openapi import error_responses
from service.api.schemas import Schema
from service.auth.guards import requires_reader
from service.db import symbols as symbols_db
from service.db.pool import connection
from service.exchanges.grid import TimeframeName
from service.exchanges.venues import VENUES

__all__ = ["ExchangesController"]


class VenueLimit(Schema):
    """The venue's request limit as this service counts it (Binance: weight per minute; Bybit,
    OKX, Coinbase, Kraken: requests per sliding window)."""

    limit: int | None
    """The venue's limit per window (null: not learnt yet)."""
    budget: int | None
    """The part of it this service spends (the limit less a safety margin)."""
    used: int
    """Spent in the current window by every process on the IP, as last seen (WEIGHT_BUDGET_SCOPE=shared;
    per_process: by this one), raised to the venue's own count where it tells (Binance)."""
    left: int | None
    """What is left of the budget in the window."""
    window_seconds: float
    paused: bool
    """Every request to the venue waits (it answered a rate limit or a ban)."""
    paused_until: datetime | None
    paused_reason: str | None


class VenueOut(Schema):
    id: ExchangeChoice
    market: str
    timeframes: list[TimeframeName]
    """The unified timeframe names the venue serves."""
    page_cap: int
    """Most candles one request returns."""
    request_weight: int
    """What one full page costs against the limit."""
    limit: VenueLimit
    symbols_known: int
    symbols_trading: int
    symbols_refreshed_at: datetime | None
    """The last symbol refresh that reached the venue (null: never)."""


class ExchangesController(Controller):
    path = "/api/v1/exchanges"
    tags = ["exchanges"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="listExchanges", summary="The enabled venues: timeframes, page cap, limit, symbols",
        responses=error_responses(401),
    )
    async def exchanges(self, runtime: RuntimeDep) -> list[VenueOut]:
        async with connection(runtime.pool) as conn:
            listings = await symbols_db.venue_listings(conn)
        venues: list[VenueOut] = []
        for venue, client in runtime.exchanges.items():
            state = client.limiter_state()
            listing = listings.get(venue)
            paused_until = None if state.paused_until is None else datetime.fromtimestamp(state.paused_until, UTC)
            venues.append(VenueOut(
                id=venue, market=VENUES[venue].market, timeframes=list(client.timeframes), page_cap=client.max_page,
                request_weight=client.klines_weight(client.max_page),
                limit=VenueLimit(
                    limit=state.limit, budget=state.budget, used=state.used_in_window,
                    left=None if state.budget is None else max(state.budget - state.used_in_window, 0),
                    window_seconds=state.window_seconds, paused=state.paused_until is not None,
                    paused_until=paused_until,
                    paused_reason=state.paused_reason,
                ),
                symbols_known=0 if listing is None else listing.symbols,
                symbols_trading=0 if listing is None else listing.trading,
                symbols_refreshed_at=None if listing is None else listing.refreshed_at,
            ))
        return venues
