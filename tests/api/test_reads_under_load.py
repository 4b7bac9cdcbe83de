"""Reads under load: /health never queues behind the pool, reads wait for a connection rather than
fail, and /klines bodies (now built by PostgreSQL) are exactly what the API has always returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec

from service.api.klines import Candle, Candles
from service.api.schemas import datetime_to_ms, ms_to_datetime
from service.db.health import HealthProbe
from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at, stored
from tests.conftest import Api, running_app, serve_app
from tests.fakes.binance import FakeBinance

KLINES = "/api/v1/klines"
STATUS = "/api/v1/data-collector/status"


def reference_body(
    rows: list[asyncpg.Record], symbol: str, timeframe: str, *, start: str | None = None, end: str | None = None,
    limit: int = 500,
) -> bytes:
    """The body as the route encoded it before PostgreSQL built it: the stored rows, selected in Python,
    through the documented Candles struct and msgspec."""
    start_ms = None if start is None else datetime_to_ms(datetime.fromisoformat(start))
    end_ms = None if end is None else datetime_to_ms(datetime.fromisoformat(end))
    upto_end = [r for r in rows if end_ms is None or r["open_time"] <= end_ms]
    chosen = upto_end[-limit:] if start_ms is None else [r for r in upto_end if r["open_time"] >= start_ms][:limit]
    candles = [
        Candle(
            open_time=ms_to_datetime(r["open_time"]), open=r["open"], high=r["high"], low=r["low"], close=r["close"],
            volume=r["volume"], close_time=ms_to_datetime(r["close_time"]), quote_volume=r["quote_volume"],
            trades=r["trades"], taker_buy_base_volume=r["taker_buy_base_volume"],
            taker_buy_quote_volume=r["taker_buy_quote_volume"], is_closed=r["is_closed"],
        )
        for r in chosen
    ]
    return msgspec.json.encode(
        Candles(exchange="binance", symbol=symbol, timeframe=timeframe, count=len(candles), klines=candles)
    )


def assert_consistent(response: httpx.Response, limit: int) -> dict[str, Any]:
    """A 200 klines page: ordered oldest first, `count` equal to its length, no more than `limit`."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    times = [k["open_time"] for k in body["klines"]]
    assert body["count"] == len(times) <= limit
    assert times == sorted(set(times)), "not strictly ascending"
    return body


async def collect(api: Api, symbol: str) -> None:
    task = await api.wait(await api.start([symbol], ["1m"]))
    assert task["status"] == "completed", task


