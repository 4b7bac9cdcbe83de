"""One client per enabled venue, made from its row of the venue table and its settings.

The family named in the row picks the client class; every class but Binance's takes the same
arguments and builds its own limiter from the venue's documented limits. Every limiter can share
its budget with the other processes on the database (`shared`, WEIGHT_BUDGET_SCOPE).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from service.cpu_turns import CpuTurns
from service.exchanges.base import ExchangeClient, RequestObserver
from service.exchanges.binance import BinanceClient, fallback_weight_limit
from service.exchanges.binance_stream import BinanceKlineStream
from service.exchanges.bybit import BybitClient
from service.exchanges.bybit_stream import BybitKlineStream
from service.exchanges.coinbase import CoinbaseClient
from service.exchanges.kraken import KrakenClient
from service.exchanges.limiter import WeightLimiter
from service.exchanges.okx import OkxClient
from service.exchanges.okx_stream import OkxKlineStream
from service.exchanges.sharing import SharedBudgets
from service.exchanges.streams import KlineStream
from service.exchanges.venues import VenueSpec
from service.settings import VenueSettings

__all__ = ["make_client", "make_stream"]


class _VenueClient(Protocol):
    """How every client but Binance's is made."""

    def __call__(
        self,
        spec: VenueSpec,
        session: aiohttp.ClientSession,
        settings: VenueSettings,
        *,
        cpu: CpuTurns,
        observer: RequestObserver | None,
        shared: SharedBudgets | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> ExchangeClient: ...


_FAMILIES: dict[str, _VenueClient] = {
    "bybit": BybitClient, "coinbase": CoinbaseClient, "kraken": KrakenClient, "okx": OkxClient,
}


def make_client(
    spec: VenueSpec,
    session: aiohttp.ClientSession,
    settings: VenueSettings,
    *,
    cpu: CpuTurns,
    observer: RequestObserver | None = None,
    shared: SharedBudgets | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ExchangeClient:
    """The client of `spec`'s venue. Until the venue tells its limit, `<VENUE>_WEIGHT_LIMIT`, else
    `<VENUE>_WEIGHT_FALLBACK`, else the venue's documented one applies."""
    if spec.family == "binance":
        limiter = WeightLimiter(
            limit=settings.weight_limit or settings.weight_fallback or fallback_weight_limit(spec),
            margin=settings.weight_margin,
            max_concurrency=settings.max_concurrency,
            clock=clock,
            sleep=sleep,
            shared=shared.weight(spec.id) if shared is not None else None,
        )
        return BinanceClient(
            session, limiter,
            base_url=settings.api_url,
            timeout=settings.timeout,
            retry_attempts=settings.retry_attempts,
            retry_wait_initial=settings.retry_wait,
            weight_limit_override=settings.weight_limit,
            cpu=cpu,
            observer=observer,
            spec=spec,
        )
    return _FAMILIES[spec.family](
        spec, session, settings, cpu=cpu, observer=observer, shared=shared, clock=clock, sleep=sleep
    )


def make_stream(spec: VenueSpec, settings: VenueSettings, client: ExchangeClient) -> KlineStream | None:
    """The venue's kline stream client (its candles on `client`'s grids), or None where live
    collection is not built for it yet."""
    if settings.ws_url is None:
        return None
    if spec.family == "binance":
        return BinanceKlineStream(settings.ws_url)
    if spec.family == "bybit":
        return BybitKlineStream(settings.ws_url, client.grid)
    if spec.family == "okx":
        return OkxKlineStream(settings.ws_url, client.grid, product=spec.product)
    return None
