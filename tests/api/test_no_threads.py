"""The service runs on its event loop alone: no request path hands work to a thread pool.

Litestar runs any sync guard, dependency provider or handler through a worker thread; asyncpg
reads file-like COPY sources through the loop's default executor. Either would quietly start
`asyncio_N` threads. The one allowed exception is argon2 at login (not exercised here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Api

ADMIN = "/api/v1/admin/data-collection"


async def test_no_request_hands_work_to_a_thread(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guarded, public, failing and static requests, and a collection, run nothing in an executor."""
    loop = asyncio.get_running_loop()
    handed_off: list[str] = []
    original = loop.run_in_executor

    def recording(executor: Any, func: Any, *args: Any) -> Any:
        handed_off.append(getattr(func, "__qualname__", repr(func)))
        return original(executor, func, *args)

    # Every thread hand-off (Litestar's sync_to_thread, asyncio.to_thread, asyncpg's file reads)
    # goes through the loop's run_in_executor; threads already idle in a pool would hide a new use.
    monkeypatch.setattr(loop, "run_in_executor", recording)
    calls = [
        api.anonymous.get(f"{ADMIN}/status"),  # 401 from a guard
        api.anonymous.post("/api/v1/data-collector/start", json={"symbols": ["BTCUSDT"]}),
        api.http.get(f"{ADMIN}/status"),
        api.http.get(f"{ADMIN}/configs"),
        api.http.get(f"{ADMIN}/execution-logs"),
        api.http.get(f"{ADMIN}/execution-logs.csv"),
        api.http.get(f"{ADMIN}/configs/2147483648"),  # 400
        api.http.get("/api/v1/data-collector/status"),
        api.http.get("/api/v1/klines", params={"symbol": "BTCUSDT", "timeframe": "1m"}),
        api.http.get("/api/v1/auth/me"),
        api.http.get("/health"),
        api.http.get("/docs"),
        api.http.get("/docs/openapi.json"),
        api.http.get("/no/such/route"),
    ]
    statuses = [(await call).status_code for call in calls]
    assert statuses[:2] == [401, 401]
    assert all(s < 500 for s in statuses), statuses
    task = await api.wait(await api.start(["BTCUSDT"], ["1m"]))
    assert task["status"] == "completed", task
    assert handed_off == []
