"""A client generated from the OpenAPI document with openapi-python-client, used as a user would:
generated without a warning, then logging in, creating and triggering a config, polling its task,
reading logs and stats, and reading errors as typed ErrorBody objects (not None)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at
from tests.conftest import TEST_ADMIN_EMAIL, TEST_PASSWORD, TEST_SECRET_KEY, serve_app
from tests.fakes.binance import FakeBinance
from tests.settings import settings_of

PACKAGE = "kline_collector_client"  # the generated package; unique, so no other import can shadow it
BASE_URL = "http://kline-collector"
UNUSED_DSN = "postgresql://unused@localhost/unused"


def openapi_document() -> dict[str, Any]:
    """The document a deployment with default settings serves at /docs/openapi.json."""
    app = create_app(settings_of(database_url=UNUSED_DSN, secret_key=TEST_SECRET_KEY), UNUSED_DSN)
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, str]]:
    """The generated package (imported) and the generator's output."""
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(document := openapi_document()))
    assert document["paths"]
    bin_dir = Path(sys.executable).parent  # the generator runs ruff on its output: the venv's
    result = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec),
            "--output-path", str(root / PACKAGE), "--meta", "none", "--fail-on-warning",
        ],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    output = result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE), f"exit code {result.returncode}\n{output}"
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_client_generates_without_a_warning(generated: tuple[ModuleType, str]) -> None:
    """openapi-python-client reads the whole document: no warning, no dropped response."""
    _, output = generated
    assert output.startswith("exit code 0"), output
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output


async def test_the_generated_client_round_trip(
    generated: tuple[ModuleType, str], fake: FakeBinance, settings: Settings
) -> None:
    """Log in, create and trigger a config, poll its task, read logs and stats, and get typed 401/404/422 errors."""
    client_module, _ = generated
    models = module("models")
    login = module("api.auth.login")
    create_config = module("api.admin.create_config")
    get_config = module("api.admin.get_config")
    trigger_config = module("api.admin.trigger_config")
    list_execution_logs = module("api.admin.list_execution_logs")
    execution_stats = module("api.admin.execution_stats")
    get_task = module("api.data_collector.get_task")

    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", T0 - 99 * MINUTE, 100)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        # The generated clients reach the app in-process: httpx_args go to their own httpx client.
        def transport() -> dict[str, Any]:
            return {"transport": httpx.ASGITransport(app=api.app)}

        anonymous = client_module.Client(base_url=BASE_URL, httpx_args=transport())

        refused = await login.asyncio_detailed(
            client=anonymous, body=models.Credentials(email=TEST_ADMIN_EMAIL, password="not the password")
        )
        assert refused.status_code == 401
        assert isinstance(refused.parsed, models.ErrorBody)
        token = await login.asyncio(
            client=anonymous, body=models.Credentials(email=TEST_ADMIN_EMAIL, password=TEST_PASSWORD)
        )
        assert isinstance(token, models.AccessToken)
        assert token.token_type == "bearer"
        admin = client_module.AuthenticatedClient(base_url=BASE_URL, token=token.access_token, httpx_args=transport())

        # Disabled, so that its only run is the one triggered here (a new enabled config runs at once).
        body = models.CreateConfig(
            symbol="BTC/USDT", timeframes=[models.Timeframe.MINUTE_1], interval_minutes=60, enabled=False
        )
        no_token = await create_config.asyncio_detailed(client=anonymous, body=body)
        assert no_token.status_code == 401
        assert isinstance(no_token.parsed, models.ErrorBody)
        config = await create_config.asyncio(client=admin, body=body)
        assert isinstance(config, models.Config)
        assert (config.symbol, config.timeframes) == ("BTCUSDT", [models.Timeframe.MINUTE_1])

        reply = await trigger_config.asyncio(client=admin, config_id=config.id)
        assert isinstance(reply, models.TaskReply)
        assert reply.status == models.TaskReplyStatus.SUBMITTED
        async with asyncio.timeout(15):
            while True:
                task = await get_task.asyncio(client=anonymous, task_id=reply.task_id)
                assert isinstance(task, models.TaskOut)
                if task.status not in (models.TaskStatus.PENDING, models.TaskStatus.RUNNING):
                    break
                await asyncio.sleep(0.02)
        assert task.status == models.TaskStatus.COMPLETED
        assert task.task_type == models.TaskType.DATA_COLLECTION
        assert isinstance(task.result, models.CollectionResult)
        assert (task.result.pairs_total, task.result.pairs_failed, task.result.candles_written) == (1, 0, 100)
        assert task.result.pairs[0].timeframe == models.Timeframe.MINUTE_1
        assert isinstance(task.params, models.TaskParams)
        assert (task.params.config_id, task.params.job_name) == (config.id, config.job_id)

        logs = await list_execution_logs.asyncio(client=admin, job_name=config.job_id)
        assert isinstance(logs, list)
        assert [(log.status, log.job_type, log.records_collected) for log in logs] == [
            (models.LogStatus.SUCCESS, models.TaskType.DATA_COLLECTION, 100),
        ]
        assert isinstance(logs[0].metadata, models.LogMetadata)
        assert logs[0].metadata.timeframes == [models.Timeframe.MINUTE_1]
        assert logs[0].metadata.records_per_timeframe.additional_properties == {"1m": 100}
        stats = await execution_stats.asyncio(client=admin, job_type=models.TaskType.DATA_COLLECTION, hours=24)
        assert isinstance(stats, models.StatsOut)
        assert (stats.total_executions, stats.successful_executions, stats.total_records_collected) == (1, 1, 100)

        missing = await get_config.asyncio(client=admin, config_id=999_999)
        assert isinstance(missing, models.ErrorBody)
        assert missing.status_code == 404
        assert "999999" in missing.detail
        unknown = await create_config.asyncio_detailed(
            client=admin,
            body=models.CreateConfig(symbol="NOPE", timeframes=[models.Timeframe.HOUR_1], interval_minutes=60),
        )
        assert unknown.status_code == 422
        assert isinstance(unknown.parsed, models.ErrorBody)
        assert unknown.parsed.extra["unknown_symbols"] == ["NOPE"]
