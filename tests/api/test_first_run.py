"""A first run with no admin account: GET /api/v1/auth/setup says so (publicly, with how to make one), and start-up
logs `no_admin_account` once, naming `create-user --admin` and ADMIN_EMAIL / ADMIN_PASSWORD; neither once an
active admin exists or ADMIN_EMAIL / ADMIN_PASSWORD make one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar

from service.app import create_app
from service.auth.accounts import HOW_TO_GET_AN_ADMIN
from service.db import users as users_db
from service.process import runtime as runtime_module
from service.settings import Settings
from tests.collection.test_limit_cut import LogRecorder
from tests.conftest import add_test_user, bearer, password_hash_for_tests

SETUP = "/api/v1/auth/setup"


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app as `serve` starts it (no test admin added), once its start-up work on the database is done; a
    client that sends no token."""
    assert settings.database_url is not None
    app = create_app(settings, settings.database_url)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kline-collector") as http,
    ):
        async with asyncio.timeout(15):  # /api answers 503 until start-up has reached the database
            while (await http.get(SETUP)).status_code == 503:
                await asyncio.sleep(0.02)
        yield app, http


async def setup_of(http: httpx.AsyncClient, **headers: str) -> dict[str, Any]:
    response = await http.get(SETUP, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def test_the_advice_names_both_ways_to_an_admin() -> None:
    """The real command line (`--email`, the password asked or on stdin) and the two variables."""
    assert "`kline-collector create-user --admin --email you@example.com`" in HOW_TO_GET_AN_ADMIN
    assert "--password-stdin" in HOW_TO_GET_AN_ADMIN
    assert "`ADMIN_EMAIL`" in HOW_TO_GET_AN_ADMIN and "`ADMIN_PASSWORD`" in HOW_TO_GET_AN_ADMIN


async def test_setup_says_no_admin_until_an_active_admin_exists(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """False on a fresh database (even with PUBLIC_READS=false, and whatever token is sent), false with only a
    viewer or a disabled admin, true once an active admin exists."""
    async with started(make_settings(public_reads=False, scheduler_enabled=False)) as (app, http):
        assert await setup_of(http) == {"admin_exists": False, "how": HOW_TO_GET_AN_ADMIN}
        assert (await setup_of(http, **bearer("not-a-token")))["admin_exists"] is False

        viewer = await add_test_user(app, "viewer@example.com", is_admin=False)
        assert (await setup_of(http))["admin_exists"] is False
        admin = await add_test_user(app, "admin@example.com", is_admin=True)
        await db.execute("UPDATE users SET is_active = false WHERE id = $1", admin.id)
        assert (await setup_of(http))["admin_exists"] is False

        await db.execute("UPDATE users SET is_active = true WHERE id = $1", admin.id)
        assert await setup_of(http) == {"admin_exists": True, "how": HOW_TO_GET_AN_ADMIN}
        await db.execute("UPDATE users SET is_admin = true WHERE id = $1", viewer.id)
        await db.execute("UPDATE users SET is_admin = false WHERE id = $1", admin.id)
        assert (await setup_of(http))["admin_exists"] is True  # any active admin will do


async def test_start_up_logs_how_to_get_an_admin_once_when_there_is_none(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One warning once the database is migrated, with the advice; a viewer does not count as an admin."""
    logs = LogRecorder()
    monkeypatch.setattr(runtime_module, "log", logs)
    async with started(make_settings(scheduler_enabled=False)) as (app, _):
        await add_test_user(app, "viewer@example.com", is_admin=False)
    assert logs.named("no_admin_account") == [("warning", {"how": HOW_TO_GET_AN_ADMIN})]

    logs.events.clear()  # started again on the same database, which still has only the viewer
    async with started(make_settings(scheduler_enabled=False)):
        pass
    assert logs.named("no_admin_account") == [("warning", {"how": HOW_TO_GET_AN_ADMIN})]


async def test_start_up_says_nothing_when_an_admin_exists(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = LogRecorder()
    monkeypatch.setattr(runtime_module, "log", logs)
    await users_db.upsert_user(db, email="ops@example.com", password_hash=password_hash_for_tests(), is_admin=True)
    async with started(make_settings(scheduler_enabled=False)) as (_, http):
        assert (await setup_of(http))["admin_exists"] is True
    assert logs.named("no_admin_account") == []


async def test_start_up_says_nothing_when_admin_email_and_password_make_one(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADMIN_EMAIL and ADMIN_PASSWORD make the admin at start: no advice, and setup (which waits for that admin)
    says one exists from the first answer."""
    logs = LogRecorder()
    monkeypatch.setattr(runtime_module, "log", logs)
    settings = make_settings(
        scheduler_enabled=False, admin_email="first@example.com", admin_password="first admin password"
    )
    async with started(settings) as (_, http):
        assert (await setup_of(http))["admin_exists"] is True
    assert logs.named("no_admin_account") == []
