"""Request-weight limiter that follows the exchange's own per-minute budget.

Binance counts request weight per calendar minute and reports the running total in the
`X-MBX-USED-WEIGHT-1M` header of every response. The limiter reserves each request's weight in the
current window before it is sent, raises its count to what the exchange reports (other clients on
the same IP count too), and makes callers wait for the next window when the budget (the exchange's
limit less a safety margin) is spent. A 429 pauses every caller until Retry-After has passed, adopts
the lower limit it states at once, and lets one request at a time go until the window rolls over; a
418 (IP ban) pauses every caller until the ban ends. A semaphore caps requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from service.exchanges.base import LimiterState, WaitCallback
from service.logging import get_logger

__all__ = ["LimiterState", "WeightLimiter"]

log = get_logger(__name__)

WINDOW_SECONDS = 60.0
# Sleep a hair past a window boundary so that the exchange, not just we, has rolled over.
_BOUNDARY_SLACK = 0.05


class WeightLimiter:
    def __init__(
        self,
        *,
        limit: int | None,
        margin: float,
        max_concurrency: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._margin = margin
        self._limit: int | None = None
        self._budget: int | None = None
        self.set_limit(limit)
        self._clock = clock
        self._sleep = sleep
        self._in_flight = asyncio.Semaphore(max_concurrency)
        self._window = -1
        self._used = 0
        self._paused_until = 0.0
        self._paused_reason: str | None = None
        # The window in which the exchange last answered 429; while it lasts, one request at a time.
        self._careful_window = -1
        self._probing = False
        self._probe_done = asyncio.Event()

    def set_limit(self, limit: int | None) -> None:
        """Adopt the exchange's weight limit per minute (None: unlimited); takes effect at once."""
        self._limit = limit
        self._budget = None if limit is None else max(1, int(limit * (1.0 - self._margin)))

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def state(self) -> LimiterState:
        now = self._clock()
        paused = self._paused_until if self._paused_until > now else None
        used = self._used if self._window == int(now // WINDOW_SECONDS) else 0
        return LimiterState(
            limit=self._limit, budget=self._budget, used_in_window=used,
            paused_until=paused, paused_reason=self._paused_reason if paused else None,
        )

    @asynccontextmanager
    async def slot(self, weight: int, on_wait: WaitCallback | None = None) -> AsyncIterator[None]:
        """Hold one in-flight place with `weight` reserved in the current window."""
        async with self._in_flight:
            probe = await self._reserve(weight, on_wait)
            try:
                yield
            finally:
                if probe:
                    self._probing = False
                    self._probe_done.set()

    async def _reserve(self, weight: int, on_wait: WaitCallback | None) -> bool:
        """Reserve `weight`; True if this request is the one allowed in flight after a 429."""
        while True:
            now = self._clock()
            if self._paused_until > now:
                if on_wait is not None:
                    on_wait(self._paused_reason or "paused", self._paused_until)
                await self._sleep(self._paused_until - now)
                continue
            window = int(now // WINDOW_SECONDS)
            if window != self._window:
                self._window, self._used = window, 0
            careful = window == self._careful_window
            if careful and self._probing:
                # Bounded by the probe's own timeout; then the window, pause and budget are checked again.
                await self._probe_done.wait()
                continue
            if self._budget is None or self._used + weight <= self._budget:
                self._used += weight
                if careful:
                    self._probing = True
                    self._probe_done.clear()
                return careful
            await self._sleep((window + 1) * WINDOW_SECONDS - now + _BOUNDARY_SLACK)

    def observe_used(self, used: int) -> None:
        """The exchange's count for the current window, from a response header."""
        if self._window == int(self._clock() // WINDOW_SECONDS) and used > self._used:
            self._used = used

    def rate_limited(self, seconds: float, *, limit: int | None = None) -> None:
        """The exchange answered 429: hold every caller for `seconds` (Retry-After), adopt `limit`
        (the limit the answer states) at once if it is lower, and until this window rolls over let
        one request at a time go.

        Why one at a time: the requests already in flight get 429 too and nothing can recall them,
        but every request sent after this one is ours to hold. With the stated limit and the
        exchange's count (the header) the budget normally keeps us idle until the window rolls over
        anyway; the cap is for when it does not (the answer stated no limit, Retry-After ended early,
        other clients share the IP): then each misjudged request costs one more 429, not one per
        place in flight, and repeated 429s in a window are what the exchange turns into 418 bans.
        It ends with the window, because from then on the lowered budget, reserved before a request
        is sent, bounds the weight in flight as well; keeping the cap would only cost throughput.
        """
        if limit is not None and limit > 0 and (self._limit is None or limit < self._limit):
            self.set_limit(limit)
        self._careful_window = int(self._clock() // WINDOW_SECONDS)
        self.pause(seconds, "rate_limited")

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every caller for `seconds` (429 Retry-After, or until a 418 ban ends)."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until, self._paused_reason = until, reason
            log.warning("exchange_paused", reason=reason, seconds=round(seconds, 3))
