"""The scheduler on a fast clock: on time, live changes, no overlap, trigger, restart recovery, retention."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0
from tests.conftest import Api, Clock, serve_app
from tests.fakes.binance import FakeBinance

CONFIGS = "/api/v1/admin/data-collection/configs"
# 600× the wall clock: a one-minute interval passes in 0.1 s.
SPEED = 600


def fast_clock(fake: FakeBinance, speed: float = SPEED) -> Clock:
    clock = Clock(start=T0 / 1000, speed=speed)
    fake.now_ms = clock.ms
    return clock


async def runs(db: asyncpg.Connection[Any], job_name: str, status: str | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """
        SELECT * FROM job_execution_logs WHERE job_name = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY started_at, id
        """,
        job_name, status,
    )
    return [dict(r) | {"metadata": json.loads(r["metadata"])} for r in rows]


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"symbol": "BTCUSDT", "exchange": "binance", "timeframes": ["1m"], "interval_minutes": 1} | fields
    response = await api.http.post(CONFIGS, json=body)
    assert response.status_code == 201, response.text
    config: dict[str, Any] = response.json()
    return config


async def virtual_sleep(clock: Clock, minutes: float) -> None:
    await clock.sleep(minutes * 60)


def gaps_in_seconds(rows: list[dict[str, Any]]) -> list[float]:
    starts = [r["started_at"] for r in rows]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]


async def test_a_one_minute_config_runs_about_every_60_seconds(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """A new config runs at once, then every interval, as scheduled_data_collection with job collect_data_{id}."""
    # 1 virtual second = 67 ms: a run started 200 ms late (a busy 2-core machine running the suite on
    # four workers, as CI saw) still lands within 3 s.
    clock = fast_clock(fake, speed=15)
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 200)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        config = await create(api)
        await virtual_sleep(clock, 5.5)
        status = (await api.http.get("/api/v1/data-collector/status")).json()["scheduler_status"]
    done = await runs(db, f"collect_data_{config['id']}")
    assert 5 <= len(done) <= 7, [r["started_at"] for r in done]
    assert all(r["job_type"] == "scheduled_data_collection" for r in done)
    assert all(57 <= g <= 63 for g in gaps_in_seconds(done)), gaps_in_seconds(done)
    assert done[0]["status"] == "success"
    assert done[0]["records_collected"] == 100
    assert done[0]["metadata"]["timeframes"] == ["1m"]
    assert status["is_running"] is True
    assert status["scheduled_configs"] == 1
    assert status["collection_interval"] == 60
    assert "scheduled_data_collection" in status["scheduler_task_types"]


async def test_schedule_changes_take_effect_live(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Update, disable, enable and delete change the schedule at once, with no restart."""
    clock = fast_clock(fake)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        config = await create(api, interval_minutes=10)
        job = f"collect_data_{config['id']}"
        await virtual_sleep(clock, 3)
        assert len(await runs(db, job)) == 1  # the first run, at creation; next due in 10 min

        response = await api.http.put(f"{CONFIGS}/{config['id']}", json={"interval_minutes": 1})
        assert response.status_code == 200, response.text
        await virtual_sleep(clock, 3.5)
        after_update = len(await runs(db, job))
        assert after_update >= 3  # due at once (10 → 1 min counts from the last run), then every minute

        assert (await api.http.post(f"{CONFIGS}/{config['id']}/disable")).status_code == 200
        await asyncio.sleep(0.05)
        disabled_at = len(await runs(db, job))
        await virtual_sleep(clock, 3)
        assert len(await runs(db, job)) == disabled_at

        assert (await api.http.post(f"{CONFIGS}/{config['id']}/enable")).status_code == 200
        await virtual_sleep(clock, 0.5)
        assert len(await runs(db, job)) == disabled_at + 1

        assert (await api.http.delete(f"{CONFIGS}/{config['id']}")).status_code == 204
        await asyncio.sleep(0.05)
        deleted_at = len(await runs(db, job))
        await virtual_sleep(clock, 3)
        assert len(await runs(db, job)) == deleted_at


