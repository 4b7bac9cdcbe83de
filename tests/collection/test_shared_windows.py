"""Processes on one IP share the sliding request windows of Bybit, OKX and Coinbase through PostgreSQL
(WEIGHT_BUDGET_SCOPE), as they share Binance's weight minutes (test_shared_budget.py).

Each "process" holds what a service process holds of its own (asyncpg pool, aiohttp session, the
venue's client and its limiter, a collector), three of them in this one test process, against one
fake venue that counts every client as one IP and refuses past its limit as the venue does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.collection.collector import CollectionResult, Collector, Pair
from service.cpu_turns import CpuTurns
from service.db.pool import create_pool
from service.exchanges.clients import make_client
from service.exchanges.venues import VENUES
from service.process.weight_budget import shared_budgets
from tests.collection.test_collect import MINUTE, T0
from tests.collection.test_shared_budget import Scope, Sink
from tests.collection.test_venues import KITS, Kit
from tests.conftest import Clock
from tests.fakes.bybit import FakeBybit
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.okx import CANDLES, HISTORY_CANDLES, FakeOkx
from tests.settings import settings_of

#: Each process collects one timeframe of the venue's symbol, so that they share only the limit.
TIMEFRAMES = ("1m", "5m", "15m")
#: Pages per series: together more requests than one window of the (lowered) limit allows.
PAGES = 6
#: The clock runs this much faster for the fake and the processes alike, from a second into a
#: minute: a run's candles end at the open one, so a minute turning mid-run would add one.
SPEED = 4
START = (T0 - T0 % MINUTE + 1000) / 1000


def limited_fake(venue: str, clock: Clock) -> Any:
    """The venue's fake with a low limit (what one window holds), so that sharing it takes windows."""
    if venue == "bybit":
        return FakeBybit(rate_limit=12, now_ms=clock.ms)  # per 5 s
    if venue == "okx":
        # Per 2 s, per endpoint; recent pages come from `candles`, older ones from `history-candles`.
        return FakeOkx(rate_limits={CANDLES: 8, HISTORY_CANDLES: 4}, now_ms=clock.ms, limit_now_ms=clock.ms)
    assert venue == "coinbase"
    return FakeCoinbase(rate_limit=6, now_ms=clock.ms)  # per second


#: The limit each process is told: the fake's (OKX scales its other endpoint's as the venue does).
WEIGHT_LIMIT = {"bybit": 12, "okx": 8, "coinbase": 6}
#: The most candles one of the venue's pages holds.
PAGE = {"bybit": 1000, "okx": 300, "coinbase": 300}


def refusals(venue: str, fake: Any) -> int:
    """Requests the fake refused for its limit (Bybit: 403, which starts a ban; the others 429)."""
    if venue == "bybit":
        return int(fake.refused)
    if venue == "okx":
        return sum(fake.refused_by_path.values())
    return sum(1 for r in fake.requests if r.status == 429)


@asynccontextmanager
async def process(dsn: str, kit: Kit, clock: Clock, *, scope: Scope, pages: int = PAGES) -> AsyncIterator[Collector]:
    """One service process's own pool, session, client (with its limiter) and collector (of `pages`
    pages per series)."""
    venue = kit.venue
    settings = settings_of(
        database_url=dsn, exchanges=venue, weight_budget_scope=scope,
        **{f"{venue}_api_url": kit.fake.url, f"{venue}_weight_limit": WEIGHT_LIMIT[venue],
           f"{venue}_max_concurrency": 4, f"{venue}_timeout": 5.0, f"{venue}_retry_wait": 0.01},
    )  # fmt: skip
    pool = await create_pool(dsn, max_size=4, connect_now=False)
    try:
        async with aiohttp.ClientSession() as session:
            cpu = CpuTurns()
            client = make_client(
                VENUES[venue], session, settings.venues[venue], cpu=cpu, shared=shared_budgets(settings, pool),
                clock=clock, sleep=clock.sleep,
            )
            try:
                yield Collector(
                    pool, client, history_candles=pages * client.max_page, pages_ahead=2, max_connections=2,
                    cpu=cpu, db_retry_seconds=30.0, clock=clock,
                )
            finally:
                await client.aclose()
    finally:
        await pool.close()


async def collect_at_once(dsn: str, kit: Kit, clock: Clock, *, scope: Scope) -> list[CollectionResult]:
    """Three processes collect at once, each its own timeframe of the kit's symbol, PAGES pages each."""
    now = clock.ms()  # read once: two reads a millisecond apart would put the candles off the grid
    for timeframe, minutes in zip(TIMEFRAMES, (1, 5, 15), strict=True):
        size = minutes * MINUTE
        open_now = now - now % size
        count = PAGES * PAGE[kit.venue]  # up to the open candle
        kit.generate(timeframe, open_now - (count - 1) * size, count)
    async with AsyncExitStack() as stack:
        collectors = [await stack.enter_async_context(process(dsn, kit, clock, scope=scope)) for _ in TIMEFRAMES]
        async with asyncio.timeout(60):
            return await asyncio.gather(*(
                c.collect([Pair(kit.symbol, tf)], Sink()) for c, tf in zip(collectors, TIMEFRAMES, strict=True)
            ))  # fmt: skip


