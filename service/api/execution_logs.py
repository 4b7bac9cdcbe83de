"""/api/v1/admin/data-collection: execution logs (JSON and CSV), statistics and the overview.

CSV export: `GET /execution-logs.csv`, or `GET /execution-logs` with `Accept: text/csv`. Both take
the list's filters and pagination and return exactly the rows the JSON list would, one line each
after a header, in the JSON fields' order: times as ISO 8601 UTC, `metadata` as JSON text, nulls
as empty fields. Errors are JSON on every route.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ValidationException
from litestar.params import QueryParameter

from service.api.coverage import SeriesCoverageSummary, coverage_summary
from service.api.deps import CoverageReportsDep, RuntimeDep
from service.api.enums import ExchangeChoice, LogStatus, LogStatusName, TaskTypeName, require_one_of
from service.api.openapi import error_responses
from service.api.schemas import INT8_MAX, Schema, id_path, skip_query, text_query
from service.auth.guards import BEARER_SECURITY, requires_admin
from service.db import configs as configs_db
from service.db import execution_logs as logs_db
from service.db.execution_logs import LogFilter
from service.db.pool import Row, connection
from service.errors import InvalidInputError, NotFoundError
from service.exchanges.grid import TimeframeName
from service.process.runtime import Runtime
from service.tasks.records import LogMetadata

__all__ = ["ExecutionLogsController", "LogOut", "StatsOut", "StatusOut"]

CSV_MEDIA_TYPE = "text/csv"  # Litestar adds "; charset=utf-8"
CSV_FILENAME = "execution-logs.csv"


class LogOut(Schema):
    id: int
    job_name: str
    """`collect_data_{config id}`, `manual_data_collection` or `symbol_refresh`."""
    job_type: TaskTypeName
    """`scheduled_data_collection`, `data_collection` (trigger or manual start) or `symbol_refresh`."""
    symbol: str | None
    exchange: ExchangeChoice | None
    timeframe: TimeframeName | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    status: LogStatusName
    """running, success, failed or skipped."""
    records_collected: int
    error_message: str | None
    error_type: str | None
    metadata: LogMetadata
    task_id: uuid.UUID | None


class StatsOut(Schema):
    total_executions: int
    successful_executions: int
    failed_executions: int
    running_executions: int
    success_rate: float
    """successful / total × 100 (every run in the window counts, skipped and running ones too), 2 decimals."""
    average_duration_seconds: float | None
    """Mean duration of the runs that finished (success or failed), 2 decimals; null without any."""
    total_records_collected: int
    last_execution: datetime | None
    """Start of the newest run in the window."""


class TimelineBucket(Schema):
    start: datetime
    """Start of the hour or day (UTC)."""
    total_executions: int
    successful_executions: int
    failed_executions: int
    success_rate: float | None
    """successful / total × 100, 2 decimals; null for a bucket without runs."""
    average_duration_seconds: float | None
    """Mean duration of the runs that finished in the bucket, 2 decimals; null without any."""


class StatusOut(Schema):
    total_configs: int
    enabled_configs: int
    disabled_configs: int
    active_jobs: int
    """Enabled configs the scheduler of this process runs (0 when SCHEDULER_ENABLED is false)."""
    recent_executions: list[LogOut]
    """The 10 newest execution logs."""
    stats: StatsOut
    """The last 24 hours."""
    coverage: list[SeriesCoverageSummary]
    """Per configured series (each config × each of its timeframes): its coverage from its ledger's
    earliest range up to now (GET /api/v1/coverage has the ranges and holes)."""


def _log(row: Row) -> LogOut:
    return LogOut(
        id=row["id"], job_name=row["job_name"], job_type=row["job_type"], symbol=row["symbol"],
        exchange=row["exchange"], timeframe=row["timeframe"], started_at=row["started_at"],
        finished_at=row["finished_at"], duration_seconds=row["duration_seconds"], status=row["status"],
        records_collected=row["records_collected"], error_message=row["error_message"],
        error_type=row["error_type"], metadata=msgspec.convert(row["metadata"], LogMetadata), task_id=row["task_id"],
    )


async def _stats(runtime: Runtime, *, job_type: str | None, hours: int) -> StatsOut:
    async with connection(runtime.pool) as conn:
        figures = await logs_db.stats(
            conn, job_type=job_type, hours=hours, now=datetime.fromtimestamp(runtime.clock(), UTC)
        )
    return StatsOut(**figures)


def _utc(value: datetime | None, field: str) -> datetime | None:
    """Naive means UTC; an aware time is converted to UTC (a 400 naming `field` if that leaves years 1..9999)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00: the driver could not send it either
        message = "Expected a time between years 1 and 9999 once converted to UTC"
        raise ValidationException(
            detail=f"invalid {field}: {message}", extra=[{"message": message, "key": field, "source": "query"}]
        ) from None


