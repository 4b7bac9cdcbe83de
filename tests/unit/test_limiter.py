"""The weight limiter on a driven clock: budgets per minute window, exchange counts, pauses."""

from __future__ import annotations

import asyncio

from service.exchanges.limiter import WeightLimiter


class Clock:
    """Wall time that only moves when someone sleeps."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: Clock, limit: int | None = 100, margin: float = 0.0, concurrency: int = 10) -> WeightLimiter:
    return WeightLimiter(limit=limit, margin=margin, max_concurrency=concurrency, clock=clock, sleep=clock.sleep)


async def take(lim: WeightLimiter, weight: int) -> None:
    async with lim.slot(weight):
        pass


async def test_spends_the_budget_then_waits_for_the_next_minute() -> None:
    """Within one minute no more than the budget is reserved; the next request waits for the window."""
    clock = Clock(60 * 1000 + 10)
    lim = limiter(clock, limit=10)
    for _ in range(5):
        await take(lim, 2)
    assert clock.slept == []
    await take(lim, 2)
    assert len(clock.slept) == 1
    assert int(clock.now // 60) == 1001  # moved into the next window
    assert lim.state.used_in_window == 2


async def test_margin_keeps_part_of_the_limit_unused() -> None:
    """A 3 % margin on 1200 leaves a budget of 1164."""
    lim = limiter(Clock(0), limit=1200, margin=0.03)
    assert lim.state.budget == 1164


async def test_exchange_count_raises_the_local_count() -> None:
    """Weight used by others on the same IP (the header) counts against our budget."""
    clock = Clock(60 * 5)
    lim = limiter(clock, limit=100)
    await take(lim, 2)
    lim.observe_used(99)
    await take(lim, 2)
    assert len(clock.slept) == 1


async def test_pause_holds_every_caller_and_reports_why() -> None:
    """After a 429/418 every request waits out the pause, and callers are told until when."""
    clock = Clock(60 * 7)
    lim = limiter(clock, limit=None)
    lim.pause(30, "banned")
    told: list[tuple[str, float]] = []
    async with lim.slot(2, on_wait=lambda reason, until: told.append((reason, until))):
        pass
    assert clock.now >= 60 * 7 + 30
    assert told == [("banned", 60 * 7 + 30)]


async def test_learnt_limit_replaces_the_fallback() -> None:
    """set_limit (from exchangeInfo) changes the budget at once."""
    lim = limiter(Clock(0), limit=1200)
    lim.set_limit(6000)
    assert (lim.limit, lim.state.budget) == (6000, 6000)


async def test_concurrency_is_capped() -> None:
    """No more than max_concurrency requests hold a slot at once."""
    lim = limiter(Clock(0), limit=None, concurrency=3)
    inside = 0
    peak = 0

    async def request() -> None:
        nonlocal inside, peak
        async with lim.slot(1):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(request() for _ in range(20)))
    assert peak == 3


async def test_a_429_stating_a_lower_limit_cuts_the_budget_at_once() -> None:
    """After a 429 stating a limit of 100 (exchange count 100), nothing more is sent in that minute
    even when Retry-After ends early, and each later minute gets a budget of 97."""
    clock = Clock(60 * 10 + 5)
    lim = limiter(clock, limit=300, margin=0.03)
    for _ in range(30):
        await take(lim, 2)
    lim.observe_used(100)  # the exchange's count, from the 429's header
    lim.rate_limited(1.0, limit=100)
    assert (lim.limit, lim.state.budget) == (100, 97)
    windows: list[int] = []
    for _ in range(100):
        await take(lim, 2)
        windows.append(int(clock.now // 60))
    assert 10 not in windows  # the rest of the minute of the 429 stays unused
    assert max(windows.count(w) for w in set(windows)) * 2 <= 97


async def test_a_429_never_raises_the_limit() -> None:
    """A 429 stating a higher limit, or none, leaves the budget as it was."""
    lim = limiter(Clock(60 * 3), limit=300)
    lim.rate_limited(1.0, limit=6000)
    lim.rate_limited(1.0, limit=None)
    assert lim.limit == 300


async def test_after_a_429_one_request_at_a_time_until_the_window_rolls_over() -> None:
    """After a 429 and its pause, requests go one at a time for the rest of that minute (a misjudged
    budget then costs one more 429, not one per request in flight); the next minute, as many as allowed."""
    clock = Clock(60 * 20 + 1)
    lim = limiter(clock, limit=1000, concurrency=10)
    inside = 0
    peaks: list[int] = []

    async def request() -> None:
        nonlocal inside
        async with lim.slot(2):
            inside += 1
            peaks.append(inside)
            await asyncio.sleep(0.001)
            inside -= 1

    lim.rate_limited(2.0)
    await asyncio.gather(*(request() for _ in range(5)))
    assert clock.now >= 60 * 20 + 3  # the pause was served first
    assert int(clock.now // 60) == 20
    assert max(peaks) == 1
    peaks.clear()
    clock.now = 60 * 21 + 1
    await asyncio.gather(*(request() for _ in range(5)))
    assert max(peaks) == 5
