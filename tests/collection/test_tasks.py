"""Task registry behaviour: overlap, cancel, concurrency limit, restart recovery (one process)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at, stored
from tests.conftest import serve_app
from tests.fakes.binance import FakeBinance


async def test_overlapping_start_gets_409_with_the_active_task(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Two tasks never collect the same series at once; a disjoint start is accepted meanwhile."""
    clock = frozen_at(fake, T0)
    fake.latency_ms = 200
    async with serve_app(make_settings(default_history_candles=5000), clock) as api:
        await api.wait_idle()
        first = await api.start(["BTCUSDT"], ["1m", "5m"])
        response = await api.http.post(
            "/api/v1/data-collector/start", json={"symbols": ["BTC/USDT"], "timeframes": ["5m", "1h"]}
        )
        assert response.status_code == 409
        body = response.json()
        assert body["extra"]["active_task_id"] == first
        assert body["extra"]["series"] == ["binance:BTCUSDT:5m"]
        assert first in body["detail"]
        other = await api.start(["ETHUSDT"], ["5m"])
        await api.http.post(f"/api/v1/data-collector/task/{first}/cancel")
        assert (await api.wait(other))["status"] == "completed"


async def test_cancel_stops_a_running_task_promptly_and_keeps_written_pages(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """Cancel ends a running task within a fraction of a second; committed candles have no gaps."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 19_999 * MINUTE, 20_000)
    fake.latency_ms = 100
    async with serve_app(make_settings(default_history_candles=20_000, pages_ahead=2), clock) as api:
        await api.wait_idle()
        task_id = await api.start(["BTCUSDT"], ["1m"])
        async with asyncio.timeout(10):
            while (await api.task(task_id))["progress"] < 15:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        response = await api.http.post(f"/api/v1/data-collector/task/{task_id}/cancel")
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert elapsed < 0.5
        task = await api.task(task_id)
        again = await api.http.post(f"/api/v1/data-collector/task/{task_id}/cancel")
    assert task["status"] == "cancelled"
    assert task["completed_at"] is not None
    assert again.status_code == 409
    rows = await stored(db, "BTCUSDT", "1m")
    assert 0 < len(rows) < 20_000
    assert len(rows) % 1000 == 0  # whole pages only
    first = T0 - 30_000 - 19_999 * MINUTE
    assert [r["open_time"] for r in rows] == [first + i * MINUTE for i in range(len(rows))]
    stored_row = await db.fetchrow("SELECT status, error FROM tasks WHERE id = $1", uuid.UUID(task_id))
    assert stored_row is not None
    assert stored_row["status"] == "cancelled"


async def test_at_most_max_concurrent_tasks_run_the_rest_wait_pending(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """With MAX_CONCURRENT_TASKS=2, four tasks run two at a time and all complete."""
    clock = frozen_at(fake, T0)
    symbols = ["BTCUSDT", "ETHUSDT", "XRPETH", "SOLUSDT"]
    fake.add_symbol("SOLUSDT", "SOL", "USDT")
    fake.latency_ms = 150
    async with serve_app(make_settings(max_concurrent_tasks=2), clock) as api:
        await api.wait_idle()
        ids = [await api.start([s], ["1m"]) for s in symbols]
        saw_pending = False
        async with asyncio.timeout(15):
            while True:
                states = [(await api.task(i))["status"] for i in ids]
                saw_pending |= "pending" in states
                if all(s == "completed" for s in states):
                    break
                await asyncio.sleep(0.01)
    assert saw_pending
    # How many ran at once, from the recorded run times (polling four tasks one by one is no snapshot:
    # a task read as running may end, and a waiting one start, before the last read).
    runs = await db.fetch(
        "SELECT started_at, completed_at FROM tasks WHERE id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids]
    )
    edges = sorted([(r["started_at"], 1) for r in runs] + [(r["completed_at"], -1) for r in runs])
    running = most_running = 0
    for _, step in edges:
        running += step
        most_running = max(most_running, running)
    assert most_running == 2


async def test_task_history_survives_a_restart_and_a_task_left_running_is_resumed(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """After a restart finished tasks are still readable; a task a dead process left running is resumed
    to completion (its old log row closed as Interrupted), and a live peer's task is left alone."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    fake.generate_klines("ETHUSDT", "1m", T0 - 99 * MINUTE, 100)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        done = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
    # A process that died mid-task leaves its row running (its worker row already reaped, or never
    # there: a row from before workers existed) and its execution log open.
    orphan = uuid.uuid4()
    await db.execute(
        "INSERT INTO tasks (id, task_type, status, series, params, started_at, attempts) VALUES ($1,"
        " 'data_collection', 'running', '{binance:ETHUSDT:1m}',"
        " '{\"exchange\": \"binance\", \"symbols\": [\"ETHUSDT\"], \"timeframes\": [\"1m\"]}', now(), 1)",
        orphan,
    )
    await db.execute(
        "INSERT INTO job_execution_logs (job_name, job_type, symbol, exchange, started_at, status, task_id)"
        " VALUES ('manual_data_collection', 'data_collection', 'ETHUSDT', 'binance', now(), 'running', $1)",
        orphan,
    )
    # A live peer (fresh heartbeat) runs another task: nobody may touch it.
    peer, peers_task = uuid.uuid4(), uuid.uuid4()
    await db.execute("INSERT INTO workers (id, kind, hostname, pid) VALUES ($1, 'worker', 'peer', 1)", peer)
    await db.execute(
        "INSERT INTO tasks (id, task_type, status, series, worker_id, started_at, attempts)"
        " VALUES ($1, 'data_collection', 'running', '{binance:XRPETH:1m}', $2, now(), 1)",
        peers_task, peer,
    )
    async with serve_app(settings, clock) as api:
        again = await api.task(done["task_id"])
        resumed = await api.wait(str(orphan))
        untouched = await api.task(str(peers_task))
    assert again["status"] == "completed"
    assert again["result"] == done["result"]
    assert resumed["status"] == "completed"
    assert untouched["status"] == "running"
    assert await db.fetchval("SELECT attempts FROM tasks WHERE id = $1", orphan) == 2
    assert len(await stored(db, "BTCUSDT", "1m")) == 100
    assert len(await stored(db, "ETHUSDT", "1m")) == 100
    logs = await db.fetch(
        "SELECT status, error_type FROM job_execution_logs WHERE task_id = $1 ORDER BY id", orphan
    )
    assert [(r["status"], r["error_type"]) for r in logs] == [("failed", "Interrupted"), ("success", None)]


async def test_finished_tasks_leave_memory_but_stay_readable(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """After TASK_CLEANUP_DELAY a finished task is served from the database, unchanged."""
    clock = frozen_at(fake, T0)
    async with serve_app(make_settings(task_cleanup_delay=0.05), clock) as api:
        await api.wait_idle()
        done = await api.wait(await api.start(["BTCUSDT"], ["1h"]))
        await asyncio.sleep(0.2)
        registry = api.app.state.runtime.registry
        assert uuid.UUID(done["task_id"]) not in registry._entries
        assert await api.task(done["task_id"]) == done
