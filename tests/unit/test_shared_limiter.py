"""The weight limiter on a shared budget (an in-memory stand-in for PostgreSQL), on a driven clock."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import DatabaseUnavailableError
from service.exchanges import limiter as limiter_module
from service.exchanges.limiter import WeightLimiter
from service.records import BudgetGrant
from tests.collection.test_limit_cut import LogRecorder
from tests.unit.test_limiter import Clock, take

START = 60 * 1000 + 1.0


class MemoryBudget:
    """The SQL's rules (service/db/weight_budget.py) over dicts; `down` makes every call fail."""

    def __init__(self) -> None:
        self.used: dict[int, int] = {}
        self.limit: int | None = None
        self.paused_until: float | None = None
        self.paused_reason: str | None = None
        self.calls: list[tuple[object, ...]] = []
        self.down = False

    async def reserve(
        self, *, window: int, want: int, need: int, limit: int | None, margin: float, observed_used: int, now: float
    ) -> BudgetGrant:
        self.calls.append(("reserve", window, want, need, observed_used))
        await self._fail_if_down()
        lim = min((x for x in (limit, self.limit) if x is not None), default=None)
        budget = None if lim is None else max(1, int(lim * (1 - margin)))
        base = max(self.used.get(window, 0), observed_used)
        if self.paused_until is not None and self.paused_until > now:
            granted = 0
        elif budget is None:
            granted = want
        else:
            granted = 0 if base + need > budget else min(want, budget - base)
        self.used[window] = base + granted
        return BudgetGrant(
            granted=granted, used=base + granted, limit=self.limit,
            paused_until=self.paused_until, paused_reason=self.paused_reason,
        )

    async def publish_pause(self, *, until: float, reason: str) -> None:
        self.calls.append(("pause", until, reason))
        await self._fail_if_down()
        if self.paused_until is None or until > self.paused_until:
            self.paused_until, self.paused_reason = until, reason

    async def publish_limit(self, limit: int, *, lower_only: bool) -> None:
        self.calls.append(("limit", limit, lower_only))
        await self._fail_if_down()
        self.limit = min(limit, self.limit) if lower_only and self.limit is not None else limit

    def reservations(self) -> int:
        return sum(1 for call in self.calls if call[0] == "reserve")

    async def _fail_if_down(self) -> None:
        if self.down:
            raise DatabaseUnavailableError("the database connection failed (ConnectionRefusedError)")


def shared_limiter(clock: Clock, budget: MemoryBudget, limit: int | None = 100) -> WeightLimiter:
    return WeightLimiter(limit=limit, margin=0.0, max_concurrency=10, clock=clock, sleep=clock.sleep, shared=budget)


