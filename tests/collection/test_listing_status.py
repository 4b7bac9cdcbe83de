"""Listing status: a config whose symbol stops trading is paused (not scheduled, reason shown) and
resumes when it trades again; history of a non-trading symbol can still be collected by hand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.db import configs as configs_db
from service.db.tasks import TASKS_CHANNEL
from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0
from tests.collection.test_scheduler import CONFIGS, create, fast_clock, runs, virtual_sleep
from tests.conftest import Api, serve_app
from tests.fakes.binance import FakeBinance


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, re-checking every 20 ms."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def refresh_symbols(api: Api) -> None:
    """Run a symbol refresh through the API, to its end."""
    response = await api.http.post("/api/v1/data-collector/refresh-symbols")
    assert response.status_code == 202, response.text
    task = await api.wait(response.json()["task_id"])
    assert task["status"] == "completed", task


async def scheduled_tasks(db: asyncpg.Connection[Any]) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM tasks WHERE task_type = 'scheduled_data_collection'")
    return count


async def test_a_config_pauses_while_its_symbol_is_on_break_and_resumes_when_it_trades(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """BREAK at a symbol refresh pauses the config (reason in the API, still enabled, schedulers told);
    while paused no scheduled run happens though its due time passes, but "Run now" still works;
    TRADING again at the next refresh resumes it, due at once, and it runs on schedule again."""
    clock = fast_clock(fake)
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 200)
    notifications: list[str] = []
    await db.add_listener(TASKS_CHANNEL, lambda *args: notifications.append(args[3]))
    async with serve_app(make_settings(symbol_refresh_interval=10**6), clock) as api:
        await api.wait_idle()
        config = await create(api, interval_minutes=1)
        url = f"{CONFIGS}/{config['id']}"
        job = f"collect_data_{config['id']}"
        assert (config["paused_reason"], config["paused_at"]) == (None, None)

        async def scheduled_runs() -> list[dict[str, Any]]:
            return [r for r in await runs(db, job) if r["job_type"] == "scheduled_data_collection"]

        async def ran_once() -> bool:
            return any(r["status"] == "success" for r in await scheduled_runs())

        await until(ran_once)

        fake.add_symbol("BTCUSDT", "BTC", "USDT", status="BREAK")
        notifications.clear()
        await refresh_symbols(api)
        paused = (await api.http.get(url)).json()
        assert paused["paused_reason"].startswith("BTCUSDT is BREAK on binance since the symbol refresh at ")
        assert paused["paused_at"] is not None
        assert paused["enabled"] is True

        async def schedulers_told() -> bool:  # the notification arrives at the commit, on its own connection
            return "configs:changed" in notifications

        await until(schedulers_told)
        listed = {c["id"]: c for c in (await api.http.get(CONFIGS)).json()}
        assert listed[config["id"]]["paused_reason"] == paused["paused_reason"]

        await api.wait_idle()  # a run begun before the pause ends
        runs_before, tasks_before = len(await scheduled_runs()), await scheduled_tasks(db)
        await virtual_sleep(clock, 5)  # five intervals
        assert len(await scheduled_runs()) == runs_before
        assert await scheduled_tasks(db) == tasks_before
        still = (await api.http.get(url)).json()
        assert datetime.fromisoformat(still["next_run_at"]) < datetime.fromtimestamp(clock(), UTC)  # overdue
        assert still["paused_reason"] == paused["paused_reason"]

        # By hand it still runs: collecting a paused symbol's history is the user's call.
        triggered = await api.http.post(f"{url}/trigger")
        assert triggered.status_code == 202, triggered.text
        assert (await api.wait(triggered.json()["task_id"]))["status"] == "completed"
        assert await scheduled_tasks(db) == tasks_before

        fake.add_symbol("BTCUSDT", "BTC", "USDT", status="TRADING")
        notifications.clear()
        await refresh_symbols(api)
        resumed = (await api.http.get(url)).json()
        assert (resumed["paused_reason"], resumed["paused_at"], resumed["enabled"]) == (None, None, True)
        await until(schedulers_told)

        async def ran_again() -> bool:
            return len([r for r in await scheduled_runs() if r["status"] == "success"]) > runs_before

        await until(ran_again)
        await virtual_sleep(clock, 3)
        assert len(await scheduled_runs()) >= runs_before + 3  # back on its interval


async def test_a_delisted_symbol_pauses_its_config_and_a_new_config_of_a_halted_one_is_paused_at_once(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A symbol gone from the listing pauses its config as DELISTED; a disabled config is paused too and
    stays disabled on resume; a config created for a HALT symbol is paused from the start."""
    clock = fast_clock(fake)
    async with serve_app(make_settings(symbol_refresh_interval=10**6), clock) as api:
        await api.wait_idle()
        eth = await create(api, symbol="ETHUSDT", interval_minutes=5, enabled=False)
        fake.remove_symbol("ETHUSDT")
        fake.add_symbol("SOLUSDT", "SOL", "USDT", status="HALT")
        await refresh_symbols(api)
        delisted = (await api.http.get(f"{CONFIGS}/{eth['id']}")).json()
        assert delisted["paused_reason"].startswith(
            "ETHUSDT is no longer listed (DELISTED) on binance since the symbol refresh at "
        )
        assert (delisted["enabled"], delisted["next_run_at"]) == (False, None)

        sol = await create(api, symbol="SOL/USDT")
        assert sol["paused_reason"].startswith("SOLUSDT is HALT on binance since the symbol refresh at ")
        assert sol["enabled"] is True
        await virtual_sleep(clock, 3)
        assert await runs(db, f"collect_data_{sol['id']}") == []

        fake.add_symbol("ETHUSDT", "ETH", "USDT")
        await refresh_symbols(api)
        back = (await api.http.get(f"{CONFIGS}/{eth['id']}")).json()
        assert (back["paused_reason"], back["enabled"], back["next_run_at"]) == (None, False, None)


