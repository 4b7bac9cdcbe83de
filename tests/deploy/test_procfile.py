"""The Heroku files: app.json agrees with the Procfile and the settings, and the Procfile runs as
Heroku runs it (release alone first, then web) through honcho in real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from service.cli import main as cli
from service.db.migrate import head_revision
from service.settings import Settings
from tests.conftest import TEST_SECRET_KEY, new_database
from tests.fakes.binance import FakeBinance

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
#: Connection limits of the Heroku Postgres plans app.json may name.
PLAN_CONNECTIONS = {"heroku-postgresql:essential-0": 20, "heroku-postgresql:essential-1": 20}
#: Connections a process opens besides its pool: the /health probe's own.
EXTRA_CONNECTIONS_PER_PROCESS = 1
#: Kept free for the release phase, a one-off dyno (`heroku run … create-user`) and `heroku pg:psql`.
SPARE_CONNECTIONS = 2
STOP_DEADLINE_S = 15.0


def procfile() -> dict[str, str]:
    """Process type → command, parsed as Heroku and honcho parse it."""
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if (found := re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())) is not None:
            entries[found.group(1)] = found.group(2).strip()
    return entries


def app_json() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return document


def test_procfile_releases_with_migrate_and_serves_web() -> None:
    """The Procfile has `release: kline-collector migrate` and `web: kline-collector serve`, commands the CLI has."""
    entries = procfile()
    assert entries["release"] == "kline-collector migrate"
    assert entries["web"] == "kline-collector serve"
    for command in entries.values():
        program, subcommand = command.split()[:2]
        assert program == "kline-collector" and subcommand in cli.commands, command


def test_app_json_names_only_real_settings_and_process_types() -> None:
    """Every env var in app.json is a setting, and every formation entry is a Procfile process type."""
    document = app_json()
    settings = {name.upper() for name in Settings.__struct_fields__}
    assert set(document["env"]) <= settings, set(document["env"]) - settings
    assert set(document["formation"]) <= set(procfile()) - {"release"}
    assert document["formation"]["web"]["quantity"] == 1


def test_app_json_asks_for_what_a_heroku_deploy_needs() -> None:
    """app.json adds Heroku Postgres, generates SECRET_KEY, requires the admin, trusts Heroku's one router."""
    document = app_json()
    env = document["env"]
    assert [addon["plan"].split(":")[0] for addon in document["addons"]] == ["heroku-postgresql"]
    assert env["SECRET_KEY"] == {**env["SECRET_KEY"], "generator": "secret"}
    assert env["ADMIN_EMAIL"]["required"] is True and env["ADMIN_PASSWORD"]["required"] is True
    assert env["TRUSTED_PROXY_COUNT"]["value"] == "1"
    assert "heroku/python" in [pack["url"] for pack in document["buildpacks"]]


def test_app_json_values_are_valid_settings_that_fit_the_database_plan() -> None:
    """app.json's values load as Settings, and every dyno's pools, twice over during a deploy, fit the plan."""
    document = app_json()
    values = {name: spec["value"] for name, spec in document["env"].items() if "value" in spec}
    settings = Settings.from_env({
        **values,
        "DATABASE_URL": "postgres://user:password@db.example:5432/name",
        "SECRET_KEY": "x" * 64,
        "ADMIN_EMAIL": "admin@example.com",
        "ADMIN_PASSWORD": "a long password",
    })
    (plan,) = [addon["plan"] for addon in document["addons"]]
    dynos = sum(entry["quantity"] for entry in document["formation"].values())
    per_dyno = settings.db_pool_max + EXTRA_CONNECTIONS_PER_PROCESS
    # A deploy or the daily restart overlaps the old and the new dyno of each process type.
    assert 2 * dynos * per_dyno + SPARE_CONNECTIONS <= PLAN_CONNECTIONS[plan]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def heroku_like_env(database_url: str, port: int, binance_url: str) -> dict[str, str]:
    """The test's environment without the virtualenv on PATH: only `uv run` may put it there, as on Heroku."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PORT")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    env.update({
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "PORT": str(port),
        "BINANCE_API_URL": binance_url,
        "LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def honcho(*args: str) -> list[str]:
    # --no-sync: the test runs in the environment pytest runs in, and never installs anything.
    return ["uv", "run", "--no-sync", "honcho", *args]


@pytest.fixture
async def fresh_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """An empty database, never migrated: as a new Heroku Postgres add-on comes."""
    async with new_database(pg_dsn, "kc_deploy") as dsn:
        yield dsn


def read(log: Path) -> str:
    """A log file's text, for assertion messages."""
    return log.read_text(errors="replace")


async def wait_healthy(http: httpx.AsyncClient, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Poll /health until 200; fail with honcho's output if it exits or 60 s pass."""
    deadline = time.monotonic() + 60
    last = "no answer"
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"honcho exited ({proc.returncode}):\n{read(log)}"
        try:
            response = await http.get("/health")
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"web not healthy within 60 s (last: {last}):\n{read(log)}")


async def test_honcho_runs_release_then_web_on_a_fresh_database_and_stops_clean(
    fresh_dsn: str, fake: FakeBinance, tmp_path: Path
) -> None:
    """`honcho start release` migrates a fresh database; `honcho start web` serves /health on $PORT; SIGTERM
    stops it promptly and leaves no process behind."""
    port = free_port()
    env = heroku_like_env(fresh_dsn, port, fake.url)

    release_log = tmp_path / "release.log"
    with release_log.open("wb") as out:
        release = await asyncio.create_subprocess_exec(
            *honcho("start", "release"), cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
        assert await asyncio.wait_for(release.wait(), timeout=120) == 0, read(release_log)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()

    web_log = tmp_path / "web.log"
    with web_log.open("wb") as out:
        web = await asyncio.create_subprocess_exec(
            *honcho("start", "web"), cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
        started = psutil.Process(web.pid)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0, trust_env=False) as http:
                await wait_healthy(http, web, web_log)
            family = started.children(recursive=True)
            assert any("serve" in " ".join(child.cmdline()) for child in family), [c.cmdline() for c in family]
            web.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(web.wait(), timeout=STOP_DEADLINE_S)
        finally:
            if web.returncode is None:
                for process in [started, *started.children(recursive=True)]:
                    process.kill()
                await web.wait()
    output = read(web_log)
    _, alive = psutil.wait_procs(family, timeout=2)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}\n{output}"
    # honcho only sends SIGKILL to a process that ignored its SIGTERM for 5 s.
    assert "SIGKILL" not in output, output
    assert "SIGTERM received" in output and "Application shutdown complete" in output, output
    # Stopped by the signal (uv reports honcho's death by SIGTERM as 128 + 15).
    assert code in (128 + signal.SIGTERM, -signal.SIGTERM), output
