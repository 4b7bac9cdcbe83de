"""Start-up and shutdown of real processes: concurrent migrations, SIGTERM during start-up, the database down.

Each test runs `python -m service …` as subprocesses and leaves no service or postgres process behind.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.db.embedded import is_embedded_running
from service.db.migrate import head_revision
from tests.conftest import new_database
from tests.e2e.test_process import HISTORY_CANDLES, MINUTE_MS
from tests.fakes.binance import FakeBinance
from tests.postgres_control import own_postgres
from tests.processes import (
    ServiceProcess,
    ServiceProcesses,
    assert_no_gaps,
    run_service_command,
    running_with_progress,
    service_env,
    service_processes,
)


async def _run_migrate(dsn: str) -> tuple[int, str]:
    """`python -m service migrate` on `dsn`: exit code and output."""
    return await run_service_command("migrate", env={"DATABASE_URL": dsn, "LOG_FORMAT": "console"}, timeout=120)


async def test_three_migrate_processes_at_once_on_a_fresh_database_all_succeed(pg_dsn: str) -> None:
    """Three `migrate` processes started together on an empty database all exit 0 and leave it at head."""
    async with new_database(pg_dsn, "kc_fresh") as dsn:
        results = await asyncio.gather(*(_run_migrate(dsn) for _ in range(3)))
        for code, out in results:
            assert code == 0, out
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        finally:
            await conn.close()


async def _wait_embedded_stopped(pgdir: Path, timeout: float = 5.0) -> bool:
    """Whether the postgres on `pgdir` is gone within `timeout` (a fast shutdown may still be finishing)."""
    deadline = time.monotonic() + timeout
    while is_embedded_running(pgdir):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.parametrize("delay", [0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.5])
async def test_sigterm_during_start_up_leaves_no_postgres_running(tmp_path: Path, delay: float) -> None:
    """SIGTERM at any moment of a first start (initdb, migrations, lifespan) exits promptly and stops PostgreSQL."""
    pgdir = tmp_path / "pg"
    async with FakeBinance() as fake, service_processes(tmp_path, embedded_pg_dir=pgdir) as processes:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        env = service_env(binance_url=fake.url, embedded_pg_dir=pgdir, default_history_candles=HISTORY_CANDLES)
        serve = await processes.start("serve", env=env, name="serve")
        await asyncio.sleep(delay)
        assert serve.proc.returncode is None, f"serve exited before the signal{serve.tail()}"
        await serve.sigterm()
        assert serve.proc.returncode in (0, -signal.SIGTERM), f"unclean exit{serve.tail()}"
        assert await _wait_embedded_stopped(pgdir), (
            f"embedded postgres left running after SIGTERM at {delay} s{serve.tail()}"
        )


async def _start_serve_on(
    dsn: str, processes: ServiceProcesses, fake: FakeBinance, *, history_candles: int = 2000
) -> ServiceProcess:
    """`python -m service serve` on DATABASE_URL=`dsn` with the fake exchange; output to serve-1.log."""
    env = service_env(binance_url=fake.url, database_url=dsn, default_history_candles=history_candles)
    return await processes.start("serve", env=env)


async def _first_answer(serve: ServiceProcess, path: str, deadline: float) -> httpx.Response:
    """The first HTTP answer on `path` before the monotonic `deadline` (polling every 0.1 s)."""
    while True:
        assert serve.proc.returncode is None, f"serve exited{serve.tail()}"
        try:
            return await serve.http.get(path)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no answer on {path} in time{serve.tail()}"
            await asyncio.sleep(0.1)


async def test_serve_with_the_database_down_answers_503_then_works_once_it_is_up(tmp_path: Path) -> None:
    """With its database down, serve binds the port at once (here within 10 s, beside the rest of the
    suite) answering 503, and works once the database starts."""
    async with FakeBinance() as fake, own_postgres(tmp_path / "db") as (control, dsn), \
            service_processes(tmp_path) as processes:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        now = int(time.time() * 1000)
        fake.generate_klines("BTCUSDT", "1m", now - 2100 * MINUTE_MS, 2200)
        await control.stop()

        serve = await _start_serve_on(dsn, processes, fake)
        # Start-up to a bound port takes under a second alone (benchmark scenario 6); the suite's
        # four workers share two cores, so the bound here is looser than the promise.
        health = await _first_answer(serve, "/health", time.monotonic() + 10.0)
        assert health.status_code == 503, f"{health.status_code} {health.text}{serve.tail()}"
        assert health.headers.get("Retry-After"), health.headers
        api = await serve.http.get("/api/v1/data-collector/tasks/active")
        assert api.status_code == 503, f"{api.status_code} {api.text}"
        assert api.headers.get("Retry-After"), api.headers
        body = api.json()
        assert body["status_code"] == 503 and body["detail"], body
        await asyncio.sleep(1.5)  # a few start attempts fail while the database stays down
        assert serve.proc.returncode is None, f"serve gave up while the database was down{serve.tail()}"

        await control.start()
        await serve.wait_healthy(timeout=30.0)
        async with asyncio.timeout(30.0):  # the start-up work retries with backoff
            while (await serve.http.get("/api/v1/data-collector/tasks/active")).status_code == 503:
                await asyncio.sleep(0.2)
        await serve.wait_idle(timeout=15.0)
        task_id = await serve.start_collection(["BTCUSDT"], ["1m"])
        done = await serve.wait_task(task_id, lambda b: b["status"] not in ("pending", "running"), 30.0, "ended")
        assert done["status"] == "completed", f"{done}{serve.tail()}"
        assert len(await serve.open_times("BTCUSDT")) >= 2000
        await serve.sigterm()


async def test_sigterm_while_the_database_is_down_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM while start-up keeps waiting for a database that is down ends the process cleanly."""
    async with FakeBinance() as fake, own_postgres(tmp_path / "db") as (control, dsn), \
            service_processes(tmp_path) as processes:
        await control.stop()
        serve = await _start_serve_on(dsn, processes, fake)
        # Start-up to a bound port takes under a second alone (benchmark scenario 6); the suite's
        # four workers share two cores, so the bound here is looser than the promise.
        health = await _first_answer(serve, "/health", time.monotonic() + 10.0)
        assert health.status_code == 503, f"{health.status_code} {health.text}{serve.tail()}"
        await serve.sigterm()
        assert serve.proc.returncode in (0, -signal.SIGTERM), f"unclean exit{serve.tail()}"


