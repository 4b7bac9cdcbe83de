"""GET /status shares its database reads: requests within a quarter second cost none, later ones are
answered at once while one read refreshes in the background, and nothing older than a second is served."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from service.db import workers as workers_db
from tests.conftest import Api

STATUS = "/api/v1/data-collector/status"


async def test_status_reads_are_shared_and_refreshed_in_the_background(
    api: Api, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    list_workers = workers_db.list_workers

    async def counted(conn: Any) -> list[asyncpg.Record]:
        nonlocal reads
        reads += 1
        return await list_workers(conn)

    monkeypatch.setattr(workers_db, "list_workers", counted)
    recent = api.app.state.runtime.status_reads
    now = 1000.0
    recent._clock = lambda: now  # time stands still unless the test moves it
    async with asyncio.timeout(10):  # kept once the listener listens (it may still be connecting)
        while recent._value is None:
            assert (await api.anonymous.get(STATUS)).status_code == 200
            await asyncio.sleep(0.05)

    before = reads
    answers = await asyncio.gather(*(api.anonymous.get(STATUS) for _ in range(20)))
    assert {a.status_code for a in answers} == {200}
    assert reads == before  # all from the last read
    assert "SOLUSDT" not in answers[0].json()["symbols"]

    await db.execute(
        "INSERT INTO symbols (exchange, symbol, base_asset, quote_asset, status)"
        " VALUES ('binance', 'SOLUSDT', 'SOL', 'USDT', 'TRADING')"
    )
    now += 0.3  # past refresh_after: answered at once from the last read, one read starts beside it
    stale = await api.anonymous.get(STATUS)
    assert "SOLUSDT" not in stale.json()["symbols"]
    async with asyncio.timeout(10):
        while recent.reading:
            await asyncio.sleep(0.01)
    assert reads == before + 1
    fresh = await api.anonymous.get(STATUS)
    assert "SOLUSDT" in fresh.json()["symbols"]
    assert reads == before + 1

    now += 1.1  # past max_age: the request waits for its own read
    await db.execute("DELETE FROM symbols WHERE symbol = 'SOLUSDT'")
    waited = await api.anonymous.get(STATUS)
    assert "SOLUSDT" not in waited.json()["symbols"]
    assert reads == before + 2
