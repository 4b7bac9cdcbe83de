"""The error contract: one body for every error class, a request id on every answer and log line,
security headers everywhere, and CORS only where configured."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import structlog

from service.settings import Settings
from tests.conftest import Api, running_app

CONFIGS = "/api/v1/admin/data-collection/configs"
START = "/api/v1/data-collector/start"
TASKS = "/api/v1/data-collector/tasks"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
}


def assert_contract(response: httpx.Response, status: int) -> dict[str, Any]:
    """The one error body with this status, as JSON, with a request id and the security headers."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"status_code", "detail", "extra"}, body
    assert body["status_code"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["extra"], dict)
    assert_headers(response)
    return body


def assert_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    assert response.headers.get("x-request-id"), response.headers


async def test_every_error_class_has_the_one_body(admin: Api) -> None:
    """400, 404, 405, 409, 413, 415 and 422 all answer {status_code, detail, extra} with the security headers."""
    http = admin.http
    body = assert_contract(await http.get(f"{TASKS}?limit=0"), 400)
    assert body["extra"]["errors"] == [
        {"message": "Expected `int` >= 1", "key": "limit", "source": "query"}
    ]
    assert body["detail"] == "invalid limit (query): Expected `int` >= 1"
    assert_contract(await http.get("/api/v1/no-such-route"), 404)
    assert_contract(await http.get(f"{CONFIGS}/999"), 404)
    response = await http.delete(START)
    assert_contract(response, 405)
    assert "POST" in response.headers.get("allow", ""), response.headers
    config = {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10}
    assert (await http.post(CONFIGS, json=config)).status_code == 201
    assert assert_contract(await http.post(CONFIGS, json=config), 409)["extra"]["config_id"] >= 1
    huge = b'{"symbols": ["' + b"A" * (1024 * 1024) + b'"]}'
    body = assert_contract(await http.post(START, content=huge, headers={"content-type": "application/json"}), 413)
    assert body["extra"] == {"max_body_bytes": 1024 * 1024}
    assert_contract(await http.post(START, content=b"{}", headers={"content-type": "text/plain"}), 415)
    assert_contract(await http.post(START, json={"symbols": ["NOPE"]}), 422)


async def test_a_500_says_only_that_something_failed_and_logs_the_rest(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception is a 500 with a request_id; its log line has the traceback, method, path and id."""

    async def broken(**_: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(admin.app.state.runtime.registry, "list", broken)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.format_exc_info]
    ) as logs:
        response = await admin.http.get(f"{TASKS}?limit=5")
    body = assert_contract(response, 500)
    request_id = response.headers["x-request-id"]
    assert body["extra"] == {"request_id": request_id}
    assert "secret internals" not in response.text and "RuntimeError" not in response.text
    [line] = [entry for entry in logs if entry["event"] == "unhandled_error"]
    assert line["log_level"] == "error"
    assert (line["method"], line["path"], line["request_id"]) == ("GET", TASKS, request_id)
    assert "Traceback" in line["exception"] and "RuntimeError: secret internals" in line["exception"]


async def test_a_sane_incoming_request_id_is_kept_and_bound_to_every_log_line(admin: Api) -> None:
    """X-Request-ID from a proxy comes back unchanged, and the request's log lines carry it."""
    incoming = str(uuid.uuid4())
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = await admin.http.post(
            START, json={"symbols": ["BTCUSDT"], "timeframes": ["1h"]}, headers={"X-Request-ID": incoming}
        )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == incoming
    submitted = [entry for entry in logs if entry["event"] == "task_submitted"]
    assert submitted and all(entry["request_id"] == incoming for entry in submitted), logs
    await admin.wait(response.json()["task_id"])


@pytest.mark.parametrize("incoming", ["", "a b", "x" * 129, "id\u00e9", "-leading-dash", "semi;colon"])
async def test_an_odd_incoming_request_id_is_replaced(admin: Api, incoming: str) -> None:
    """An empty, over-long or oddly spelled X-Request-ID is replaced by a fresh UUID."""
    response = await admin.http.get("/health", headers={b"X-Request-ID": incoming.encode("utf-8")})
    assert response.status_code == 200
    assert str(uuid.UUID(response.headers["x-request-id"])) == response.headers["x-request-id"]


async def test_each_request_gets_its_own_id(admin: Api) -> None:
    """Without an incoming id, every request gets a different UUID."""
    ids = {(await admin.http.get("/health")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    for value in ids:
        uuid.UUID(value)


async def test_security_headers_on_every_kind_of_answer(admin: Api) -> None:
    """JSON, CSV, the Swagger UI page and the OpenAPI document all carry the security headers and an id."""
    for url in ("/health", f"{CONFIGS}", "/api/v1/admin/data-collection/execution-logs.csv", "/docs",
                "/docs/openapi.json"):
        response = await admin.http.get(url)
        assert response.status_code == 200, (url, response.text[:200])
        assert_headers(response)
    # The CSP only forbids framing: Swagger UI's page, scripts and styles are not restricted by it.
    docs = await admin.http.get("/docs")
    assert "text/html" in docs.headers["content-type"]
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_cors_is_off_by_default(admin: Api) -> None:
    """With CORS_ORIGINS unset, no answer allows a cross-origin browser call."""
    origin = {"Origin": "https://app.example"}
    response = await admin.http.get("/health", headers=origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = await admin.http.options(
        START, headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_exactly_the_configured_origins(make_settings: Callable[..., Settings]) -> None:
    """CORS_ORIGINS lists who may call from a browser; the request id header is readable by them."""
    settings = make_settings(cors_origins="https://app.example, http://localhost:3000")
    async with running_app(settings) as api:
        allowed = {"Origin": "https://app.example"}
        response = await api.http.get("/health", headers=allowed)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
        assert_headers(response)
        preflight = await api.http.options(
            START,
            headers={**allowed, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert_headers(preflight)
        other = await api.http.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_errors_never_echo_what_was_refused(admin: Api) -> None:
    """A refused value (here a 5,000-character query and a NUL) is named by field, not repeated back."""
    response = await admin.http.get(f"{TASKS}?task_type={'x' * 5000}")
    body = assert_contract(response, 400)
    assert "x" * 100 not in json.dumps(body)
    body = assert_contract(await admin.http.get(f"{TASKS}?task_type=a%00b"), 400)
    assert "task_type" in body["detail"]
