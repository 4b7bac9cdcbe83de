"""The Heroku files: app.json agrees with the Procfile and the settings, and the Procfile runs as
Heroku runs it (release alone first, then web and worker) through honcho in real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from service.cli import main as cli
from service.db.migrate import head_revision
from service.settings import Settings
from tests.conftest import TEST_SECRET_KEY, new_database
from tests.fakes.binance import FakeBinance
from tests.processes import run_program, service_processes

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
#: Connection limits of the Heroku Postgres plans app.json may name.
PLAN_CONNECTIONS = {"heroku-postgresql:essential-0": 20, "heroku-postgresql:essential-1": 20}
#: Connections a process opens besides its pool: web's /health probe has its own, and a process that runs
#: tasks (web unless WEB_RUNS_TASKS=false; the worker always) holds one LISTEN connection.
HEALTH_CONNECTION = 1
LISTEN_CONNECTION = 1
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


def test_procfile_releases_with_migrate_serves_web_and_has_a_worker() -> None:
    """The Procfile has `release: kline-collector migrate`, `web: kline-collector serve` and
    `worker: kline-collector worker`, commands the CLI has."""
    entries = procfile()
    assert entries["release"] == "kline-collector migrate"
    assert entries["web"] == "kline-collector serve"
    assert entries["worker"] == "kline-collector worker"
    for command in entries.values():
        program, subcommand = command.split()[:2]
        assert program == "kline-collector" and subcommand in cli.commands, command


def test_app_json_names_only_real_settings_and_process_types() -> None:
    """Every env var in app.json is a setting, and every formation entry is a Procfile process type: one web
    dyno, and the worker at 0 until a user scales it up."""
    document = app_json()
    settings = {name.upper() for name in Settings.__struct_fields__}
    assert set(document["env"]) <= settings, set(document["env"]) - settings
    assert set(document["formation"]) <= set(procfile()) - {"release"}
    assert document["formation"]["web"]["quantity"] == 1
    assert document["formation"]["worker"]["quantity"] == 0


def test_app_json_asks_for_what_a_heroku_deploy_needs() -> None:
    """app.json adds Heroku Postgres, generates SECRET_KEY, requires the admin, trusts Heroku's one router."""
    document = app_json()
    env = document["env"]
    assert [addon["plan"].split(":")[0] for addon in document["addons"]] == ["heroku-postgresql"]
    assert env["SECRET_KEY"] == {**env["SECRET_KEY"], "generator": "secret"}
    assert env["ADMIN_EMAIL"]["required"] is True and env["ADMIN_PASSWORD"]["required"] is True
    assert env["TRUSTED_PROXY_COUNT"]["value"] == "1"
    assert "heroku/python" in [pack["url"] for pack in document["buildpacks"]]
    # Web collects until the user makes it API-only, which the description says needs the worker scaled up.
    assert env["WEB_RUNS_TASKS"]["value"] == "true" and "worker" in env["WEB_RUNS_TASKS"]["description"]


def test_app_json_values_are_valid_settings_that_fit_the_database_plan() -> None:
    """app.json's values load as Settings, and a web and a worker dyno, each overlapping its successor
    during a deploy, fit the plan's connections."""
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
    # The worker stays at 0 until a user scales it up; count at least one dyno of each process type.
    dynos = {process: max(entry["quantity"], 1) for process, entry in document["formation"].items()}
    assert set(dynos) == {"web", "worker"}
    per_dyno = {
        "web": settings.db_pool_max + HEALTH_CONNECTION + (LISTEN_CONNECTION if settings.web_runs_tasks else 0),
        "worker": settings.db_pool_max + LISTEN_CONNECTION,
    }
    # A deploy or the daily restart overlaps the old and the new dyno of each process type.
    overlapping = 2 * sum(count * per_dyno[process] for process, count in dynos.items())
    assert overlapping + SPARE_CONNECTIONS <= PLAN_CONNECTIONS[plan], per_dyno


def heroku_like_env(database_url: str, port: int, binance_url: str) -> dict[str, str | None]:
    """The test's environment without the virtualenv on PATH: only `uv run` may put it there, as on Heroku."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    return {
        "VIRTUAL_ENV": None,
        "PATH": path,
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "PORT": str(port),
        "BINANCE_API_URL": binance_url,
        "EXCHANGES": "binance",  # the fake stands in for Binance; no test reaches a real venue
        "LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    }


def honcho(*args: str) -> list[str]:
    # --no-sync: the test runs in the environment pytest runs in, and never installs anything.
    return ["uv", "run", "--no-sync", "honcho", *args]


@pytest.fixture
async def fresh_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """An empty database, never migrated: as a new Heroku Postgres add-on comes."""
    async with new_database(pg_dsn, "kc_deploy") as dsn:
        yield dsn


async def _registered(dsn: str, pids: set[int]) -> dict[str, int]:
    """Process kind → pid of the processes among `pids` that registered as workers of the service."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT kind, pid FROM workers WHERE pid = ANY($1::int[])", sorted(pids))
    finally:
        await conn.close()
    return {row["kind"]: row["pid"] for row in rows}


async def test_honcho_runs_release_then_web_and_worker_on_a_fresh_database_and_stops_clean(
    fresh_dsn: str, fake: FakeBinance, tmp_path: Path
) -> None:
    """`honcho start release` migrates a fresh database; `honcho start web worker` serves /health on $PORT and
    runs the worker, both registered with the database; SIGTERM stops both promptly, leaving nothing behind."""
    async with service_processes(tmp_path) as processes:
        port = processes.free_port()
        env = heroku_like_env(fresh_dsn, port, fake.url)

        code, release_output = await run_program(honcho("start", "release"), env=env, timeout=120)
        assert code == 0, release_output
        conn = await asyncpg.connect(fresh_dsn)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        finally:
            await conn.close()

        # honcho gives the first process type $PORT and each next one 100 more: web comes first.
        honcho_start = await processes.start_program(
            honcho("start", "web", "worker"), env=env, name="web-worker", port=port
        )
        await honcho_start.wait_healthy(timeout=60)
        both = {"web", "worker"}
        async with asyncio.timeout(60):
            while set(kinds := await _registered(fresh_dsn, {p.pid for p in honcho_start.family()})) != both:
                assert honcho_start.returncode is None, f"honcho exited{honcho_start.tail()}"
                await asyncio.sleep(0.2)
        family = honcho_start.family()
        commands = {kind: " ".join(p.cmdline()) for p in family for kind, pid in kinds.items() if p.pid == pid}
        assert commands["web"].endswith("kline-collector serve"), commands
        assert commands["worker"].endswith("kline-collector worker"), commands
        await honcho_start.sigterm(deadline=STOP_DEADLINE_S)
        output = honcho_start.log_text()
    _, alive = psutil.wait_procs(family, timeout=2)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}\n{output}"
    # honcho only sends SIGKILL to a process that ignored its SIGTERM for 5 s.
    assert "SIGKILL" not in output, output
    assert "SIGTERM received" in output and "Application shutdown complete" in output, output
    # Stopped by the signal (uv reports honcho's death by SIGTERM as 128 + 15).
    assert honcho_start.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), output