async def test_a_break_symbols_history_can_still_be_collected_by_hand(
    fake: FakeBinance, settings: Settings
) -> None:
    """/data-collector/start of a symbol on BREAK collects the candles the exchange has."""
    fake.add_symbol("BTCUSDT", "BTC", "USDT", status="BREAK")
    fake.generate_klines("BTCUSDT", "1h", T0 - 10 * 60 * MINUTE, 8)
    clock = fast_clock(fake)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await api.wait(await api.start(["BTCUSDT"], ["1h"]))
    assert task["status"] == "completed", task
    assert task["result"]["candles_written"] == 8


async def test_a_paused_config_is_never_due_nor_claimable(db: asyncpg.Connection[Any]) -> None:
    """The scheduler's three queries skip a paused config: not due, no next due time, a claim refused
    (so a scheduler that read it as due just before the pause cannot run it)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    worker = uuid.uuid4()
    await db.execute("INSERT INTO workers (id, kind, hostname, pid) VALUES ($1, 'web', 'test', 1)", worker)
    config_id = await db.fetchval(
        """
        INSERT INTO data_collection_configs (symbol, exchange, timeframes, interval_minutes, next_run_at,
                                             paused_reason, paused_at)
        VALUES ('BTCUSDT', 'binance', '{1m}', 5, $1, 'BTCUSDT is BREAK on binance', $1) RETURNING id
        """,
        now - timedelta(minutes=1),
    )
    assert await configs_db.due_configs(db, now) == []
    assert await configs_db.next_due_at(db) is None
    async def claim() -> bool:
        return await configs_db.claim_due_run(
            db, config_id, due_at=now - timedelta(minutes=1), next_run_at=now, started_at=now, worker_id=worker
        )

    assert await claim() is False
    await db.execute("UPDATE data_collection_configs SET paused_reason = NULL, paused_at = NULL")
    assert [r["id"] for r in await configs_db.due_configs(db, now)] == [config_id]
    assert await claim() is True
