"""The OpenAPI document as a contract: every answer documented with the one error body, the bearer
scheme exactly where a token is needed, stable ids and tags, named enums and typed models; and
Swagger UI at /docs served from the service's own files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, get_args

import httpx
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from service.api.enums import Exchange, LogStatus, TaskReplyStatus, TaskStatus, TaskType
from service.app import create_app
from service.auth.guards import requires_admin, requires_reader, requires_user
from service.db import execution_logs as logs_db
from service.exchanges.grid import TIMEFRAMES, Timeframe
from service.exchanges.venues import VENUES
from service.tasks import registry
from service.tasks.records import TASK_TYPES
from tests.conftest import TEST_SECRET_KEY
from tests.settings import settings_of

# The document is built without a database: nothing here runs the app's lifespan.
UNUSED_DSN = "postgresql://unused@localhost/unused"
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
BEARER = "BearerToken"
METHODS = {"get", "put", "post", "delete", "patch"}

#: operationId -> (method, path, tag). Generated clients name their functions and modules after
#: these: changing one breaks every client.
OPERATIONS = {
    "health": ("GET", "/health", "health"),
    "login": ("POST", "/api/v1/auth/login", "auth"),
    "currentUser": ("GET", "/api/v1/auth/me", "auth"),
    "authSetup": ("GET", "/api/v1/auth/setup", "auth"),
    "startCollection": ("POST", "/api/v1/data-collector/start", "data-collector"),
    "getTask": ("GET", "/api/v1/data-collector/task/{task_id}", "data-collector"),
    "listTasks": ("GET", "/api/v1/data-collector/tasks", "data-collector"),
    "listActiveTasks": ("GET", "/api/v1/data-collector/tasks/active", "data-collector"),
    "cancelTask": ("POST", "/api/v1/data-collector/task/{task_id}/cancel", "data-collector"),
    "taskStats": ("GET", "/api/v1/data-collector/tasks/stats", "data-collector"),
    "refreshSymbols": ("POST", "/api/v1/data-collector/refresh-symbols", "data-collector"),
    "planCollection": ("POST", "/api/v1/data-collector/plan", "data-collector"),
    "repairGaps": ("POST", "/api/v1/data-collector/repair", "data-collector"),
    "collectorStatus": ("GET", "/api/v1/data-collector/status", "data-collector"),
    "latestPrices": ("GET", "/api/v1/data-collector/latest-prices", "data-collector"),
    "getKlines": ("GET", "/api/v1/klines", "klines"),
    "listExchanges": ("GET", "/api/v1/exchanges", "exchanges"),
    "getCoverage": ("GET", "/api/v1/coverage", "klines"),
    "listLiveConnections": ("GET", "/api/v1/live", "klines"),
    "listConfigs": ("GET", "/api/v1/admin/data-collection/configs", "admin"),
    "createConfig": ("POST", "/api/v1/admin/data-collection/configs", "admin"),
    "getConfig": ("GET", "/api/v1/admin/data-collection/configs/{config_id}", "admin"),
    "updateConfig": ("PUT", "/api/v1/admin/data-collection/configs/{config_id}", "admin"),
    "deleteConfig": ("DELETE", "/api/v1/admin/data-collection/configs/{config_id}", "admin"),
    "enableConfig": ("POST", "/api/v1/admin/data-collection/configs/{config_id}/enable", "admin"),
    "disableConfig": ("POST", "/api/v1/admin/data-collection/configs/{config_id}/disable", "admin"),
    "triggerConfig": ("POST", "/api/v1/admin/data-collection/configs/{config_id}/trigger", "admin"),
    "listExecutionLogs": ("GET", "/api/v1/admin/data-collection/execution-logs", "admin"),
    "exportExecutionLogsCsv": ("GET", "/api/v1/admin/data-collection/execution-logs.csv", "admin"),
    "getExecutionLog": ("GET", "/api/v1/admin/data-collection/execution-logs/{log_id}", "admin"),
    "executionStats": ("GET", "/api/v1/admin/data-collection/stats", "admin"),
    "executionTimeline": ("GET", "/api/v1/admin/data-collection/stats/timeline", "admin"),
    "adminStatus": ("GET", "/api/v1/admin/data-collection/status", "admin"),
    "streamEvents": ("GET", "/api/v1/events", "events"),
}


def build_app(**overrides: Any) -> Litestar:
    settings = settings_of(database_url=UNUSED_DSN, secret_key=TEST_SECRET_KEY, **overrides)
    return create_app(settings, UNUSED_DSN)


@pytest.fixture(scope="module")
def app() -> Litestar:
    return build_app()


@pytest.fixture(scope="module")
def document(app: Litestar) -> dict[str, Any]:
    return app.openapi_schema.to_schema()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation of the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def handlers(app: Litestar) -> dict[str, HTTPRouteHandler]:
    """The route handler behind each operationId."""
    found: dict[str, HTTPRouteHandler] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler) and isinstance(handler.operation_id, str):
                found[handler.operation_id] = handler
    return found


def guards_of(handler: HTTPRouteHandler) -> set[Any]:
    """The guard functions of a handler (Litestar wraps sync ones; `func` is the original)."""
    return {getattr(guard, "func", guard) for guard in handler.resolve_guards()}


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A schema and every schema nested in it (items, properties, oneOf...)."""
    yield schema
    for value in schema.values():
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict):
                yield from subschemas(child)


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def test_every_operation_keeps_its_operation_id_path_and_tag(document: dict[str, Any]) -> None:
    """Each operation has the operationId, path and single tag clients are generated from."""
    found = {op["operationId"]: (method, path, *op["tags"]) for method, path, op in operations(document)}
    assert found == OPERATIONS
    assert [tag["name"] for tag in document["tags"]] == [
        "data-collector", "klines", "exchanges", "admin", "auth", "health",
    ]


