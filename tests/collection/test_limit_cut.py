"""A weight limit lowered at the exchange while the service runs is adopted at the first 429.

Time runs 60× faster for the fake and the service alike (one minute window per second), except in
the test of a hanging refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges import binance as binance_module
from service.exchanges.binance import BinanceClient
from service.exchanges.limiter import WeightLimiter
from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, stored
from tests.conftest import Clock, serve_app
from tests.fakes.binance import WINDOW_MS, FakeBinance

KLINES = "/api/v3/klines"
EXCHANGE_INFO = "/api/v3/exchangeInfo"
REFRESH_TASK = "binance-limit-refresh"


class LogRecorder:
    """Stands in for the client module's structlog logger: (level, event, fields) per call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record

    def named(self, event: str) -> list[tuple[str, dict[str, Any]]]:
        return [(level, fields) for level, name, fields in self.events if name == event]


@asynccontextmanager
async def binance_client(fake: FakeBinance, clock: Clock, *, timeout: float = 2.0) -> AsyncIterator[BinanceClient]:
    """A client on `clock` that believes the start-up fallback of 1200 until told otherwise."""
    limiter = WeightLimiter(limit=1200, margin=0.03, max_concurrency=4, clock=clock, sleep=clock.sleep)
    async with aiohttp.ClientSession() as session:
        client = BinanceClient(
            session, limiter, base_url=fake.url, timeout=timeout, retry_attempts=3, retry_wait_initial=0.01,
            cpu=CpuTurns(),
        )
        try:
            yield client
        finally:
            await client.aclose()


def refresh_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == REFRESH_TASK]


async def test_a_429_lowers_the_limit_at_once_and_refreshes_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut from 300 to 100 costs 429s in one minute only (the requests in flight then), the budget
    becomes 97 at once, exchangeInfo is asked once in the background, and the cut is logged."""
    logs = LogRecorder()
    monkeypatch.setattr(binance_module, "log", logs)
    # One second into a minute window, so the requests below meet the cut within it.
    clock = Clock(start=(T0 - T0 % WINDOW_MS + 1000) / 1000, speed=60)
    async with FakeBinance(weight_limit=300, now_ms=clock.ms) as fake, binance_client(fake, clock) as client:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        await client.fetch_symbols()
        assert client.limiter.limit == 300
        fake.weight_limit = 100
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < 150:  # 300 weight: at least three windows at the new limit
                sent += 1
                await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=1000)

        await asyncio.gather(*(worker() for _ in range(4)))
        assert (client.limiter.limit, client.limiter.state.budget) == (100, 97)
        if pending := refresh_tasks():
            await asyncio.wait(pending, timeout=5)

    cut_windows = [start for start, w in sorted(fake.windows.items()) if w.count_429]
    assert len(cut_windows) == 1
    assert 1 <= fake.windows[cut_windows[0]].count_429 <= 4  # at most the requests in flight
    assert all(w.used <= 100 for start, w in fake.windows.items() if start > cut_windows[0])
    first_429 = next(r.time_ms for r in fake.requests if r.status == 429)
    infos = [r for r in fake.requests if r.path == EXCHANGE_INFO]
    assert len(infos) == 2 and infos[1].time_ms >= first_429 and infos[1].status == 200
    assert logs.named("weight_limit_lowered") == [("warning", {"limit": 100, "previous": 300, "source": "429"})]


async def test_a_hanging_limit_refresh_does_not_hold_up_the_request_and_ends_with_the_client() -> None:
    """The request that met the 429 is answered while the refresh it started still hangs; closing the
    client cancels that refresh, and no exception escapes it."""
    clock = Clock()
    async with FakeBinance(fault_timeout_s=30, now_ms=clock.ms) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.add_fault("429", retry_after=0)
        fake.add_fault("timeout", path=EXCHANGE_INFO)
        async with binance_client(fake, clock, timeout=30) as client:
            await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=1000)
            [refresh] = refresh_tasks()
            assert not refresh.done()
            await client.aclose()
            assert refresh.cancelled()
            # A closed client starts no refresh, whatever it still meets.
            fake.add_fault("429", retry_after=0)
            await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=1000)
            assert refresh_tasks() == []
    assert [r.status for r in fake.requests if r.path == KLINES] == [429, 200, 429, 200]


async def test_a_lower_limit_at_the_exchange_beats_the_override(make_settings: Callable[..., Settings]) -> None:
    """With BINANCE_WEIGHT_LIMIT=300 and an exchange that allows 100, the service uses 100."""
    async with FakeBinance(weight_limit=100) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        async with serve_app(make_settings(binance_api_url=fake.url, binance_weight_limit=300)) as api:
            await api.wait_idle()
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]
    assert (status["weight_limit"], status["weight_budget"]) == (100, 97)


async def test_a_backfill_survives_a_limit_cut_with_no_ban(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """The exchange cuts its limit from 300 to 100 during a backfill spanning several minutes: the
    task completes with every candle, at most two 429s (in the minute the cut bites), no 418, no later
    minute over 100, and the status shows the new limit."""
    clock = Clock(start=T0 / 1000, speed=60)
    async with FakeBinance(weight_limit=300, now_ms=clock.ms) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        rows = fake.generate_klines("BTCUSDT", "1m", T0 - 20_000 * MINUTE, 20_000)
        # ~200 pages, most of them empty (they weigh the same): 400 weight, four minutes at 97.
        settings = make_settings(binance_api_url=fake.url, default_history_candles=200_000)
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]
            assert status["weight_limit"] == 300
            before = fake.request_count
            task_id = await api.start(["BTCUSDT"], ["1m"])
            async with asyncio.timeout(15):
                while fake.request_count < before + 20:
                    await asyncio.sleep(0.002)
            cut_ms = clock.ms()
            fake.weight_limit = 100
            fake.ban_after_429s = 3  # as the real exchange does with repeated 429s in a minute
            task = await api.wait(task_id, timeout=60)
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]

    assert task["status"] == "completed", task
    got = await stored(db, "BTCUSDT", "1m")
    assert [tuple(r.values())[:11] for r in got] == [tuple(row[:11]) for row in rows]
    assert 418 not in fake.status_counts
    cut_window = cut_ms - cut_ms % WINDOW_MS
    windows_429 = [start for start, w in sorted(fake.windows.items()) if w.count_429]
    assert len(windows_429) == 1 and windows_429[0] >= cut_window, windows_429
    assert fake.windows[windows_429[0]].count_429 <= 2
    assert all(w.used <= 100 for start, w in fake.windows.items() if start > cut_window)
    assert len([r for r in fake.requests if r.path == EXCHANGE_INFO and r.time_ms >= cut_ms]) == 1
    assert (status["weight_limit"], status["weight_budget"]) == (100, 97)
