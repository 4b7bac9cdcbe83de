"""A backfill whose database restarts or drops connections under it: nothing lost, nothing stuck.

Real PostgreSQL (stopped with `pg_ctl -m fast`, connections cut with `pg_terminate_backend`), the
fake exchange over HTTP with some latency so the backfill is in full flow when the fault hits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at, stored
from tests.conftest import Api, serve_app
from tests.fakes.binance import FakeBinance
from tests.postgres_control import PostgresControl, own_postgres, terminate_backends


def symbols(n: int) -> list[str]:
    return [f"S{i:02d}USDT" for i in range(n)]


def backfill(fake: FakeBinance, names: list[str], candles: int) -> dict[str, list[list[Any]]]:
    """`candles` one-minute candles per symbol, the last one open at T0."""
    return {s: fake.generate_klines(s, "1m", T0 - (candles - 1) * MINUTE, candles) for s in names}


async def klines_count(dsn: str) -> int | None:
    """Candles stored so far (None while the database is down)."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM klines")
        return count
    finally:
        await conn.close()


async def wait_for_candles(dsn: str, at_least: int) -> None:
    async with asyncio.timeout(30):
        while (await klines_count(dsn) or 0) < at_least:
            await asyncio.sleep(0.05)


async def assert_exact(dsn: str, expected: dict[str, list[list[Any]]]) -> None:
    """Every series holds exactly the exchange's candles: no gap, no duplicate, same values."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    try:
        for symbol, rows in expected.items():
            got = await stored(conn, symbol, "1m")
            assert [tuple(r.values())[:11] for r in got] == [tuple(row[:11]) for row in rows], symbol
    finally:
        await conn.close()


@pytest.fixture
async def outage_pg(tmp_path: Path) -> AsyncIterator[tuple[PostgresControl, str]]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    async with own_postgres(tmp_path / "pg") as (control, dsn):
        yield control, dsn


async def outage_mid_task(api: Api, task_id: str, control: PostgresControl, dsn: str) -> None:
    """Once the backfill has written some pages, PostgreSQL is down for 3 s."""
    await wait_for_candles(dsn, 4_000)
    await control.stop()
    await asyncio.sleep(3)
    # The row says running and cannot be updated meanwhile; memory must not claim otherwise.
    # (Anonymous: a public read needs no account lookup, so it answers with the database away.)
    during = (await api.anonymous.get(f"/api/v1/data-collector/task/{task_id}")).json()
    assert during["status"] == "running", during
    await control.start()


async def row_of(dsn: str, task_id: str) -> asyncpg.Record:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT status, message, error FROM tasks WHERE id = $1::uuid", task_id)
        assert row is not None
        return row
    finally:
        await conn.close()


async def test_a_database_restarted_mid_backfill_costs_a_pause_not_a_series(
    outage_pg: tuple[PostgresControl, str], make_settings: Callable[..., Settings]
) -> None:
    """PostgreSQL stopped for 3 s mid-backfill: page writes wait for it, the task completes, every series exact."""
    control, dsn = outage_pg
    names = symbols(5)
    async with FakeBinance(latency_ms=100) as fake:
        clock = frozen_at(fake, T0)
        expected = backfill(fake, names, 20_000)
        settings = make_settings(database_url=dsn, binance_api_url=fake.url, default_history_candles=20_000)
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            task_id = await api.start(names, ["1m"])
            await outage_mid_task(api, task_id, control, dsn)
            task = await api.wait(task_id, timeout=60)
    assert task["status"] == "completed", task
    assert task["result"]["pairs_failed"] == 0
    assert (await row_of(dsn, task_id))["status"] == "completed"
    await assert_exact(dsn, expected)


async def test_a_task_that_ended_during_an_outage_is_recorded_once_the_database_is_back(
    outage_pg: tuple[PostgresControl, str], make_settings: Callable[..., Settings]
) -> None:
    """Series that gave up while PostgreSQL was down end the task as failed in memory and in its row
    alike once PostgreSQL is back; its series are free again and the next run completes them exactly."""
    control, dsn = outage_pg
    names = symbols(4)
    async with FakeBinance(latency_ms=100) as fake:
        clock = frozen_at(fake, T0)
        expected = backfill(fake, names, 20_000)
        settings = make_settings(
            database_url=dsn, binance_api_url=fake.url, default_history_candles=20_000,
            db_retry_seconds=0.5, task_cleanup_delay=0.5,
        )
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            task_id = await api.start(names, ["1m"])
            await outage_mid_task(api, task_id, control, dsn)
            task = await api.wait(task_id, timeout=30)
            assert task["status"] == "failed", task
            assert task["result"]["pairs_failed"] == len(names)
            row = await row_of(dsn, task_id)
            assert (row["status"], row["message"]) == (task["status"], task["message"])
            # Past TASK_CLEANUP_DELAY the stored record answers, and it is the same.
            await asyncio.sleep(1)
            assert (await api.task(task_id))["status"] == "failed"
            cancel = await api.http.post(f"/api/v1/data-collector/task/{task_id}/cancel")
            assert cancel.status_code == 409 and "already ended" in cancel.json()["detail"]
            retry = await api.wait(await api.start(names, ["1m"]), timeout=60)
    assert retry["status"] == "completed", retry
    await assert_exact(dsn, expected)


async def test_connections_terminated_mid_backfill_leave_every_series_exact(
    make_settings: Callable[..., Settings], db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """Every service connection killed 12 times, 0.3 s apart, during a 20-series backfill: the task
    completes, every series is exact, and nothing is written after the task has ended."""
    names = symbols(20)
    async with FakeBinance(latency_ms=100) as fake:
        clock = frozen_at(fake, T0)
        expected = backfill(fake, names, 20_000)
        settings = make_settings(binance_api_url=fake.url, default_history_candles=20_000)
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            task_id = await api.start(names, ["1m"])
            await wait_for_candles(db_dsn, 1_000)
            rounds_while_running = 0
            for _ in range(12):
                if (await api.task(task_id))["status"] == "running":
                    rounds_while_running += 1
                    assert await terminate_backends(db) >= 0
                await asyncio.sleep(0.3)
            task = await api.wait(task_id, timeout=60)
            count_at_end = await db.fetchval("SELECT count(*) FROM klines")
            await asyncio.sleep(0.5)
            assert await db.fetchval("SELECT count(*) FROM klines") == count_at_end
    assert rounds_while_running >= 6, "the backfill ended before the faults could hit it"
    assert task["status"] == "completed", task
    assert task["result"]["pairs_failed"] == 0
    await assert_exact(db_dsn, expected)