def test_every_error_answer_is_the_one_error_body(document: dict[str, Any]) -> None:
    """Every 4xx/5xx of every operation is the ErrorBody component, whose fields have plain types."""
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if status[0] not in "45" or (path, status) == ("/health", "503"):
                continue
            assert response["content"] == {"application/json": {"schema": ERROR_BODY}}, (method, path, status)
            assert response["description"], (method, path, status)
    error_body = schema_of(document, "ErrorBody")
    assert error_body["properties"] == {
        "status_code": {"type": "integer"},
        "detail": {"type": "string"},
        "extra": {"additionalProperties": {}, "type": "object"},
    }
    assert set(error_body["required"]) >= {"status_code", "detail"}
    health_503 = document["paths"]["/health"]["get"]["responses"]["503"]
    assert health_503["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}


def test_each_operation_documents_the_errors_its_input_and_guards_can_cause(
    app: Litestar, document: dict[str, Any]
) -> None:
    """400 with input, 413/415 with a body, 401/403 where a token is checked or required, 500/503 everywhere."""
    by_id = handlers(app)
    for method, path, op in operations(document):
        codes = set(op["responses"])
        guards = guards_of(by_id[op["operationId"]])
        where = (method, path)
        assert {"500", "503"} <= codes, where
        if op.get("parameters") or "requestBody" in op:
            assert "400" in codes, where
        if "requestBody" in op:
            assert {"413", "415"} <= codes, where
        if requires_admin in guards:
            assert {"401", "403"} <= codes, where
        # A token that is sent is checked on every route but the always-public ones.
        if path not in {"/health", "/api/v1/auth/login", "/api/v1/auth/setup"}:
            assert "401" in codes, where
        if op["operationId"] in {"getTask", "cancelTask", "getConfig", "updateConfig", "deleteConfig",
                                 "enableConfig", "disableConfig", "triggerConfig", "getExecutionLog"}:
            assert "404" in codes, where
        if op["operationId"] in {"startCollection", "cancelTask", "refreshSymbols", "createConfig",
                                 "updateConfig", "triggerConfig", "repairGaps"}:
            assert "409" in codes, where
        if op["operationId"] in {"startCollection", "createConfig", "updateConfig", "getKlines",
                                 "listExecutionLogs", "exportExecutionLogsCsv", "planCollection", "repairGaps",
                                 "getCoverage"}:
            assert "422" in codes, where
    assert "429" in document["paths"]["/api/v1/auth/login"]["post"]["responses"]


def test_only_the_operations_that_need_a_token_name_the_bearer_scheme(app: Litestar, document: dict[str, Any]) -> None:
    """The bearer scheme is on admin and account operations only, never document-wide or on public ones."""
    assert "security" not in document
    assert document["components"]["securitySchemes"][BEARER]["type"] == "http"
    assert document["components"]["securitySchemes"][BEARER]["scheme"].lower() == "bearer"
    by_id = handlers(app)
    for method, path, op in operations(document):
        guards = guards_of(by_id[op["operationId"]])
        needs_token = requires_admin in guards or requires_user in guards
        assert op.get("security") == ([{BEARER: []}] if needs_token else None), (method, path)
    protected = {op["operationId"] for *_, op in operations(document) if op.get("security")}
    assert protected == {
        "currentUser", "startCollection", "cancelTask", "refreshSymbols", "planCollection", "repairGaps",
        *(op_id for op_id, (_, path, _) in OPERATIONS.items() if path.startswith("/api/v1/admin/")),
    }


def test_with_private_reads_the_reads_name_the_bearer_scheme_too() -> None:
    """PUBLIC_READS=false: the data-collector and klines reads are documented as needing the token."""
    app = build_app(public_reads=False)
    document = app.openapi_schema.to_schema()
    by_id = handlers(app)
    readers = [op for *_, op in operations(document) if requires_reader in guards_of(by_id[op["operationId"]])]
    assert {op["operationId"] for op in readers} >= {"getKlines", "getTask", "listTasks", "collectorStatus"}
    assert all(op.get("security") == [{BEARER: []}] for op in readers)
    assert "security" not in document["paths"]["/health"]["get"]


def test_closed_sets_are_named_enums_a_client_can_name(document: dict[str, Any]) -> None:
    """Timeframes, exchanges, task statuses and types, and log statuses are enum components with member names."""
    expected = {
        "Exchange": ["binance", "binance_usdm", "bybit", "okx", "coinbase", "kraken"],
        "Timeframe": list(TIMEFRAMES),
        "TaskStatus": ["pending", "running", "completed", "failed", "cancelled"],
        "TaskType": ["data_collection", "scheduled_data_collection", "symbol_refresh", "gap_repair"],
        "LogStatus": ["running", "success", "failed", "skipped"],
        "TaskReplyStatus": ["submitted", "pending", "running", "completed", "failed", "cancelled"],
    }
    for name, values in expected.items():
        enum = schema_of(document, name)
        assert enum["type"] == "string"
        assert enum["enum"] == values
        assert len(enum["x-enum-varnames"]) == len(values)
    assert schema_of(document, "Timeframe")["x-enum-varnames"][:2] == ["SECOND_1", "MINUTE_1"]
    assert schema_of(document, "Timeframe")["x-enum-varnames"][-1] == "MONTH_1"  # 1M, not 1m

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    task = schema_of(document, "TaskOut")["properties"]
    assert task["status"] == ref("TaskStatus")
    assert task["task_type"] == ref("TaskType")
    log = schema_of(document, "LogOut")["properties"]
    assert log["status"] == ref("LogStatus")
    assert log["job_type"] == ref("TaskType")
    assert schema_of(document, "Config")["properties"]["timeframes"]["items"] == ref("Timeframe")
    assert schema_of(document, "CreateConfig")["properties"]["timeframes"]["items"] == ref("Timeframe")
    start_frames = schema_of(document, "StartCollection")["properties"]["timeframes"]  # optional: the venue's defaults
    array = next(s for s in start_frames.get("oneOf", [start_frames]) if s.get("type") == "array")
    assert array["items"] == ref("Timeframe")
    assert schema_of(document, "LatestPrice")["properties"]["timeframe"] == ref("Timeframe")
    assert schema_of(document, "CreateConfig")["properties"]["exchange"]["allOf"] == [ref("Exchange")]
    assert schema_of(document, "PairResult")["properties"]["timeframe"] == ref("Timeframe")
    klines = document["paths"]["/api/v1/klines"]["get"]["parameters"]
    timeframe = next(p for p in klines if p["name"] == "timeframe")
    assert timeframe["schema"]["allOf"] == [ref("Timeframe")]


def test_the_api_enums_are_the_domain_values() -> None:
    """The documented enums list exactly the values the service writes and accepts."""
    assert [t.value for t in Timeframe] == list(TIMEFRAMES)
    assert [e.value for e in Exchange] == list(VENUES)
    assert [s.value for s in TaskStatus] == list(get_args(registry.TaskStatus))
    assert [t.value for t in TaskType] == list(TASK_TYPES)
    assert [s.value for s in LogStatus] == list(logs_db.STATUSES)
    assert [s.value for s in TaskReplyStatus] == ["submitted", *(s.value for s in TaskStatus)]


def test_task_results_params_and_log_metadata_are_typed_models(document: dict[str, Any]) -> None:
    """A task's result and params and a log's metadata are named models, not free-form objects."""
    task = schema_of(document, "TaskOut")["properties"]
    assert task["result"] == {"oneOf": [
        {"$ref": "#/components/schemas/CollectionResult"},
        {"$ref": "#/components/schemas/SymbolRefreshResult"},
        {"type": "null"},
    ]}
    assert task["params"] == {"$ref": "#/components/schemas/TaskParams"}
    assert schema_of(document, "LogOut")["properties"]["metadata"] == {"$ref": "#/components/schemas/LogMetadata"}
    assert set(schema_of(document, "CollectionResult")["required"]) == {
        "exchange", "candles_written", "pairs_total", "pairs_failed", "pairs",
    }
    assert set(schema_of(document, "SymbolRefreshResult")["required"]) == {"exchange", "symbols"}
    assert set(schema_of(document, "TaskParams")["properties"]) == {
        "exchange", "symbols", "timeframes", "config_id", "job_name", "start", "end",
    }
    assert set(schema_of(document, "LogMetadata")["properties"]) == {
        "timeframes", "timeframes_collected", "timeframes_failed", "records_per_timeframe", "failed_timeframes",
        "symbols", "records_quarantined", "exchange_gaps",
    }
    assert schema_of(document, "TaskStats")["properties"]["task_counts"] == {"$ref": "#/components/schemas/TaskCounts"}
    # The only object whose values are untyped is ErrorBody.extra (its keys differ per error).
    untyped = [
        (name, prop)
        for name, schema in document["components"]["schemas"].items()
        for prop, value in schema.get("properties", {}).items()
        if any(node.get("additionalProperties") == {} for node in subschemas(value))
    ]
    assert untyped == [("ErrorBody", "extra")]


def test_one_reply_model_for_submitting_and_cancelling_tasks(document: dict[str, Any]) -> None:
    """start, refresh, trigger and cancel all answer a TaskReply (no identical copies of it)."""
    reply = {"$ref": "#/components/schemas/TaskReply"}
    for method, path, op in operations(document):
        if op["operationId"] in {"startCollection", "refreshSymbols", "triggerConfig", "cancelTask"}:
            success = next(r for status, r in op["responses"].items() if status.startswith("2"))
            assert success["content"]["application/json"]["schema"] == reply, (method, path)
    assert not {"Submitted", "Triggered", "Cancelled"} & set(document["components"]["schemas"])


async def test_docs_page_loads_swagger_ui_from_the_service_itself(app: Litestar) -> None:
    """/docs references only the service's own URLs, and each answers 200 with its content type."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kline-collector") as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert "://" not in page.text.split("<body>")[0]  # nothing loaded from another host
        assert sorted(urls) == [
            "/docs/assets/favicon-32x32.png",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui-standalone-preset.js",
            "/docs/assets/swagger-ui.css",
        ]
        content_types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        for url in urls:
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(content_types[url[url.rindex("."):]]), url
            assert int(asset.headers["content-length"]) == len(asset.content) > 500, url
        assert "SwaggerUIBundle" in (await http.get("/docs/assets/swagger-ui-bundle.js")).text
        missing = await http.get("/docs/assets/nothing-here.js")
        assert missing.status_code == 404
        assert missing.json()["status_code"] == 404
        spec = await http.get("/docs/openapi.json")
        assert spec.status_code == 200
        assert spec.json()["info"]["title"] == "kline-collector"
