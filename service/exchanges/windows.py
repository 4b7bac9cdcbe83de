"""A limiter for venues that count requests in a sliding window (Bybit 600 per 5 s, OKX 40 per 2 s
per endpoint, Coinbase 10 per second, Kraken about one per second).

A request may be sent once the requests counted in the last `window_seconds` (the venue's own
window, sliding: a burst and a refill inside one window break the limit) plus its cost stay within
the budget: the limit less a margin. A request counts from when it is sent until one window after
its answer came: the venue counts it when it arrives, somewhere in between, so a slot is never
freed before the venue has freed it too (counting from the send alone let the next burst arrive
inside the venue's window by the network's latency). A venue's order to wait pauses every request
of the limiter.

Several processes on one IP spend one window: given a `SharedWindow`, every reservation is a round
trip to it (these venues allow a few to a hundred requests a second, so one statement per request
is cheap), which also tells of a pause another process met. A request is counted there until one
window after its answer, like here: until one window and the longest recent answer time after it
is sent, and moved later if its answer comes later still. If the shared window cannot answer, the
process counts alone for a while, then tries again: sharing is never a reason to stop collecting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from service.exchanges.base import LimiterState, SharingBackoff, WaitCallback
from service.logging import get_logger
from service.records import WindowGrant

__all__ = ["SharedWindow", "WindowLimiter"]

log = get_logger(__name__)

#: Before any answer has come, a request is held this long past its window in the shared count.
_FIRST_ANSWER_ALLOWANCE = 0.5
#: The answer times the shared count's allowance is the longest of.
_ANSWERS_REMEMBERED = 16


class SharedWindow(Protocol):
    """One budget's sliding request window (a venue, or an endpoint of it), shared by every process on
    the same IP. Implemented outside exchanges/ (on PostgreSQL); times are the limiter's clock. Any
    error means "cannot answer now". Each call answers or fails within a second or two by itself."""

    async def reserve(self, *, cost: int, size: int, now: float, counted_until: float) -> WindowGrant:
        """Count a request of `cost` until `counted_until` if the requests still counted at `now`
        leave room for it within `size`, and no pause lasts past `now`."""
        ...

    async def extend(self, *, counted_until: float, until: float) -> None:
        """The request counted until `counted_until` counts until `until` (its answer came late)."""
        ...

    async def publish_pause(self, *, until: float, reason: str) -> None:
        """Hold every process until `until` (kept if a longer pause is published already)."""
        ...


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
        shared: SharedWindow | None = None,
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

        self._shared = shared
        # Every process's count as the shared window last told it, and this process's recent answer times.
        self._shared_used = 0
        self._shared_read_at = -math.inf
        self._answer_times: deque[float] = deque(maxlen=_ANSWERS_REMEMBERED)
        # While a failing shared window is left alone.
        self._alone = SharingBackoff()
        # A pause met here and not yet told to the other processes.
        self._pending_pause: tuple[float, str] | None = None

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
        # Every process's count, as the shared window told it less than a window ago.
        shared_used = self._shared_used if now - self._shared_read_at < self._window else 0
        return LimiterState(
            limit=self._limit,
            budget=self._budget(),
            used_in_window=max(self._used, shared_used),
            paused_until=paused,
            paused_reason=self._paused_reason if paused else None,
            window_seconds=self._window,
        )

    @asynccontextmanager
    async def slot(self, cost: int, on_wait: WaitCallback | None = None) -> AsyncIterator[None]:
        async with self._in_flight:
            entry = await self._reserve(cost, on_wait)
            try:
                yield
            finally:
                answered = self._clock()
                self._answer_times.append(answered - entry[0])
                entry[0] = max(entry[0], answered)  # counted until one window after the answer
                if len(entry) > 2 and answered + self._window > entry[2]:
                    await self._extend_shared(entry[2], answered + self._window)

    async def _reserve(self, cost: int, on_wait: WaitCallback | None) -> list[float]:
        cost = min(cost, self._budget())  # a request costlier than the budget goes out alone
        async with self._turn:
            while True:
                now = self._clock()
                if self._pending_pause is not None:
                    await self._publish_pause()  # before waiting it out: the others wait too
                    continue
                if self._paused_until > now:
                    if on_wait is not None:
                        on_wait(self._paused_reason or "paused", self._paused_until)
                    await self._sleep(self._paused_until - now)
                    continue
                self._expire(now)
                if self._shared is not None and now >= self._alone.until:
                    entry = await self._reserve_shared(cost, now)
                    if entry is not None:
                        return entry
                    continue
                if self._used + cost <= self._budget():
                    entry = [now, float(cost)]
                    self._sent.append(entry)
                    self._used += cost
                    return entry
                # Until enough of the oldest requests leave the window.
                freed, until = 0, now
                for counted_from, spent, *_ in self._sent:
                    freed += int(spent)
                    until = max(until, counted_from + self._window)
                    if self._used - freed + cost <= self._budget():
                        break
                await self._sleep(max(until - now, 0.0) + 0.001)

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every caller for `seconds`; with a shared window, every process (told with the next
        reservation: the request that met the answer comes back through it to retry)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until, self._paused_reason = until, reason
            if self._shared is not None:
                self._pending_pause = (until, reason)

    # -- the window shared with the other processes ---------------------------------------------

    async def _reserve_shared(self, cost: int, now: float) -> list[float] | None:
        """Reserve in the shared window, or wait as it says (a pause, or its oldest requests) and
        answer None; None at once when it fails (the caller then counts alone)."""
        assert self._shared is not None
        allowance = max(self._answer_times, default=_FIRST_ANSWER_ALLOWANCE)
        counted_until = now + self._window + allowance
        try:
            grant = await self._shared.reserve(cost=cost, size=self._budget(), now=now, counted_until=counted_until)
        except Exception as exc:  # whatever went wrong, collection goes on: that is the point of counting alone
            self._unshared(exc)
            return None
        self._shared_again()
        self._shared_used, self._shared_read_at = grant.used, now
        if grant.granted:
            entry = [now, float(cost), counted_until]
            self._sent.append(entry)
            self._used += cost
            return entry
        if grant.paused_until is not None and grant.paused_until > self._paused_until:
            self._paused_until, self._paused_reason = grant.paused_until, grant.paused_reason
            log.warning(
                "exchange_paused",
                reason=grant.paused_reason,
                seconds=round(grant.paused_until - self._clock(), 3),
                by="another process",
            )
            return None
        retry_at = grant.retry_at if grant.retry_at is not None else now + self._window
        await self._sleep(max(retry_at - self._clock(), 0.0) + 0.001)
        return None

    async def _extend_shared(self, counted_until: float, until: float) -> None:
        assert self._shared is not None
        try:
            await self._shared.extend(counted_until=counted_until, until=until)
        except Exception as exc:  # see _reserve_shared
            self._unshared(exc)

    async def _publish_pause(self) -> None:
        assert self._shared is not None
        assert self._pending_pause is not None
        until, reason = self._pending_pause
        self._pending_pause = None
        if self._clock() < self._alone.until:
            return  # counting alone: the others hear of it no more than of the count
        try:
            await self._shared.publish_pause(until=until, reason=reason)
        except Exception as exc:  # see _reserve_shared
            self._unshared(exc)

    def _unshared(self, exc: Exception) -> None:
        if (seconds := self._alone.failed(self._clock())) is not None:
            log.warning("request_window_unshared", seconds=seconds, error=f"{exc.__class__.__name__}: {exc}"[:500])

    def _shared_again(self) -> None:
        if self._alone.succeeded():
            log.info("request_window_shared_again")
