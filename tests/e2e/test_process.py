"""The real `serve` process on an embedded PostgreSQL: SIGTERM and kill -9, then a restart on the same data.

Each test runs `python -m service serve` as a subprocess against the in-process fake Binance, talks to it
over HTTP, and leaves no serve or postgres process behind, whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import httpx

from service.db.embedded import is_embedded_running, start_embedded_postgres
from tests.fakes.binance import FakeBinance

ROOT = Path(__file__).resolve().parents[2]
MINUTE_MS = 60_000
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# 30 pages of 1000 1m candles per symbol; with 500 ms per exchange request and a few pages in flight
# per series, one collection runs ~4 s: long enough to be stopped midway.
HISTORY_CANDLES = 30_000
SLOW_LATENCY_MS = 500
SIGTERM_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


ADMIN_EMAIL = "e2e-admin@example.com"
ADMIN_PASSWORD = "e2e-admin-password"


class Serve:
    """One `serve` subprocess, its HTTP client and its log file."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path, log_file: IO[bytes]) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self._log_file = log_file
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0)

    def tail(self, chars: int = 4000) -> str:
        """The end of the server's output, for assertion messages."""
        self._log_file.flush()
        text = self.log_path.read_text(errors="replace")
        return f"\n--- {self.log_path.name} (exit code {self.proc.returncode}) ---\n{text[-chars:]}"

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll GET /health every 0.1 s until 200 (the first start includes initdb)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, f"serve exited before it was healthy{self.tail()}"
            try:
                response = await self.http.get("/health")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"not healthy within {timeout} s (last: {last}){self.tail()}")

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no task is active (the start-up symbol refresh)."""
        async with asyncio.timeout(timeout):
            while (await self.http.get("/api/v1/data-collector/tasks/active")).json()["count"]:
                await asyncio.sleep(0.05)

    async def login(self) -> None:
        """Log in as the admin the service created at start-up; later calls carry the token."""
        response = await self.http.post(
            "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        assert response.status_code == 200, f"{response.status_code} {response.text}{self.tail()}"
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    async def start_collection(self, symbols: list[str], timeframes: list[str]) -> str:
        if "Authorization" not in self.http.headers:
            await self.login()
        response = await self.http.post(
            "/api/v1/data-collector/start", json={"symbols": symbols, "timeframes": timeframes}
        )
        assert response.status_code == 202, f"{response.status_code} {response.text}{self.tail()}"
        task_id: str = response.json()["task_id"]
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/data-collector/task/{task_id}")
        assert response.status_code == 200, f"{response.status_code} {response.text}{self.tail()}"
        body: dict[str, Any] = response.json()
        return body

    async def wait_task(self, task_id: str, done: Any, timeout: float, what: str) -> dict[str, Any]:
        """Poll a task until `done(body)`."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await self.task(task_id)
            if done(body):
                return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"task never {what} within {timeout} s: {body}{self.tail()}")

    async def open_times(self, symbol: str, timeframe: str = "1m") -> list[datetime]:
        """Every stored open_time of a series, oldest first, paged through GET /api/v1/klines."""
        times: list[datetime] = []
        start = datetime(1970, 1, 1, tzinfo=UTC)  # without `start` the API gives the newest `limit`
        while True:
            params = {"symbol": symbol, "timeframe": timeframe, "limit": 5000, "start": start.isoformat()}
            response = await self.http.get("/api/v1/klines", params=params)
            assert response.status_code == 200, f"{response.status_code} {response.text}{self.tail()}"
            page = [datetime.fromisoformat(k["open_time"]) for k in response.json()["klines"]]
            times.extend(page)
            if len(page) < 5000:
                return times
            start = page[-1] + timedelta(minutes=1)

    async def sigterm(self) -> float:
        """SIGTERM; seconds until the process has exited (waits at most the deadline)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), SIGTERM_DEADLINE_S)
        except TimeoutError:
            raise AssertionError(f"serve still running {SIGTERM_DEADLINE_S} s after SIGTERM{self.tail()}") from None
        return time.monotonic() - began

    async def close(self) -> None:
        """Kill the process if it still runs, reap it, close the client and the log."""
        if self.proc.returncode is None:
            with suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await self.http.aclose()
        self._log_file.close()


@asynccontextmanager
async def pg_dir_cleanup(pgdir: Path) -> AsyncIterator[list[Serve]]:
    """Collects the test's servers; on exit kills any still running and stops a postgres left on pgdir."""
    servers: list[Serve] = []
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()
        if is_embedded_running(pgdir):
            start_embedded_postgres(pgdir).stop()  # take the server over, as its last user, and stop it


