"""The data-collector and klines API: shapes users rely on, and a clear 4xx for every bad input."""

from __future__ import annotations

import uuid

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at
from tests.conftest import Api, assert_error, serve_app
from tests.fakes.binance import FakeBinance


async def test_start_answers_202_with_the_reference_shape(api: Api) -> None:
    """POST /start returns at once with task_id, status 'submitted' and a message."""
    response = await api.http.post(
        "/api/v1/data-collector/start", json={"symbols": ["BTCUSDT"], "timeframes": ["1h"]}
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"task_id", "status", "message"}
    assert body["status"] == "submitted"
    uuid.UUID(body["task_id"])
    task = await api.wait(body["task_id"])
    assert set(task) >= {
        "task_id", "task_type", "status", "progress", "message", "created_at", "started_at",
        "completed_at", "error", "result",
    }
    assert task["task_type"] == "data_collection"
    assert task["params"] == {"exchange": "binance", "symbols": ["BTCUSDT"], "timeframes": ["1h"]}


async def test_bad_start_requests_get_clear_4xx(api: Api) -> None:
    """Malformed JSON, missing or wrong fields, unknown symbols and timeframes each say what is wrong."""
    url = "/api/v1/data-collector/start"
    assert_error(await api.http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(await api.http.post(url, json={"timeframes": ["1m"]}), 400, "symbols")
    assert_error(await api.http.post(url, json={"symbols": "BTCUSDT"}), 400, "symbols")
    assert_error(await api.http.post(url, json={"symbols": []}), 422, "symbols must not be empty")
    body = assert_error(await api.http.post(url, json={"symbols": ["BTCUSDT", "NOPE/USDT"]}), 422, "'NOPE/USDT'")
    assert body["extra"]["unknown_symbols"] == ["NOPE/USDT"]
    body = assert_error(
        await api.http.post(url, json={"symbols": ["BTCUSDT"], "timeframes": ["1m", "7m"]}), 422, "'7m'"
    )
    assert body["extra"]["invalid"] == ["7m"]
    assert_error(await api.http.post(url, json={"symbols": ["BTCUSDT"], "timeframes": []}), 422, "timeframes")
    # Nothing was submitted by any of these.
    assert (await api.http.get("/api/v1/data-collector/tasks?task_type=data_collection")).json()["count"] == 0


async def test_unknown_and_malformed_task_ids(api: Api) -> None:
    """An unknown task id is 404 and a malformed one a 4xx, both JSON."""
    assert_error(await api.http.get(f"/api/v1/data-collector/task/{uuid.uuid4()}"), 404, "no task")
    response = await api.http.get("/api/v1/data-collector/task/not-a-uuid")
    assert 400 <= response.status_code < 500
    assert response.json()["status_code"] == response.status_code
    assert_error(await api.http.post(f"/api/v1/data-collector/task/{uuid.uuid4()}/cancel"), 404)


async def test_task_lists_stats_and_status(api: Api) -> None:
    """Lists filter by type, stats count by status, status reports symbols and the scheduler."""
    done = await api.wait(await api.start(["ETHUSDT"], ["1d"]))
    tasks = (await api.http.get("/api/v1/data-collector/tasks")).json()
    assert [t["task_type"] for t in tasks["tasks"]] == ["data_collection", "symbol_refresh"]
    only = (await api.http.get("/api/v1/data-collector/tasks?task_type=symbol_refresh")).json()
    assert only["count"] == 1
    assert (await api.http.get("/api/v1/data-collector/tasks/active")).json() == {"tasks": [], "count": 0}
    stats = (await api.http.get("/api/v1/data-collector/tasks/stats")).json()
    assert stats["task_counts"] == {"pending": 0, "running": 0, "completed": 2, "failed": 0, "cancelled": 0}
    assert stats["data_collector_status"]["available_symbols"] == ["BTCUSDT", "ETHUSDT", "XRPETH"]
    status = (await api.http.get("/api/v1/data-collector/status")).json()
    assert status["symbols_count"] == 3
    assert set(status["scheduler_status"]) >= {  # the reference's fields, and a few more
        "is_running", "collection_interval", "symbol_refresh_interval", "data_collection_running",
        "active_tasks_count", "scheduler_task_types",
    }
    assert status["scheduler_status"]["is_running"] is True
    assert status["event_loop_lag_ms"]["samples"] >= 0
    assert done["status"] == "completed"


async def test_refresh_symbols_is_a_task(api: Api, fake: FakeBinance) -> None:
    """POST /refresh-symbols returns a task id; when done the new listing is known."""
    fake.add_symbol("SOLUSDT", "SOL", "USDT")
    response = await api.http.post("/api/v1/data-collector/refresh-symbols")
    assert response.status_code == 202
    task = await api.wait(response.json()["task_id"])
    assert (task["task_type"], task["status"], task["result"]["symbols"]) == ("symbol_refresh", "completed", 4)
    assert "SOLUSDT" in (await api.http.get("/api/v1/data-collector/status")).json()["symbols"]


async def test_klines_query_returns_stored_candles_oldest_first(fake: FakeBinance, settings: Settings) -> None:
    """Klines come back oldest first, prices as the exchange's strings, times ISO 8601 UTC; filters work."""
    clock = frozen_at(fake, T0)
    rows = fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        await api.wait(await api.start(["BTCUSDT"], ["1m"]))
        full = (await api.http.get("/api/v1/klines", params={"symbol": "BTC/USDT", "timeframe": "1m"})).json()
        newest = (await api.http.get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&limit=3")).json()
        window = (await api.http.get(
            "/api/v1/klines?symbol=BTCUSDT&timeframe=1m&start=2026-11-24T09:00:00Z&end=2026-11-24T09:04:59"
        )).json()
    assert (full["symbol"], full["timeframe"], full["count"]) == ("BTCUSDT", "1m", 100)
    first = full["klines"][0]
    assert first["open"] == rows[0][1] and first["volume"] == rows[0][5] and first["trades"] == rows[0][8]
    assert first["open_time"] == "2026-11-24T08:21:00Z"
    assert first["close_time"] == "2026-11-24T08:21:59.999000Z"
    assert [k["open_time"] for k in newest["klines"]] == [
        "2026-11-24T09:58:00Z", "2026-11-24T09:59:00Z", "2026-11-24T10:00:00Z",
    ]
    assert newest["klines"][-1]["is_closed"] is False
    assert [k["open_time"][11:16] for k in window["klines"]] == ["09:00", "09:01", "09:02", "09:03", "09:04"]


async def test_bad_klines_queries_get_clear_4xx(api: Api) -> None:
    """Unknown symbol, bad timeframe, limit out of range, bad dates and unknown exchange are 4xx JSON."""
    get = api.http.get
    assert_error(await get("/api/v1/klines?symbol=NOPE&timeframe=1m"), 422, "'NOPE'")
    assert_error(await get("/api/v1/klines?symbol=BTCUSDT&timeframe=2m"), 422, "'2m'")
    assert_error(await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&limit=5001"), 400, "limit")
    assert_error(await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&limit=0"), 400, "limit")
    assert_error(await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&start=yesterday"), 400, "start")
    assert_error(
        await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&start=2024-01-02T00:00:00Z&end=2024-01-01T00:00:00Z"),
        422, "end",
    )
    assert_error(await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&exchange=kraken"), 422, "kraken")
    assert_error(await get("/api/v1/klines?timeframe=1m"), 400, "symbol")
    empty = (await get("/api/v1/klines?symbol=BTCUSDT&timeframe=1m&limit=5000")).json()
    assert empty["klines"] == []


async def test_latest_prices_per_symbol(fake: FakeBinance, settings: Settings) -> None:
    """Latest prices: the newest stored close of each collected symbol, from its finest timeframe."""
    clock = frozen_at(fake, T0)
    btc = fake.generate_klines("BTCUSDT", "1m", T0 - 9 * MINUTE, 10)
    fake.generate_klines("BTCUSDT", "1h", T0 - 9 * 60 * MINUTE, 10)
    eth = fake.generate_klines("ETHUSDT", "1d", T0 - 9 * 24 * 60 * MINUTE, 10)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        await api.wait(await api.start(["BTCUSDT", "ETHUSDT"], ["1m", "1h", "1d"]))
        prices = (await api.http.get("/api/v1/data-collector/latest-prices")).json()
    by_symbol = {p["symbol"]: p for p in prices["prices"]}
    assert by_symbol["BTCUSDT"]["price"] == btc[-1][4]
    assert by_symbol["BTCUSDT"]["timeframe"] == "1m"
    assert by_symbol["ETHUSDT"]["price"] == eth[-1][4]
    assert by_symbol["ETHUSDT"]["is_closed"] is False


async def test_health_and_openapi(api: Api) -> None:
    """/health answers 200 with the database up; the OpenAPI document names every operation."""
    health = await api.http.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "database": "ok"})
    doc = (await api.http.get("/docs/openapi.json")).json()
    operations = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {"startCollection", "getTask", "cancelTask", "getKlines", "health", "latestPrices"} <= operations
    assert (await api.http.get("/docs")).status_code == 200
