"""Live configs through the whole pipeline: Binance's kline stream (a fake the tests own, strict as the
venue) into klines, read back through the API as users read it; a dropped stream healed over REST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0
from tests.conftest import Api, Clock, serve_app
from tests.fakes.binance import FakeBinance
from tests.fakes.binance_stream import FakeBinanceStream

CONFIGS = "/api/v1/admin/data-collection/configs"
STREAM = "btcusdt@kline_1m"
#: The candle open when the clock starts (T0 is 30 s into it).
OPEN = T0 - T0 % MINUTE


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def row(open_ms: int, close: str, *, high: str = "101.5", volume: str = "12.25") -> list[Any]:
    """A Binance REST kline row (the fake stream builds its event from it)."""
    return [open_ms, "100.0", high, "99.5", close, volume, open_ms + MINUTE - 1, "1234.5", 42, "6.0", "600.0", "0"]


async def until(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            found = check()
            if asyncio.iscoroutine(found):
                found = await found
            if found:
                return found
            await asyncio.sleep(0.02)


async def candles(api: Api, start_ms: int) -> dict[int, dict[str, Any]]:
    response = await api.http.get(
        "/api/v1/klines", params={"symbol": "BTCUSDT", "timeframe": "1m", "start": iso(start_ms), "limit": "1000"}
    )
    assert response.status_code == 200, response.text
    return {ms_of(c["open_time"]): c for c in response.json()["klines"]}


def samples(text: str) -> dict[str, float]:
    """The Binance samples of the live metrics, by sample name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name.startswith("kline_live_") and sample.labels.get("exchange") == "binance"
        and "le" not in sample.labels
    }


async def live_series(api: Api) -> dict[str, Any] | None:
    response = await api.http.get("/api/v1/live")
    assert response.status_code == 200, response.text
    for conn in response.json():
        for series in conn["series"]:
            if series["stream"] == STREAM:
                return series | {"connection": conn}
    return None


@asynccontextmanager
async def live_service(
    fake: FakeBinance, make_settings: Callable[..., Settings], clock: Clock, **stream_options: Any
) -> AsyncIterator[tuple[Api, FakeBinanceStream, dict[str, Any]]]:
    """The service on the fakes, with BTCUSDT 1m configured live and healed (fresh)."""
    fake.now_ms = clock.ms
    async with (
        FakeBinanceStream(now_ms=clock.ms, **stream_options) as stream,
        serve_app(make_settings(binance_ws_url=stream.url), clock) as api,
    ):
        await api.wait_idle()
        response = await api.http.post(CONFIGS, json={"symbol": "BTC/USDT", "timeframes": ["1m"], "live": True})
        assert response.status_code == 201, response.text
        await stream.wait_subscribed([STREAM], timeout=10)
        await until(lambda: _fresh(api), what="healed")
        yield api, stream, response.json()


async def _fresh(api: Api) -> bool:
    series = await live_series(api)
    return series is not None and series["fresh"]


