"""The processes a benchmark run owns: PostgreSQL, the fake exchange, the service; all stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DB = "bench_template"

_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """Something the benchmark depends on did not work; the message says what and shows logs."""


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return f"\n--- {path.name} (last {chars} chars) ---\n{text[-chars:]}"


async def _terminate(
    proc: asyncio.subprocess.Process, send_signal: Callable[[int], None], timeout: float
) -> None:
    """SIGTERM (through `send_signal`), then wait; SIGKILL after `timeout`."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, psutil.Error):
        send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


class Postgres:
    """The embedded server (started by the caller, before the event loop) plus database helpers."""

    def __init__(self, dsn: str, pgdata: Path) -> None:
        self.dsn = dsn
        self.pgdata = pgdata
        self._counter = 0

    async def admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def create_template(self, log_dir: Path) -> None:
        """Create the template database and migrate it through the real CLI."""
        await self.admin(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)", f"CREATE DATABASE {TEMPLATE_DB}")
        log_path = log_dir / "migrate.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service", "migrate",
                cwd=ROOT, env={**os.environ, "DATABASE_URL": with_database(self.dsn, TEMPLATE_DB)},
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
            code = await proc.wait()
        if code != 0:
            raise BenchError(f"`python -m service migrate` exited {code}{tail(log_path)}")

    async def clone(self, label: str) -> tuple[str, str]:
        """A fresh database cloned from the migrated template: (name, dsn)."""
        self._counter += 1
        name = f"bench_{label}_{self._counter}"
        await self.admin(
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"
        )
        return name, with_database(self.dsn, name)

    async def drop(self, name: str) -> None:
        await self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def cpu_seconds(self) -> float | None:
        """CPU of the whole server: postmaster, its reaped children, and its live children.

        Taken before and after a run, the difference counts backends that ended in between too
        (their time moves from the live children into the postmaster's reaped-children total).
        """
        postmaster = self._postmaster()
        if postmaster is None:
            return None
        try:
            times = postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in postmaster.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += cpu_seconds(child)
        except psutil.Error:
            return None
        return float(total)


# ---------------------------------------------------------------------------------------------
# The fake exchange, in its own process
# ---------------------------------------------------------------------------------------------


class FakeExchange:
    """`python -m tests.fakes.binance` (or another venue's fake, `module`) with its candles built
    before it prints its URL."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, module: str = "tests.fakes.binance") -> None:
        self.name = name
        self.args = list(args)
        self.module = module
        self.log_path = log_dir / f"fake-{name}.log"
        self.url = ""
        self.final_cpu_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, timeout: float = 600.0) -> None:
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, "--port", "0", "--no-record", *self.args,
                cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                preexec_fn=_die_with_parent,
            )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"fake {self.name} printed no URL within {timeout} s{tail(self.log_path)}") from None
        self.url = line.decode().strip()
        if not self.url.startswith("http://"):
            raise BenchError(f"fake {self.name} did not start (got {line!r}){tail(self.log_path)}")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stats(self) -> dict[str, Any]:
        """The fake's own counters: cpu_seconds, requests, status_counts, weight_by_minute."""
        assert self._session is not None
        async with self._session.get(self.url + "/__stats") as response:
            body: dict[str, Any] = await response.json()
            return body

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.final_cpu_seconds = json.loads(line).get("fake_cpu_seconds")


# ---------------------------------------------------------------------------------------------
# The service, as `python -m service serve`
# ---------------------------------------------------------------------------------------------


BENCH_SECRET_KEY = "bench-only-signing-key-0123456789abcdef"
BENCH_ADMIN_EMAIL = "bench-admin@example.com"
BENCH_ADMIN_PASSWORD = "bench-admin-password"