async def provide_log_filters(
    job_name: Annotated[str | None, text_query(max_length=200)] = None,
    job_type: Annotated[TaskTypeName | None, text_query(max_length=64)] = None,
    symbol: Annotated[str | None, text_query(max_length=40)] = None,
    status: Annotated[
        LogStatusName | None, QueryParameter(description="running, success, failed or skipped", max_length=16)
    ] = None,
    start_date: Annotated[
        datetime | None, QueryParameter(description="Runs started at or after; ISO 8601, naive means UTC")
    ] = None,
    end_date: Annotated[
        datetime | None, QueryParameter(description="Runs started at or before; ISO 8601, naive means UTC")
    ] = None,
    skip: Annotated[int, skip_query()] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> LogFilter:
    """The list's query parameters, checked."""
    require_one_of("status", status, LogStatus)
    start, end = _utc(start_date, "start_date"), _utc(end_date, "end_date")
    if start is not None and end is not None and end < start:
        raise InvalidInputError("end_date must not be before start_date")
    return LogFilter(
        job_name=job_name, job_type=job_type, symbol=symbol, status=status,
        start_date=start, end_date=end, skip=skip, limit=limit,
    )


async def _csv(runtime: Runtime, filters: LogFilter) -> Response[Any]:
    async with connection(runtime.pool) as conn:
        body = await logs_db.logs_csv(conn, filters)
    return Response(
        body,
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{CSV_FILENAME}"'},
    )


LogFilterDep = NamedDependency[LogFilter]


class ExecutionLogsController(Controller):
    path = "/api/v1/admin/data-collection"
    tags = ["admin"]
    guards = [requires_admin]
    security = BEARER_SECURITY
    dependencies = {"filters": Provide(provide_log_filters)}

    @get(
        "/execution-logs", operation_id="listExecutionLogs",
        summary="Execution logs, newest first; CSV instead with Accept: text/csv",
        responses=error_responses(400, 401, 403, 422),
        response_headers=[ResponseHeader(name="Vary", value="Accept", description="The body follows Accept")],
    )
    async def list_logs(
        self, request: Request[Any, Any, Any], filters: LogFilterDep, runtime: RuntimeDep
    ) -> Response[list[LogOut]]:
        if request.accept.best_match([MediaType.JSON, "text/csv"], default=MediaType.JSON) == "text/csv":
            return await _csv(runtime, filters)  # the OpenAPI document shows the JSON form
        async with connection(runtime.pool) as conn:
            rows = await logs_db.list_logs(conn, filters)
        return Response([_log(r) for r in rows])

    @get(
        "/execution-logs.csv", operation_id="exportExecutionLogsCsv", media_type=CSV_MEDIA_TYPE,
        summary="The execution-log list as a CSV download (same filters and rows as the JSON list)",
        responses=error_responses(400, 401, 403, 422),
    )
    async def export_csv(self, filters: LogFilterDep, runtime: RuntimeDep) -> Response[bytes]:
        return await _csv(runtime, filters)

    @get(
        "/execution-logs/{log_id:int}", operation_id="getExecutionLog", summary="One execution log",
        responses=error_responses(400, 401, 403, 404),
    )
    async def get_log(
        self, log_id: Annotated[int, id_path(INT8_MAX, "Id of the execution log")], runtime: RuntimeDep
    ) -> LogOut:
        async with connection(runtime.pool) as conn:
            row = await logs_db.get_log(conn, log_id)
        if row is None:
            raise NotFoundError(f"no execution log with id {log_id}")
        return _log(row)

    @get(
        "/stats", operation_id="executionStats", summary="Run counts, success rate, durations and records",
        responses=error_responses(400, 401, 403),
    )
    async def stats(
        self,
        runtime: RuntimeDep,
        job_type: Annotated[TaskTypeName | None, text_query(max_length=64)] = None,
        hours: Annotated[int, QueryParameter(ge=1, le=8760, description="The last N hours")] = 24,
    ) -> StatsOut:
        return await _stats(runtime, job_type=job_type, hours=hours)

    @get(
        "/stats/timeline", operation_id="executionTimeline",
        summary="Runs per hour or day: counts, success rate and mean duration, every bucket present",
        responses=error_responses(400, 401, 403),
    )
    async def timeline(
        self,
        runtime: RuntimeDep,
        bucket: Annotated[Literal["hour", "day"], QueryParameter(description="hour or day (UTC)")] = "hour",
        hours: Annotated[int, QueryParameter(ge=1, le=2160, description="The last N hours (at most 90 days)")] = 24,
        job_type: Annotated[TaskTypeName | None, text_query(max_length=64)] = None,
    ) -> list[TimelineBucket]:
        async with connection(runtime.pool) as conn:
            rows = await logs_db.timeline(
                conn, bucket=bucket, hours=hours, now=datetime.fromtimestamp(runtime.clock(), UTC), job_type=job_type
            )
        return [
            TimelineBucket(
                start=r["start"], total_executions=r["total"], successful_executions=r["successful"],
                failed_executions=r["failed"],
                success_rate=round(r["successful"] / r["total"] * 100, 2) if r["total"] else None,
                average_duration_seconds=(
                    None if r["average_duration"] is None else round(float(r["average_duration"]), 2)
                ),
            )
            for r in rows
        ]

    @get(
        "/status", operation_id="adminStatus", summary="Overview: configs, scheduled jobs, recent runs, 24 h stats",
        responses=error_responses(401, 403),
    )
    async def status(self, runtime: RuntimeDep, coverage_reports: CoverageReportsDep) -> StatusOut:
        async with connection(runtime.pool) as conn:
            total, enabled = await configs_db.count_configs(conn)
            recent = await logs_db.recent_logs(conn, 10)
        return StatusOut(
            total_configs=total,
            enabled_configs=enabled,
            disabled_configs=total - enabled,
            active_jobs=enabled if runtime.scheduler.is_running else 0,
            recent_executions=[_log(r) for r in recent],
            stats=await _stats(runtime, job_type=None, hours=24),
            coverage=coverage_summary(await coverage_reports.configured()),
        )
