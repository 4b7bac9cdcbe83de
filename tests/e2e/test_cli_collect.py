"""The command line for people who backfill by hand: `collect`, `status` and `--version` as real processes
on a test database and the fake exchange."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg

from tests.fakes.binance import FakeBinance
from tests.fakes.okx import FakeOkx
from tests.processes import (
    ROOT,
    process_env,
    run_service_command,
    running_with_progress,
    service_env,
    service_processes,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# A slow backfill (30 pages of 1000 1m candles at 300 ms per request, one page ahead): ~9 s, long
# enough to interrupt it or to collide with it.
SLOW_HISTORY = 30_000


@asynccontextmanager
async def slow_exchange() -> AsyncIterator[FakeBinance]:
    """The fake Binance listing BTCUSDT with 1m history a little past now, at 300 ms per request."""
    async with FakeBinance(latency_ms=300) as fake:
        now = int(time.time() * 1000)
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", now - (SLOW_HISTORY + 60) * MINUTE_MS, SLOW_HISTORY + 120)
        yield fake

# The total bar with candles written, candles/s and an ETA (h:mm:ss), once the run is under way.
TOTAL_BAR_MOVING = r"total +━.* [1-9][0-9,]* candles +[1-9][0-9,]*/s +[0-9]:[0-9]{2}:[0-9]{2}"


def slow_env(fake: FakeBinance, dsn: str) -> dict[str, str | None]:
    return service_env(
        binance_url=fake.url, database_url=dsn, default_history_candles=SLOW_HISTORY, pages_ahead=1,
        task_poll_seconds=0.5,
    )


async def open_times(db: asyncpg.Connection[Any], symbol: str, timeframe: str) -> list[int]:
    """Every stored open_time (epoch ms) of a series, oldest first."""
    rows = await db.fetch(
        """
        SELECT k.open_time FROM klines k JOIN series s ON s.id = k.series_id
         WHERE s.symbol = $1 AND s.timeframe = $2 ORDER BY k.open_time
        """,
        symbol, timeframe,
    )
    return [r["open_time"] for r in rows]


async def test_collect_stores_every_candle_and_ends_with_a_summary_line(
    fake: FakeBinance, db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """`collect` of 2 symbols x 2 timeframes stores every candle the exchange has, prints one line per series
    and a summary line when not on a terminal, records a completed task and exits 0."""
    now = int(time.time() * 1000)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        fake.generate_klines(symbol, "1m", now - 1499 * MINUTE_MS, 1500)  # the last one still open
        fake.generate_klines(symbol, "1h", now - 199 * HOUR_MS, 200)
    env = service_env(binance_url=fake.url, database_url=db_dsn, default_history_candles=5000)

    code, out = await run_service_command(
        "collect", "--symbols", "BTCUSDT,ETH/USDT", "--timeframes", "1m,1h", env=env
    )

    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("Completed: 3400 candles written for 4 series in "), out
    assert "candles/s); task " in lines[-1], out
    for series, count in (("BTCUSDT 1m", 1500), ("ETHUSDT 1m", 1500), ("BTCUSDT 1h", 200), ("ETHUSDT 1h", 200)):
        assert f"{series}: {count} candles written" in lines, out
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert len(await open_times(db, symbol, "1m")) == 1500
        assert len(await open_times(db, symbol, "1h")) == 200
    task = await db.fetchrow("SELECT id, task_type, status, result FROM tasks WHERE task_type = 'data_collection'")
    assert task is not None
    assert (task["status"], json.loads(task["result"])["candles_written"]) == ("completed", 3400)
    assert str(task["id"]) in lines[-1]
    assert await db.fetchval("SELECT count(*) FROM workers") == 0, "the command left the workers table"


async def test_collect_of_an_unknown_symbol_exits_2_naming_it(fake: FakeBinance, db_dsn: str) -> None:
    """`collect` of a symbol the exchange does not list exits 2 with a message naming it, and starts nothing."""
    env = service_env(binance_url=fake.url, database_url=db_dsn)

    code, out = await run_service_command("collect", "--symbols", "NOPEUSDT", "--timeframes", "1m", env=env)

    assert code == 2, out
    assert "unknown symbol 'NOPEUSDT'" in out


async def test_collect_on_okx_stores_the_candles_under_its_own_id(
    fake: FakeBinance, db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """`collect --exchange okx --symbols BTC/USDT` on a deployment enabling OKX takes the history from
    the OKX fake, stores it under OKX's own id BTC-USDT on okx (none on binance), and exits 0."""
    now = int(time.time() * 1000)
    first = (now - 199 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    async with FakeOkx() as okx:
        okx.add_symbol("BTC-USDT", list_time=first)
        okx.generate_klines("BTC-USDT", "1m", first, 205)  # up to now, and a few minutes to come
        env = service_env(
            binance_url=fake.url, database_url=db_dsn, exchanges="okx", okx_api_url=okx.url, okx_retry_wait=0.01,
            default_history_candles=150,
        )  # fmt: skip
        code, out = await run_service_command(
            "collect", "--exchange", "okx", "--symbols", "BTC/USDT", "--timeframes", "1m", env=env
        )
        served = {int(row[0]) for row in okx.get_klines("BTC-USDT", "1m")}

    assert code == 0, out
    rows = await db.fetch(
        """
        SELECT s.exchange, s.symbol, k.open_time FROM klines k JOIN series s ON s.id = k.series_id
         WHERE s.timeframe = '1m' ORDER BY k.open_time
        """
    )
    assert {(r["exchange"], r["symbol"]) for r in rows} == {("okx", "BTC-USDT")}
    times = [r["open_time"] for r in rows]
    assert len(times) == 150, out
    assert times == list(range(times[0], times[0] + 150 * MINUTE_MS, MINUTE_MS))
    assert set(times) <= served
    assert times[-1] >= now // MINUTE_MS * MINUTE_MS  # up to the candle open when it ran
    assert "BTC-USDT 1m: 150 candles written" in out, out


async def test_collect_on_a_venue_not_enabled_exits_2_naming_exchanges(fake: FakeBinance, db_dsn: str) -> None:
    """`collect --exchange kraken` where EXCHANGES lacks kraken exits 2, naming EXCHANGES."""
    env = service_env(binance_url=fake.url, database_url=db_dsn)  # EXCHANGES=binance

    code, out = await run_service_command(
        "collect", "--exchange", "kraken", "--symbols", "BTC/USD", "--timeframes", "1m", env=env
    )

    assert code == 2, out
    assert "EXCHANGES" in out and "kraken" in out, out


async def test_collect_since_listing_until_a_date_takes_exactly_that_range(
    fake: FakeBinance, db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """`collect --since listing --until T` stores the candles from the symbol's first one up to T
    (exclusive), whatever DEFAULT_HISTORY_CANDLES says; a garbled --since exits 2 naming it."""
    now = int(time.time() * 1000)
    listing = (now - 2500 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    fake.generate_klines("BTCUSDT", "1m", listing, 2400)
    until = listing + 2000 * MINUTE_MS
    until_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until / 1000))
    env = service_env(binance_url=fake.url, database_url=db_dsn, default_history_candles=10)

    code, out = await run_service_command(
        "collect", "--symbols", "BTCUSDT", "--timeframes", "1m", "--since", "listing", "--until", until_iso, env=env
    )
    bad, bad_out = await run_service_command(
        "collect", "--symbols", "BTCUSDT", "--timeframes", "1m", "--since", "last tuesday", env=env
    )

    assert code == 0, out
    assert await open_times(db, "BTCUSDT", "1m") == [listing + i * MINUTE_MS for i in range(2000)]
    assert bad == 2 and "ISO 8601" in bad_out, bad_out


async def test_collect_while_a_service_collects_the_same_series_exits_1_naming_the_active_task(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """While a running `serve` collects BTCUSDT 1m, `collect` of BTCUSDT 1m,1h exits 1 naming the service's
    task, and records no task of its own."""
    async with slow_exchange() as fake, service_processes(tmp_path) as processes:
        env = slow_env(fake, db_dsn)
        web = await processes.start("serve", env=env)
        await web.wait_healthy()
        await web.wait_idle()
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        await web.wait_task(task_id, running_with_progress, 15.0, "running with progress")

        code, out = await run_service_command("collect", "--symbols", "BTCUSDT", "--timeframes", "1m,1h", env=env)

        assert code == 1, out
        assert f"not started: task {task_id} is already collecting binance:BTCUSDT:1m" in out, out
        assert await db.fetchval("SELECT count(*) FROM tasks WHERE task_type = 'data_collection'") == 1
        assert await db.fetchval("SELECT count(*) FROM workers WHERE kind = 'cli'") == 0


async def test_sigint_mid_collect_records_a_cancelled_task_with_its_candles_kept_and_no_gap(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C) in the middle of `collect` exits 130; the task is recorded cancelled with a result that
    counts exactly the candles kept, which run without a gap; `status` meanwhile listed the command as a
    worker running that task."""
    async with slow_exchange() as fake, service_processes(tmp_path) as processes:
        env = slow_env(fake, db_dsn)
        cli = await processes.start("collect", "--symbols", "BTCUSDT", "--timeframes", "1m", env=env)
        async with asyncio.timeout(20):
            while not await db.fetchval(
                "SELECT count(*) FROM tasks WHERE status = 'running' AND progress >= 5"
            ):
                assert cli.returncode is None, cli.tail()
                await asyncio.sleep(0.1)
        code, status_out = await run_service_command("status", env=env)
        assert code == 0, status_out
        assert "  cli " in status_out and f"pid {cli.proc.pid}," in status_out, status_out
        assert "data_collection running" in status_out, status_out

        cli.proc.send_signal(signal.SIGINT)
        assert await cli.wait_exit(15) == 130, cli.tail()

        task = await db.fetchrow("SELECT id, status, result, error FROM tasks WHERE task_type = 'data_collection'")
        assert task is not None
        assert task["status"] == "cancelled", dict(task)
        assert task["error"] == "Cancelled: interrupted by SIGINT (Ctrl-C)"
        times = await open_times(db, "BTCUSDT", "1m")
        assert 0 < len(times) < SLOW_HISTORY, "the run was not interrupted midway"
        result = json.loads(task["result"])
        assert result["candles_written"] == len(times), dict(task)
        assert result["pairs"][0]["error"] == "stopped before it was complete"
        assert {b - a for a, b in pairwise(times)} == {MINUTE_MS}, "a gap or a duplicate among the kept candles"
        assert f"Cancelled: interrupted by SIGINT (Ctrl-C); {len(times)} candles written" in cli.log_text()
        assert str(task["id"]) in cli.log_text()
        assert await db.fetchval("SELECT count(*) FROM workers") == 0


async def test_status_lists_a_running_serve_as_a_worker_and_says_when_none_runs(
    fake: FakeBinance, db_dsn: str, tmp_path: Path
) -> None:
    """`status` lists a running `serve` (kind web, host and pid) among the workers; once it has stopped, `status`
    still answers and says that no service is running."""
    env = service_env(binance_url=fake.url, database_url=db_dsn)
    async with service_processes(tmp_path) as processes:
        web = await processes.start("serve", env=env)
        await web.wait_healthy()
        await web.wait_idle()

        code, out = await run_service_command("status", env=env)

        assert code == 0, out
        assert "Workers: 1\n" in out, out
        assert f"  web     {socket.gethostname()} pid {web.proc.pid}," in out, out
        assert "symbol_refresh: success" in out, out  # the start-up refresh is the last run
        await web.sigterm()

    code, out = await run_service_command("status", env=env)

    assert code == 0, out
    assert "Workers: 0 (no service is running on this database)" in out, out
    assert "Active tasks: 0" in out and "Configs: 0 (0 enabled)" in out, out


async def test_version_prints_the_package_version() -> None:
    """`kline-collector --version` prints the installed package's version and exits 0."""
    from importlib.metadata import version

    code, out = await run_service_command("--version")

    assert code == 0, out
    assert out.strip() == f"kline-collector, version {version('kline-collector')}"


async def test_collect_on_a_terminal_draws_bars_per_series_and_total_and_ctrl_c_cancels(
    db_dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """On a pseudo-terminal `collect` draws a bar per series and a total with candles, candles/s and ETA;
    Ctrl-C typed on that terminal cancels the task (candles kept) and exits 130 with the summary line."""
    async with slow_exchange() as fake:
        env = process_env({**slow_env(fake, db_dsn), "TERM": "xterm-256color", "COLUMNS": None, "LINES": None})
        main_fd, terminal_fd = pty.openpty()
        fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "collect", "--symbols", "BTCUSDT", "--timeframes", "1m,1h",
            cwd=ROOT, env=env, stdin=terminal_fd, stdout=terminal_fd, stderr=terminal_fd,
            # Its own session with the terminal as controlling tty: Ctrl-C there reaches it as SIGINT.
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(terminal_fd)
        screen = bytearray()
        try:
            async with asyncio.timeout(30):
                while not re.search(TOTAL_BAR_MOVING, plain(screen)):
                    screen += await read_terminal(main_fd)
            os.write(main_fd, b"\x03")
            async with asyncio.timeout(15):
                while proc.returncode is None:
                    screen += await read_terminal(main_fd)
                    with suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 0.05)
            with suppress(TimeoutError):
                while chunk := await asyncio.wait_for(read_terminal(main_fd), 0.5):  # what it wrote last
                    screen += chunk
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(main_fd)
        text = plain(screen)
        assert proc.returncode == 130, text
        assert re.search(r"BTCUSDT 1m +━.* [0-9,]+ candles", text) and "BTCUSDT 1h " in text, text
        assert "Cancelled: interrupted by SIGINT (Ctrl-C); " in text, text
        task = await db.fetchrow("SELECT status, result FROM tasks WHERE task_type = 'data_collection'")
        assert task is not None and task["status"] == "cancelled"
        kept = json.loads(task["result"])["candles_written"]
        assert kept > 0 and f"Cancelled: interrupted by SIGINT (Ctrl-C); {kept} candles written" in text, text


async def read_terminal(fd: int) -> bytes:
    """The next bytes the program wrote to its terminal (b"" once it has closed it)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: every copy of the terminal's other end is closed
        await asyncio.sleep(0.05)
        return b""


def plain(screen: bytearray) -> str:
    """What the terminal shows, without colour and cursor escapes."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
