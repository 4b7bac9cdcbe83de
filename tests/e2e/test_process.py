"""The real `serve` process on an embedded PostgreSQL: SIGTERM and kill -9, then a restart on the same data.

Each test runs `python -m service serve` as a subprocess against the in-process fake Binance, talks to it
over HTTP, and leaves no serve or postgres process behind, whatever happens.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

from service.db.embedded import is_embedded_running
from tests.fakes.binance import FakeBinance
from tests.processes import (
    ServiceProcess,
    ServiceProcesses,
    assert_no_gaps,
    running_with_progress,
    service_env,
    service_processes,
)

MINUTE_MS = 60_000
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# 30 pages of 1000 1m candles per symbol; with 500 ms per exchange request and a few pages in flight
# per series, one collection runs ~4 s: long enough to be stopped midway.
HISTORY_CANDLES = 30_000
SLOW_LATENCY_MS = 500


async def start_serve(processes: ServiceProcesses, name: str, fake: FakeBinance, pgdir: Path) -> ServiceProcess:
    """`python -m service serve` on the embedded PostgreSQL in `pgdir` with the fake exchange; log <name>.log."""
    env = service_env(
        binance_url=fake.url, embedded_pg_dir=pgdir, default_history_candles=HISTORY_CANDLES, lease_seconds=3
    )
    return await processes.start("serve", env=env, name=name)


@asynccontextmanager
async def slow_exchange() -> AsyncIterator[FakeBinance]:
    """The fake Binance with two symbols, 1m history a little past now, and 500 ms per request."""
    async with FakeBinance(latency_ms=SLOW_LATENCY_MS) as fake:
        now = int(time.time() * 1000)
        for symbol in SYMBOLS:
            fake.add_symbol(symbol, symbol[:3], symbol[3:])
            # From before the history start to an hour ahead (the fake hides candles until their time).
            fake.generate_klines(symbol, "1m", now - (HISTORY_CANDLES + 60) * MINUTE_MS, HISTORY_CANDLES + 120)
        yield fake


async def test_serve_starts_on_embedded_postgres_and_stops_on_sigterm_within_10s(tmp_path: Path) -> None:
    """SIGTERM mid-collection exits within 10 s, stops PostgreSQL, hands the task back (pending), and the
    restarted process resumes it to completion with no gap."""
    pgdir = tmp_path / "pg"
    async with slow_exchange() as fake, service_processes(tmp_path, embedded_pg_dir=pgdir) as processes:
        first = await start_serve(processes, "serve-1", fake, pgdir)
        await first.wait_healthy()
        assert is_embedded_running(pgdir), f"serve is healthy but no postgres runs on {pgdir}{first.tail()}"
        await first.wait_idle()
        task_id = await first.start_collection(SYMBOLS, ["1m"])
        before = await first.wait_task(task_id, running_with_progress, 15.0, "running with progress")

        elapsed = await first.sigterm()
        print(f"SIGTERM -> exit: {elapsed:.2f} s (progress at SIGTERM >= {before['progress']}%)")
        assert first.proc.returncode in (0, -signal.SIGTERM), f"unclean exit{first.tail()}"
        assert not is_embedded_running(pgdir), f"embedded postgres left running after SIGTERM{first.tail()}"

        assert "task_handed_back" in first.log_text(), first.tail()

        fake.latency_ms = 0  # the resumed collection may run at full speed
        second = await start_serve(processes, "serve-2", fake, pgdir)
        await second.wait_healthy()
        done = await second.wait_task(task_id, lambda b: b["status"] not in ("pending", "running"), 30.0, "ended")
        assert done["status"] == "completed", f"{done}{second.tail()}"
        for symbol in SYMBOLS:
            times = await second.open_times(symbol)
            assert len(times) == len(set(times)) >= HISTORY_CANDLES, f"{symbol}: {len(times)} candles"
            assert_no_gaps(times, symbol)

        await second.sigterm()
        assert not is_embedded_running(pgdir), f"embedded postgres left running{second.tail()}"


async def test_kill_9_leaves_nothing_to_repair(tmp_path: Path) -> None:
    """After kill -9, serve restarts on the same data as is; once the dead process's lease (3 s) ends, it
    takes the task back and resumes it to completion: no gap, no duplicate."""
    pgdir = tmp_path / "pg"
    async with slow_exchange() as fake, service_processes(tmp_path, embedded_pg_dir=pgdir) as processes:
        first = await start_serve(processes, "serve-1", fake, pgdir)
        await first.wait_healthy()
        await first.wait_idle()
        task_id = await first.start_collection(SYMBOLS, ["1m"])
        await first.wait_task(task_id, running_with_progress, 15.0, "running with progress")
        await first.kill()

        fake.latency_ms = 0  # the resumed collection may run at full speed
        second = await start_serve(processes, "serve-2", fake, pgdir)
        await second.wait_healthy()
        done = await second.wait_task(task_id, lambda b: b["status"] not in ("pending", "running"), 30.0, "ended")
        assert done["status"] == "completed", f"{done}{second.tail()}"
        assert "tasks_taken_back" in second.log_text(), second.tail()
        now = datetime.fromtimestamp(time.time()).astimezone()
        for symbol in SYMBOLS:
            times = await second.open_times(symbol)
            assert len(times) == len(set(times)), f"{symbol}: duplicate open_times"
            assert_no_gaps(times, symbol)
            assert len(times) >= HISTORY_CANDLES, f"{symbol}: only {len(times)} candles"
            assert now - times[-1] < timedelta(minutes=2), f"{symbol}: not caught up, last {times[-1]}"

        await second.sigterm()
        assert not is_embedded_running(pgdir), f"embedded postgres left running after the restart{second.tail()}"
