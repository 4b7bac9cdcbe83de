"""Request-weight limiter that follows the exchange's own per-minute budget.

Binance counts request weight per calendar minute and per IP, and reports the running total in the
`X-MBX-USED-WEIGHT-1M` header of every response. The limiter reserves each request's weight in the
current window before it is sent, raises its count to what the exchange reports (other clients on
the same IP count too), and makes callers wait for the next window when the budget (the exchange's
limit less a safety margin) is spent. A 429 pauses every caller until Retry-After has passed, adopts
the lower limit it states at once, and lets one request at a time go until the window rolls over; a
418 (IP ban) pauses every caller until the ban ends. A semaphore caps requests in flight.

Several processes on one IP spend one budget: given a `SharedWeightBudget`, the limiter reserves
weight there in small chunks (one round trip per few requests), spends each chunk locally, and
learns with every round trip what the others learnt (a lower limit, a pause after a 429 or 418).
It tells them what it learns itself: a limit from the exchange, a pause, the exchange's count. If
the shared budget cannot answer, the process goes on alone for a while (the exchange's header still
tells it the IP's count), then tries again: sharing the budget is never a reason to stop collecting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from service.exchanges.base import LimiterState, SharingBackoff, WaitCallback
from service.logging import get_logger
from service.records import BudgetGrant

__all__ = ["WINDOW_SECONDS", "BudgetGrant", "LimiterState", "SharedWeightBudget", "WeightLimiter"]

log = get_logger(__name__)

WINDOW_SECONDS = 60.0
# Sleep a hair past a window boundary so that the exchange, not just we, has rolled over.
_BOUNDARY_SLACK = 0.05
#: Weight reserved from a shared budget per round trip, as a share of the budget: a round trip per
#: few requests rather than per request, and little left unspent in one process when the window turns.
_CHUNK_SHARE = 0.02
#: ... and never more than this (2% of Binance's 6000): a chunk reserved under a huge limit (an
#: override, or before the exchange has told its own) and left unspent when a lower limit is learnt
#: stays counted in the shared window, and must not use it up.
_CHUNK_MAX = 120
#: Weight reserved earlier is spent only while this process's view of the shared state (pauses,
#: limit) is younger than this (limiter clock seconds); an older view is refreshed first, so a pause
#: one process met reaches the others within this.
_SHARED_MAX_AGE = 1.0


class SharedWeightBudget(Protocol):
    """One exchange's weight budget, shared by every process on the same IP.

    Implemented outside exchanges/ (on PostgreSQL). Windows and pause times are numbers on the
    limiter's clock. Any error means "cannot answer now": the limiter then goes on alone for a while.
    Each call answers or fails within a second or two by itself: requests to the exchange wait for
    it, and the limiter never cancels a call half-way (a database statement cancelled on a link that
    no longer answers would hold its connection until it does).
    """

    async def reserve(
        self, *, window: int, want: int, need: int, limit: int | None, margin: float, observed_used: int, now: float
    ) -> BudgetGrant:
        """Reserve up to `want` weight in minute `window` (epoch seconds // 60), or nothing unless at
        least `need` (≤ `want`) fits, and nothing while a pause lasts past `now`.

        The budget is the lower of `limit` (this process's, None: unlimited) and the shared limit,
        less `margin`. `observed_used` (the exchange's own count for the window, 0 if none) raises the
        shared count first. `want = 0` only reads the shared state and reports the count.
        """
        ...

    async def publish_pause(self, *, until: float, reason: str) -> None:
        """Hold every process until `until` (kept if a longer pause is published already)."""
        ...

    async def publish_limit(self, limit: int, *, lower_only: bool) -> None:
        """The exchange's weight limit as this process learnt it (from exchangeInfo: it may rise
        again), or as a 429 stated it (`lower_only`: a stale answer must not raise it)."""
        ...


class WeightLimiter:
    def __init__(
        self,
        *,
        limit: int | None,
        margin: float,
        max_concurrency: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: SharedWeightBudget | None = None,
    ) -> None:
        self._margin = margin
        # The start-up guess: neither learnt from the exchange nor told to the other processes.
        self._limit: int | None = limit
        self._clock = clock
        self._sleep = sleep
        self._in_flight = asyncio.Semaphore(max_concurrency)
        self._window = -1
        # Weight this process spent in the window, raised to the exchange's count when it tells.
        self._used = 0
        self._paused_until = 0.0
        self._paused_reason: str | None = None
        # The window in which the exchange last answered 429; while it lasts, one request at a time.
        self._careful_window = -1
        self._probing = False
        self._probe_done = asyncio.Event()
        # The exchange's count from the newest answer: (window, weight).
        self._observed = (-1, 0)

        self._shared = shared
        # One round trip at a time; callers that queued behind it find its result.
        self._shared_lock = asyncio.Lock()
        self._shared_limit: int | None = None
        # Weight reserved in the shared budget for `_window` and not spent yet.
        self._allowance = 0
        # The shared count of `_window` as last seen, and when (limiter clock) the shared state was read.
        self._shared_used = 0
        self._synced_at = -math.inf
        # While a failing shared budget is left alone: until when, and for how long next time.
        self._alone = SharingBackoff()
        # Learnt here and not yet told to the other processes.
        self._pending_limit: tuple[int, bool] | None = None
        self._pending_pause: tuple[float, str] | None = None

    def set_limit(self, limit: int | None) -> None:
        """Adopt the exchange's weight limit per minute (None: unlimited); takes effect at once, and
        in the other processes with their next reservation."""
        before = self.limit
        self._limit = limit
        self._forget_allowance_if_lower(before)
        if self._shared is not None and limit is not None:
            self._pending_limit = (limit, False)

    def _forget_allowance_if_lower(self, before: int | None) -> None:
        """Weight reserved under a higher limit is not spent under a lower one: reserve it again."""
        after = self.limit
        if after is not None and (before is None or after < before):
            self._allowance = 0

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def limit(self) -> int | None:
        """The limit in force: this process's, or the lower one another process learnt."""
        return min((x for x in (self._limit, self._shared_limit) if x is not None), default=None)

    def _budget(self) -> int | None:
        limit = self.limit
        return None if limit is None else max(1, int(limit * (1.0 - self._margin)))

    @property
    def state(self) -> LimiterState:
        now = self._clock()
        paused = self._paused_until if self._paused_until > now else None
        current = self._window == int(now // WINDOW_SECONDS)
        # With a shared budget, the count of every process on the IP as last seen.
        used = max(self._used, self._shared_used) if current else 0
        return LimiterState(
            limit=self.limit, budget=self._budget(), used_in_window=used,
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
                # The caller that met the 429/418 comes through here first: the others hear of it now.
                await self._tell_news()
                if on_wait is not None:
                    on_wait(self._paused_reason or "paused", self._paused_until)
                await self._sleep(max(self._paused_until - self._clock(), 0.0))
                continue
            window = int(now // WINDOW_SECONDS)
            if window != self._window:
                self._window, self._used, self._allowance, self._shared_used = window, 0, 0, 0
            careful = window == self._careful_window
            if careful and self._probing:
                # Bounded by the probe's own timeout; then the window, pause and budget are checked again.
                await self._probe_done.wait()
                continue
            if await self._admit(weight, window, now):
                self._used += weight
                if careful:
                    self._probing = True
                    self._probe_done.clear()
                return careful
            # A round trip may have taken a while, or told of a pause: look again before sleeping.
            now = self._clock()
            if self._paused_until > now or int(now // WINDOW_SECONDS) != window:
                continue
            await self._sleep((window + 1) * WINDOW_SECONDS - now + _BOUNDARY_SLACK)

    async def _admit(self, weight: int, window: int, now: float) -> bool:
        """Whether `weight` may be spent in `window` now (taken from the allowance if shared)."""
        if self._shared is None or now < self._alone.until:
            budget = self._budget()
            return budget is None or self._used + weight <= budget
        if self._spend_allowance(weight, now):
            return True
        async with self._shared_lock:
            # Another caller may have reserved (or found the budget failing) while this one queued.
            now = self._clock()
            if int(now // WINDOW_SECONDS) != window or self._paused_until > now:
                return False
            if now < self._alone.until:
                return await self._admit(weight, window, now)
            if self._spend_allowance(weight, now):
                return True
            # Bounded: each refusal brings a fresher count, and a count that leaves too little ends it.
            for _ in range(3):
                need = max(weight - self._allowance, 0)
                grant = await self._sync(window, need=need, want=self._want(need))
                now = self._clock()
                if grant is None:
                    return await self._admit(weight, window, now)
                if int(now // WINDOW_SECONDS) != window or self._paused_until > now:
                    return False
                self._allowance += grant.granted
                if self._spend_allowance(weight, now):
                    return True
                if self._has_news():
                    continue  # learnt during the round trip (a limit, a pause): published by the next one
                if self._allowance >= weight:
                    return False  # the exchange's own count leaves no room in this minute
                budget = self._budget()
                if budget is not None and budget - grant.used < need:
                    return False
            return False

    def _has_news(self) -> bool:
        """Whether this process learnt something (a limit, a pause) the others have not heard yet."""
        return self._pending_limit is not None or self._pending_pause is not None

    async def _tell_news(self) -> None:
        """Publish the news, with the exchange's latest count (a 429's answer carries it), at once."""
        if self._shared is None or not self._has_news():
            return
        async with self._shared_lock:
            now = self._clock()
            if self._has_news() and now >= self._alone.until:
                await self._sync(int(now // WINDOW_SECONDS), need=0, want=0)

    def _spend_allowance(self, weight: int, now: float) -> bool:
        # News of this process's own goes out first, with the next round trip.
        if self._allowance < weight or now - self._synced_at >= _SHARED_MAX_AGE or self._has_news():
            return False
        budget = self._budget()
        if budget is not None and self._used + weight > budget:
            # The exchange counts more than the processes reserved (another client on the IP): it decides.
            return False
        self._allowance -= weight
        return True

    def _want(self, need: int) -> int:
        """How much to reserve when `need` is missing: a chunk, less near the end of the budget."""
        budget = self._budget()
        if need == 0 or budget is None:
            return need
        chunk = max(need, min(math.ceil(budget * _CHUNK_SHARE), _CHUNK_MAX))
        return max(need, min(chunk, budget - self._shared_used))

    async def _sync(self, window: int, *, need: int, want: int) -> BudgetGrant | None:
        """One reservation round trip (None: the shared budget failed, this process goes on alone)."""
        assert self._shared is not None
        if not await self._publish_pending():
            return None
        observed_window, observed_used = self._observed
        try:
            grant = await self._shared.reserve(
                window=window, want=want, need=need, limit=self._limit, margin=self._margin,
                observed_used=observed_used if observed_window == window else 0, now=self._clock(),
            )
        except Exception as exc:  # whatever went wrong, collection goes on: that is the point of falling back
            self._unshared(exc)
            return None
        self._shared_again()
        self._synced_at = self._clock()
        before = self.limit
        self._shared_limit = grant.limit
        self._forget_allowance_if_lower(before)
        if window == self._window:
            self._shared_used = grant.used
        if grant.paused_until is not None and grant.paused_until > self._paused_until:
            self._paused_until, self._paused_reason = grant.paused_until, grant.paused_reason
            seconds = grant.paused_until - self._clock()
            if seconds > 0:
                log.warning(
                    "exchange_paused", reason=grant.paused_reason, seconds=round(seconds, 3), by="another process"
                )
        return grant

    async def _publish_pending(self) -> bool:
        """Tell the other processes what this one learnt; False if the shared budget failed (kept for later)."""
        assert self._shared is not None
        pause, limit = self._pending_pause, self._pending_limit
        if pause is None and limit is None:
            return True
        self._pending_pause = self._pending_limit = None
        try:
            if limit is not None:
                await self._shared.publish_limit(limit[0], lower_only=limit[1])
            if pause is not None:
                await self._shared.publish_pause(until=pause[0], reason=pause[1])
        except Exception as exc:  # see _sync
            # Not lost: told with the next round trip that succeeds (unless newer news replaced it).
            self._pending_limit = self._pending_limit or limit
            if pause is not None and (self._pending_pause is None or self._pending_pause[0] < pause[0]):
                self._pending_pause = pause
            self._unshared(exc)
            return False
        return True

    def _unshared(self, exc: Exception) -> None:
        if self._window == int(self._clock() // WINDOW_SECONDS):
            # Alone, count on from what every process had reserved when last seen.
            self._used = max(self._used, self._shared_used)
        if (seconds := self._alone.failed(self._clock())) is not None:
            log.warning("weight_budget_unshared", seconds=seconds, error=f"{exc.__class__.__name__}: {exc}"[:500])

    def _shared_again(self) -> None:
        if self._alone.succeeded():
            log.info("weight_budget_shared_again")

    def observe_used(self, used: int, *, sent_at: float | None = None) -> None:
        """The exchange's count for the window in which the request was sent (at `sent_at`), from a
        response header; ignored if that window has ended (it would fill the next one)."""
        now = self._clock()
        window = int((now if sent_at is None else sent_at) // WINDOW_SECONDS)
        if window != int(now // WINDOW_SECONDS):
            return
        if self._window == window and used > self._used:
            self._used = used
        if self._shared is not None and (window, used) > self._observed:
            self._observed = (window, used)

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
        current = self.limit
        if limit is not None and limit > 0 and (current is None or limit < current):
            self._limit = limit
            self._forget_allowance_if_lower(current)
            if self._shared is not None:
                self._pending_limit = (limit, True)
        self._careful_window = int(self._clock() // WINDOW_SECONDS)
        self.pause(seconds, "rate_limited")

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every caller for `seconds` (429 Retry-After, or until a 418 ban ends); with a shared
        budget, every process."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until, self._paused_reason = until, reason
            log.warning("exchange_paused", reason=reason, seconds=round(seconds, 3))
            if self._shared is not None:
                self._pending_pause = (until, reason)
