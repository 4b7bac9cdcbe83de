"""Settings come from the environment; a bad value names its variable and stops start-up."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_conversions() -> None:
    """Strings from the environment become typed values; postgres:// is accepted."""
    settings = Settings.from_env(
        {"MAX_CONCURRENT_TASKS": "3", "SCHEDULER_ENABLED": "false", "DATABASE_URL": "postgres://u:p@h:5432/d"}
    )
    assert settings.max_concurrent_tasks == 3
    assert settings.scheduler_enabled is False
    assert settings.database_url == "postgresql://u:p@h:5432/d"
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env({"PORT": ""}).port == 8000  # empty means unset


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_CONCURRENT_TASKS": "many"}, "MAX_CONCURRENT_TASKS"),
        ({"PORT": "70000"}, "PORT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"BINANCE_WEIGHT_MARGIN": "1.5"}, "BINANCE_WEIGHT_MARGIN"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ],
)
def test_a_bad_value_names_the_variable(env: dict[str, str], named: str) -> None:
    """The error message starts with the variable a user has to fix."""
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


async def test_serve_refuses_to_start_with_a_bad_setting() -> None:
    """`kline-collector serve` exits with status 2 and says which variable is wrong."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve",
        env={**os.environ, "MAX_CONCURRENT_TASKS": "many"}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "MAX_CONCURRENT_TASKS" in err.decode()
