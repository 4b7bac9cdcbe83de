"""One structured access-log line per response: method, path, status, duration and the request id."""

from __future__ import annotations

import pytest

from service.api import middleware
from tests.collection.test_limit_cut import LogRecorder
from tests.conftest import Api


async def test_each_response_is_logged_once_with_its_fields(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read, a 404 the router answers and a refused write each leave one `http_request` line with
    method, path, status, a duration and the request id the client sent (or the one it was given)."""
    recorder = LogRecorder()
    monkeypatch.setattr(middleware, "log", recorder)
    ok = await api.anonymous.get("/api/v1/data-collector/tasks", headers={"X-Request-ID": "trace-42"})
    missing = await api.anonymous.get("/nowhere")
    refused = await api.anonymous.post("/api/v1/data-collector/start", json={})
    lines = recorder.named("http_request")
    assert [(f["method"], f["path"], f["status"]) for _, f in lines] == [
        ("GET", "/api/v1/data-collector/tasks", ok.status_code),
        ("GET", "/nowhere", missing.status_code),
        ("POST", "/api/v1/data-collector/start", refused.status_code),
    ]
    assert (ok.status_code, missing.status_code, refused.status_code) == (200, 404, 401)
    assert [f["request_id"] for _, f in lines] == [
        "trace-42", missing.headers["x-request-id"], refused.headers["x-request-id"],
    ]
    assert all(level == "info" and isinstance(f["duration_ms"], float) for level, f in lines)