async def test_two_limiters_spend_one_budget_between_them() -> None:
    """Two processes on a budget of 100 spend 100 in a minute together; the next request waits for
    the next minute."""
    clock, budget = Clock(START), MemoryBudget()
    first, second = shared_limiter(clock, budget), shared_limiter(clock, budget)
    for _ in range(25):
        await take(first, 2)
        await take(second, 2)
    assert clock.slept == []
    assert budget.used[1000] == 100
    await take(second, 2)
    assert int(clock.now // 60) == 1001


async def test_weight_is_reserved_in_chunks_of_two_percent() -> None:
    """On a budget of 6000, one round trip reserves 120 weight: 60 requests of 2."""
    clock, budget = Clock(START), MemoryBudget()
    lim = shared_limiter(clock, budget, limit=6000)
    for _ in range(60):
        await take(lim, 2)
    assert budget.reservations() == 1
    await take(lim, 2)
    assert budget.reservations() == 2


async def test_a_pause_reaches_the_other_process_with_its_next_look() -> None:
    """A 418 met by one process is published, with the exchange's count from its answer, before its
    caller sleeps; the other process, once its view is a second old, looks again, waits out the same
    pause and tells its caller why."""
    clock, budget = Clock(START), MemoryBudget()
    banned, other = shared_limiter(clock, budget), shared_limiter(clock, budget)
    await take(other, 2)
    banned.observe_used(40, sent_at=clock.now)
    banned.pause(30, "banned")
    task = asyncio.create_task(take(banned, 2))
    await asyncio.sleep(0)
    assert ("pause", START + 30, "banned") in budget.calls
    assert budget.used[1000] == 40
    await task
    clock.now = START + 1.0  # the other's view is now as old as it may get
    told: list[tuple[str, float]] = []
    async with other.slot(2, on_wait=lambda reason, until: told.append((reason, until))):
        assert clock.now >= START + 30
    assert told == [("banned", START + 30)]


async def test_a_learnt_limit_is_shared_and_a_429_can_only_lower_it() -> None:
    """A limit from exchangeInfo replaces the shared one, a 429's only lowers it; the lower of a
    process's own and the shared limit is in force."""
    clock, budget = Clock(START), MemoryBudget()
    learner, other = shared_limiter(clock, budget, limit=1200), shared_limiter(clock, budget, limit=1200)
    learner.set_limit(300)
    await take(learner, 2)
    assert budget.calls[0] == ("limit", 300, False)
    await take(other, 2)
    assert (other.limit, other.state.budget) == (300, 300)
    learner.rate_limited(0.0, limit=100)
    await take(learner, 2)
    assert ("limit", 100, True) in budget.calls
    clock.now += 1.0
    await take(other, 2)
    assert other.limit == 100


async def test_an_unreachable_budget_is_left_alone_for_a_while_then_used_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the shared budget down, requests go on the local budget counted on from the last shared
    count, with one warning and no round trip for 5 s, then 10 s; once it answers it is used again."""
    logs = LogRecorder()
    monkeypatch.setattr(limiter_module, "log", logs)
    clock, budget = Clock(START), MemoryBudget()
    lim = shared_limiter(clock, budget)
    budget.used[1000] = 90  # another process's share
    await take(lim, 2)
    budget.down = True
    clock.now += 1.0
    await take(lim, 2)  # the look fails: alone from here on
    tries = budget.reservations()
    for _ in range(3):
        await take(lim, 2)
    assert budget.reservations() == tries
    assert lim.state.used_in_window == 100  # 92 seen, then 8 alone: the window is spent
    assert [level for level, _ in logs.named("weight_budget_unshared")] == ["warning"]
    clock.now = 60 * 1001 + 5.5  # a new minute, past the 5 s: tried again, failing again
    await take(lim, 2)
    assert budget.reservations() == tries + 1
    clock.now += 6.0  # within the 10 s that follow
    await take(lim, 2)
    assert budget.reservations() == tries + 1
    budget.down = False
    clock.now += 5.0
    await take(lim, 2)
    assert budget.reservations() == tries + 2
    assert logs.named("weight_budget_shared_again") == [("info", {})]
    assert len(logs.named("weight_budget_unshared")) == 1


async def test_a_header_from_a_request_of_an_ended_minute_is_not_counted_in_the_new_one() -> None:
    """The count in an answer to a request sent before the minute turned belongs to the old minute:
    it neither fills the new one locally nor is reported to the shared budget."""
    clock, budget = Clock(60 * 1000 + 59.5), MemoryBudget()
    lim = shared_limiter(clock, budget)
    await take(lim, 2)
    sent_at = clock.now
    clock.now = 60 * 1001 + 0.5
    lim.observe_used(95, sent_at=sent_at)
    await take(lim, 2)
    assert lim.state.used_in_window == 2
    assert budget.calls[-1][-1] == 0  # observed_used of the new minute's reservation
    lim.observe_used(40, sent_at=clock.now)
    clock.now += 1.0
    await take(lim, 2)
    assert budget.calls[-1][-1] == 40


async def test_an_exchange_count_above_the_reservations_stops_the_spending() -> None:
    """When the exchange counts more than the processes reserved (another client on the IP), weight
    reserved earlier is not spent past the budget: the count goes to the shared budget and the
    request waits for the next minute."""
    clock, budget = Clock(START), MemoryBudget()
    lim = shared_limiter(clock, budget, limit=6000)
    await take(lim, 2)  # 120 reserved, 118 of them left
    lim.observe_used(5999, sent_at=clock.now)
    await take(lim, 2)
    assert int(clock.now // 60) == 1001
    assert budget.used[1000] == 5999


async def test_a_lower_limit_from_a_429_leaves_weight_reserved_under_the_old_one_unspent() -> None:
    """120 weight reserved under a limit of 6000 is not spent once a 429 states 100: the 120 already
    reserved fill that minute, so the next request waits for the next one."""
    clock, budget = Clock(START), MemoryBudget()
    lim = shared_limiter(clock, budget, limit=6000)
    await take(lim, 2)
    lim.rate_limited(0.0, limit=100)
    await take(lim, 2)
    assert int(clock.now // 60) == 1001
    assert budget.limit == 100


class LearnsDuringReserve(MemoryBudget):
    """A budget whose reservation round trip is slow enough that the process learns something meanwhile."""

    def __init__(self, during: object) -> None:
        super().__init__()
        self.during = during

    async def reserve(self, **kwargs: object) -> BudgetGrant:  # type: ignore[override]
        grant = await super().reserve(**kwargs)  # type: ignore[arg-type]
        hook, self.during = self.during, None
        if callable(hook):
            hook()
        return grant


async def test_news_learnt_during_a_reservation_does_not_stall_the_request_until_the_next_minute() -> None:
    """A limit learnt (e.g. an exchangeInfo answer) while a reservation is on its way: the request
    publishes it and goes on in this minute, with room to spare, rather than sleeping to the next one."""
    clock = Clock(START)
    holder: list[WeightLimiter] = []
    budget = LearnsDuringReserve(lambda: holder[0].set_limit(90))
    lim = shared_limiter(clock, budget)
    holder.append(lim)
    await take(lim, 2)
    assert clock.slept == [], "the request waited for the next minute with room in this one"
    assert budget.limit == 90  # the news went out

