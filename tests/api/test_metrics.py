"""GET /metrics: Prometheus text after a real collection against the fake exchange, its token, and a
scrape that still answers while the database is away."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.conftest import Api, bearer, running_app
from tests.fakes.binance import FakeBinance

CONFIGS = "/api/v1/admin/data-collection/configs"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
METRICS_TOKEN = "scrape-token-0123456789"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(api: Api, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of one scrape, by sample name (`_total`, `_bucket`… included), parsed by prometheus_client."""
    response = await api.anonymous.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


async def collect_with_a_429(api: Api, fake: FakeBinance, db: asyncpg.Connection[Any]) -> str:
    """A config for BTCUSDT 1m and 1h, run by the scheduler; its first klines request meets a 429. Its task id."""
    now_ms = fake.now_ms()
    fake.generate_klines("BTCUSDT", "1m", now_ms - 300 * MINUTE_MS, 300)
    fake.generate_klines("BTCUSDT", "1h", now_ms - 200 * HOUR_MS, 200)
    fake.add_fault("429", retry_after=1)
    body = {"symbol": "BTCUSDT", "timeframes": ["1m", "1h"], "interval_minutes": 60}
    response = await api.http.post(CONFIGS, json=body)
    assert response.status_code == 201, response.text
    async with asyncio.timeout(20):
        while await db.fetchval(
            "SELECT count(*) FROM tasks WHERE task_type = 'scheduled_data_collection' AND status = 'completed'"
        ) != 1:
            await asyncio.sleep(0.05)
    task_id: str = await db.fetchval("SELECT id::text FROM tasks WHERE task_type = 'scheduled_data_collection'")
    return task_id


async def test_every_metric_moves_with_a_real_collection(
    api: Api, fake: FakeBinance, db: asyncpg.Connection[Any]
) -> None:
    """After a scheduled collection that met a 429, each metric reports what happened, matching the
    database and the fake exchange's own traffic."""
    task_id = await collect_with_a_429(api, fake, db)
    assert (await api.http.get(f"/api/v1/data-collector/task/{task_id}")).status_code == 200

    # The 429's background limit refresh may still be in flight: counts match once it has landed.
    async with asyncio.timeout(10):
        while True:
            samples = await scrape(api)
            if value(samples, "kline_exchange_requests_total") == len(fake.requests):
                break
            await asyncio.sleep(0.05)

    # Exchange requests by endpoint and status, exactly as the fake saw them; the 429 among them.
    seen_by_fake = Counter((r.path, str(r.status)) for r in fake.requests)
    for (path, status), count in seen_by_fake.items():
        assert value(samples, "kline_exchange_requests_total", endpoint=path, status=status) == count
    assert value(samples, "kline_exchange_requests_total", endpoint="/api/v3/klines", status="429") == 1
    assert value(samples, "kline_exchange_pauses_total", exchange="binance", status="429") == 1
    assert value(samples, "kline_exchange_pause_seconds_total", status="429") == 1
    assert value(samples, "kline_exchange_pauses_total", status="418") == 0

    # Candles written: what is stored, per timeframe.
    for timeframe in ("1m", "1h"):
        stored = await db.fetchval(
            "SELECT count(*) FROM klines k JOIN series s ON s.id = k.series_id WHERE s.timeframe = $1", timeframe
        )
        assert stored > 0
        assert value(samples, "kline_candles_written_total", exchange="binance", timeframe=timeframe) == stored

    # Tasks and execution runs, from the database.
    assert value(samples, "kline_tasks", type="scheduled_data_collection", status="completed") == 1
    assert value(samples, "kline_tasks", type="symbol_refresh", status="completed") == 1
    logged = await db.fetchval("SELECT count(*) FROM job_execution_logs WHERE job_type = 'scheduled_data_collection'")
    assert logged > 0
    assert value(samples, "kline_execution_runs", job_type="scheduled_data_collection", status="success") == logged
    assert value(samples, "kline_database_up") == 1

    # The scheduler submitted one due run, promptly.
    assert value(samples, "kline_scheduler_lag_seconds_count") == 1
    assert 0 <= value(samples, "kline_scheduler_lag_seconds_sum") < 5

    # Weight used and the limit learnt from exchangeInfo.
    assert value(samples, "kline_exchange_weight_limit", exchange="binance") == 6000
    assert 0 < value(samples, "kline_exchange_weight_budget", exchange="binance") < 6000
    assert value(samples, "kline_exchange_weight_used", exchange="binance") > 0
    assert value(samples, "kline_exchange_paused", exchange="binance") == 0

    # Freshness of the configured series: the newest closed candle is at most two candles old (the
    # last one may have closed within the clock-skew allowance, so stored as open).
    fresh = {labels["timeframe"]: v for labels, v in samples["kline_series_freshness_lag_seconds"]}
    assert set(fresh) == {"1m", "1h"}
    assert 0 <= fresh["1m"] <= 2 * 60
    assert 0 <= fresh["1h"] <= 2 * 3600

    # Event-loop lag and HTTP durations, by route template (never the task's id).
    assert {labels["quantile"] for labels, _ in samples["kline_event_loop_lag_seconds"]} == {"0.5", "0.99", "1"}
    assert all(v >= 0 for _, v in samples["kline_event_loop_lag_seconds"])
    http = "kline_http_request_duration_seconds_count"
    assert value(samples, http, method="POST", route=CONFIGS, status="201") == 1
    assert value(samples, http, method="GET", route="/api/v1/data-collector/task/{task_id}", status="200") == 1
    assert not any(task_id in labels["route"] for labels, _ in samples[http])


