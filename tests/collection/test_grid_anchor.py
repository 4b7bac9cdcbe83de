"""Where a venue does not document its grid (Kraken's weeks), each series learns it from the venue's
answers and keeps it: candles on that grid are stored, not quarantined, and coverage counts them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from service.settings import Settings
from tests.conftest import Clock, serve_app
from tests.fakes.kraken import FakeKraken

DAY_S = 86_400
WEEK_S = 7 * DAY_S
# Monday 2026-11-30 00:00 UTC: the epoch was a Thursday, so Monday weeks sit 4 days off its grid.
MONDAY = 1_795_996_800
assert (MONDAY - 4 * DAY_S) % WEEK_S == 0


def weekly_rows(first: int, count: int) -> list[list[Any]]:
    return [
        [first + i * WEEK_S, "100.5", "110.25", "99.125", "105.0", "104.1", "12.00000001", 40 + i]
        for i in range(count)
    ]


async def test_kraken_weeks_opening_on_monday_are_learnt_and_stored(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """Kraken's weekly candles open on Monday here (not on the epoch's Thursday, the first guess):
    one request learns that, the series keeps it, every closed week is stored with its exact
    values, none is quarantined, and /coverage finds no hole in the collected weeks."""
    now = MONDAY + 3 * DAY_S  # mid-week: the last week is open
    clock = Clock(start=now)
    async with FakeKraken(rate_limit=None, now_ms=clock.ms) as kraken:
        kraken.add_symbol("XXBTZUSD", base="XXBT", quote="ZUSD", altname="XBTUSD", wsname="XBT/USD")
        kraken.set_klines("XXBTZUSD", "1w", weekly_rows(MONDAY - 29 * WEEK_S, 30))
        settings = make_settings(exchanges="kraken", kraken_api_url=kraken.url, kraken_retry_wait=0.01)
        async with serve_app(settings, clock) as api:
            body = {"symbols": ["BTC/USD"], "timeframes": ["1w"], "exchange": "kraken", "start": "listing"}
            response = await api.http.post("/api/v1/data-collector/start", json=body)
            assert response.status_code == 202, response.text
            task = await api.wait(response.json()["task_id"])
            assert task["status"] == "completed", task
            [series] = task["result"]["pairs"]
            assert (series["candles_written"], series["candles_quarantined"]) == (30, 0)
            offset = await db.fetchval("SELECT grid_offset_ms FROM series WHERE exchange = 'kraken'")
            assert offset == 4 * DAY_S * 1000

            klines = (await api.http.get(
                "/api/v1/klines", params={"exchange": "kraken", "symbol": "XBTUSD", "timeframe": "1w", "limit": 100}
            )).json()
            assert klines["symbol"] == "XXBTZUSD"
            assert [k["open_time"][:10] for k in klines["klines"][:2]] == ["2026-05-11", "2026-05-18"]  # Mondays
            assert [k["is_closed"] for k in klines["klines"]] == [True] * 29 + [False]
            assert {(k["open"], k["high"], k["low"], k["volume"]) for k in klines["klines"][:-1]} == {
                ("100.5", "110.25", "99.125", "12.00000001")
            }
            coverage = (await api.http.get(
                "/api/v1/coverage", params={"exchange": "kraken", "symbol": "XXBTZUSD", "timeframe": "1w"}
            )).json()
            assert coverage["holes"] == [] and coverage["complete"], coverage
            assert coverage["candles_verified"] == 29
