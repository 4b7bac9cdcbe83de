"""Accounts kept in a real `serve` process's memory follow changes made by other processes.

Two real processes besides the test: `serve`, and the `create-user` command run while it serves. A
change made by either (or by SQL on the test's own connection) reaches the serving process's token
check through PostgreSQL's notification within a second; between changes, the serving process checks
tokens without reading the users table at all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import bearer
from tests.fakes.binance import FakeBinance
from tests.processes import ServiceProcess, run_service_command, service_env, service_processes

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
CONFIGS = "/api/v1/admin/data-collection/configs"
EMAIL = "changing@example.com"
PASSWORD = "changing password 1"


async def status_soon(serve: ServiceProcess, path: str, token: str, status: int, within: float = 1.0) -> float:
    """Seconds until `path` with `token` answers `status`; fails after `within`."""
    began = time.monotonic()
    while True:
        response = await serve.http.get(path, headers=bearer(token))
        elapsed = time.monotonic() - began
        if response.status_code == status:
            return elapsed
        assert elapsed < within, f"{path}: still {response.status_code} after {elapsed:.2f} s{serve.tail()}"
        await asyncio.sleep(0.005)


async def test_changes_from_other_processes_reach_a_serving_process(
    db_dsn: str, db: asyncpg.Connection[Any], fake: FakeBinance, tmp_path: Path
) -> None:
    """create-user promotes a viewer while `serve` runs: its token is an admin's within a second; disabled in
    SQL: 401 within a second. In between, with the users table renamed away, the token still works."""
    cli_env = {"DATABASE_URL": db_dsn, "LOG_FORMAT": "json"}
    code, out = await run_service_command(
        "create-user", "--email", EMAIL, "--password-stdin", env=cli_env, stdin=f"{PASSWORD}\n".encode()
    )
    assert code == 0, out
    async with service_processes(tmp_path) as processes:
        serve = await processes.start("serve", env=service_env(binance_url=fake.url, database_url=db_dsn))
        await serve.wait_healthy()
        login = await serve.http.post(LOGIN, json={"email": EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        assert (await serve.http.get(CONFIGS, headers=bearer(token))).status_code == 403

        # Served from memory: the table can be gone. (The listener may still have been connecting at the
        # first request, when nothing is kept: ask until a request has kept the account.)
        async with asyncio.timeout(10):
            while True:
                await db.execute("ALTER TABLE users RENAME TO users_elsewhere")
                try:
                    response = await serve.http.get(ME, headers=bearer(token))
                finally:
                    await db.execute("ALTER TABLE users_elsewhere RENAME TO users")
                if response.status_code == 200:
                    break
                await serve.http.get(ME, headers=bearer(token))  # read and kept, now the listener listens
                await asyncio.sleep(0.2)
        assert response.json()["email"] == EMAIL and response.json()["is_admin"] is False

        code, out = await run_service_command(
            "create-user", "--email", EMAIL, "--admin", "--password-stdin", env=cli_env,
            stdin=f"{PASSWORD}\n".encode(),
        )
        assert code == 0, out
        promoted = await status_soon(serve, CONFIGS, token, 200)

        await db.execute("UPDATE users SET is_active = false WHERE lower(email) = $1", EMAIL)
        disabled = await status_soon(serve, ME, token, 401)
        print(f"promotion reached the token check after {promoted * 1000:.1f} ms, disabling {disabled * 1000:.1f} ms")
