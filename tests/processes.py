"""Real service processes for tests: `python -m service <command>` (or any program, such as honcho) started
with its own environment, port and log file; waiting for /health; SIGTERM with a deadline, or kill -9; the
end of the log for assertion messages.

`service_processes()` hands out the processes and guarantees that every one it started is gone when the
block ends, whatever happened inside, so a test may run several (two `serve`, a `worker`) on one
PostgreSQL:

    async with service_processes(tmp_path) as processes:
        env = service_env(binance_url=fake.url, database_url=dsn)
        web = await processes.start("serve", env=env)                # its own port, tmp_path/serve-1.log
        worker = await processes.start("worker", env={**env, "MAX_CONCURRENT_TASKS": "2"})
        await web.wait_healthy()
        task_id = await web.start_collection(["BTCUSDT"], ["1m"])
        await worker.sigterm()
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from service.db.embedded import is_embedded_running, start_embedded_postgres
from service.settings import Settings
from tests.conftest import TEST_SECRET_KEY

__all__ = [
    "ADMIN_EMAIL", "ADMIN_PASSWORD", "ROOT", "SIGTERM_DEADLINE_S", "Env", "ServiceProcess", "ServiceProcesses",
    "assert_no_gaps", "free_port", "process_env", "run_program", "run_service_command", "running_with_progress",
    "service_env", "service_processes",
]

ROOT = Path(__file__).resolve().parents[1]
#: The admin `service_env` has every process create at start-up; `ServiceProcess.login` logs in as it.
ADMIN_EMAIL = "e2e-admin@example.com"
ADMIN_PASSWORD = "e2e-admin-password"
#: How long a process may take to exit after SIGTERM unless a test says otherwise.
SIGTERM_DEADLINE_S = 10.0

#: Environment changes on top of the test's own environment: a value sets a variable, None removes it.
Env = Mapping[str, str | None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_env(changes: Env) -> dict[str, str]:
    """The test's environment with `changes` applied (None removes a variable)."""
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def service_env(
    *, binance_url: str, database_url: str | None = None, embedded_pg_dir: Path | None = None,
    **settings: str | int | float | bool,
) -> dict[str, str | None]:
    """What a service process needs in a test: the fake exchange, one database, JSON logs, the e2e admin.

    With `database_url` the process uses that database (and the tests' SECRET_KEY, which every process on it
    shares); otherwise an embedded PostgreSQL on `embedded_pg_dir`. Further settings by field name
    (`default_history_candles=2000`); a name that is no setting is refused here rather than ignored there.
    """
    unknown = set(settings) - Settings.env_names()
    assert not unknown, f"not settings: {sorted(unknown)}"
    env: dict[str, str | None] = {
        "BINANCE_API_URL": binance_url,
        "EXCHANGES": "binance",  # the fakes stand in for the venues a test names; no test reaches a real one
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    if database_url is not None:
        env.update({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "EMBEDDED_PG_DIR": None})
    else:
        assert embedded_pg_dir is not None, "give database_url or embedded_pg_dir"
        env.update({"DATABASE_URL": None, "EMBEDDED_PG_DIR": str(embedded_pg_dir)})
    for name, value in settings.items():
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


async def run_program(
    argv: Sequence[str], *, env: Env | None = None, stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str]:
    """Run a program to its end: (exit code, stdout and stderr together). Killed, and the test failed, if it
    outlives `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=process_env(env or {}),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"{' '.join(argv)} still running after {timeout} s:\n{out.decode(errors='replace')}") \
            from None
    finally:
        if proc.returncode is None:  # cancelled: never leave it behind
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def run_service_command(
    command: str, *args: str, env: Env | None = None, stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str]:
    """`python -m service COMMAND ARGS` to its end (`migrate`, `create-user`…): (exit code, output)."""
    return await run_program(
        [sys.executable, "-m", "service", command, *args], env=env, stdin=stdin, timeout=timeout
    )


class ServiceProcess:
    """One started process: its log file, and an HTTP client on its port if it listens on one."""

    def __init__(
        self, name: str, argv: Sequence[str], proc: asyncio.subprocess.Process, log_path: Path,
        log_file: IO[bytes], port: int | None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc = proc
        self.log_path = log_path
        self.port = port
        self._log_file = log_file
        self._http = (
            None if port is None
            # No proxy from the environment: these requests go to loopback.
            else httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False)
        )

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.proc.pid} port={self.port} exit={self.proc.returncode}>"

    @property
    def http(self) -> httpx.AsyncClient:
        """A client on the process's port (it was started listening)."""
        assert self._http is not None, f"{self.name} was started without a port"
        return self._http

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def log_text(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        """The end of the process's output, headed with its name and exit code, for assertion messages."""
        return f"\n--- {self.log_path.name} (exit code {self.proc.returncode}) ---\n{self.log_text()[-chars:]}"

    def family(self) -> list[psutil.Process]:
        """The process and its descendants still alive (honcho's children, `uv run`'s program)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll GET /health every 0.1 s until 200 (a first start includes initdb and migrations); fail with the
        log's end if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, f"{self.name} exited before it was healthy{self.tail()}"
            try:
                response = await self.http.get("/health")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy within {timeout} s (last: {last}){self.tail()}")

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process has exited; fail if it still runs after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running {timeout} s later{self.tail()}") from None

    async def sigterm(self, deadline: float = SIGTERM_DEADLINE_S) -> float:
        """Send SIGTERM; seconds until the process exited (fails if that takes longer than `deadline`)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), deadline)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running {deadline} s after SIGTERM{self.tail()}") from None
        return time.monotonic() - began

    async def kill(self) -> None:
        """kill -9 of this process alone (what it started, such as an embedded PostgreSQL, keeps running), then
        reap it."""
        with suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()

    async def close(self) -> None:
        """Kill the process and its descendants if it still runs, reap it, close the client and the log."""
        try:
            if self.proc.returncode is None:
                family = self.family()
                for process in family:
                    with suppress(psutil.NoSuchProcess):
                        process.kill()
                await self.proc.wait()
                psutil.wait_procs(family, timeout=2)
        finally:
            if self._http is not None:
                await self._http.aclose()
            self._log_file.close()

    # ---- the service's API, as a user would call it -----------------------------------------------------

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no task is active (such as the start-up symbol refresh)."""
        async with asyncio.timeout(timeout):
            while (await self.http.get("/api/v1/data-collector/tasks/active")).json()["count"]:
                await asyncio.sleep(0.05)

    async def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> None:
        """Log in (by default as the admin `service_env` creates); later requests carry the token."""
        response = await self.http.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, f"{response.status_code} {response.text}{self.tail()}"
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    async def start_collection(self, symbols: list[str], timeframes: list[str]) -> str:
        """POST /start (logging in first if needed); the task id."""
        if "Authorization" not in self.http.headers:
            await self.login()
        response = await self.http.post(
            "/api/v1/data-collector/start", json={"symbols": symbols, "timeframes": timeframes}
        )
        assert response.status_code == 202, f"{response.status_code} {response.text}{self.tail()}"
        task_id: str = response.json()["task_id"]
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        """GET /task/{task_id}."""
        response = await self.http.get(f"/api/v1/data-collector/task/{task_id}")
        assert response.status_code == 200, f"{response.status_code} {response.text}{self.tail()}"
        body: dict[str, Any] = response.json()
        return body

    async def wait_task(
        self, task_id: str, done: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll a task until `done(body)`; fail saying it never became `what`."""
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


