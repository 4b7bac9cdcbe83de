"""Live streams across real processes: one `worker` streams a venue's live configs at a time; kill -9
or SIGTERM of it and a peer takes the streams over, healing over REST, and goes on storing closes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fakes.binance import FakeBinance
from tests.fakes.binance_stream import FakeBinanceStream
from tests.processes import ServiceProcess, service_env, service_processes

MINUTE = 60_000
STREAM = "btcusdt@kline_1m"


def streaming(workers: list[ServiceProcess]) -> list[ServiceProcess]:
    """The workers whose log says they started streaming Binance (and did not stop since)."""
    return [w for w in workers if w.log_text().count('"live_started"') > w.log_text().count('"live_stopped"')]


async def until(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until it answers something truthy; fail naming `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not (found := check()):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None
    return found


@pytest.mark.parametrize("stop", ["kill -9", "sigterm"])
async def test_the_streams_pass_to_a_peer_when_their_process_dies_or_stops(
    stop: str, db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """Two workers, one live config: exactly one streams it. Killed (or stopped), the other takes the
    lock and the stream over within seconds (SIGTERM: at once), heals over REST, and a close the
    venue sends then is stored final."""
    now = int(time.time() * 1000)
    open_now = now - now % MINUTE
    async with FakeBinance() as fake, FakeBinanceStream() as stream, service_processes(tmp_path) as processes:
        fake.generate_klines("BTCUSDT", "1m", open_now - 30 * MINUTE, 30 + 10)
        env = service_env(
            binance_url=fake.url, database_url=db_dsn, binance_ws_url=stream.url, default_history_candles=30
        )
        workers = [await processes.start("worker", env=env, name=f"worker-{i}") for i in (1, 2)]
        web = await processes.start("serve", env={**env, "WEB_RUNS_TASKS": "false"}, name="web")
        await db.execute(
            "INSERT INTO data_collection_configs (symbol, exchange, timeframes, live)"
            " VALUES ('BTCUSDT', 'binance', '{1m}', true)"
        )
        await stream.wait_subscribed([STREAM], timeout=30)
        [owner] = await until(lambda: streaming(workers), 10, "an owner")
        [peer] = [w for w in workers if w is not owner]
        await asyncio.sleep(1.0)  # both have polled the configs while the owner holds the lock
        assert streaming(workers) == [owner] and len(stream.connections) == 1
        # The API-only process, which streams nothing itself, shows the owner's stream.
        await web.wait_healthy()
        shown = await until_shown(web)
        assert [c["streams"] for c in shown] == [[STREAM]] and shown[0]["connected"]

        began = time.monotonic()
        if stop == "kill -9":
            await owner.kill()
        else:
            await owner.sigterm()
        await until(lambda: streaming([peer]), 15, "the peer streaming")
        await until(lambda: STREAM in stream.subscriptions, 15, "subscribed again")
        took = time.monotonic() - began
        await until(lambda: '"live_healed"' in peer.log_text(), 15, "the peer's heal")
        closing = open_now - 45 * MINUTE  # a closed minute the fake's REST does not hold
        await stream.push(STREAM, [closing, "1.5", "2.5", "1.0", "2.0", "9.75", closing + MINUTE - 1, "19.5", 3,
                                   "4.0", "8.0", "0"], closed=True)  # fmt: skip
        stored = await _stored(db, closing)

    assert took < (5.0 if stop == "sigterm" else 10.0), took
    assert (stored["close"], stored["is_closed"]) == ("2.0", True)


async def until_shown(web: ServiceProcess) -> list[dict[str, Any]]:
    """GET /api/v1/live on `web` until it shows a connection (published about once a second)."""
    async with asyncio.timeout(10):
        while True:
            shown: list[dict[str, Any]] = (await web.http.get("/api/v1/live")).json()
            if shown:
                return shown
            await asyncio.sleep(0.1)


async def _stored(db: asyncpg.Connection[Any], open_ms: int) -> asyncpg.Record:
    async with asyncio.timeout(10):
        while True:
            row = await db.fetchrow("SELECT close::text, is_closed FROM klines WHERE open_time = $1", open_ms)
            if row is not None:
                return row
            await asyncio.sleep(0.05)
