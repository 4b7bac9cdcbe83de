"""Admin API for execution logs, statistics and status, over a known history of runs."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from service.db import configs as configs_db
from service.db import execution_logs as logs_db
from service.settings import Settings
from tests.api.test_admin_configs import assert_error, running_app
from tests.conftest import Api, Clock

BASE = "/api/v1/admin/data-collection"
LOGS = f"{BASE}/execution-logs"
# "Now" for the service: 2026-11-24 12:00:00 UTC (its clock runs on from there at wall speed).
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TASK = uuid.UUID("00000000-0000-4000-8000-000000000002")
LOG_FIELDS = [
    "id", "job_name", "job_type", "symbol", "exchange", "timeframe", "started_at", "finished_at",
    "duration_seconds", "status", "records_collected", "error_message", "error_type", "metadata", "task_id",
]
SCHEDULED, MANUAL, REFRESH = "scheduled_data_collection", "data_collection", "symbol_refresh"


class Run(msgspec.Struct, frozen=True):
    key: str
    job_name: str
    job_type: str
    symbol: str | None
    status: str
    ago: timedelta
    duration: float = 0.0
    records: int = 0


# The history, in insertion order (deliberately not time order). "a" and "j" start at the same instant.
HISTORY = [
    Run("a", "collect_data_1", SCHEDULED, "BTCUSDT", "success", timedelta(minutes=10), 2.0, 6),
    Run("b", "collect_data_1", SCHEDULED, "BTCUSDT", "failed", timedelta(minutes=70), 4.0, 0),
    Run("h", "collect_data_1", SCHEDULED, "BTCUSDT", "success", timedelta(hours=26), 10.0, 50),
    Run("c", "collect_data_2", SCHEDULED, "ETHUSDT", "success", timedelta(minutes=130), 3.0, 12),
    Run("d", "manual_data_collection", MANUAL, "ETHUSDT", "success", timedelta(minutes=200), 5.0, 100),
    Run("e", "collect_data_2", SCHEDULED, "ETHUSDT", "skipped", timedelta(minutes=250)),
    Run("f", "collect_data_1", SCHEDULED, "BTCUSDT", "running", timedelta(minutes=5)),
    Run("g", REFRESH, REFRESH, None, "success", timedelta(minutes=300), 1.0, 3),
    Run("i", "collect_data_2", MANUAL, "ETHUSDT", "failed", timedelta(hours=50), 7.0, 0),
    Run("j", "collect_data_2", SCHEDULED, "ETHUSDT", "success", timedelta(minutes=10), 2.6, 8),
]
NEWEST_FIRST = ["f", "j", "a", "b", "c", "d", "e", "g", "h", "i"]


async def insert_history(conn: Any, runs: list[Run] = HISTORY) -> dict[str, int]:
    """Write the runs through the db module, as the service would; returns their ids by key."""
    ids: dict[str, int] = {}
    for run in runs:
        started = NOW - run.ago
        exchange = "binance"
        if run.status == "skipped":
            ids[run.key] = await logs_db.insert_skipped(
                conn, job_name=run.job_name, job_type=run.job_type, symbol=run.symbol, exchange=exchange,
                reason="previous run still active", at=started,
            )
            continue
        ids[run.key] = log_id = await logs_db.start_log(
            conn, job_name=run.job_name, job_type=run.job_type, symbol=run.symbol, exchange=exchange,
            timeframe=None, metadata={"timeframes": ["1m", "1h"]}, task_id=TASK if run.key == "b" else None,
            started_at=started,
        )
        if run.status != "running":
            failed = run.status == "failed"
            await logs_db.finish_log(
                conn, log_id, status=run.status, records_collected=run.records,
                error_message="1h: exchange said no" if failed else None,
                error_type="TimeframesFailed" if failed else None,
                metadata={
                    "timeframes": ["1m", "1h"], "timeframes_collected": 1 if failed else 2,
                    "timeframes_failed": 1 if failed else 0,
                },
                finished_at=started + timedelta(seconds=run.duration),
            )
    return ids


@pytest.fixture
async def admin(make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]) -> AsyncIterator[Api]:
    """The app at NOW, scheduler off, with the start-up symbol refresh's own log removed. The history
    holds a `running` log of no running task, which the runner's periodic recovery would close as
    Interrupted (as it must): the lease is long enough that no recovery pass comes during a test."""
    settings = make_settings(scheduler_enabled=False, lease_seconds=3600)
    async with running_app(settings, Clock(start=NOW.timestamp())) as api:
        await db.execute("DELETE FROM job_execution_logs")
        yield api


@pytest.fixture
async def ids(admin: Api, db: asyncpg.Connection[Any]) -> dict[str, int]:
    """The known history, stored; its ids by key."""
    return await insert_history(db)


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def keys(api: Api, ids: dict[str, int], query: str = "", **headers: str) -> list[str]:
    response = await api.http.get(f"{LOGS}{query}", headers=headers)
    assert response.status_code == 200, response.text
    by_id = {v: k for k, v in ids.items()}
    return [by_id[row["id"]] for row in response.json()]


async def test_list_is_newest_first_with_the_reference_fields(admin: Api, ids: dict[str, int]) -> None:
    """The list holds every run newest first (ties by id, newest first), each with the Log fields."""
    response = await admin.http.get(LOGS)
    assert response.status_code == 200
    rows = response.json()
    assert [row["id"] for row in rows] == [ids[k] for k in NEWEST_FIRST]
    assert all(list(row) == LOG_FIELDS for row in rows)
    failed = next(row for row in rows if row["id"] == ids["b"])
    assert failed == {
        "id": ids["b"], "job_name": "collect_data_1", "job_type": SCHEDULED, "symbol": "BTCUSDT",
        "exchange": "binance", "timeframe": None, "started_at": "2026-11-24T10:50:00Z",
        "finished_at": "2026-11-24T10:50:04Z", "duration_seconds": 4.0, "status": "failed",
        "records_collected": 0, "error_message": "1h: exchange said no", "error_type": "TimeframesFailed",
        "metadata": {"timeframes": ["1m", "1h"], "timeframes_collected": 1, "timeframes_failed": 1},
        "task_id": str(TASK),
    }
    running = next(row for row in rows if row["id"] == ids["f"])
    assert (running["status"], running["finished_at"], running["duration_seconds"]) == ("running", None, None)
    skipped = next(row for row in rows if row["id"] == ids["e"])
    assert (skipped["status"], skipped["duration_seconds"], skipped["error_message"]) == (
        "skipped", 0.0, "previous run still active",
    )
    assert skipped["started_at"] == skipped["finished_at"] == iso(NOW - timedelta(minutes=250))


async def test_list_filters_and_pagination(admin: Api, ids: dict[str, int]) -> None:
    """job_name, job_type, symbol, status, start_date, end_date, skip and limit each narrow the list."""
    assert await keys(admin, ids, "?job_name=collect_data_1") == ["f", "a", "b", "h"]
    assert await keys(admin, ids, f"?job_type={MANUAL}") == ["d", "i"]
    assert await keys(admin, ids, "?symbol=ETHUSDT") == ["j", "c", "d", "e", "i"]
    assert await keys(admin, ids, "?status=failed") == ["b", "i"]
    assert await keys(admin, ids, "?status=skipped") == ["e"]
    assert await keys(admin, ids, "?job_name=collect_data_2&status=success") == ["j", "c"]
    # Naive dates are UTC; both bounds are inclusive.
    assert await keys(admin, ids, "?start_date=2026-11-24T09:00:00") == ["f", "j", "a", "b", "c"]
    assert await keys(admin, ids, "?start_date=2026-11-24T08:40:00Z") == ["f", "j", "a", "b", "c", "d"]
    assert await keys(admin, ids, "?end_date=2026-11-24T09:50:00%2B00:00") == ["c", "d", "e", "g", "h", "i"]
    assert await keys(admin, ids, "?start_date=2026-11-24T07:00:00Z&end_date=2026-11-24T10:00:00Z") == [
        "c", "d", "e", "g",
    ]
    assert await keys(admin, ids, "?skip=2&limit=3") == ["a", "b", "c"]
    assert await keys(admin, ids, "?skip=9&limit=5") == ["i"]
    assert await keys(admin, ids, "?job_name=nobody") == []


async def test_bad_list_queries_get_clear_4xx(admin: Api) -> None:
    """An unknown status or reversed dates are 422; limit out of 1..1000, a negative skip or a bad date are 400."""
    get = admin.http.get
    body = assert_error(await get(f"{LOGS}?status=done"), 422, "unknown status 'done'")
    assert body["extra"]["allowed"] == ["running", "success", "failed", "skipped"]
    assert_error(await get(f"{LOGS}?start_date=2026-11-24T10:00:00Z&end_date=2026-11-24T09:00:00Z"), 422, "end_date")
    assert_error(await get(f"{LOGS}?limit=1001"), 400, "limit")
    assert_error(await get(f"{LOGS}?limit=0"), 400, "limit")
    assert_error(await get(f"{LOGS}?skip=-1"), 400, "skip")
    assert_error(await get(f"{LOGS}?start_date=yesterday"), 400, "start_date")
    assert (await get(f"{LOGS}?limit=1000")).status_code == 200


async def test_detail_and_unknown_id(admin: Api, ids: dict[str, int]) -> None:
    """One log by id is the same object the list shows; an unknown id is a 404 JSON error."""
    listed = {row["id"]: row for row in (await admin.http.get(LOGS)).json()}
    for key in ("a", "e", "f"):
        response = await admin.http.get(f"{LOGS}/{ids[key]}")
        assert response.status_code == 200
        assert response.json() == listed[ids[key]]
    assert_error(await admin.http.get(f"{LOGS}/987654"), 404, "no execution log with id 987654")


def read_csv(body: bytes) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(body.decode()))
    rows = list(reader)
    assert reader.fieldnames is not None
    return list(reader.fieldnames), rows


async def test_csv_export_has_the_json_rows(admin: Api, ids: dict[str, int]) -> None:
    """The .csv route and Accept: text/csv give the JSON list's rows as CSV: header, same order, metadata as JSON."""
    query = "?job_name=collect_data_1&limit=3"
    response = await admin.http.get(f"{LOGS}.csv{query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="execution-logs.csv"'
    header, rows = read_csv(response.content)
    assert header == LOG_FIELDS
    listed = (await admin.http.get(f"{LOGS}{query}")).json()
    assert [int(r["id"]) for r in rows] == [row["id"] for row in listed] == [ids["f"], ids["a"], ids["b"]]
    for got, want in zip(rows, listed, strict=True):
        assert json.loads(got["metadata"]) == want["metadata"]
        assert datetime.fromisoformat(got["started_at"]) == datetime.fromisoformat(want["started_at"])
        assert got["status"] == want["status"]
        assert got["records_collected"] == str(want["records_collected"])
        assert got["error_message"] == (want["error_message"] or "")
        assert got["task_id"] == (want["task_id"] or "")
    assert rows[0]["finished_at"] == rows[0]["duration_seconds"] == ""  # running: nulls are empty
    assert rows[2]["finished_at"] == "2026-11-24T10:50:04.000000Z"
    assert float(rows[2]["duration_seconds"]) == 4.0

    negotiated = await admin.http.get(f"{LOGS}{query}", headers={"accept": "text/csv"})
    assert negotiated.status_code == 200
    assert negotiated.headers["content-type"] == "text/csv; charset=utf-8"
    assert negotiated.headers["vary"] == "Accept"
    assert negotiated.content == response.content
    whole = await admin.http.get(f"{LOGS}.csv")
    assert len(read_csv(whole.content)[1]) == len(HISTORY)
    # Without that Accept the list stays JSON.
    assert (await admin.http.get(LOGS, headers={"accept": "application/json"})).headers["content-type"].startswith(
        "application/json"
    )


async def test_csv_errors_are_json(admin: Api) -> None:
    """A bad filter on either CSV form is answered with the JSON error body, not CSV."""
    assert_error(await admin.http.get(f"{LOGS}.csv?status=done"), 422, "unknown status 'done'")
    assert_error(await admin.http.get(f"{LOGS}.csv?limit=0"), 400, "limit")
    assert_error(await admin.http.get(f"{LOGS}?status=done", headers={"accept": "text/csv"}), 422, "'done'")


async def test_stats_over_the_known_history(admin: Api, ids: dict[str, int]) -> None:
    """Stats count the runs of the last N hours (optionally of one job type): rates and means to 2 decimals."""
    day = (await admin.http.get(f"{BASE}/stats")).json()
    # In 24 h: a b c d e f g j — 5 success, 1 failed, 1 running, 1 skipped.
    assert day == {
        "total_executions": 8, "successful_executions": 5, "failed_executions": 1, "running_executions": 1,
        "success_rate": 62.5,
        "average_duration_seconds": 2.93,  # (2 + 4 + 3 + 5 + 1 + 2.6) / 6 finished runs
        "total_records_collected": 129,
        "last_execution": iso(NOW - timedelta(minutes=5)),
    }
    scheduled = (await admin.http.get(f"{BASE}/stats?job_type={SCHEDULED}&hours=24")).json()
    assert (scheduled["total_executions"], scheduled["successful_executions"]) == (6, 3)
    assert scheduled["success_rate"] == 50.0
    assert scheduled["average_duration_seconds"] == 2.9  # (2 + 4 + 3 + 2.6) / 4
    assert scheduled["total_records_collected"] == 26
    two_days = (await admin.http.get(f"{BASE}/stats?hours=48")).json()
    assert (two_days["total_executions"], two_days["success_rate"]) == (9, 66.67)
    assert (two_days["average_duration_seconds"], two_days["total_records_collected"]) == (3.94, 179)
    hour = (await admin.http.get(f"{BASE}/stats?hours=1")).json()
    assert (hour["total_executions"], hour["successful_executions"], hour["running_executions"]) == (3, 2, 1)
    none = (await admin.http.get(f"{BASE}/stats?job_type=nothing")).json()
    assert none == {
        "total_executions": 0, "successful_executions": 0, "failed_executions": 0, "running_executions": 0,
        "success_rate": 0.0, "average_duration_seconds": None, "total_records_collected": 0,
        "last_execution": None,
    }
    assert_error(await admin.http.get(f"{BASE}/stats?hours=0"), 400, "hours")
    assert_error(await admin.http.get(f"{BASE}/stats?hours=8761"), 400, "hours")


async def test_stats_match_the_reference_example(admin: Api, db: asyncpg.Connection[Any]) -> None:
    """142 successes out of 144 runs is a success rate of 98.61, as in the reference guide."""
    runs = [
        Run(f"r{i}", "collect_data_1", MANUAL, "BTCUSDT", "failed" if i < 2 else "success",
            timedelta(minutes=5 + i), 3.5, 6)
        for i in range(144)
    ]
    await insert_history(db, runs)
    stats = (await admin.http.get(f"{BASE}/stats?hours=24")).json()
    assert (stats["total_executions"], stats["successful_executions"], stats["failed_executions"]) == (144, 142, 2)
    assert (stats["success_rate"], stats["average_duration_seconds"]) == (98.61, 3.5)
    assert stats["total_records_collected"] == 864


async def test_status_overview(admin: Api, ids: dict[str, int], db: asyncpg.Connection[Any]) -> None:
    """Status counts configs, shows the 10 newest runs and the 24 h stats; no active jobs without the scheduler."""
    extra = [Run(f"old{i}", "collect_data_1", SCHEDULED, "BTCUSDT", "success", timedelta(hours=60 + i), 1.0)
             for i in range(3)]
    await insert_history(db, extra)
    for symbol, enabled in (("BTCUSDT", True), ("ETHUSDT", False), ("XRPETH", True)):
        response = await admin.http.post(
            f"{BASE}/configs", json={"symbol": symbol, "timeframes": ["1h"], "interval_minutes": 10, "enabled": enabled}
        )
        assert response.status_code == 201, response.text
    status = (await admin.http.get(f"{BASE}/status")).json()
    assert list(status) == [
        "total_configs", "enabled_configs", "disabled_configs", "active_jobs", "recent_executions", "stats",
        "coverage",
    ]
    assert (status["total_configs"], status["enabled_configs"], status["disabled_configs"]) == (3, 2, 1)
    assert status["active_jobs"] == 0
    newest = (await admin.http.get(f"{LOGS}?limit=10")).json()
    assert status["recent_executions"] == newest
    assert [row["id"] for row in newest] == [ids[k] for k in NEWEST_FIRST]
    assert status["stats"] == (await admin.http.get(f"{BASE}/stats")).json()


async def test_status_counts_active_jobs_while_the_scheduler_runs(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """With the scheduler running, active_jobs is the number of enabled configs."""
    async with running_app(make_settings(), Clock(start=NOW.timestamp())) as api:
        later = NOW + timedelta(days=1)  # not due during the test
        for symbol, enabled in (("BTCUSDT", True), ("ETHUSDT", True), ("XRPETH", False)):
            await configs_db.insert_config(
                db, symbol=symbol, exchange="binance", timeframes=["1h"], interval_minutes=60, enabled=enabled,
                description=None, created_by=None, next_run_at=later,
            )
        status = (await api.http.get(f"{BASE}/status")).json()
    assert (status["total_configs"], status["enabled_configs"], status["disabled_configs"]) == (3, 2, 1)
    assert status["active_jobs"] == 2


async def test_log_routes_are_in_the_openapi_document(admin: Api) -> None:
    """The OpenAPI document names every log, stats and status operation."""
    doc = (await admin.http.get("/docs/openapi.json")).json()
    operations = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {
        "listExecutionLogs", "exportExecutionLogsCsv", "getExecutionLog", "executionStats", "adminStatus",
    } <= operations
    params = {p["name"] for p in doc["paths"][LOGS]["get"]["parameters"]}
    assert params == {"job_name", "job_type", "symbol", "status", "start_date", "end_date", "skip", "limit"}


async def test_timeline_buckets_runs_by_hour_and_by_day(admin: Api, ids: dict[str, int]) -> None:
    """Runs per UTC hour (last 24 h) and per day: every bucket present, empty ones with zeros and no rate."""
    hours = (await admin.http.get(f"{BASE}/stats/timeline?bucket=hour&hours=24")).json()
    assert len(hours) == 25  # 12:00 yesterday to 12:00 today, both included
    by_start = {b["start"]: b for b in hours}
    assert by_start[iso(NOW.replace(hour=11))] == {  # a and j succeeded, f is running
        "start": iso(NOW.replace(hour=11)), "total_executions": 3, "successful_executions": 2,
        "failed_executions": 0, "success_rate": 66.67, "average_duration_seconds": 2.3,
    }
    ten = by_start[iso(NOW.replace(hour=10))]  # b failed
    assert (ten["failed_executions"], ten["success_rate"]) == (1, 0.0)
    assert by_start[iso(NOW.replace(hour=7))]["total_executions"] == 2  # g, and e skipped
    assert by_start[iso(NOW)] == {
        "start": iso(NOW), "total_executions": 0, "successful_executions": 0, "failed_executions": 0,
        "success_rate": None, "average_duration_seconds": None,
    }
    assert sum(b["total_executions"] for b in hours) == 8
    days = (await admin.http.get(f"{BASE}/stats/timeline?bucket=day&hours=72")).json()
    midnight = NOW.replace(hour=0)
    assert [(b["start"], b["total_executions"], b["success_rate"], b["average_duration_seconds"]) for b in days] == [
        (iso(midnight - timedelta(days=3)), 0, None, None),
        (iso(midnight - timedelta(days=2)), 1, 0.0, 7.0),  # i
        (iso(midnight - timedelta(days=1)), 1, 100.0, 10.0),  # h
        (iso(midnight), 8, 62.5, 2.93),
    ]
    scheduled = (await admin.http.get(f"{BASE}/stats/timeline?bucket=day&hours=24&job_type={SCHEDULED}")).json()
    assert sum(b["total_executions"] for b in scheduled) == 6
    assert_error(await admin.http.get(f"{BASE}/stats/timeline?bucket=week"), 400, "bucket")
    assert_error(await admin.http.get(f"{BASE}/stats/timeline?hours=2161"), 400, "hours")
