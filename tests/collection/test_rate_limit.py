"""The weight budget, learnt from exchangeInfo, is used but never exceeded."""

from __future__ import annotations

from collections.abc import Callable

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0
from tests.conftest import Clock, serve_app
from tests.fakes.binance import FakeBinance


async def test_a_budget_of_600_learnt_from_exchange_info_is_never_exceeded(
    make_settings: Callable[..., Settings],
) -> None:
    """Against an exchange that allows 600 weight a minute, a collection needing ~1,000 weight
    spreads over minute windows, uses most of a full one, and never draws a 429.

    Time runs 30× faster for the fake and the service alike (one minute window per two seconds:
    at 60x a full window needed ~290 requests a second, which a loaded CI machine missed once).
    """
    clock = Clock(start=T0 / 1000, speed=30)
    async with FakeBinance(weight_limit=600, now_ms=clock.ms) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", T0 - 10 * MINUTE, 5)
        # 480 pages of 1000 one-minute candles: 480 requests × 2 weight (empty pages weigh the same).
        settings = make_settings(binance_api_url=fake.url, default_history_candles=480_000)
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]
            assert (status["weight_limit"], status["weight_budget"]) == (600, 582)
            task = await api.wait(await api.start(["BTCUSDT"], ["1m"]), timeout=30)
    assert task["status"] == "completed", task
    assert 429 not in fake.status_counts and 418 not in fake.status_counts
    windows = [w for _, w in sorted(fake.windows.items())]
    assert max(w.used for w in windows) <= 600
    assert sum(w.used for w in windows) == 20 + 480 * 2
    assert len(windows) >= 2
    # A full window is used, not wasted. (Not necessarily the first: at 60x, the collection may
    # start late in the window that exchangeInfo opened.)
    assert max(w.used for w in windows) >= 0.9 * 600


async def test_an_override_beats_the_learnt_limit(make_settings: Callable[..., Settings]) -> None:
    """BINANCE_WEIGHT_LIMIT replaces whatever exchangeInfo says."""
    async with FakeBinance(weight_limit=6000) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        async with serve_app(make_settings(binance_api_url=fake.url, binance_weight_limit=300)) as api:
            await api.wait_idle()
            status = (await api.http.get("/api/v1/data-collector/status")).json()["rate_limiter"]
    assert status["weight_limit"] == 300
    assert status["weight_budget"] == 291