@asynccontextmanager
async def limited_kit(venue: str, clock: Clock) -> AsyncIterator[Kit]:
    async with limited_fake(venue, clock) as fake:
        yield KITS[venue](fake, clock)


@pytest.mark.parametrize("venue", ["bybit", "okx", "coinbase"])
async def test_three_processes_on_one_window_are_never_refused(db_dsn: str, venue: str) -> None:
    """Three processes collecting at once against a venue allowing a few requests per window: none
    refused (a Bybit refusal would be a 10-minute ban), every series complete, and the window used
    well (sharing wastes little)."""
    clock = Clock(start=START, speed=SPEED)
    async with limited_kit(venue, clock) as kit:
        results = await collect_at_once(db_dsn, kit, clock, scope="shared")
        refused = refusals(venue, kit.fake)
        fullest = kit.fake.max_in_window
    assert [(r.pairs_failed, r.candles_written) for r in results] == [(0, PAGES * PAGE[venue])] * 3
    assert refused == 0
    # The busiest window held what the three processes' one budget allows, less a request at most.
    held = fullest[CANDLES] if venue == "okx" else fullest
    assert held >= int(WEIGHT_LIMIT[venue] * 0.97) - 1, fullest


async def test_three_processes_each_on_its_own_window_are_refused(db_dsn: str) -> None:
    """The same three processes with WEIGHT_BUDGET_SCOPE=per_process each spend the whole window, and
    together draw 429s (what the shared window prevents)."""
    clock = Clock(start=START, speed=SPEED)
    async with limited_kit("coinbase", clock) as kit:
        await collect_at_once(db_dsn, kit, clock, scope="per_process")
        assert refusals("coinbase", kit.fake) > 0


async def test_a_bybit_ban_met_by_one_process_holds_the_others_and_no_other_venue(
    db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """Bybit bans the IP (403) on one process's request: another process starting on Bybit during the
    ban sends nothing until the ban is over (it would otherwise meet the ban itself), then both
    complete; a third process starting on Coinbase then collects all it has to through the ban."""
    clock = Clock(start=T0 / 1000, speed=120)  # the 10-minute ban lasts 5 s
    async with (
        FakeBybit(latency_ms=20, now_ms=clock.ms) as bybit_fake,
        FakeCoinbase(latency_ms=20, now_ms=clock.ms) as coinbase_fake,
    ):
        bybit, coinbase = KITS["bybit"](bybit_fake, clock), KITS["coinbase"](coinbase_fake, clock)
        now = clock.ms()
        open_now = now - now % (5 * MINUTE)
        for kit, timeframe in ((bybit, "1m"), (bybit, "5m"), (coinbase, "1m")):
            size = (5 if timeframe == "5m" else 1) * MINUTE
            kit.generate(timeframe, open_now - PAGES * PAGE[kit.venue] * size, PAGES * PAGE[kit.venue])
        fault = bybit_fake.add_fault("403", match={"interval": "5"}, every=3)  # to the 5m process, once
        async with AsyncExitStack() as stack:
            banned, later, other = [
                await stack.enter_async_context(process(db_dsn, kit, clock, scope="shared"))
                for kit in (bybit, bybit, coinbase)
            ]
            async with asyncio.timeout(60):
                running = asyncio.create_task(banned.collect([Pair(bybit.symbol, "5m")], Sink()))
                # Once the banned process has told the others (the ban is in the shared table), the
                # other two start their work.
                while await db.fetchval("SELECT paused_until FROM weight_budgets WHERE exchange = 'bybit'") is None:
                    await asyncio.sleep(0.005)
                results = await asyncio.gather(
                    running,
                    later.collect([Pair(bybit.symbol, "1m")], Sink()),
                    other.collect([Pair(coinbase.symbol, "1m")], Sink()),
                )

    assert [r.pairs_failed for r in results] == [0, 0, 0]
    assert fault.applied == 1
    [met] = [r for r in bybit_fake.requests if r.fault == "403"]
    ban_ends = met.time_ms + 600_000
    later_times = [r.time_ms for r in bybit_fake.requests if r.params.get("interval") == "1"]
    assert later_times
    assert min(later_times) >= ban_ends  # it heard of the ban before its first request
    # Refused for the ban: only what the banned process had in flight when it came (two pages ahead).
    refused = [r for r in bybit_fake.requests if r.status == 403 and r.fault is None]
    assert len(refused) <= 1 and all(r.params["interval"] == "5" for r in refused), refused
    coinbase_times = [r.time_ms for r in coinbase_fake.requests if r.route == "candles"]
    assert coinbase_times
    assert max(coinbase_times) < ban_ends  # all of it during Bybit's ban
