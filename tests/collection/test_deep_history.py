"""Coarse timeframes with a history deeper than the exchange's (or than 1970) start at the first candle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from service.settings import Settings
from tests.collection.test_collect import T0, frozen_at, stored
from tests.conftest import serve_app
from tests.fakes.binance import FakeBinance, interval_open, interval_shift

LISTING = 1_502_928_000_000  # 2017-08-17 00:00 UTC, when Binance's first pairs opened
TIMEFRAMES = ["1d", "3d", "1w", "1M"]


def candles_since_listing(timeframe: str) -> int:
    """How many candles from the listing to the one open at T0, both included."""
    count, open_time, last = 1, interval_open(timeframe, LISTING), interval_open(timeframe, T0)
    while open_time < last:
        open_time, count = interval_shift(timeframe, open_time, 1), count + 1
    return count


async def test_coarse_timeframes_with_20000_candles_of_history_start_at_the_listing(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """DEFAULT_HISTORY_CANDLES=20000 on 1d, 3d, 1w and 1M stores each series whole, from its first candle."""
    clock = frozen_at(fake, T0)
    expected: dict[str, list[list[Any]]] = {}
    for timeframe in TIMEFRAMES:
        rows = fake.generate_klines("BTCUSDT", timeframe, LISTING, candles_since_listing(timeframe))
        assert rows[-1][0] == interval_open(timeframe, T0)  # the series reaches the present
        expected[timeframe] = rows
    async with serve_app(make_settings(default_history_candles=20_000), clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["BTCUSDT"], TIMEFRAMES), timeout=30)
    assert task["status"] == "completed", task
    for timeframe, rows in expected.items():
        got = await stored(db, "BTCUSDT", timeframe)
        assert [tuple(r.values())[:11] for r in got] == [tuple(row[:11]) for row in rows], timeframe
        assert [r["is_closed"] for r in got] == [True] * (len(rows) - 1) + [False], timeframe
