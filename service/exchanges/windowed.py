"""What the clients of venues with a fixed, sliding-window request limit share (Bybit, OKX, Coinbase,
Kraken): the wiring from VenueSettings to a WindowLimiter and a VenueRequests loop, the plain members of
`ExchangeClient`, and the small helpers their requests and parsers repeat.

A venue's client subclasses `WindowedClient`, names its page cap, limit and window in class
attributes, builds its grids in `_make_grids`, judges answers in `_judge`, and overrides a hook only
where the venue differs: `_setup` (checks and state of its own), `_make_limiter` (a limit that is not
"weight_limit or the documented one, less the margin"), and any protocol member it answers otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

import aiohttp
import msgspec

from service.cpu_turns import CpuTurns
from service.exchanges.base import (
    CLOCK_SKEW_ALLOWANCE_MS,
    InvalidRequestError,
    LimiterState,
    RequestObserver,
    TransientExchangeError,
    WaitCallback,
)
from service.exchanges.grid import Grid
from service.exchanges.requests import Answer, VenueRequests, Verdict
from service.exchanges.sharing import SharedBudgets
from service.exchanges.venues import VenueSpec
from service.exchanges.windows import WindowLimiter
from service.records import KlinePage
from service.settings import VenueSettings

__all__ = ["WindowedClient", "decode"]

T = TypeVar("T")


class WindowedClient:
    """The shared part of a sliding-window venue's `ExchangeClient` (constructed as the factory calls it)."""

    #: Most candles one kline request returns.
    _max_page: ClassVar[int]
    #: The venue's documented limit: requests per `_window_seconds` (VenueSettings.weight_limit overrides).
    _request_limit: ClassVar[int]
    _window_seconds: ClassVar[float]
    #: Whether a page reaching the current period names its open candle (`ExchangeClient.marks_open_candle`).
    _marks_open_candle: ClassVar[bool] = False

    def __init__(
        self,
        spec: VenueSpec,
        session: aiohttp.ClientSession,
        settings: VenueSettings,
        *,
        cpu: CpuTurns,
        observer: RequestObserver | None = None,
        shared: SharedBudgets | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._setup(spec)
        self.name = spec.id
        self._spec = spec
        self._clock = clock
        self._grids = self._make_grids(spec)
        self._limiter = self._make_limiter(settings, clock, sleep, shared)
        self._requests = VenueRequests(
            spec.id,
            session,
            self._limiter,
            base_url=settings.api_url,
            timeout=settings.timeout,
            retry_attempts=settings.retry_attempts,
            retry_wait_initial=settings.retry_wait,
            cpu=cpu,
            judge=self._judge,
            observer=observer,
        )

    # -- hooks ------------------------------------------------------------------------------------

    def _setup(self, spec: VenueSpec) -> None:
        """Refuse a spec the venue cannot serve, and set what the venue's own methods need (first)."""

    def _judge(self, answer: Answer) -> Verdict:
        """How the venue's answer reads: None (parse it), a Wait, or an error (service/exchanges/requests.py)."""
        raise NotImplementedError

    def _make_grids(self, spec: VenueSpec) -> dict[str, Grid]:
        """Each timeframe the venue serves, shortest first, and where its candles open."""
        raise NotImplementedError

    def _make_limiter(
        self,
        settings: VenueSettings,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        shared: SharedBudgets | None,
    ) -> WindowLimiter:
        """The limiter every request waits on (unless it names another), sharing the window named
        after the venue."""
        return WindowLimiter(
            limit=settings.weight_limit or self._request_limit,
            window_seconds=self._window_seconds,
            margin=settings.weight_margin,
            max_concurrency=settings.max_concurrency,
            clock=clock,
            sleep=sleep,
            shared=shared.window(self.name) if shared is not None else None,
        )

    def _limiter_for(self, path: str) -> WindowLimiter | None:
        """The limiter a request to `path` waits on, if not the default one."""
        return None

    # -- what the venue serves --------------------------------------------------------------------

    @property
    def timeframes(self) -> tuple[str, ...]:
        return tuple(self._grids)

    def grid(self, timeframe: str) -> Grid:
        return self._grids[timeframe]

    def reach_start(self, timeframe: str, now_ms: int) -> int | None:
        return None  # every candle since listing

    @property
    def max_page(self) -> int:
        return self._max_page

    def klines_weight(self, limit: int) -> int:
        return 1  # the limit counts requests, whatever their size

    @property
    def marks_open_candle(self) -> bool:
        return self._marks_open_candle

    def limiter_state(self) -> LimiterState:
        return self._limiter.state

    def refresh_limits_soon(self) -> None:
        """Nothing to learn: the venue's limit is fixed and documented, not announced."""

    async def aclose(self) -> None:
        """No background work to stop."""

    # -- shared by the requests -------------------------------------------------------------------

    def _empty_page(self) -> KlinePage:
        """A page for a window that holds no candle, as of now (no request spent on it)."""
        return KlinePage(klines=[], as_of_ms=int(self._clock() * 1000) - CLOCK_SKEW_ALLOWANCE_MS)

    async def _get(
        self,
        path: str,
        params: Mapping[str, str],
        on_wait: WaitCallback | None,
        parse: Callable[[bytes, float], T],
        what: str,
    ) -> T:
        """One request (costing 1) on `path`'s limiter; a refusal names what was asked."""
        try:
            return await self._requests.get(path, params, 1, on_wait, parse, limiter=self._limiter_for(path))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{what}: {exc}", code=exc.code, status=exc.status) from None


def decode(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    """The decoded body; a body that does not decode is a transient fault (retried)."""
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TransientExchangeError(f"{what}: malformed response ({exc})") from None
