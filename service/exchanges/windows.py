"""A limiter for venues that count requests in a sliding window (Bybit 600 per 5 s, OKX 40 per 2 s
per endpoint, Coinbase 10 per second, Kraken about one per second).

A request may be sent once the requests sent in the last `window_seconds` (the venue's own window,
sliding: a burst and a refill inside one window break the limit) plus its cost stay within the
budget: the limit less a margin for clock skew and answers in flight. A venue's order to wait
pauses every request of the limiter.
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
        # (sent at, cost) of the requests sent in the current window, oldest first.
        self._sent: deque[tuple[float, int]] = deque()
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
        while self._sent and self._sent[0][0] <= now - self._window:
            self._used -= self._sent.popleft()[1]

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
            await self._reserve(cost, on_wait)
            yield

    async def _reserve(self, cost: int, on_wait: WaitCallback | None) -> None:
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
                    self._sent.append((now, cost))
                    self._used += cost
                    return
                # Until enough of the oldest requests leave the window.
                freed, until = 0, now
                for sent_at, spent in self._sent:
                    freed += spent
                    until = sent_at + self._window
                    if self._used - freed + cost <= self._budget():
                        break
                await self._sleep(max(until - now, 0.0) + 0.001)

    def pause(self, seconds: float, reason: str) -> None:
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until, self._paused_reason = until, reason
