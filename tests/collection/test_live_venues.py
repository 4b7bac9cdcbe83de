"""Live configs on Bybit and OKX: each venue's kline stream (a fake strict as the venue: Bybit's 10
topics a subscribe and its ping, OKX's /business channels and its text ping) into klines, read back
through the API; a dropped stream healed over REST."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.settings import Settings
from tests.collection.test_live import until
from tests.collection.test_venues import MINUTE, OPEN, candles, iso, kit_for, ms_of, settings_for
from tests.conftest import Api, Clock, serve_app
from tests.fakes.binance import FakeBinance
from tests.fakes.bybit_stream import FakeBybitStream
from tests.fakes.okx_stream import FakeOkxStream

CONFIGS = "/api/v1/admin/data-collection/configs"
STREAMS: dict[str, tuple[Callable[..., Any], str]] = {
    "bybit": (FakeBybitStream, "kline.1.BTCUSDT"),
    "okx": (FakeOkxStream, "candle1m:BTC-USDT"),
}


def row(open_ms: int, close: str) -> list[Any]:
    """A kline as the fakes take it (Binance's REST row): they send it in their venue's shape."""
    return [open_ms, "100.0", "101.5", "99.5", close, "12.25", open_ms + MINUTE - 1, "1234.5", 42, "6.0", "600.0", "0"]


async def live_of(api: Api, name: str) -> dict[str, Any] | None:
    for conn in (await api.http.get("/api/v1/live")).json():
        for series in conn["series"]:
            if series["stream"] == name:
                return series | {"connection": conn}
    return None


async def candle(api: Api, venue: str, symbol: str, open_ms: int) -> dict[str, Any] | None:
    return next((c for c in await candles(api, venue, symbol, "1m", open_ms) if ms_of(c["open_time"]) == open_ms), None)


@pytest.mark.parametrize("venue", sorted(STREAMS))
async def test_a_live_config_on_the_venue_stores_its_closes_and_heals_a_dropped_stream(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """A live config on the venue (symbol given as BASE/QUOTE) is subscribed under the venue's own
    stream name, healed over REST, keeps its open candle current and stores the close the venue
    marks, final; after every connection is cut it reconnects and is fresh again, with no hole."""
    clock = Clock(start=(OPEN + 55_000) / 1000, speed=2)
    make_stream, name = STREAMS[venue]
    async with kit_for(venue, fake, clock) as kit, make_stream(now_ms=clock.ms) as stream:
        kit.generate("1m", OPEN - 20 * MINUTE, 20 + 5)  # to the open candle, and the minutes to come
        settings = settings_for(make_settings, kit, **{f"{venue}_ws_url": stream.url})
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            body = {"symbol": kit.spellings[0], "exchange": venue, "timeframes": ["1m"], "live": True}
            response = await api.http.post(CONFIGS, json=body)
            assert response.status_code == 201, response.text
            await stream.wait_subscribed([name], timeout=10)
            await until(lambda: _fresh(api, name), what="healed")
            history = await candles(api, venue, kit.symbol, "1m", OPEN - 20 * MINUTE)

            await stream.push(name, row(OPEN, "100.75"), closed=False)
            opened = await until(lambda: _with(api, venue, kit.symbol, close="100.75"), what="open candle")
            await until(lambda: clock.ms() >= OPEN + MINUTE, what="the minute over")
            await stream.push(name, row(OPEN, "100.125"), closed=True)
            closed = await until(lambda: _with(api, venue, kit.symbol, is_closed=True), timeout=3, what="close")

            await stream.drop_all()
            await until(lambda: _reconnected(api, name), timeout=15, what="fresh after the drop")
            response = await api.http.get(
                "/api/v1/coverage",
                params={"exchange": venue, "symbol": kit.symbol, "timeframe": "1m", "start": iso(OPEN - 20 * MINUTE),
                        "end": iso(OPEN + MINUTE)},
            )  # fmt: skip
            violations = stream.violations

    assert [ms_of(c["open_time"]) for c in history][:20] == [OPEN - (20 - i) * MINUTE for i in range(20)]
    assert (opened["is_closed"], closed["close"], closed["is_closed"]) == (False, "100.125", True)
    cover = response.json()
    assert (cover["complete"], cover["holes"]) == (True, []), cover
    assert violations == 0


async def _fresh(api: Api, name: str) -> bool:
    series = await live_of(api, name)
    return series is not None and series["fresh"]


async def _reconnected(api: Api, name: str) -> bool:
    series = await live_of(api, name)
    return series is not None and series["fresh"] and series["connection"]["reconnects"] >= 1


async def _with(api: Api, venue: str, symbol: str, **fields: Any) -> dict[str, Any] | None:
    found = await candle(api, venue, symbol, OPEN)
    if found is not None and all(found[k] == v for k, v in fields.items()):
        return found
    return None


@pytest.mark.parametrize("venue", ["coinbase", "kraken"])
async def test_a_live_config_on_a_venue_without_a_usable_stream_is_closed_over_rest_at_each_close(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Coinbase Exchange has no candle stream and Kraken's has no closed marker: a live config there
    is read over REST just after each candle's close time, so each close is stored final within
    seconds, with no interval and no scheduled run."""
    clock = Clock(start=(OPEN + 30_000) / 1000, speed=10)  # a minute in 6 s
    async with kit_for(venue, fake, clock) as kit:
        kit.generate("1m", OPEN - 20 * MINUTE, 20 + 10)  # to the open candle, and the minutes to come
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            body = {"symbol": kit.spellings[0], "exchange": venue, "timeframes": ["1m"], "live": True}
            response = await api.http.post(CONFIGS, json=body)
            assert response.status_code == 201, response.text
            name = f"{kit.symbol}@1m"
            await until(lambda: _fresh(api, name), what="the first read")
            closed = await until(
                lambda: _with(api, venue, kit.symbol, is_closed=True), timeout=15, what="the open candle closed"
            )
            stored_at = clock.ms()
            seen = await live_of(api, name)
    final = kit.final("1m")[OPEN]
    assert closed["close"] == final[3]
    assert OPEN + MINUTE <= stored_at < OPEN + MINUTE + 15_000  # read just after its close time
    assert seen is not None and seen["connection"]["exchange"] == venue