async def test_a_live_config_stores_each_close_at_once_and_keeps_the_open_candle_current(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A config with `live: true` and no interval is streamed: its history is filled over REST, the
    open candle the stream updates is readable through /klines as open with its latest values, and
    the close the stream marks (`k.x`) is stored at once, final, with the venue's exact decimals;
    the scheduler never runs it; /api/v1/live shows the connection and the series."""
    clock = Clock(start=(OPEN + 55_000) / 1000)  # five seconds before the open candle closes
    fake.generate_klines("BTCUSDT", "1m", OPEN - 60 * MINUTE, 60)  # the hour before, closed
    async with (
        live_service(fake, make_settings, clock) as (api, stream, config),
        api.app.state.runtime.events.subscribe() as events,
    ):
        history = await candles(api, OPEN - 60 * MINUTE)
        await stream.push(STREAM, row(OPEN, "100.25"), closed=False)
        await stream.push(STREAM, row(OPEN, "100.75", high="102.0"), closed=False)
        opened = await until(lambda: _candle_with(api, OPEN, close="100.75"), what="open candle flushed")
        await until(lambda: clock.ms() >= OPEN + MINUTE, what="the minute over")
        await stream.push(STREAM, row(OPEN, "100.12345678901234567890", volume="13.000000000000000001"), closed=True)
        closed = await until(lambda: _candle_with(api, OPEN, is_closed=True), timeout=3, what="close stored")
        told = []
        while not any(e["is_closed"] for e in told):
            event = await asyncio.wait_for(events.get(), 5)
            if event is not None and event.get("type") == "candle":
                told.append(event)
        seen = await until(lambda: _live_closed_at(api, OPEN), what="/api/v1/live (published each second)")
        metrics = samples((await api.http.get("/metrics")).text)
        runs = await db.fetchval(
            "SELECT count(*) FROM job_execution_logs WHERE job_name = $1", f"collect_data_{config['id']}"
        )

    assert (config["live"], config["interval_minutes"], config["next_run_at"]) == (True, None, None)
    assert [t for t in history if t < OPEN] == [OPEN - i * MINUTE for i in range(60, 0, -1)]  # healed over REST
    assert (opened["is_closed"], opened["high"]) == (False, "102.0")
    assert (closed["close"], closed["volume"]) == ("100.12345678901234567890", "13.000000000000000001")
    assert seen is not None
    assert seen["fresh"] and ms_of(seen["last_closed_open_time"]) == OPEN
    assert seen["connection"]["exchange"] == "binance" and STREAM in seen["connection"]["streams"]
    assert seen["connection"]["connected"] and seen["connection"]["messages"] >= 3
    assert runs == 0  # never scheduled
    # The event stream told of the open candle (as flushed: its latest values then) and of the close.
    said = {(e["open_time"], e["close"], e["is_closed"]) for e in told}
    assert {(OPEN, "100.75", False), (OPEN, "100.12345678901234567890", True)} <= said
    assert said <= {(OPEN, "100.25", False), (OPEN, "100.75", False), (OPEN, "100.12345678901234567890", True)}
    assert metrics["kline_live_connections"] == 1
    assert metrics["kline_live_messages_total"] >= 3
    assert metrics["kline_live_close_lag_seconds_count"] == 1
    assert metrics["kline_live_close_lag_seconds_sum"] < 5  # pushed a moment after its close
    assert stream.violations == 0


async def _live_closed_at(api: Api, open_ms: int) -> dict[str, Any] | None:
    series = await live_series(api)
    closed = None if series is None else series["last_closed_open_time"]
    return series if closed is not None and ms_of(closed) == open_ms else None


async def _candle_with(api: Api, open_ms: int, **fields: Any) -> dict[str, Any] | None:
    found = (await candles(api, open_ms)).get(open_ms)
    if found is not None and all(found[k] == v for k, v in fields.items()):
        return found
    return None


async def test_a_stream_dropped_mid_minute_is_healed_over_rest_before_the_series_is_fresh_again(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """The stream goes silent, then the connection is cut; meanwhile three minutes closed that it never
    sent. The service reconnects, fetches those minutes over REST, and only then reports the series
    fresh; /coverage shows the whole range verified, no hole, every candle as the venue has it."""
    clock = Clock(start=T0 / 1000, speed=30)  # a minute in 2 s
    fake.generate_klines("BTCUSDT", "1m", OPEN - 30 * MINUTE, 30 + 10)  # and the minutes to come
    async with live_service(fake, make_settings, clock) as (api, stream, _):
        stream.stall()
        outage_from = clock.ms()
        # Until three whole minutes have closed since the stream went silent.
        await until(lambda: clock.ms() >= outage_from - outage_from % MINUTE + 4 * MINUTE + 5_000, timeout=20)
        await stream.drop_all()
        stream.stall(False)
        await until(lambda: _reconnected_and_fresh(api), timeout=20, what="healed after the drop")
        last_closed = clock.ms() - clock.ms() % MINUTE - MINUTE
        got = await candles(api, OPEN - 30 * MINUTE)
        response = await api.http.get(
            "/api/v1/coverage",
            params={"symbol": "BTCUSDT", "timeframe": "1m", "start": iso(OPEN - 30 * MINUTE),
                    "end": iso(last_closed + MINUTE)},
        )  # fmt: skip

    cover = response.json()
    assert response.status_code == 200, cover
    assert (cover["complete"], cover["holes"]) == (True, []), (cover["holes"], outage_from, last_closed)
    venue = {r[0]: r for r in fake.get_klines("BTCUSDT", "1m")}
    missed = list(range(outage_from - outage_from % MINUTE, last_closed + 1, MINUTE))
    assert len(missed) >= 3
    for t in missed:
        assert got[t]["is_closed"] and got[t]["close"] == venue[t][4]


async def _reconnected_and_fresh(api: Api) -> bool:
    series = await live_series(api)
    return series is not None and series["connection"]["reconnects"] >= 1 and series["fresh"]


async def test_disabling_a_live_config_unsubscribes_its_stream(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Disabling the config stops its stream (unsubscribed, the connection let go); enabling it again
    subscribes it again."""
    clock = Clock(start=T0 / 1000)
    fake.generate_klines("BTCUSDT", "1m", OPEN - 5 * MINUTE, 5)
    async with live_service(fake, make_settings, clock) as (api, stream, config):
        response = await api.http.post(f"{CONFIGS}/{config['id']}/disable")
        assert response.status_code == 200, response.text
        await until(lambda: STREAM not in stream.subscriptions, what="unsubscribed")
        response = await api.http.post(f"{CONFIGS}/{config['id']}/enable")
        assert response.status_code == 200, response.text
        await stream.wait_subscribed([STREAM], timeout=10)


async def test_a_config_needs_an_interval_unless_it_is_live(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Without `live`, `interval_minutes` is required (422 naming it), and nothing is stored; a live
    config turned back to polling needs one too, and is then scheduled."""
    async with serve_app(make_settings()) as api:
        no_interval = await api.http.post(CONFIGS, json={"symbol": "BTCUSDT", "timeframes": ["1m"]})
        listed = await api.http.get(CONFIGS)
        live = (await api.http.post(CONFIGS, json={"symbol": "BTCUSDT", "timeframes": ["1m"], "live": True})).json()
        off_alone = await api.http.put(f"{CONFIGS}/{live['id']}", json={"live": False})
        off = await api.http.put(f"{CONFIGS}/{live['id']}", json={"live": False, "interval_minutes": 5})
    assert no_interval.status_code == 422, no_interval.text
    assert "interval_minutes" in no_interval.text
    assert listed.json() == []
    assert off_alone.status_code == 422 and "interval_minutes" in off_alone.text, off_alone.text
    assert off.status_code == 200, off.text
    assert (off.json()["live"], off.json()["interval_minutes"]) == (False, 5)
    assert off.json()["next_run_at"] is not None  # polled again, on its interval


async def test_a_close_the_stream_never_sends_is_read_over_rest_just_after_its_close_time(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """The stream shows a minute open and then says nothing more of it (a quiet symbol's close comes
    with its next trade, minutes later at times): a few seconds after its close time the service
    reads it over REST and stores it final, with the venue's values."""
    clock = Clock(start=T0 / 1000, speed=10)
    fake.generate_klines("BTCUSDT", "1m", OPEN - 10 * MINUTE, 10 + 5)  # and the minutes to come
    async with live_service(fake, make_settings, clock) as (api, stream, _):
        await stream.push(STREAM, row(OPEN, "100.25"), closed=False)  # then silence
        await until(lambda: _candle_with(api, OPEN, close="100.25"), what="open candle flushed")
        stored = await until(lambda: _candle_with(api, OPEN, is_closed=True), timeout=20, what="closed over REST")
        closed_at = clock.ms()
        late = samples((await api.http.get("/metrics")).text).get("kline_live_late_closes_total", 0)
    venue = {r[0]: r for r in fake.get_klines("BTCUSDT", "1m")}[OPEN]
    assert (stored["close"], stored["volume"]) == (venue[4], venue[5])
    assert closed_at < OPEN + MINUTE + 15_000  # a few seconds after its close, not at a reconnect
    assert late >= 1


async def test_the_venues_shutdown_notice_is_met_by_a_new_connection_before_the_old_one_closes(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Binance's `serverShutdown`: a second connection is opened and subscribed while the first goes
    on; once the stream has spoken on the new one the old one is closed. The series never stops
    being fresh (nothing to heal: no reconnect), and closes go on being stored."""
    clock = Clock(start=(OPEN + 55_000) / 1000)
    fake.generate_klines("BTCUSDT", "1m", OPEN - 10 * MINUTE, 10)
    async with live_service(fake, make_settings, clock) as (api, stream, _):
        [first] = stream.connections
        await stream.shutdown_notice()
        await until(lambda: len(stream.connections) == 2 and stream.connections[1].subscribed(STREAM), what="new one")
        freshness = [(await live_series(api) or {}).get("fresh")]
        await stream.push(STREAM, row(OPEN, "100.5"), closed=False)  # speaks on both
        await until(lambda: not first.open, what="the old connection closed")
        await until(lambda: clock.ms() >= OPEN + MINUTE, what="the minute over")
        await stream.push(STREAM, row(OPEN, "100.75"), closed=True)
        stored = await until(lambda: _candle_with(api, OPEN, is_closed=True), timeout=3, what="close stored")
        freshness.append((await live_series(api) or {}).get("fresh"))
        seen = await live_series(api)
        reconnects = samples((await api.http.get("/metrics")).text).get("kline_live_reconnects_total", 0)

    assert stream.connections_opened == 2 and first.closed_reason == "client"
    assert freshness == [True, True]
    assert stored["close"] == "100.75"
    assert seen is not None and seen["connection"]["reconnects"] == 0 and reconnects == 0


async def test_a_stream_the_venue_refuses_to_subscribe_is_never_reported_fresh(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """The venue refuses a SUBSCRIBE (here: the connection's stream cap, set to one): its error
    answer marks the series, which /api/v1/live never shows fresh, even once its REST history is
    healed; the series already streaming stays fresh."""
    clock = Clock(start=T0 / 1000)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        fake.generate_klines(symbol, "1m", OPEN - 10 * MINUTE, 10)
    async with live_service(fake, make_settings, clock, max_streams=1) as (api, stream, _):
        response = await api.http.post(CONFIGS, json={"symbol": "ETHUSDT", "timeframes": ["1m"], "live": True})
        assert response.status_code == 201, response.text
        await until(lambda: _healed_rows(db, "ETHUSDT"), what="the refused series' REST history")
        await asyncio.sleep(1.5)  # /api/v1/live is published each second
        shown = {s["stream"]: s["fresh"] for c in (await api.http.get("/api/v1/live")).json() for s in c["series"]}
    assert "ethusdt@kline_1m" not in stream.subscriptions
    assert shown == {STREAM: True, "ethusdt@kline_1m": False}


async def _healed_rows(db: asyncpg.Connection[Any], symbol: str) -> bool:
    count: int = await db.fetchval(
        "SELECT count(*) FROM klines k JOIN series s ON s.id = k.series_id WHERE s.symbol = $1", symbol
    )
    return count >= 10
