"""Collection through the API against the fake Binance and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from service.settings import Settings
from tests.conftest import Clock, serve_app
from tests.fakes.binance import FakeBinance

MINUTE = 60_000
# 2026-11-24 10:00:30 UTC: half a minute into a 1m candle.
T0 = 1_795_514_400_000 + 30_000


async def stored(db: asyncpg.Connection[Any], symbol: str, timeframe: str) -> list[asyncpg.Record]:
    return await db.fetch(
        """
        SELECT k.open_time, k.open::text, k.high::text, k.low::text, k.close::text, k.volume::text,
               k.close_time, k.quote_volume::text, k.trades, k.taker_buy_base_volume::text,
               k.taker_buy_quote_volume::text, k.is_closed
          FROM klines k JOIN series s ON s.id = k.series_id
         WHERE s.exchange = 'binance' AND s.symbol = $1 AND s.timeframe = $2
         ORDER BY k.open_time
        """,
        symbol, timeframe,
    )


def frozen_at(fake: FakeBinance, ms: int) -> Clock:
    """A clock running at wall speed from `ms`, shared by the fake and the service."""
    clock = Clock(start=ms / 1000)
    fake.now_ms = clock.ms
    return clock


async def test_stores_every_field_exactly(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Each of the 11 Binance fields is stored exactly as the exchange sent it, as numeric text."""
    clock = frozen_at(fake, T0)
    rows = fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
    assert task["status"] == "completed", task
    got = await stored(db, "BTCUSDT", "1m")
    assert [tuple(r.values())[:11] for r in got] == [tuple(row[:11]) for row in rows]
    # The last candle is still open at T0; all others are closed.
    assert [r["is_closed"] for r in got] == [True] * 99 + [False]
    assert task["result"]["candles_written"] == 100
    assert task["progress"] == 100


async def test_resumes_at_the_last_stored_candle_and_corrects_the_open_one(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A second run re-reads only the last stored (open) candle, fixes it, and adds the new ones."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("ETHUSDT", "1m", T0 - 99 * MINUTE, 110)  # 10 candles in the future
    open_time = T0 - 30_000
    async with serve_app(make_settings(), clock) as api:
        await api.wait_idle()
        first = await api.wait(await api.start(["ETH/USDT"], ["1m"]))
        assert first["result"]["candles_written"] == 100
        before = (await stored(db, "ETHUSDT", "1m"))[-1]
        assert (before["open_time"], before["is_closed"]) == (open_time, False)

        # Five minutes later: the open candle closed with other values, five more exist.
        clock.start += 5 * 60
        fake.update_kline("ETHUSDT", "1m", open_time, close="1234.50000000", high="99999.00000000", low="0.50000000")
        fake.reset_stats()
        second = await api.wait(await api.start(["ETHUSDT"], ["1m"]))

    klines_requests = [r for r in fake.requests if r.path == "/api/v3/klines"]
    assert [r.params["startTime"] for r in klines_requests] == [str(open_time)]
    assert second["result"]["candles_written"] == 1 + 5  # the corrected candle + the new ones
    rows = await stored(db, "ETHUSDT", "1m")
    assert len(rows) == 105
    assert [r["open_time"] for r in rows] == [T0 - 30_000 - 99 * MINUTE + i * MINUTE for i in range(105)]
    corrected = next(r for r in rows if r["open_time"] == open_time)
    assert (corrected["close"], corrected["high"], corrected["is_closed"]) == ("1234.50000000", "99999.00000000", True)
    assert rows[-1]["is_closed"] is False


async def test_an_unchanged_rerun_writes_nothing(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Rows whose values did not change are not rewritten (and not counted)."""
    clock = frozen_at(fake, T0 + 29_000)
    fake.generate_klines("BTCUSDT", "5m", T0 - 50 * 5 * MINUTE, 60)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        await api.wait(await api.start(["BTCUSDT"], ["5m"]))
        again = await api.wait(await api.start(["BTCUSDT"], ["5m"]))
    assert again["status"] == "completed"
    assert again["result"]["candles_written"] == 0


async def test_pages_through_a_long_history_in_order(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A 3,500-candle backfill takes several 1000-candle pages, fetched concurrently, stored without gaps."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 3499 * MINUTE, 3500)
    async with serve_app(make_settings(default_history_candles=3500), clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
    assert task["result"]["candles_written"] == 3500
    rows = await stored(db, "BTCUSDT", "1m")
    assert [r["open_time"] for r in rows] == [T0 - 30_000 - 3499 * MINUTE + i * MINUTE for i in range(3500)]
    assert sum(1 for r in fake.requests if r.path == "/api/v3/klines") == 4


async def test_all_pairs_run_and_one_failure_does_not_stop_the_others(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """A symbol the exchange refuses (-1121) fails its pairs only; the result lists each pair, and the
    task says failed: a series that could not be completed is never reported as a success."""
    clock = frozen_at(fake, T0)
    fake.add_symbol("GONEUSDT", "GONE", "USDT")
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    fake.generate_klines("BTCUSDT", "1h", T0 - 99 * 60 * MINUTE, 100)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        fake.remove_symbol("GONEUSDT")  # delisted after our symbol refresh
        task = await api.wait(await api.start(["BTCUSDT", "GONEUSDT"], ["1m", "1h"]))
    assert task["status"] == "failed"
    pairs = {(p["symbol"], p["timeframe"]): p for p in task["result"]["pairs"]}
    assert pairs[("BTCUSDT", "1m")]["candles_written"] == 100
    assert pairs[("BTCUSDT", "1h")]["candles_written"] == 100
    assert "Invalid symbol" in pairs[("GONEUSDT", "1m")]["error"]
    assert task["result"]["pairs_failed"] == 2
    assert "2 of 4 series failed" in task["message"]
    assert await db.fetchval("SELECT count(*) FROM klines") == 200  # the good series are kept


async def test_progress_is_reported_per_series(fake: FakeBinance, make_settings: Callable[..., Settings]) -> None:
    """While running, progress rises and the message names the last collected series and the count."""
    clock = frozen_at(fake, T0)
    fake.latency_ms = 30
    for tf in ("1m", "5m", "15m"):
        fake.generate_klines("BTCUSDT", tf, T0 - 2000 * 15 * MINUTE, 1)
    # One series hangs once and is retried after BINANCE_TIMEOUT: the others finish first.
    fake.add_fault("timeout", match={"symbol": "ETHUSDT", "interval": "15m"})
    async with serve_app(make_settings(binance_timeout=0.5), clock) as api:
        await api.wait_idle()
        task_id = await api.start(["BTCUSDT", "ETHUSDT"], ["1m", "5m", "15m"])
        seen: list[tuple[int, str]] = []
        while (body := await api.task(task_id))["status"] not in ("completed", "failed"):
            seen.append((body["progress"], body["message"] or ""))
            await asyncio.sleep(0.01)
    assert body["progress"] == 100
    assert any(m.startswith("Collected ") and m.endswith("(5/6)") for _, m in seen), seen
    progresses = [p for p, _ in seen]
    assert progresses == sorted(progresses)