def assert_no_gaps(times: list[datetime], where: str) -> None:
    """1m open_times one minute apart each (no gap, no duplicate)."""
    steps = {b - a for a, b in pairwise(times)}
    assert steps <= {timedelta(minutes=1)}, f"{where}: steps between open_times {sorted(steps)}"


def running_with_progress(body: dict[str, Any]) -> bool:
    """A task body that is running and has made some progress (to stop it midway)."""
    return body["status"] == "running" and body["progress"] >= 5


class ServiceProcesses:
    """The processes one test started: distinct ports and log files (`<log_dir>/<name>.log`)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []
        self._ports: set[int] = set()
        self._started_per_command: Counter[str] = Counter()

    def free_port(self) -> int:
        """A free port not handed to another process of this group (the OS may offer one twice)."""
        while (port := free_port()) in self._ports:
            pass
        self._ports.add(port)
        return port

    async def start(
        self, command: str, *args: str, env: Env | None = None, name: str | None = None, listen: bool | None = None
    ) -> ServiceProcess:
        """`python -m service COMMAND ARGS` with `env` on top of the test's environment.

        `listen` (default: for `serve`) gives it a free port of its own on 127.0.0.1 (HOST and PORT set) and
        an HTTP client there. `name` (default `<command>-<n>`) names its log file.
        """
        if listen is None:
            listen = command == "serve"
        changes = dict(env or {})
        port = None
        if listen:
            port = self.free_port()
            changes.update({"HOST": "127.0.0.1", "PORT": str(port)})
        self._started_per_command[command] += 1
        if name is None:
            name = f"{command}-{self._started_per_command[command]}"
        return await self.start_program(
            [sys.executable, "-m", "service", command, *args], env=changes, name=name, port=port
        )

    async def start_program(
        self, argv: Sequence[str], *, env: Env | None = None, name: str, port: int | None = None
    ) -> ServiceProcess:
        """Any program (honcho, `uv run …`), output to `<log_dir>/<name>.log`; `port`: where its /health is."""
        assert all(p.name != name for p in self.started), f"a process named {name} was started already"
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=process_env(env or {}),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )
        except BaseException:
            log_file.close()
            raise
        process = ServiceProcess(name, argv, proc, log_path, log_file, port)
        self.started.append(process)
        return process

    async def close(self) -> None:
        """Every process gone (killed with its descendants if still running), every log closed."""
        errors: list[BaseException] = []
        for process in self.started:
            try:
                await process.close()
            except Exception as exc:  # the others must still be closed
                errors.append(exc)
        if errors:
            raise errors[0]


@asynccontextmanager
async def service_processes(
    log_dir: Path, *, embedded_pg_dir: Path | None = None
) -> AsyncIterator[ServiceProcesses]:
    """Processes for one test; at the end none is left running, and no embedded PostgreSQL on
    `embedded_pg_dir` either (a killed `serve` leaves its PostgreSQL running, as it would in production)."""
    processes = ServiceProcesses(log_dir)
    try:
        yield processes
    finally:
        try:
            await processes.close()
        finally:
            if embedded_pg_dir is not None and is_embedded_running(embedded_pg_dir):
                start_embedded_postgres(embedded_pg_dir).stop()  # take it over, as its last user, and stop it