class Service:
    """One `serve` process on a free port, its HTTP session and log file."""

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        exchange_url: str,
        env: dict[str, str],
        log_dir: Path,
        prefix: Sequence[str] = (),
        worker_prefix: Sequence[str] | None = None,
    ) -> None:
        """`worker_prefix` not None: the split deployment, `serve` API-only (WEB_RUNS_TASKS=false) and
        one `kline-collector worker` beside it, started under that prefix (e.g. `nice -n 10`)."""
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "BINANCE_API_URL": exchange_url,
            "EXCHANGES": "binance",  # the scenarios before the venues one ask Binance alone
            "LOG_LEVEL": "WARNING",
            # Required with DATABASE_URL; starting collections needs an admin's token.
            "SECRET_KEY": BENCH_SECRET_KEY,
            "ADMIN_EMAIL": BENCH_ADMIN_EMAIL,
            "ADMIN_PASSWORD": BENCH_ADMIN_PASSWORD,
            **env,
        }
        self.settings = env
        self.prefix = list(prefix)
        self.worker_prefix = None if worker_prefix is None else list(worker_prefix)
        if self.worker_prefix is not None:
            self.env["WEB_RUNS_TASKS"] = "false"
        self._worker: asyncio.subprocess.Process | None = None
        self.log_path = log_dir / f"service-{name}.log"
        self.started_at = 0.0
        self.exit_code: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ps: psutil.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self._token: str | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            base_url=self.base,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        with self.log_path.open("wb") as log:
            self.started_at = time.perf_counter()
            self._proc = await asyncio.create_subprocess_exec(
                *self.prefix, sys.executable, "-m", "service", "serve",
                cwd=ROOT, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        if self.worker_prefix is not None:
            with self.log_path.with_name(f"worker-{self.name}.log").open("wb") as log:
                self._worker = await asyncio.create_subprocess_exec(
                    *self.worker_prefix, sys.executable, "-m", "service", "worker",
                    cwd=ROOT, env={**self.env, "WEB_RUNS_TASKS": "true"}, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent,
                )

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def process(self) -> psutil.Process:
        """The service's Python process (below a profiler, when the command has a prefix)."""
        if self._ps is None:
            ps = psutil.Process(self.pid)
            if self.prefix:
                for child in ps.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "serve" in child.cmdline() and "service" in child.cmdline():
                            ps = child
                            break
            self._ps = ps
        return self._ps

    def cpu_seconds(self) -> float:
        """CPU of the service's processes (the worker's too, in the split deployment)."""
        total = cpu_seconds(self.process)
        if self._worker is not None:
            with contextlib.suppress(psutil.Error):
                worker = psutil.Process(self._worker.pid)
                for child in worker.children(recursive=True):  # below `nice`, the Python process itself
                    worker = child
                total += cpu_seconds(worker)
        return total

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def tail(self) -> str:
        code = self.exit_code if self._proc is None else self._proc.returncode
        return f" (exit code {code}){tail(self.log_path)}"

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            raise BenchError(f"service {self.name} exited{self.tail()}")

    async def wait_healthy(self, timeout: float = 60.0, poll: float = 0.01) -> float:
        """Poll GET /health until 200; returns seconds since the process was spawned."""
        assert self.http is not None
        deadline = time.perf_counter() + timeout
        last = "no answer"
        while time.perf_counter() < deadline:
            self.check_alive()
            try:
                async with self.http.get("/health", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    await response.read()
                    if response.status == 200:
                        return time.perf_counter() - self.started_at
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(poll)
        raise BenchError(f"service {self.name} not healthy within {timeout} s (last: {last}){self.tail()}")

    async def get(self, path: str) -> Any:
        assert self.http is not None
        async with self.http.get(path) as response:
            if response.status != 200:
                raise BenchError(f"GET {path}: HTTP {response.status} {await response.text()}{self.tail()}")
            return await response.json()

    async def metric_values(self) -> dict[str, float]:
        """This process's /metrics samples, keyed `name{label="value",…}` (labels sorted)."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.http is not None
        async with self.http.get("/metrics") as response:
            if response.status != 200:
                raise BenchError(f"GET /metrics: HTTP {response.status}{self.tail()}")
            text = await response.text()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no task is active (the start-up symbol refresh has ended)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if (await self.get("/api/v1/data-collector/tasks/active"))["count"] == 0:
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"service {self.name} still busy after {timeout} s{self.tail()}")

    async def ready(self) -> None:
        await self.wait_healthy()
        await self.wait_idle()
        await self._admin_token()  # log in now: its password hash must not land in a timed region

    async def _admin_token(self) -> str:
        """Log in as the bench's admin once (the service creates it at start-up from ADMIN_EMAIL)."""
        if self._token is None:
            assert self.http is not None
            body = {"email": BENCH_ADMIN_EMAIL, "password": BENCH_ADMIN_PASSWORD}
            async with self.http.post("/api/v1/auth/login", json=body) as response:
                if response.status != 200:
                    raise BenchError(f"POST /auth/login: HTTP {response.status} {await response.text()}{self.tail()}")
                self._token = str((await response.json())["access_token"])
        return self._token

    async def _admin_post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {await self._admin_token()}"}
        async with self.http.post(path, json=body, headers=headers) as response:
            if response.status != expect:
                raise BenchError(f"POST {path}: HTTP {response.status} {await response.text()}{self.tail()}")
            answer: dict[str, Any] = await response.json()
            return answer

    async def start_collection(self, symbols: list[str], timeframes: list[str], exchange: str | None = None) -> str:
        body: dict[str, Any] = {"symbols": symbols, "timeframes": timeframes}
        if exchange is not None:
            body["exchange"] = exchange
        task_id: str = (await self._admin_post("/api/v1/data-collector/start", body, 202))["task_id"]
        return task_id

    async def plan_collection(self, symbols: list[str], timeframes: list[str]) -> dict[str, Any]:
        """What /start with the same body would do (POST /plan)."""
        body = {"symbols": symbols, "timeframes": timeframes}
        return await self._admin_post("/api/v1/data-collector/plan", body, 200)

    async def wait_task(self, task_id: str, *, poll: float, timeout: float) -> tuple[dict[str, Any], float]:
        """Poll the task until it has ended; returns its body and time.perf_counter() when seen ended."""
        deadline = time.perf_counter() + timeout
        while True:
            body = await self.get(f"/api/v1/data-collector/task/{task_id}")
            now = time.perf_counter()
            if body["status"] in ("completed", "failed", "cancelled"):
                if body["status"] != "completed":
                    raise BenchError(f"task {task_id} ended {body['status']}: {body.get('error')}{self.tail()}")
                return body, now
            if now > deadline:
                raise BenchError(f"task {task_id} not done within {timeout} s: {body.get('message')}{self.tail()}")
            self.check_alive()
            await asyncio.sleep(poll)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait (SIGKILL after `timeout`); returns the exit code."""
        if self.http is not None:
            await self.http.close()
            self.http = None
        worker, self._worker = self._worker, None
        if worker is not None:
            await _terminate(worker, worker.send_signal, timeout)
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        # Under a prefix (a profiler), stop the service itself and let the wrapper finish.
        await _terminate(proc, self.process.send_signal if self.prefix else proc.send_signal, timeout)
        self.exit_code = proc.returncode
        return proc.returncode
