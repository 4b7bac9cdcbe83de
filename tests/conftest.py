"""Shared fixtures: one real PostgreSQL per session, a migrated template database cloned per test,
the fake Binance the tests own, and the app served in the test's own event loop.

Every app the tests serve has an admin account (TEST_ADMIN_EMAIL), and `Api.http` sends its bearer
token on every request; `Api.anonymous` sends none, and `Api.token_for()` makes a token for another
account (`await api.add_user(email, is_admin=False)`). Accounts made here share one password hash,
computed once per session: no test pays for argon2 unless it logs in.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import argon2
import asyncpg
import httpx
import pytest
from litestar import Litestar

from service.app import create_app
from service.auth.tokens import create_access_token
from service.auth.users import User
from service.db import users as users_db
from service.db.embedded import start_embedded_postgres
from service.settings import Settings
from tests.fakes.binance import FakeBinance
from tests.settings import settings_of

ROOT = Path(__file__).resolve().parents[1]
# Every service process a test starts inherits this unless the test names its venues: the fakes stand
# in for the venues a test names, and no test may reach a real one.
os.environ.setdefault("EXCHANGES", "binance")
#: pytest-xdist runs the tests in worker processes (`-n`, see pyproject's addopts); each worker starts its own
#: embedded PostgreSQL, and names its template after itself so workers can share a TEST_DATABASE_URL server.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEMPLATE_DB = f"kc_template_{XDIST_WORKER}" if XDIST_WORKER else "kc_template"
#: Signs the tokens of every test app (HS256 wants at least 32 characters).
TEST_SECRET_KEY = "tests-only-secret-key-0123456789abcdefghij"
#: The admin every served app has; `Api.http` carries its token.
TEST_ADMIN_EMAIL = "admin@kline-collector.test"
#: The password of every account the fixtures make.
TEST_PASSWORD = "correct horse battery staple"


#: Modules whose tests wait longest (real subprocesses, a slow fake exchange, outages, a browser), longest first.
#: They run first, so that under pytest-xdist the short in-process tests fill the workers' gaps at the end
#: instead of one worker finishing a minute-long test alone.
SLOW_FIRST = (
    "tests/test_bench_quick.py",
    "tests/e2e/test_scale_out.py",
    "tests/e2e/test_process.py",
    "tests/collection/test_database_faults.py",
    "tests/api/test_schemathesis.py",
    "tests/e2e/test_startup.py",
    "tests/browser/test_console.py",
    "tests/deploy/test_procfile.py",
    "tests/e2e/test_cli_collect.py",
)
#: Modules that run the scheduler on a fast clock (a few wall-clock milliseconds of lateness count): last, when
#: the workers beside them run short in-process tests rather than subprocesses and backfills.
TIMING_LAST = (
    "tests/collection/test_scheduler.py",
    "tests/collection/test_listing_status.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow modules first (in SLOW_FIRST's order), then the rest as collected, then TIMING_LAST; the order within
    a module stays."""

    def rank(item: pytest.Item) -> int:
        try:
            path = item.path.relative_to(ROOT).as_posix()
        except ValueError:  # a test file from outside the project
            return len(SLOW_FIRST)
        if path in TIMING_LAST:
            return len(SLOW_FIRST) + 1
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)


@cache
def password_hash_for_tests() -> str:
    """argon2 hash of TEST_PASSWORD, made once per session (one hash costs ~100 ms of CPU)."""
    return argon2.PasswordHasher().hash(TEST_PASSWORD)


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: TEST_DATABASE_URL if set, else an embedded server for the session."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data")
    try:
        loop = asyncio.new_event_loop()  # not the tests' loop, which pytest-asyncio owns
        try:
            loop.run_until_complete(_without_durability(server.dsn))
        finally:
            loop.close()
        yield server.dsn
    finally:
        server.stop()