async def test_a_due_run_is_skipped_while_the_previous_one_is_active(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A run that outlasts its interval makes the next due runs 'skipped' instead of overlapping."""
    clock = fast_clock(fake)
    fake.latency_ms = 150  # each page takes 150 ms of wall time: 1.5 virtual minutes
    async with serve_app(make_settings(default_history_candles=4000, pages_ahead=1), clock) as api:
        await api.wait_idle()
        config = await create(api)
        await virtual_sleep(clock, 8)
    job = f"collect_data_{config['id']}"
    skipped = await runs(db, job, "skipped")
    assert skipped, [dict(r) for r in await runs(db, job)]
    assert all("previous run still active" in r["error_message"] for r in skipped)
    assert all(r["duration_seconds"] == 0 for r in skipped)
    executed = [r for r in await runs(db, job) if r["status"] != "skipped"]
    for before, after in itertools.pairwise(executed):
        assert before["finished_at"] is not None
        assert before["finished_at"] <= after["started_at"]


async def test_trigger_runs_now_and_409_while_active(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """POST /trigger starts the config's run at once and returns its task; a second trigger meanwhile is 409."""
    clock = fast_clock(fake)
    fake.latency_ms = 200
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        config = await create(api, enabled=False, timeframes=["1m", "5m"])
        first = await api.http.post(f"{CONFIGS}/{config['id']}/trigger")
        assert first.status_code == 202, first.text
        second = await api.http.post(f"{CONFIGS}/{config['id']}/trigger")
        assert second.status_code == 409
        assert second.json()["extra"]["active_task_id"] == first.json()["task_id"]
        task = await api.wait(first.json()["task_id"])
        missing = await api.http.post(f"{CONFIGS}/999999/trigger")
    assert missing.status_code == 404
    assert task["status"] == "completed"
    logged = await runs(db, f"collect_data_{config['id']}")
    assert [(r["job_type"], r["status"]) for r in logged] == [("data_collection", "success")]
    assert str(logged[0]["task_id"]) == first.json()["task_id"]
    assert logged[0]["metadata"]["timeframes_collected"] == 2


async def test_a_run_with_a_failing_timeframe_is_failed_and_keeps_the_good_candles(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """One failing timeframe makes the run 'failed', names the timeframe, and the other one's candles stay."""
    clock = fast_clock(fake)
    fake.generate_klines("ETHUSDT", "1h", T0 - 99 * 60 * MINUTE, 100)
    fake.add_fault("500", count=100, match={"interval": "5m"})
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        config = await create(api, symbol="ETHUSDT", enabled=False, timeframes=["1h", "5m"])
        task = await api.wait((await api.http.post(f"{CONFIGS}/{config['id']}/trigger")).json()["task_id"])
    assert task["status"] == "failed"  # a series failed; the log says which, the good one is kept
    [logged] = await runs(db, f"collect_data_{config['id']}")
    assert logged["status"] == "failed"
    assert logged["error_message"].startswith("5m: ")
    assert logged["error_type"] == "TimeframesFailed"
    assert logged["records_collected"] == 100
    assert logged["metadata"]["timeframes_failed"] == 1
    assert logged["metadata"]["records_per_timeframe"] == {"1h": 100, "5m": 0}
    count = await db.fetchval("SELECT count(*) FROM market_data WHERE symbol = 'ETHUSDT' AND timeframe = '1h'")
    assert count == 100


async def test_restart_rebuilds_the_schedule_closes_interrupted_runs_and_catches_up_once(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """After downtime: rows left running are failed 'Interrupted', and a config that missed many
    ticks runs once, promptly, then on its interval again."""
    # 60×, not 600×: "promptly" is measured from before start-up, and a loaded CI machine once took
    # 0.56 s to start, which 600× turns into more than the 5-minute interval.
    clock = fast_clock(fake, speed=60)
    now = datetime.fromtimestamp(clock(), UTC)
    config_id = await db.fetchval(
        """
        INSERT INTO data_collection_configs
               (symbol, exchange, timeframes, interval_minutes, next_run_at, last_run_at)
        VALUES ('BTCUSDT', 'binance', '{1m}', 5, $1, $2) RETURNING id
        """,
        now - timedelta(hours=2), now - timedelta(hours=2, minutes=5),
    )
    job = f"collect_data_{config_id}"
    await db.execute(
        "INSERT INTO job_execution_logs (job_name, job_type, symbol, exchange, status, started_at)"
        " VALUES ($1, 'scheduled_data_collection', 'BTCUSDT', 'binance', 'running', $2)",
        job, now - timedelta(hours=2, minutes=5),
    )
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        await virtual_sleep(clock, 2)  # less than one interval
        schedule = await db.fetchrow(
            "SELECT last_run_at, next_run_at FROM data_collection_configs WHERE id = $1", config_id
        )
    rows = await runs(db, job)
    assert [r["status"] for r in rows] == ["failed", "success"]
    assert rows[0]["error_type"] == "Interrupted"
    assert rows[0]["finished_at"] is not None
    assert (rows[1]["started_at"] - now).total_seconds() < 300  # promptly: well before one interval
    assert schedule is not None
    assert (schedule["next_run_at"] - schedule["last_run_at"]).total_seconds() == 300  # back on its interval
    assert abs((rows[1]["started_at"] - schedule["last_run_at"]).total_seconds()) < 60


async def test_retention_deletes_old_logs_and_finished_tasks_in_batches(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Logs and finished tasks older than LOG_RETENTION_DAYS go (2,500 rows, more than one batch); newer stay."""
    clock = fast_clock(fake)
    now = datetime.fromtimestamp(clock(), UTC)
    await db.execute(
        """
        INSERT INTO job_execution_logs (job_name, job_type, status, started_at)
        SELECT 'old', 'data_collection', 'success', $1::timestamptz - make_interval(mins => i)
          FROM generate_series(1, 2500) i
        """,
        now - timedelta(days=31),
    )
    await db.execute(
        "INSERT INTO job_execution_logs (job_name, job_type, status, started_at)"
        " VALUES ('recent', 'x', 'success', $1)",
        now - timedelta(days=29),
    )
    await db.execute(
        """
        INSERT INTO tasks (id, task_type, status, created_at)
        VALUES (gen_random_uuid(), 'data_collection', 'completed', $1),
               (gen_random_uuid(), 'data_collection', 'failed', $1),
               (gen_random_uuid(), 'data_collection', 'completed', $2)
        """,
        now - timedelta(days=40), now - timedelta(days=1),
    )
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT count(*) FROM job_execution_logs WHERE job_name = 'old'") == 0
    assert await db.fetchval("SELECT count(*) FROM job_execution_logs WHERE job_name = 'recent'") == 1
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE created_at < $1", now - timedelta(days=30)) == 0
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE task_type = 'data_collection'") == 1


async def test_scheduler_can_be_turned_off(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """SCHEDULER_ENABLED=false: configs are stored but nothing runs, and status says so."""
    clock = fast_clock(fake)
    async with serve_app(make_settings(scheduler_enabled=False), clock) as api:
        await api.wait_idle()
        config = await create(api)
        await virtual_sleep(clock, 3)
        status = (await api.http.get("/api/v1/data-collector/status")).json()["scheduler_status"]
        admin = (await api.http.get("/api/v1/admin/data-collection/status")).json()
    assert await runs(db, f"collect_data_{config['id']}") == []
    assert status["is_running"] is False
    assert admin["active_jobs"] == 0


async def test_manual_starts_and_symbol_refreshes_are_logged(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """A manual start writes one log row per symbol; the start-up symbol refresh writes its own."""
    clock = fast_clock(fake)
    fake.generate_klines("BTCUSDT", "1h", T0 - 10 * 3_600_000, 8)
    fake.generate_klines("ETHUSDT", "1d", T0 - 10 * 86_400_000, 5)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["BTCUSDT", "ETHUSDT"], ["1h", "1d"]))
        stats = (await api.http.get("/api/v1/admin/data-collection/stats")).json()
    manual = await runs(db, "manual_data_collection")
    assert sorted(r["symbol"] for r in manual) == ["BTCUSDT", "ETHUSDT"]
    assert {str(r["task_id"]) for r in manual} == {task["task_id"]}
    assert all(r["job_type"] == "data_collection" and r["status"] == "success" for r in manual)
    [refresh] = await runs(db, "symbol_refresh")
    # records_collected counts candles (stats add it up); the symbols a refresh loaded are metadata.
    assert (refresh["status"], refresh["records_collected"], refresh["metadata"]) == ("success", 0, {"symbols": 3})
    assert task["result"]["candles_written"] == 13
    assert stats["total_records_collected"] == sum(r["records_collected"] for r in manual) == task["result"][
        "candles_written"
    ]
