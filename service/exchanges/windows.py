"""A limiter for venues that count requests in a sliding window (Bybit 600 per 5 s, OKX 40 per 2 s
per endpoint, Coinbase 10 per second, Kraken about one per second).

A request may be sent once the requests counted in the last `window_seconds` (the venue's own
window, sliding: a burst and a refill inside one window break the limit) plus its cost stay within
the budget: the limit less a margin. A request counts from when it is sent until one window after
its answer came: the venue counts it when it arrives, somewhere in between, so a slot is never
freed before the venue has freed it too (counting from the send alone let the next burst arrive
inside the venue's window by the network's latency). A venue's order to wait pauses every request
of the limiter.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from service.exchanges.base import LimiterState, WaitCallback

__all__ = ["WindowLimiter"]


class WindowLimiter:
    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        margin: float,
        max_concurrency: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._margin = margin
        self._clock = clock
        self._sleep = sleep
        self._in_flight = asyncio.Semaphore(max_concurrency)
        # [counted until - window, cost] of the requests in the window, roughly oldest first: the
        # first item is the send time, moved to the answer's time when it comes.
        self._sent: deque[list[float]] = deque()
        self._used = 0
        self._paused_until = 0.0
        self._paused_reason: str | None = None
        # One reservation at a time: waiters are admitted in order, none jumps the queue.
        self._turn = asyncio.Lock()

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window_seconds(self) -> float:
        return self._window

    def _budget(self) -> int:
        return max(1, int(self._limit * (1.0 - self._margin)))

    def _expire(self, now: float) -> None:
        # Answers come back out of order now and then: an entry behind a slower one waits for it,
        # which frees its slot a little later, never sooner.
        while self._sent and self._sent[0][0] <= now - self._window:
            self._used -= int(self._sent.popleft()[1])

    @property
    def state(self) -> LimiterState:
        now = self._clock()
        self._expire(now)
        paused = self._paused_until if self._paused_until > now else None
        return LimiterState(
            limit=self._limit, budget=self._budget(), used_in_window=self._used,
            paused_until=paused, paused_reason=self._paused_reason if paused else None,
            window_seconds=self._window,
        )

    @asynccontextmanager
    async def slot(self, cost: int, on_wait: WaitCallback | None = None) -> AsyncIterator[None]:
        async with self._in_flight:
            entry = await self._reserve(cost, on_wait)
            try:
                yield
            finally:
                entry[0] = max(entry[0], self._clock())  # counted until one window after the answer

    async def _reserve(self, cost: int, on_wait: WaitCallback | None) -> list[float]:
        cost = min(cost, self._budget())  # a request costlier than the budget goes out alone
        async with self._turn:
            while True:
                now = self._clock()
                if self._paused_until > now:
                    if on_wait is not None:
                        on_wait(self._paused_reason or "paused", self._paused_until)
                    await self._sleep(self._paused_until - now)
                    continue
                self._expire(now)
                if self._used + cost <= self._budget():
                    entry = [now, float(cost)]
                    self._sent.append(entry)
                    self._used += cost
                    return entry
                # Until enough of the oldest requests leave the window.
                freed, until = 0, now
                for counted_from, spent in self._sent:
                    freed += int(spent)
                    until = max(until, counted_from + self._window)
                    if self._used - freed + cost <= self._budget():
                        break
                await self._sleep(max(until - now, 0.0) + 0.001)

    def pause(self, seconds: float, reason: str) -> None:
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until, self._paused_reason = until, reason