async def test_a_database_restart_mid_collection_is_survived_by_the_serve_process(tmp_path: Path) -> None:
    """PostgreSQL stopped and started under a running collection: the same process finishes it, with no gap."""
    history = 12_000
    async with FakeBinance(latency_ms=200) as fake, own_postgres(tmp_path / "db") as (control, dsn), \
            service_processes(tmp_path) as processes:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        now = int(time.time() * 1000)
        fake.generate_klines("BTCUSDT", "1m", now - (history + 60) * MINUTE_MS, history + 120)
        serve = await _start_serve_on(dsn, processes, fake, history_candles=history)
        await serve.wait_healthy()
        await serve.wait_idle()
        task_id = await serve.start_collection(["BTCUSDT"], ["1m"])
        await serve.wait_task(task_id, running_with_progress, 15.0, "running with progress")

        await control.stop()
        await asyncio.sleep(1.0)
        await control.start()

        done = await serve.wait_task(task_id, lambda b: b["status"] not in ("pending", "running"), 60.0, "ended")
        assert done["status"] == "completed", f"{done}{serve.tail()}"
        times = await serve.open_times("BTCUSDT")
        assert len(times) == len(set(times)) >= history, f"{len(times)} candles{serve.tail()}"
        assert_no_gaps(times, "BTCUSDT")
        await serve.sigterm()
