"""Exchange faults: every one is survived with no candle lost and none duplicated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at, stored
from tests.conftest import serve_app
from tests.fakes.binance import FakeBinance


async def collect_btc(fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]) -> dict[str, Any]:
    """Collect 2,500 1m candles of BTCUSDT (three pages) and return the finished task."""
    clock = frozen_at(fake, T0)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        return await api.wait(await api.start(["BTCUSDT"], ["1m"]))


def expected_open_times() -> list[int]:
    return [T0 - 30_000 - 2499 * MINUTE + i * MINUTE for i in range(2500)]


async def assert_complete(db: asyncpg.Connection[Any]) -> None:
    rows = await stored(db, "BTCUSDT", "1m")
    assert [r["open_time"] for r in rows] == expected_open_times()


async def test_server_errors_and_dropped_connections_are_retried(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """502, 503, a dropped connection and a garbled body each cost a retry, not data."""
    fake.generate_klines("BTCUSDT", "1m", T0 - 2499 * MINUTE, 2500)
    fake.add_fault("502")
    fake.add_fault("503")
    fake.add_fault("drop", count=2)  # aiohttp silently retries a single drop itself
    fake.add_fault("bad_json")
    task = await collect_btc(fake, make_settings(default_history_candles=2500), db)
    assert task["status"] == "completed", task
    assert task["result"]["candles_written"] == 2500
    await assert_complete(db)
    statuses = [r.status for r in fake.requests if r.path == "/api/v3/klines"]
    assert statuses.count(200) >= 3 + 1  # three pages plus the garbled 200
    assert {502, 503, 0} <= set(statuses)


async def test_a_timeout_is_retried(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A request that hangs past BINANCE_TIMEOUT is abandoned and sent again."""
    fake.generate_klines("BTCUSDT", "1m", T0 - 2499 * MINUTE, 2500)
    fake.add_fault("timeout")
    task = await collect_btc(fake, make_settings(default_history_candles=2500, binance_timeout=0.3), db)
    assert task["status"] == "completed", task
    await assert_complete(db)


async def test_retries_give_up_and_the_pair_fails_cleanly(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """When every attempt fails, the series fails with the reason; pages already written stay."""
    fake.generate_klines("BTCUSDT", "1m", T0 - 2499 * MINUTE, 2500)
    fake.add_fault("500", count=100, match={"startTime": str(T0 - 30_000 - 499 * MINUTE)})  # the last page
    task = await collect_btc(fake, make_settings(default_history_candles=2500, binance_retry_attempts=3), db)
    assert task["status"] == "failed"
    assert "HTTP 500" in task["result"]["pairs"][0]["error"]
    rows = await stored(db, "BTCUSDT", "1m")
    assert [r["open_time"] for r in rows] == expected_open_times()[:2000]


async def test_client_errors_are_not_retried(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """An exchange 4xx such as -1121 is final: one request, and its message reaches the result."""
    clock = frozen_at(fake, T0)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        fake.remove_symbol("ETHUSDT")
        fake.reset_stats()
        task = await api.wait(await api.start(["ETHUSDT"], ["1m"]))
    assert task["status"] == "failed"
    assert task["result"]["pairs"][0]["error"] == "Invalid symbol. (Binance code -1121)"
    assert len([r for r in fake.requests if r.path == "/api/v3/klines"]) == 1


async def test_429_pauses_every_request_for_retry_after(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """After a 429 no request is sent until Retry-After has passed; then collection completes."""
    fake.generate_klines("BTCUSDT", "1m", T0 - 2499 * MINUTE, 2500)
    fake.add_fault("429", retry_after=1)
    task = await collect_btc(fake, make_settings(default_history_candles=2500), db)
    assert task["status"] == "completed", task
    await assert_complete(db)
    klines = [r for r in fake.requests if r.path == "/api/v3/klines"]
    first_429 = next(r for r in klines if r.status == 429)
    # Requests already in flight when the 429 was sent land within a few ms of it; after that
    # nothing may arrive until Retry-After (1 s) has passed.
    gaps = [r.time_ms - first_429.time_ms for r in klines if r.time_ms > first_429.time_ms]
    assert [g for g in gaps if 50 < g < 1000] == []
    assert any(g >= 1000 for g in gaps), "collection went on after the pause"


async def test_418_ban_pauses_collection_and_the_task_says_so(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """An IP ban (418) pauses collection until it ends; meanwhile the task reports the ban."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 2499 * MINUTE, 2500)
    async with serve_app(make_settings(default_history_candles=2500), clock) as api:
        await api.wait_idle()
        fake.ban(1.5)
        task_id = await api.start(["BTCUSDT"], ["1m"])
        messages: set[str] = set()
        while (body := await api.task(task_id))["status"] == "pending" or body["status"] == "running":
            messages.add(body["message"] or "")
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]
            if status["paused_reason"]:
                messages.add("limiter:" + status["paused_reason"])
            await clock.sleep(0.05)
    assert body["status"] == "completed", body
    assert any(m.startswith("IP banned by the exchange: paused until") for m in messages), messages
    assert "limiter:banned" in messages
    await assert_complete(db)
    assert 418 in fake.status_counts
