"""A candle stored as closed holds its final values, whenever the minute turns between fetch and write.

The fake's clock (shared with the service) is moved past the minute right after the exchange has
answered and before the service writes the page; the candle the exchange served as open then
changes to its final values, as on the real exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from service.settings import Settings
from tests.collection.test_collect import MINUTE, stored
from tests.conftest import Clock, serve_app
from tests.fakes.binance import FakeBinance

# 2026-11-24 10:00:00 UTC; the service's first request goes out at 10:00:59.9.
M = 1_795_514_400_000
BEFORE_THE_MINUTE_TURNS = M + 59_900


def nearly_frozen(fake: FakeBinance, ms: int) -> Clock:
    """A clock shared by the fake and the service that barely moves unless the test moves it."""
    clock = Clock(start=ms / 1000, speed=0.001)
    fake.now_ms = clock.ms
    return clock


def close_after_the_first_answer(fake: FakeBinance, clock: Clock, symbol: str, open_time: int) -> list[int]:
    """Once the exchange has answered the first klines request, the candle at `open_time` closes
    with other values and the clock passes the minute. Returns the hook's call log."""
    calls: list[int] = []

    def hook(params: Mapping[str, str]) -> None:
        calls.append(int(params["startTime"]))
        if len(calls) == 1:
            fake.update_kline(
                symbol, "1m", open_time, trades=2788, close="1.23450000", high="99999.00000000", low="1.00000000"
            )
            clock.start += 2.0  # 10:01:01.9: past the minute and the client's clock-skew allowance

    fake.after_klines = hook
    return calls


def as_stored(row: list[Any]) -> tuple[Any, ...]:
    return tuple(row[:11])


async def test_a_candle_open_when_fetched_is_not_stored_closed_when_the_minute_turns_before_the_write(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """The candle the exchange served while open is stored as open, and the next run stores its final values."""
    clock = nearly_frozen(fake, BEFORE_THE_MINUTE_TURNS)
    fake.generate_klines("BTCUSDT", "1m", M - 99 * MINUTE, 100)  # the last one, 10:00, is open
    close_after_the_first_answer(fake, clock, "BTCUSDT", M)
    async with serve_app(make_settings(), clock) as api:
        await api.wait_idle()
        first = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
        assert first["status"] == "completed", first
        after_first = await stored(db, "BTCUSDT", "1m")
        second = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
        assert second["status"] == "completed", second

    # After the first run: every row marked closed holds the exchange's final values.
    final = {row[0]: as_stored(row) for row in fake.get_klines("BTCUSDT", "1m")}
    assert len(after_first) == 100
    for row in after_first:
        if row["is_closed"]:
            assert tuple(row.values())[:11] == final[row["open_time"]], row
    assert after_first[-1]["is_closed"] is False
    # After the second: the candle is final and closed.
    rows = await stored(db, "BTCUSDT", "1m")
    assert [tuple(r.values())[:11] for r in rows] == list(final.values())
    assert all(r["is_closed"] for r in rows)
    assert rows[-1]["trades"] == 2788


async def test_a_full_last_page_is_continued_from_its_open_candle(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """When the last page is full (history a multiple of the page) and the minute turns, the candle
    it ended on open is read again in the same run and stored final, before any newer candle."""
    clock = nearly_frozen(fake, BEFORE_THE_MINUTE_TURNS)
    # 1,000 candles up to 10:00 (open), and 10:01, which exists only once the minute has turned.
    fake.generate_klines("ETHUSDT", "1m", M - 999 * MINUTE, 1001)
    calls = close_after_the_first_answer(fake, clock, "ETHUSDT", M)
    async with serve_app(make_settings(default_history_candles=1000), clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["ETHUSDT"], ["1m"]))
    assert task["status"] == "completed", task

    # The continuation re-read 10:00 rather than starting after it.
    assert calls == [M - 999 * MINUTE, M]
    final = [as_stored(row) for row in fake.get_klines("ETHUSDT", "1m")]
    rows = await stored(db, "ETHUSDT", "1m")
    assert [tuple(r.values())[:11] for r in rows] == final
    assert [r["is_closed"] for r in rows] == [True] * 1000 + [False]  # 10:01 is open at 10:01:01.9
    assert rows[-2]["trades"] == 2788


async def test_the_next_run_starts_at_the_oldest_candle_stored_open(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A candle stored as open is re-read by the next run even if newer candles were stored after it."""
    clock = nearly_frozen(fake, M + 30_000)
    fake.generate_klines("XRPETH", "1m", M - 9 * MINUTE, 10)
    async with serve_app(make_settings(), clock) as api:
        await api.wait_idle()
        await api.wait(await api.start(["XRPETH"], ["1m"]))
        # As if an earlier version had stored newer closed candles after an open one.
        await db.execute(
            "UPDATE klines SET is_closed = false, trades = 1 WHERE open_time = $1", M - 5 * MINUTE
        )
        fake.reset_stats()
        task = await api.wait(await api.start(["XRPETH"], ["1m"]))
    assert task["status"] == "completed", task
    assert [r.params["startTime"] for r in fake.requests if r.path == "/api/v3/klines"] == [str(M - 5 * MINUTE)]
    rows = await stored(db, "XRPETH", "1m")
    assert [tuple(r.values())[:11] for r in rows] == [as_stored(row) for row in fake.get_klines("XRPETH", "1m")]
    assert [r["is_closed"] for r in rows] == [True] * 9 + [False]
