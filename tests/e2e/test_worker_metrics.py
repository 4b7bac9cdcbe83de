"""A worker serves GET /metrics on METRICS_PORT: its own counters, which no web process can report."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.binance import FakeBinance
from tests.processes import service_env, service_processes

MINUTE_MS = 60_000
TOKEN = "worker-metrics-token-0123456789"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a scrape (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_a_workers_metrics_count_what_it_collected_and_need_the_token(
    db_dsn: str, tmp_path: Path
) -> None:
    """The worker that ran a collection reports its candles and exchange requests on METRICS_PORT;
    with METRICS_TOKEN set a scrape without it is refused."""
    async with FakeBinance() as fake, service_processes(tmp_path) as processes:
        now = int(time.time() * 1000)
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", now - 3_060 * MINUTE_MS, 3_120)
        env = service_env(
            binance_url=fake.url, database_url=db_dsn, default_history_candles=3_000, metrics_token=TOKEN,
        )
        web = await processes.start("serve", env={**env, "WEB_RUNS_TASKS": "false"}, name="web")
        await web.wait_healthy()
        port = processes.free_port()
        await processes.start("worker", env={**env, "HOST": "127.0.0.1", "METRICS_PORT": str(port)}, name="worker")
        await web.wait_idle(timeout=30)
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        done = await web.wait_task(task_id, lambda b: b["status"] not in ("pending", "running"), 30.0, "ended")
        assert done["status"] == "completed", done

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as worker:
            refused = await worker.get("/metrics")
            assert refused.status_code == 401
            scraped = await worker.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200
        text = scraped.text
        written = done["result"]["candles_written"]
        assert written >= 3_000
        assert sample(text, "kline_candles_written_total", timeframe="1m") == written
        klines = sum(1 for r in fake.requests if r.path == "/api/v3/klines" and r.status == 200)
        assert sample(text, "kline_exchange_requests_total", endpoint="/api/v3/klines", status="200") == klines
        assert sample(text, "kline_database_up") == 1
