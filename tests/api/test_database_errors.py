"""The API maps the database's domain errors, never driver errors: 503 for an outage, 409 for a duplicate."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest
import structlog

from service.errors import DatabaseUnavailableError, DuplicateError
from tests.conftest import Api, assert_error

TASKS = "/api/v1/data-collector/tasks"
DRIVER_WORDS = "the database connection failed (ConnectionRefusedError: connect call failed ('10.1.2.3', 5432))"


async def test_a_database_outage_answers_503_with_retry_after_and_no_driver_words(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DatabaseUnavailableError is a 503 with Retry-After; the driver's text (host, port) is logged, not sent."""

    async def unavailable(*_: Any, **__: Any) -> NoReturn:
        raise DatabaseUnavailableError(DRIVER_WORDS)

    monkeypatch.setattr(admin.app.state.runtime.registry, "list", unavailable)
    with structlog.testing.capture_logs() as logs:
        response = await admin.http.get(TASKS)
    body = assert_error(response, 503)
    assert body["detail"] == "the database is not answering; try again shortly"
    assert int(response.headers["retry-after"]) > 0
    assert "10.1.2.3" not in response.text
    assert [entry["error"] for entry in logs if entry["event"] == "database_unavailable"] == [DRIVER_WORDS]


async def test_a_duplicate_no_caller_explains_answers_409_without_the_constraint(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unique violation that reaches the API unexplained is a 409 conflict; the schema's names stay inside."""

    async def duplicate(*_: Any, **__: Any) -> NoReturn:
        raise DuplicateError("a row with the same key exists already", constraint="tasks_pkey")

    monkeypatch.setattr(admin.app.state.runtime.registry, "list", duplicate)
    response = await admin.http.get(TASKS)
    body = assert_error(response, 409, "exists already")
    assert "tasks_pkey" not in response.text and body["extra"] == {}


async def test_an_os_error_outside_the_database_boundary_is_an_internal_error(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only service/db/ decides that the database is down: a stray OSError is a 500, not a false 503."""

    async def broken(*_: Any, **__: Any) -> NoReturn:
        raise OSError("no space left on device")

    monkeypatch.setattr(admin.app.state.runtime.registry, "list", broken)
    response = await admin.http.get(TASKS)
    assert_error(response, 500, "internal error")
    assert "retry-after" not in response.headers