async def test_health_answers_while_every_pool_connection_is_held(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """/health answers 200 while every pool connection is taken; a /klines read meanwhile waits, then answers 200."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    settings = make_settings(db_pool_min=1, db_pool_max=3, db_write_connections=1, scheduler_enabled=False)
    async with running_app(settings, clock) as api:
        await collect(api, "BTCUSDT")
        pool = api.app.state.runtime.pool
        acquired = asyncio.Event()

        async def hold_every_connection() -> None:
            connections = [await pool.acquire() for _ in range(pool.get_max_size())]
            acquired.set()
            await asyncio.sleep(3)
            for conn in connections:
                await pool.release(conn)

        holder = asyncio.create_task(hold_every_connection())
        await acquired.wait()
        klines = asyncio.create_task(api.http.get(KLINES, params={"symbol": "BTCUSDT", "timeframe": "1m"}))
        healths = await asyncio.gather(*(api.http.get("/health") for _ in range(40)))
        # Every /health answer came while the pool was still fully held, and the read is still waiting.
        assert not holder.done()
        assert not klines.done()
        assert [(h.status_code, h.json()) for h in healths] == [(200, {"status": "ok", "database": "ok"})] * 40
        await holder
        body = assert_consistent(await klines, 500)
    assert body["count"] == 100


async def test_concurrent_health_checks_share_one_round_trip(db_dsn: str) -> None:
    """40 health checks at once cost one check of the database; checks within 0.2 s of it cost none; a later
    one answers at once and refreshes in the background; past 0.5 s a check waits for the database again."""

    class CountingProbe(HealthProbe):
        checks = 0

        async def _check(self) -> None:
            self.checks += 1
            await super()._check()

    now = 1000.0
    probe = CountingProbe(db_dsn, refresh_after=0.2, max_age=0.5, clock=lambda: now)
    try:
        await asyncio.gather(*(probe.ping() for _ in range(40)))
        assert probe.checks == 1
        now += 0.19
        await probe.ping()
        assert probe.checks == 1
        now += 0.02  # 0.21 s old: answered from the last check, one check starts beside it
        await asyncio.gather(*(probe.ping() for _ in range(10)))
        assert probe.checks == 2
        async with asyncio.timeout(10):
            while probe._answer.reading:  # let it finish
                await asyncio.sleep(0.01)
        now += 0.6  # older than max_age: wait for a check
        await probe.ping()
        assert probe.checks == 3
    finally:
        await probe.close()


async def test_health_reopens_its_connection_after_it_was_cut(api: Api, db: asyncpg.Connection[Any]) -> None:
    """/health stays 200 after its own database connection was terminated: a fresh one answers at once."""
    assert (await api.http.get("/health")).status_code == 200
    cut = await db.fetchval(
        """
        SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'kline-collector health' AND datname = current_database()
        """
    )
    assert cut == 1
    health = await api.http.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "database": "ok"})


async def test_klines_bodies_are_byte_for_byte_what_the_api_always_returned(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """Every /klines variant returns the very bytes msgspec wrote from the stored rows: nulls, open candle, times."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 1499 * MINUTE, 1500)
    async with running_app(make_settings(default_history_candles=1500, scheduler_enabled=False), clock) as api:
        await collect(api, "BTCUSDT")
        # Older exchange exports lack the quote volume, trade count and taker volumes.
        await db.execute(
            """
            UPDATE klines SET quote_volume = NULL, trades = NULL, taker_buy_base_volume = NULL,
                              taker_buy_quote_volume = NULL
             WHERE open_time IN (SELECT open_time FROM klines ORDER BY open_time LIMIT 3 OFFSET 1000)
            """
        )
        rows = await stored(db, "BTCUSDT", "1m")
        assert rows[-1]["is_closed"] is False and rows[-2]["is_closed"] is True
        assert sum(r["trades"] is None for r in rows) == 3
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({}, {}),
            ({"symbol": "BTC/USDT", "limit": 3}, {"limit": 3}),
            ({"limit": 5000}, {"limit": 5000}),
            ({"limit": 1}, {"limit": 1}),
            ({"start": "2026-11-24T09:00:00Z"}, {"start": "2026-11-24T09:00:00Z"}),
            ({"start": "2026-11-23T10:00:00Z", "limit": 1000},  # across the nulls
             {"start": "2026-11-23T10:00:00Z", "limit": 1000}),
            ({"start": "2026-11-24T09:00:30", "end": "2026-11-24T09:04:59"},  # naive means UTC
             {"start": "2026-11-24T09:00:30+00:00", "end": "2026-11-24T09:04:59+00:00"}),
            ({"end": "2026-11-24T09:04:59.999Z", "limit": 4}, {"end": "2026-11-24T09:04:59.999Z", "limit": 4}),
            ({"symbol": "btcusdt", "end": "2026-11-24T10:00:00Z"}, {"end": "2026-11-24T10:00:00Z"}),
            ({"start": "2026-11-25T00:00:00Z"}, {"start": "2026-11-25T00:00:00Z"}),  # after the newest: empty
            ({"end": "2020-01-01T00:00:00Z"}, {"end": "2020-01-01T00:00:00Z"}),  # before the oldest: empty
        ]
        for params, selection in cases:
            query = {"symbol": "BTCUSDT", "timeframe": "1m", **params}
            response = await api.http.get(KLINES, params=query)
            assert response.status_code == 200, (query, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.content == reference_body(rows, "BTCUSDT", "1m", **selection), query
        # A series never collected: the same empty page as always.
        empty = await api.http.get(KLINES, params={"symbol": "BTCUSDT", "timeframe": "5m", "limit": 5000})
        assert empty.content == reference_body([], "BTCUSDT", "5m")
    newest = msgspec.json.decode(reference_body(rows, "BTCUSDT", "1m", limit=1))["klines"][0]
    assert (newest["open_time"], newest["close_time"]) == ("2026-11-24T10:00:00Z", "2026-11-24T10:00:59.999000Z")


async def test_symbols_resolve_as_before(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """BASE/QUOTE and any case resolve; a delisted but collected symbol stays readable; unknown ones are 422."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 9 * MINUTE, 10)
    async with running_app(make_settings(scheduler_enabled=False), clock) as api:
        await collect(api, "BTCUSDT")
        rows = await stored(db, "BTCUSDT", "1m")

        async def get(symbol: str, timeframe: str = "1m") -> httpx.Response:
            return await api.http.get(KLINES, params={"symbol": symbol, "timeframe": timeframe})

        for name in ("BTCUSDT", "btc/usdt", " BtcUsdt "):
            assert (await get(name)).content == reference_body(rows, "BTCUSDT", "1m"), name
        # Listed but never collected: an empty page, as before.
        assert (await get("ETH/USDT")).content == reference_body([], "ETHUSDT", "1m")
        for name in ("NOPE", "NOPE/USDT"):
            response = await get(name)
            assert response.status_code == 422, response.text
            assert response.json()["extra"] == {"unknown_symbols": [name]}
        await db.execute("DELETE FROM symbols WHERE symbol = 'BTCUSDT'")  # delisted since
        assert (await get("btcusdt")).content == reference_body(rows, "BTCUSDT", "1m")
        assert (await get("BTCUSDT", "1h")).content == reference_body([], "BTCUSDT", "1h")
        assert (await get("BTC/USDT")).status_code == 422  # BASE/QUOTE needs the listing


async def test_concurrent_readers_during_a_backfill_get_no_5xx(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """40 concurrent readers of /health, /status and /klines during a backfill all get 200 and consistent pages."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 1499 * MINUTE, 1500)
    backfill = 30_000
    fake.generate_klines("ETHUSDT", "1m", T0 - (backfill - 1) * MINUTE, backfill)
    # Four pool connections, two of them for the writers: readers must queue for the other two.
    settings = make_settings(
        default_history_candles=backfill, db_pool_max=4, db_write_connections=2, scheduler_enabled=False
    )
    async with running_app(settings, clock) as api:
        await collect(api, "BTCUSDT")  # the fake has only 1,500 of them: a short run
        task_id = await api.start(["ETHUSDT"], ["1m"])

        def request(i: int) -> Any:
            route = i % 4
            if route == 0:
                return api.http.get("/health")
            if route == 1:
                return api.http.get(STATUS)
            symbol = "BTCUSDT" if i % 8 < 4 else "ETHUSDT"
            limit = 100 if route == 2 else 1000
            return api.http.get(KLINES, params={"symbol": symbol, "timeframe": "1m", "limit": limit})

        rounds_while_collecting = 0
        async with asyncio.timeout(60):
            for _ in range(200):
                collecting = (await api.task(task_id))["status"] in ("pending", "running")
                responses = await asyncio.gather(*(request(i) for i in range(40)))
                assert not [r.status_code for r in responses if r.status_code >= 500], [r.text for r in responses]
                for i, response in enumerate(responses):
                    assert response.status_code == 200, response.text
                    if i % 4 >= 2:
                        body = assert_consistent(response, 100 if i % 4 == 2 else 1000)
                        if body["symbol"] == "BTCUSDT":
                            assert body["count"] == (100 if i % 4 == 2 else 1000)
                rounds_while_collecting += collecting
                if not collecting:
                    break
        task = await api.wait(task_id)
    assert task["status"] == "completed", task
    assert rounds_while_collecting >= 1


async def test_reads_answer_503_with_retry_after_when_the_database_is_gone(
    settings: Settings, pg_dsn: str, db_dsn: str
) -> None:
    """With the database gone, /health and reads answer 503 with a Retry-After header, not 500."""
    async with serve_app(settings) as api:
        await api.wait_idle()
        # Answered (and kept for a moment) before the database goes: what is kept must not outlive it. Their
        # clocks stand still, so the answers never age: only the lost connections can set them aside.
        runtime = api.app.state.runtime
        runtime.health._answer._clock = runtime.status_reads._clock = lambda: 1000.0
        async with asyncio.timeout(10):
            while True:
                assert (await api.http.get("/health")).status_code == 200
                assert (await api.anonymous.get(STATUS)).status_code == 200
                if runtime.status_reads._value is not None:
                    break
                await asyncio.sleep(0.05)
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{urlsplit(db_dsn).path.lstrip("/")}" WITH (FORCE)')
        finally:
            await admin.close()
        health = await api.http.get("/health")
        reads = [
            await api.http.get(KLINES, params={"symbol": "BTCUSDT", "timeframe": "1m"}),
            await api.http.get(STATUS),
            await api.anonymous.get(STATUS),  # no token: no account to look up first
            await api.http.get("/api/v1/data-collector/tasks"),
        ]
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert int(health.headers["retry-after"]) > 0
    for response in reads:
        assert response.status_code == 503, response.text
        assert response.json()["status_code"] == 503
        assert int(response.headers["retry-after"]) > 0
