"""Many processes, one service: real `serve` and `worker` processes on one PostgreSQL and the fake exchange.

Tasks are rows any process claims; a cancel reaches the owner wherever it came in; a process that
starts or restarts touches only dead peers' work; kill -9 and SIGTERM lose nothing (a survivor resumes
the backfill from the last stored candle: no gap, no duplicate); scheduled runs happen once per due
time however many schedulers run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from tests.fakes.binance import FakeBinance
from tests.postgres_control import own_postgres
from tests.processes import (
    ServiceProcess,
    ServiceProcesses,
    assert_no_gaps,
    running_with_progress,
    service_env,
    service_processes,
)

MINUTE_MS = 60_000
# 30 pages of 1000 1m candles; at 400 ms per exchange request, one page ahead, a backfill runs
# ~10 s: long enough to start, restart, kill or stop processes in its middle.
HISTORY_CANDLES = 30_000
LEASE_SECONDS = 3


@asynccontextmanager
async def slow_exchange(symbols: tuple[str, ...] = ("BTCUSDT",)) -> AsyncIterator[FakeBinance]:
    """The fake Binance with 1m history a little past now, and 400 ms per request."""
    async with FakeBinance(latency_ms=400) as fake:
        now = int(time.time() * 1000)
        for symbol in symbols:
            fake.add_symbol(symbol, symbol[:3], symbol[3:])
            fake.generate_klines(symbol, "1m", now - (HISTORY_CANDLES + 60) * MINUTE_MS, HISTORY_CANDLES + 120)
        yield fake


def env_for(fake: FakeBinance, dsn: str, **settings: str | int | float | bool) -> dict[str, str | None]:
    defaults: dict[str, str | int | float | bool] = {
        "default_history_candles": HISTORY_CANDLES, "lease_seconds": LEASE_SECONDS, "task_poll_seconds": 0.5,
        "pages_ahead": 1,
    }
    return service_env(binance_url=fake.url, database_url=dsn, **{**defaults, **settings})


async def start_healthy(
    processes: ServiceProcesses, command: str, env: dict[str, str | None], name: str
) -> ServiceProcess:
    process = await processes.start(command, env=env, name=name)
    if command == "serve":
        await process.wait_healthy()
    return process


async def wait_worker_registered(db: asyncpg.Connection[Any], count: int, timeout: float = 30.0) -> None:
    """Until `count` processes have registered in the workers table (their start-up is done)."""
    async with asyncio.timeout(timeout):
        while await db.fetchval("SELECT count(*) FROM workers") < count:
            await asyncio.sleep(0.1)


async def owner_pid(db: asyncpg.Connection[Any], task_id: str) -> int | None:
    """The pid of the process running a task (from the workers table)."""
    pid: int | None = await db.fetchval(
        "SELECT w.pid FROM tasks t JOIN workers w ON w.id = t.worker_id WHERE t.id = $1", uuid.UUID(task_id)
    )
    return pid


def ended(body: dict[str, Any]) -> bool:
    return body["status"] not in ("pending", "running")


async def test_a_task_started_on_a_is_read_and_cancelled_through_b_and_a_restart_of_b_leaves_it_alone(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """Start a backfill on A; B (restarted meanwhile, which must not touch A's task) reads it and cancels
    it, and A stops it within 2 s."""
    async with slow_exchange() as fake, service_processes(tmp_path) as processes:
        a = await start_healthy(processes, "serve", env_for(fake, db_dsn), "a")
        await a.wait_idle()
        task_id = await a.start_collection(["BTCUSDT"], ["1m"])
        await a.wait_task(task_id, running_with_progress, 15.0, "running with progress")
        assert await owner_pid(db, task_id) == a.proc.pid

        b = await start_healthy(processes, "serve", env_for(fake, db_dsn), "b-1")
        seen = await b.task(task_id)
        assert seen["status"] == "running", seen
        await b.sigterm()
        b = await start_healthy(processes, "serve", env_for(fake, db_dsn), "b-2")
        await wait_worker_registered(db, 2)
        # B's start-up took back nothing: A still runs its task, on its first attempt.
        row = await db.fetchrow("SELECT status, attempts FROM tasks WHERE id = $1", uuid.UUID(task_id))
        assert row is not None
        assert (row["status"], row["attempts"]) == ("running", 1), f"{dict(row)}{b.tail()}"
        assert await owner_pid(db, task_id) == a.proc.pid
        # Either process's /status lists both as live workers, with A running the task.
        workers = (await b.http.get("/api/v1/data-collector/status")).json()["workers"]
        assert {(w["pid"], w["kind"], w["running_tasks"]) for w in workers} == {
            (a.proc.pid, "web", 1), (b.proc.pid, "web", 0)
        }

        await b.login()
        began = time.monotonic()
        response = await b.http.post(f"/api/v1/data-collector/task/{task_id}/cancel")
        took = time.monotonic() - began
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled", f"{response.json()}{a.tail()}"
        assert took < 2.0, f"cancel through B took {took:.2f} s"
        print(f"cancel through B -> cancelled by A: {took:.2f} s")
        task = await a.task(task_id)
        assert task["status"] == "cancelled"
        assert (await b.http.post(f"/api/v1/data-collector/task/{task_id}/cancel")).status_code == 409
        times = await b.open_times("BTCUSDT")
        assert 0 < len(times) < HISTORY_CANDLES
        assert_no_gaps(times, "BTCUSDT")


async def test_kill_9_of_the_worker_running_a_backfill_is_resumed_by_a_survivor(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """kill -9 of the worker mid-backfill: once its lease ends a surviving worker resumes the task to
    completion, with every candle once (no gap, no duplicate) and the dead run's log closed Interrupted."""
    async with slow_exchange() as fake, service_processes(tmp_path) as processes:
        web = await start_healthy(processes, "serve", env_for(fake, db_dsn, web_runs_tasks=False), "web")
        workers = [await start_healthy(processes, "worker", env_for(fake, db_dsn), f"worker-{i}") for i in (1, 2)]
        await wait_worker_registered(db, 2)
        await web.wait_idle()
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        await web.wait_task(task_id, running_with_progress, 15.0, "running with progress")
        pid = await owner_pid(db, task_id)
        [victim] = [w for w in workers if w.proc.pid == pid]
        [survivor] = [w for w in workers if w is not victim]
        await victim.kill()
        killed_at = time.monotonic()
        async with asyncio.timeout(40):
            while await db.fetchval("SELECT attempts FROM tasks WHERE id = $1", uuid.UUID(task_id)) < 2:
                await asyncio.sleep(0.05)
        print(f"kill -9 -> resumed by the survivor: {time.monotonic() - killed_at:.2f} s (lease {LEASE_SECONDS} s)")

        done = await web.wait_task(task_id, ended, 40.0, "ended")
        assert done["status"] == "completed", f"{done}{survivor.tail()}"
        assert await db.fetchval("SELECT attempts FROM tasks WHERE id = $1", uuid.UUID(task_id)) == 2
        assert "worker_presumed_dead" in survivor.log_text()
        times = await web.open_times("BTCUSDT")
        assert len(times) == len(set(times)) >= HISTORY_CANDLES
        assert_no_gaps(times, "BTCUSDT")
        logs = await db.fetch(
            "SELECT status, error_type FROM job_execution_logs WHERE task_id = $1 ORDER BY id", uuid.UUID(task_id)
        )
        assert [(r["status"], r["error_type"]) for r in logs] == [("failed", "Interrupted"), ("success", None)]


async def test_sigterm_mid_backfill_hands_the_task_back_and_a_peer_resumes_it(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """SIGTERM to the worker running a backfill: it exits well inside SHUTDOWN_GRACE_SECONDS, the task is
    handed back at once (no lease to wait for) and the other worker finishes it with no gap."""
    async with slow_exchange() as fake, service_processes(tmp_path) as processes:
        web = await start_healthy(processes, "serve", env_for(fake, db_dsn, web_runs_tasks=False), "web")
        workers = [
            await start_healthy(processes, "worker", env_for(fake, db_dsn, lease_seconds=60), f"worker-{i}")
            for i in (1, 2)
        ]
        await wait_worker_registered(db, 2)
        await web.wait_idle()
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        await web.wait_task(task_id, running_with_progress, 15.0, "running with progress")
        pid = await owner_pid(db, task_id)
        [stopping] = [w for w in workers if w.proc.pid == pid]
        [peer] = [w for w in workers if w is not stopping]
        took = await stopping.sigterm(deadline=20.0)
        assert stopping.returncode == 0, stopping.tail()
        assert took < 10.0, f"SIGTERM -> exit took {took:.2f} s"
        print(f"SIGTERM -> exit: {took:.2f} s")
        assert "task_handed_back" in stopping.log_text()

        # A 60 s lease: only a hand-back lets the peer resume this soon.
        done = await web.wait_task(task_id, ended, 30.0, "ended")
        assert done["status"] == "completed", f"{done}{peer.tail()}"
        assert await db.fetchval("SELECT attempts FROM tasks WHERE id = $1", uuid.UUID(task_id)) == 2
        times = await web.open_times("BTCUSDT")
        assert len(times) == len(set(times)) >= HISTORY_CANDLES
        assert_no_gaps(times, "BTCUSDT")
        logs = await db.fetch(
            "SELECT status, error_type FROM job_execution_logs WHERE task_id = $1 ORDER BY id", uuid.UUID(task_id)
        )
        assert [(r["status"], r["error_type"]) for r in logs] == [("failed", "Interrupted"), ("success", None)]


async def test_scheduled_runs_happen_exactly_once_per_due_time_across_three_processes(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """Two web processes and a worker all schedule: over six due times of six configs, each due time
    becomes exactly one run (a task, or a skipped log when its previous run was still going)."""
    async with FakeBinance() as fake, service_processes(tmp_path) as processes:
        symbols = [f"S{i}USDT" for i in range(6)]
        now = int(time.time() * 1000)
        for symbol in symbols:
            fake.add_symbol(symbol, symbol[:2], "USDT")
            fake.generate_klines(symbol, "1h", now - 200 * 60 * MINUTE_MS, 250)
        env = env_for(fake, db_dsn)
        a = await start_healthy(processes, "serve", env, "a")
        await start_healthy(processes, "serve", env, "b")
        await start_healthy(processes, "worker", env, "w")
        await wait_worker_registered(db, 3)
        await a.wait_idle()
        await a.login()
        ids = []
        for symbol in symbols:  # each runs once at creation
            response = await a.http.post(
                "/api/v1/admin/data-collection/configs",
                json={"symbol": symbol, "timeframes": ["1h"], "interval_minutes": 60},
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        ticks = 6
        for tick in range(1, ticks):
            await settled(db, a, tick * len(ids))
            # The next due time arrives (as if an hour passed); the schedulers hear of it as of any change.
            await db.execute("UPDATE data_collection_configs SET next_run_at = now()")
            await db.execute("SELECT pg_notify('kline_collector_tasks', 'configs:changed')")
        await settled(db, a, ticks * len(ids))
        for config_id in ids:
            job = f"collect_data_{config_id}"
            runs = await db.fetchval(
                "SELECT count(*) FROM tasks WHERE params->>'job_name' = $1", job
            )
            skipped = await db.fetchval(
                "SELECT count(*) FROM job_execution_logs WHERE job_name = $1 AND status = 'skipped'", job
            )
            assert runs + skipped == ticks, f"{job}: {runs} runs + {skipped} skipped for {ticks} due times"


async def settled(db: asyncpg.Connection[Any], web: ServiceProcess, runs: int, timeout: float = 30.0) -> None:
    """Until `runs` scheduled runs (tasks or skipped logs) exist and no task is active."""
    async with asyncio.timeout(timeout):
        while True:
            count = await db.fetchval(
                "SELECT (SELECT count(*) FROM tasks WHERE task_type = 'scheduled_data_collection')"
                " + (SELECT count(*) FROM job_execution_logs WHERE status = 'skipped')"
            )
            if count >= runs and not (await web.http.get("/api/v1/data-collector/tasks/active")).json()["count"]:
                return
            await asyncio.sleep(0.1)


async def test_three_workers_on_one_weight_budget_never_draw_a_429(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """Three workers collecting at once from an exchange allowing 150 weight a minute (less than their
    start-up and backfills need together) share one budget through PostgreSQL: no 429, no 418, no
    minute over the limit, every task completed."""
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    async with FakeBinance(weight_limit=150) as fake, service_processes(tmp_path) as processes:
        now = int(time.time() * 1000)
        for symbol in symbols:
            fake.add_symbol(symbol, symbol[:3], symbol[3:])
            fake.generate_klines(symbol, "1m", now - 25_060 * MINUTE_MS, 25_120)
        # The fallback budget, used until exchangeInfo has answered, is below the real limit (as
        # Binance's 1200 is below its 6000).
        env = env_for(
            fake, db_dsn, default_history_candles=25_000, max_concurrent_tasks=1, binance_weight_fallback=150,
            pages_ahead=2,
        )
        web = await start_healthy(processes, "serve", {**env, "WEB_RUNS_TASKS": "false"}, "web")
        for i in (1, 2, 3):
            await start_healthy(processes, "worker", env, f"worker-{i}")
        await wait_worker_registered(db, 3)
        await web.wait_idle()
        task_ids = [await web.start_collection([symbol], ["1m"]) for symbol in symbols]
        owners = set()
        for task_id in task_ids:
            done = await web.wait_task(task_id, ended, 150.0, "ended")
            assert done["status"] == "completed", done
            owners.add(await db.fetchval("SELECT worker_id FROM tasks WHERE id = $1", uuid.UUID(task_id)))
        assert len(owners) == 3  # each worker collected one series at once
        windows = {start: w.used for start, w in sorted(fake.windows.items())}
        print(f"weight per minute at the exchange (limit 150): {list(windows.values())}")
        assert 429 not in fake.status_counts and 418 not in fake.status_counts, fake.status_counts
        assert max(windows.values()) <= 150
        assert sum(windows.values()) > 150  # more than one minute's budget: the sharing was needed
        for symbol in symbols:
            times = await web.open_times(symbol)
            assert len(times) == len(set(times)) >= 25_000
            assert_no_gaps(times, symbol)


async def test_a_postgresql_restart_under_two_workers_is_survived_without_a_takeover(tmp_path: Path) -> None:
    """PostgreSQL stopped for a second and started again under a backfill run by one of two workers:
    both stay registered, nobody presumes the other dead (the task finishes on its first attempt), and
    every candle is stored once."""
    async with slow_exchange() as fake, own_postgres(tmp_path / "db") as (control, dsn), \
            service_processes(tmp_path) as processes:
        web = await start_healthy(processes, "serve", env_for(fake, dsn, web_runs_tasks=False), "web")
        for i in (1, 2):
            await start_healthy(processes, "worker", env_for(fake, dsn, lease_seconds=10), f"worker-{i}")
        db = await asyncpg.connect(dsn)
        try:
            await wait_worker_registered(db, 2)
        finally:
            await db.close()
        await web.wait_idle()
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        await web.wait_task(task_id, running_with_progress, 15.0, "running with progress")

        await control.stop()
        await asyncio.sleep(1.0)
        await control.start()

        done = await web.wait_task(task_id, ended, 60.0, "ended")
        assert done["status"] == "completed", done
        db = await asyncpg.connect(dsn)
        try:
            assert await db.fetchval("SELECT attempts FROM tasks WHERE id = $1", uuid.UUID(task_id)) == 1
            assert await db.fetchval("SELECT count(*) FROM workers WHERE kind = 'worker'") == 2
        finally:
            await db.close()
        times = await web.open_times("BTCUSDT")
        assert len(times) == len(set(times)) >= HISTORY_CANDLES
        assert_no_gaps(times, "BTCUSDT")