async def test_pool_connections_in_use_counts_a_held_connection(api: Api) -> None:
    """Connections borrowed from the pool show in kline_db_pool_connections_in_use until they are returned."""
    pool = api.app.state.runtime.pool
    async with pool.acquire(), pool.acquire(), pool.acquire():
        held = value(await scrape(api), "kline_db_pool_connections_in_use")
    assert held >= 3
    assert value(await scrape(api), "kline_db_pool_connections_in_use") < held


async def test_metrics_is_left_out_of_the_openapi_document(api: Api) -> None:
    """/metrics is served but is not an operation of the API's OpenAPI document."""
    doc = (await api.http.get("/docs/openapi.json")).json()
    assert "/metrics" not in doc["paths"]
    assert (await api.anonymous.get("/metrics")).status_code == 200


async def test_metrics_token_is_required_when_set(make_settings: Callable[..., Settings]) -> None:
    """With METRICS_TOKEN set, /metrics answers 401 without it, with a wrong one or a login token; 200 with it."""
    async with running_app(make_settings(metrics_token=METRICS_TOKEN)) as api:
        response = await api.anonymous.get("/metrics")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "kline_" not in response.text
        assert (await api.anonymous.get("/metrics", headers=bearer(METRICS_TOKEN + "x"))).status_code == 401
        assert (await api.http.get("/metrics")).status_code == 401  # an admin's login token is not the metrics token
        samples = await scrape(api, headers=bearer(METRICS_TOKEN))
        assert value(samples, "kline_database_up") == 1


async def test_a_scrape_answers_while_the_database_is_away(api: Api, pg_dsn: str, db_dsn: str) -> None:
    """With the database unreachable, /metrics still answers 200 with the process's own metrics,
    kline_database_up 0 and no database series."""
    name = urlsplit(db_dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_dsn)
    try:
        # Renamed away: the service's connections are refused as "no such database", a real outage.
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await admin.execute(f"ALTER DATABASE {name} RENAME TO {name}_away")
        try:
            samples = await scrape(api)
        finally:
            await admin.execute(f"ALTER DATABASE {name}_away RENAME TO {name}")
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    finally:
        await admin.close()
    assert value(samples, "kline_database_up") == 0
    assert "kline_tasks" not in samples
    assert "kline_series_freshness_lag_seconds" not in samples
    assert "kline_exchange_weight_limit" in samples
    assert "kline_event_loop_lag_seconds" in samples


async def test_the_grafana_dashboard_uses_only_exported_metrics(
    api: Api, fake: FakeBinance, db: asyncpg.Connection[Any]
) -> None:
    """Every metric name in docs/grafana-dashboard.json's queries is exported by a real scrape after a collection."""
    await collect_with_a_429(api, fake, db)
    response = await api.anonymous.get("/metrics")
    exported = {
        sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples
    }
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions
    used = {name for expr in expressions for name in re.findall(r"\bkline_[a-z0-9_]+", expr)}
    assert used
    assert used <= exported, used - exported


async def test_a_418_ban_moves_the_ban_count_and_its_pause_seconds(api: Api, fake: FakeBinance) -> None:
    """An IP ban (418 with a Retry-After of 1 s) answered to a manual collection counts once among the
    exchange's requests and the pauses, with the second it ordered; the collection still completes."""
    now_ms = fake.now_ms()
    fake.generate_klines("ETHUSDT", "1m", now_ms - 100 * MINUTE_MS, 100)
    fake.add_fault("418", retry_after=1)
    task = await api.wait(await api.start(["ETHUSDT"], ["1m"]), timeout=20)
    assert task["status"] == "completed", task
    samples = await scrape(api)
    assert value(samples, "kline_exchange_requests_total", endpoint="/api/v3/klines", status="418") == 1
    assert value(samples, "kline_exchange_pauses_total", exchange="binance", status="418") == 1
    assert value(samples, "kline_exchange_pause_seconds_total", status="418") >= 1