async def start_serve(tmp: Path, name: str, fake: FakeBinance, servers: list[Serve]) -> Serve:
    """`python -m service serve` on tmp/pg with the fake exchange; output to tmp/<name>.log."""
    port = free_port()
    env = {
        **os.environ,
        "EMBEDDED_PG_DIR": str(tmp / "pg"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "BINANCE_API_URL": fake.url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "DEFAULT_HISTORY_CANDLES": str(HISTORY_CANDLES),
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    env.pop("DATABASE_URL", None)
    log_path = tmp / f"{name}.log"
    log_file = log_path.open("wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "serve",
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    except BaseException:
        log_file.close()
        raise
    server = Serve(proc, port, log_path, log_file)
    servers.append(server)
    return server


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


def assert_no_gaps(times: list[datetime], where: str) -> None:
    steps = {b - a for a, b in pairwise(times)}
    assert steps <= {timedelta(minutes=1)}, f"{where}: steps between open_times {sorted(steps)}"


def running_with_progress(body: dict[str, Any]) -> bool:
    return body["status"] == "running" and body["progress"] >= 5


async def test_serve_starts_on_embedded_postgres_and_stops_on_sigterm_within_10s(tmp_path: Path) -> None:
    """SIGTERM mid-collection exits within 10 s, stops PostgreSQL, and the task reads cancelled on restart."""
    pgdir = tmp_path / "pg"
    async with slow_exchange() as fake, pg_dir_cleanup(pgdir) as servers:
        first = await start_serve(tmp_path, "serve-1", fake, servers)
        await first.wait_healthy()
        assert is_embedded_running(pgdir), f"serve is healthy but no postgres runs on {pgdir}{first.tail()}"
        await first.wait_idle()
        task_id = await first.start_collection(SYMBOLS, ["1m"])
        before = await first.wait_task(task_id, running_with_progress, 15.0, "running with progress")

        elapsed = await first.sigterm()
        print(f"SIGTERM -> exit: {elapsed:.2f} s (progress at SIGTERM >= {before['progress']}%)")
        assert first.proc.returncode in (0, -signal.SIGTERM), f"unclean exit{first.tail()}"
        assert not is_embedded_running(pgdir), f"embedded postgres left running after SIGTERM{first.tail()}"

        second = await start_serve(tmp_path, "serve-2", fake, servers)
        await second.wait_healthy()
        task = await second.task(task_id)
        assert task["status"] == "cancelled", f"{task}{first.tail()}"
        told = f"{task['error']} {task['message']}"
        assert "shutting down" in told, task
        assert task["completed_at"] is not None, task
        assert task["progress"] < 100, task
        for symbol in SYMBOLS:
            times = await second.open_times(symbol)
            assert times, f"no {symbol} candles committed before the stop"
            assert len(times) < HISTORY_CANDLES, f"{symbol}: the collection was not stopped midway"
            assert_no_gaps(times, symbol)

        await second.sigterm()
        assert not is_embedded_running(pgdir), f"embedded postgres left running{second.tail()}"


async def test_kill_9_leaves_nothing_to_repair(tmp_path: Path) -> None:
    """After kill -9, serve restarts on the same data as is, marks the task interrupted and resumes cleanly."""
    pgdir = tmp_path / "pg"
    async with slow_exchange() as fake, pg_dir_cleanup(pgdir) as servers:
        first = await start_serve(tmp_path, "serve-1", fake, servers)
        await first.wait_healthy()
        await first.wait_idle()
        task_id = await first.start_collection(SYMBOLS, ["1m"])
        await first.wait_task(task_id, running_with_progress, 15.0, "running with progress")
        first.proc.kill()
        await first.proc.wait()

        fake.latency_ms = 0  # the resumed collection may run at full speed
        second = await start_serve(tmp_path, "serve-2", fake, servers)
        await second.wait_healthy()
        task = await second.task(task_id)
        assert (task["status"], task["error"]) == ("failed", "interrupted"), f"{task}{second.tail()}"

        await second.wait_idle()
        again = await second.start_collection(SYMBOLS, ["1m"])
        done = await second.wait_task(again, lambda b: b["status"] not in ("pending", "running"), 30.0, "ended")
        assert done["status"] == "completed", f"{done}{second.tail()}"
        now = datetime.fromtimestamp(time.time()).astimezone()
        for symbol in SYMBOLS:
            times = await second.open_times(symbol)
            assert len(times) == len(set(times)), f"{symbol}: duplicate open_times"
            assert_no_gaps(times, symbol)
            assert len(times) >= HISTORY_CANDLES, f"{symbol}: only {len(times)} candles"
            assert now - times[-1] < timedelta(minutes=2), f"{symbol}: not caught up, last {times[-1]}"

        await second.sigterm()
        assert not is_embedded_running(pgdir), f"embedded postgres left running after the restart{second.tail()}"
