"""GET /api/v1/events: the live stream carries every task and execution-log change, from whichever process
made it: here the task runs in a worker while the stream is served by an API-only web process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.binance import FakeBinance
from tests.processes import ServiceProcess, service_env, service_processes

MINUTE_MS = 60_000


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream, comments skipped."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data += line[len("data:"):].strip()


async def test_the_stream_of_a_web_process_carries_a_workers_task_from_submission_to_completion(
    db_dsn: str, tmp_path: Path
) -> None:
    """A collection run by a worker shows on the web process's stream: submitted (pending), running,
    its progress rising to 100, completed; its execution log opened (running) and closed (success)."""
    async with FakeBinance(latency_ms=50) as fake, service_processes(tmp_path) as processes:
        now = int(time.time() * 1000)
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", now - 5_060 * MINUTE_MS, 5_120)
        env = service_env(
            binance_url=fake.url, database_url=db_dsn, default_history_candles=5_000, pages_ahead=1,
        )
        web: ServiceProcess = await processes.start("serve", env={**env, "WEB_RUNS_TASKS": "false"}, name="web")
        await web.wait_healthy()
        await processes.start("worker", env=env, name="worker")
        await web.wait_idle(timeout=30)

        tasks: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        async with web.http.stream("GET", "/api/v1/events", timeout=None) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            task_id = await web.start_collection(["BTCUSDT"], ["1m"])
            async with asyncio.timeout(30):
                async for event, data in sse_events(response):
                    if event == "task" and data["task_id"] == task_id:
                        tasks.append(data)
                    elif event == "execution_log" and data["task_id"] == task_id:
                        logs.append(data)
                    if tasks and tasks[-1]["status"] == "completed" and any(
                        log["status"] == "success" for log in logs
                    ):
                        break
        statuses = [t["status"] for t in tasks]
        assert statuses[0] == "pending" and "running" in statuses and statuses[-1] == "completed", statuses
        progress = [t["progress"] for t in tasks]
        assert progress == sorted(progress) and progress[-1] == 100, progress
        assert tasks[-1]["worker_id"] is not None
        assert [log["status"] for log in logs] == ["running", "success"], logs
        assert logs[-1]["records_collected"] == 5_000


async def test_the_stream_needs_a_token_when_reads_are_not_public(db_dsn: str, tmp_path: Path) -> None:
    """With PUBLIC_READS=false the stream answers 401 without a token and streams with one."""
    async with FakeBinance() as fake, service_processes(tmp_path) as processes:
        env = service_env(binance_url=fake.url, database_url=db_dsn, public_reads=False)
        web = await processes.start("serve", env=env, name="web")
        await web.wait_healthy()
        response = await web.http.get("/api/v1/events")
        assert response.status_code == 401
        await web.login()
        async with web.http.stream("GET", "/api/v1/events", timeout=5) as streaming:
            assert streaming.status_code == 200
            first = await anext(streaming.aiter_lines())
            assert first.startswith(":")  # the stream opens with a comment