async def _without_durability(dsn: str) -> None:
    """No fsync on the session's throwaway server: every test's CREATE DATABASE and commits stop waiting on the
    disk (~100 ms less per test database). Only an operating system crash could tell the difference; the tests
    that stop, restart or kill a PostgreSQL run their own servers with the defaults."""
    conn = await asyncpg.connect(dsn)
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {setting} = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_dsn(pg_dsn: str) -> str:
    """A database migrated once through the real CLI (`python -m service migrate`)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    dsn = with_database(pg_dsn, TEMPLATE_DB)
    await migrate(dsn)
    return dsn


async def migrate(dsn: str) -> None:
    """Migrate a database through the real CLI (`python -m service migrate`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "migrate",
        env={**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "console"},
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


@asynccontextmanager
async def new_database(pg_dsn: str, prefix: str, *, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own on the session's server, empty or cloned from `template`; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clone = "" if template is None else f" TEMPLATE {template}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}{clone}")
    finally:
        await conn.close()
    try:
        yield with_database(pg_dsn, name)
    finally:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture
async def db_dsn(pg_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A fresh migrated database for one test."""
    async with new_database(pg_dsn, "kc_test", template=TEMPLATE_DB) as dsn:
        yield dsn


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection to the test's database, for asserting what was stored."""
    conn = await asyncpg.connect(db_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    """The fake Binance, listing BTCUSDT, ETHUSDT and XRPETH."""
    async with FakeBinance() as exchange:
        exchange.add_symbol("BTCUSDT", "BTC", "USDT")
        exchange.add_symbol("ETHUSDT", "ETH", "USDT")
        exchange.add_symbol("XRPETH", "XRP", "ETH")
        yield exchange


@pytest.fixture
def make_settings(db_dsn: str, fake: FakeBinance) -> Callable[..., Settings]:
    """Settings pointing at the test database and the fake; keyword overrides by field name."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_dsn,
            "binance_api_url": fake.url,
            # No test may reach a real venue's stream: a live config streams from a fake it names.
            "binance_ws_url": "ws://127.0.0.1:9",
            "binance_retry_wait": 0.01,
            "binance_timeout": 2.0,
            "task_cleanup_delay": 300.0,
            "log_level": "WARNING",
            "secret_key": TEST_SECRET_KEY,
        }
        values.update(overrides)
        return settings_of(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class Api:
    """The app in this event loop, over httpx's ASGI transport, plus a few waiting helpers.

    `http` sends the test admin's bearer token with every request; `anonymous` sends none.
    """

    def __init__(self, http: httpx.AsyncClient, app: Litestar, anonymous: httpx.AsyncClient) -> None:
        self.http = http
        self.app = app
        self.anonymous = anonymous

    async def add_user(self, email: str, *, is_admin: bool = False) -> User:
        """An active account with TEST_PASSWORD (no hashing: the session's one hash)."""
        return await add_test_user(self.app, email, is_admin=is_admin)

    def token_for(self, user: User) -> str:
        """A token for `user`, minted by this app's own JWT auth (as a login would)."""
        return create_access_token(self.app.state.jwt_auth, user)

    async def start(self, symbols: list[str], timeframes: list[str]) -> str:
        body = {"symbols": symbols, "timeframes": timeframes}
        response = await self.http.post("/api/v1/data-collector/start", json=body)
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/data-collector/task/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait(self, task_id: str, timeout: float = 15.0, until: frozenset[str] = frozenset(
        {"completed", "failed", "cancelled"})) -> dict[str, Any]:
        """Poll a task until it reaches one of `until`."""
        async with asyncio.timeout(timeout):
            while True:
                body = await self.task(task_id)
                if body["status"] in until:
                    return body
                await asyncio.sleep(0.02)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no task is pending or running (e.g. the start-up symbol refresh)."""
        async with asyncio.timeout(timeout):
            while (await self.http.get("/api/v1/data-collector/tasks/active")).json()["count"]:
                await asyncio.sleep(0.02)


class Clock:
    """Epoch time that starts at `start` (s) and runs `speed` times faster than the wall clock.

    Handed to both the service (its weight windows, history, open candles) and the fake exchange,
    so that tests can place "now" anywhere and live through minute windows in a second.
    """

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        self._t0 = time.monotonic()
        self.start = time.time() if start is None else start
        self.speed = speed

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed

    def ms(self) -> int:
        return int(self() * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)


@asynccontextmanager
async def serve_app(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Api]:
    """Run the app's lifespan and talk to it in-process (clock: shared with the fake, if given)."""
    assert settings.database_url is not None
    if clock is None:
        app = create_app(settings, settings.database_url)
    else:
        app = create_app(settings, settings.database_url, clock=clock, sleep=clock.sleep)
    async with app.lifespan():
        # The service serves after two seconds even if its start-up work is not done (a slow
        # database); on a loaded test machine that can happen, and a test must not race it.
        await app.state.runtime.database_start.wait_first_attempt(timeout=60)
        admin = await add_test_user(app, TEST_ADMIN_EMAIL, is_admin=True)
        transport = httpx.ASGITransport(app=app)
        base_url = "http://kline-collector"
        admin_headers = bearer(create_access_token(app.state.jwt_auth, admin))
        async with (
            httpx.AsyncClient(transport=transport, base_url=base_url, headers=admin_headers) as http,
            httpx.AsyncClient(transport=transport, base_url=base_url) as anonymous,
        ):
            yield Api(http, app, anonymous)


async def add_test_user(app: Litestar, email: str, *, is_admin: bool) -> User:
    """Create (or make active again) an account with TEST_PASSWORD in the app's database."""
    runtime = app.state.runtime
    async with runtime.pool.acquire() as conn:
        row, _ = await users_db.upsert_user(
            conn, email=email, password_hash=password_hash_for_tests(), is_admin=is_admin
        )
    user: User | None = await runtime.accounts.get(row["id"])
    assert user is not None
    return user


@asynccontextmanager
async def running_app(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Api]:
    """`serve_app` with the start-up symbol refresh done, its lifespan in a task of its own.

    Litestar's lifespan task groups must be left in the task that entered them; a fixture's
    teardown runs in another task, so fixtures use this rather than `serve_app`.
    """
    ready: asyncio.Future[Api] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            async with serve_app(settings, clock) as client:
                await client.wait_idle()
                ready.set_result(client)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    runner = asyncio.create_task(run())
    try:
        yield await ready
    finally:
        stop.set()
        await runner


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The app with default test settings, start-up symbol refresh done."""
    async with running_app(settings) as client:
        yield client


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """The response is the one error shape (JSON `{status_code, detail, extra}`) with this status,
    and names each needle in its detail or extra."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"status_code", "detail", "extra"}, body
    assert body["status_code"] == status
    for needle in needles:
        assert needle in body["detail"] or needle in str(body["extra"]), body
    return body


@pytest.fixture
async def admin(make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    """The app with its scheduler off, so nothing but the test touches the configs."""
    async with running_app(make_settings(scheduler_enabled=False)) as api:
        yield api
