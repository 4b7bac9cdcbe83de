"""Execution logs: one row per run of a job (a config's collection, a manual collection, a symbol
refresh), opened as `running` when it starts and completed when it ends; plus the reads behind the
admin API (filtered lists, CSV export, statistics) and retention."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service.db.pool import Connection

__all__ = [
    "CSV_COLUMNS",
    "INTERRUPTED_MESSAGE",
    "LOG_COLUMNS",
    "STATUSES",
    "LogFilter",
    "LogOutcome",
    "close_running_of_tasks",
    "close_running_without_a_running_task",
    "delete_logs_before",
    "finish_log",
    "finish_logs",
    "get_log",
    "insert_skipped",
    "list_logs",
    "logs_csv",
    "recent_logs",
    "start_log",
    "start_logs",
    "stats",
    "timeline",
]

STATUSES: tuple[str, ...] = ("running", "success", "failed", "skipped")

LOG_COLUMNS = (
    "id, job_name, job_type, symbol, exchange, timeframe, started_at, finished_at, duration_seconds,"
    " status, records_collected, error_message, error_type, metadata, task_id"
)

#: The CSV export: the JSON list's fields in the same order; times as ISO 8601 UTC with
#: microseconds (independent of the session's TimeZone), metadata as JSON text.
CSV_COLUMNS: tuple[str, ...] = tuple(c.strip() for c in LOG_COLUMNS.split(","))
_ISO_UTC = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_CSV_SELECT = (
    "id, job_name, job_type, symbol, exchange, timeframe,"
    f" to_char(started_at AT TIME ZONE 'UTC', {_ISO_UTC}) AS started_at,"
    f" to_char(finished_at AT TIME ZONE 'UTC', {_ISO_UTC}) AS finished_at,"
    " duration_seconds, status, records_collected, error_message, error_type,"
    " metadata::text AS metadata, task_id"
)

INTERRUPTED_MESSAGE = "the process running this job stopped before it finished"

# The filters of the list and the CSV export: each None parameter disables its condition.
_FILTERS = """
     WHERE ($1::text IS NULL OR job_name = $1::text)
       AND ($2::text IS NULL OR job_type = $2::text)
       AND ($3::text IS NULL OR symbol = $3::text)
       AND ($4::text IS NULL OR status = $4::text)
       AND ($5::timestamptz IS NULL OR started_at >= $5::timestamptz)
       AND ($6::timestamptz IS NULL OR started_at <= $6::timestamptz)
"""
_NEWEST_FIRST = "ORDER BY started_at DESC, id DESC"


def _json(value: dict[str, Any]) -> str:
    # Sent as text and cast in SQL, so it works with or without the pool's jsonb codec.
    return json.dumps(value)


async def start_log(
    conn: Connection,
    *,
    job_name: str,
    job_type: str,
    symbol: str | None,
    exchange: str | None,
    timeframe: str | None,
    metadata: dict[str, Any],
    task_id: uuid.UUID | None,
    started_at: datetime,
) -> int:
    """Open a `running` row; returns its id."""
    log_id: int = await conn.fetchval(
        """
        INSERT INTO job_execution_logs
               (job_name, job_type, symbol, exchange, timeframe, started_at, status, metadata, task_id)
        VALUES ($1, $2, $3, $4, $5, $6, 'running', $7::text::jsonb, $8)
        RETURNING id
        """,
        job_name, job_type, symbol, exchange, timeframe, started_at, _json(metadata), task_id,
    )
    return log_id


async def finish_log(
    conn: Connection,
    log_id: int,
    *,
    status: str,
    records_collected: int,
    error_message: str | None,
    error_type: str | None,
    metadata: dict[str, Any],
    finished_at: datetime,
) -> None:
    """Complete a row: its outcome, and duration_seconds = finished_at - started_at."""
    await conn.execute(
        """
        UPDATE job_execution_logs
           SET status = $2, records_collected = $3, error_message = $4, error_type = $5,
               metadata = $6::text::jsonb, finished_at = $7,
               duration_seconds = extract(epoch FROM $7 - started_at)::double precision
         WHERE id = $1
        """,
        log_id, status, records_collected, error_message, error_type, _json(metadata), finished_at,
    )


class LogOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one execution log ends (finish_logs)."""

    log_id: int
    status: str
    records_collected: int
    error_message: str | None
    error_type: str | None
    metadata: dict[str, Any]


async def start_logs(
    conn: Connection,
    *,
    job_names: dict[str, str],
    job_type: str,
    exchange: str | None,
    metadata: dict[str, dict[str, Any]],
    task_id: uuid.UUID | None,
    started_at: datetime,
) -> dict[str, int]:
    """Open a `running` row per symbol (job_names: symbol -> job name), in one statement; returns
    each symbol's log id (ids ascend in the order given)."""
    symbols = list(job_names)
    rows = await conn.fetch(
        """
        INSERT INTO job_execution_logs
               (job_name, job_type, symbol, exchange, timeframe, started_at, status, metadata, task_id)
        SELECT u.job_name, $1, u.symbol, $2, NULL, $3, 'running', u.metadata::jsonb, $4
          FROM unnest($5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS u(symbol, job_name, metadata, n)
         ORDER BY u.n
        RETURNING id, symbol
        """,
        job_type, exchange, started_at, task_id, symbols, [job_names[s] for s in symbols],
        [_json(metadata[s]) for s in symbols],
    )
    return {r["symbol"]: r["id"] for r in rows}


async def finish_logs(conn: Connection, outcomes: list[LogOutcome], *, finished_at: datetime) -> None:
    """Complete rows in one statement: each its outcome, and duration_seconds = finished_at - started_at."""
    await conn.execute(
        """
        UPDATE job_execution_logs l
           SET status = u.status, records_collected = u.records, error_message = u.error_message,
               error_type = u.error_type, metadata = u.metadata::jsonb, finished_at = $1,
               duration_seconds = extract(epoch FROM $1 - l.started_at)::double precision
          FROM unnest($2::bigint[], $3::text[], $4::integer[], $5::text[], $6::text[], $7::text[])
               AS u(id, status, records, error_message, error_type, metadata)
         WHERE l.id = u.id
        """,
        finished_at, [o.log_id for o in outcomes], [o.status for o in outcomes],
        [o.records_collected for o in outcomes], [o.error_message for o in outcomes],
        [o.error_type for o in outcomes], [_json(o.metadata) for o in outcomes],
    )


async def insert_skipped(
    conn: Connection, *, job_name: str, job_type: str, symbol: str | None, exchange: str | None,
    reason: str, at: datetime,
) -> int:
    """Record a run that did not happen (e.g. its previous run was still active); returns the id."""
    log_id: int = await conn.fetchval(
        """
        INSERT INTO job_execution_logs
               (job_name, job_type, symbol, exchange, started_at, finished_at, duration_seconds,
                status, records_collected, error_message)
        VALUES ($1, $2, $3, $4, $5, $5, 0, 'skipped', 0, $6)
        RETURNING id
        """,
        job_name, job_type, symbol, exchange, at, reason,
    )
    return log_id


async def close_running_without_a_running_task(conn: Connection, *, at: datetime) -> int:
    """Close `running` rows whose task is not running (or that have no task: rows from before tasks
    recorded them) as failed/Interrupted; returns how many. A running task's rows are its own."""
    status: str = await conn.execute(
        """
        UPDATE job_execution_logs AS l
           SET status = 'failed', error_type = 'Interrupted', error_message = $2, finished_at = $1,
               duration_seconds = greatest(extract(epoch FROM $1 - l.started_at)::double precision, 0)
         WHERE l.status = 'running'
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = l.task_id AND t.status = 'running')
        """,
        at, INTERRUPTED_MESSAGE,
    )
    return int(status.rsplit(" ", 1)[1])


async def close_running_of_tasks(
    conn: Connection, task_ids: list[uuid.UUID], *, at: datetime, message: str = INTERRUPTED_MESSAGE
) -> int:
    """Close the `running` rows of these tasks as failed/Interrupted (their run stopped without closing
    them: its process died, or shut down and handed the task back); returns how many."""
    status: str = await conn.execute(
        """
        UPDATE job_execution_logs
           SET status = 'failed', error_type = 'Interrupted', error_message = $3, finished_at = $2,
               duration_seconds = greatest(extract(epoch FROM $2 - started_at)::double precision, 0)
         WHERE status = 'running' AND task_id = ANY($1::uuid[])
        """,
        task_ids, at, message,
    )
    return int(status.rsplit(" ", 1)[1])


class LogFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which rows a list or export returns (None: no condition), and which page of them."""

    job_name: str | None = None
    job_type: str | None = None
    symbol: str | None = None
    status: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    skip: int = 0
    limit: int = 100

    def args(self) -> tuple[object, ...]:
        """The query parameters $1…$8 of _FILTERS plus OFFSET and LIMIT."""
        return (
            self.job_name, self.job_type, self.symbol, self.status, self.start_date, self.end_date,
            self.skip, self.limit,
        )


async def list_logs(conn: Connection, where: LogFilter) -> list[asyncpg.Record]:
    """Rows newest first (started_at, then id); start_date/end_date bound started_at, both inclusive."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {LOG_COLUMNS} FROM job_execution_logs {_FILTERS} {_NEWEST_FIRST} OFFSET $7 LIMIT $8",
        *where.args(),
    )
    return rows


async def get_log(conn: Connection, log_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {LOG_COLUMNS} FROM job_execution_logs WHERE id = $1", log_id
    )
    return row


async def logs_csv(conn: Connection, where: LogFilter) -> bytes:
    """The rows `list_logs` returns, as CSV with a header line (columns: CSV_COLUMNS).

    Produced by PostgreSQL (COPY … TO STDOUT); the chunks are collected by a coroutine, since
    asyncpg would write a file-like object through a thread pool.
    """
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(
        f"SELECT {_CSV_SELECT} FROM job_execution_logs {_FILTERS} {_NEWEST_FIRST}"
        " OFFSET $7::bigint LIMIT $8::bigint",
        *where.args(),
        output=collect, format="csv", header=True,
    )
    return b"".join(chunks)


async def stats(conn: Connection, *, job_type: str | None, hours: int, now: datetime) -> dict[str, Any]:
    """Figures over the rows started in the last `hours` before `now` (optionally of one job type).

    success_rate: successful / all rows in the window (running and skipped included) × 100, two
    decimals, 0.0 without rows. average_duration_seconds: over runs that finished (success or
    failed; skipped runs did not run), two decimals, None without any.
    """
    row = await conn.fetchrow(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE status = 'success') AS successful,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'running') AS running,
               avg(duration_seconds) FILTER (WHERE status IN ('success', 'failed')) AS average_duration,
               coalesce(sum(records_collected), 0) AS records,
               max(started_at) AS last_execution
          FROM job_execution_logs
         WHERE started_at >= $1 AND ($2::text IS NULL OR job_type = $2::text)
        """,
        now - timedelta(hours=hours), job_type,
    )
    assert row is not None
    total = int(row["total"])
    successful = int(row["successful"])
    average = row["average_duration"]
    return {
        "total_executions": total,
        "successful_executions": successful,
        "failed_executions": int(row["failed"]),
        "running_executions": int(row["running"]),
        "success_rate": round(successful / total * 100, 2) if total else 0.0,
        "average_duration_seconds": None if average is None else round(float(average), 2),
        "total_records_collected": int(row["records"]),
        "last_execution": row["last_execution"],
    }


async def timeline(
    conn: Connection, *, bucket: str, hours: int, now: datetime, job_type: str | None
) -> list[asyncpg.Record]:
    """Per `bucket` ('hour' or 'day', UTC) over the last `hours` before `now`, every bucket present
    (empty ones with zeros): start, runs, successful, failed, and the mean duration of finished runs."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        WITH buckets AS (
            SELECT generate_series(
                       date_trunc($1, ($2::timestamptz - make_interval(hours => $3)) AT TIME ZONE 'UTC'),
                       date_trunc($1, $2::timestamptz AT TIME ZONE 'UTC'),
                       CASE WHEN $1 = 'hour' THEN interval '1 hour' ELSE interval '1 day' END
                   ) AS start)
        SELECT b.start AT TIME ZONE 'UTC' AS start,
               count(l.id) AS total,
               count(l.id) FILTER (WHERE l.status = 'success') AS successful,
               count(l.id) FILTER (WHERE l.status = 'failed') AS failed,
               avg(l.duration_seconds) FILTER (WHERE l.status IN ('success', 'failed')) AS average_duration
          FROM buckets b
          LEFT JOIN job_execution_logs l
            ON date_trunc($1, l.started_at AT TIME ZONE 'UTC') = b.start
           AND l.started_at >= $2::timestamptz - make_interval(hours => $3)
           AND ($4::text IS NULL OR l.job_type = $4::text)
         GROUP BY b.start
         ORDER BY b.start
        """,
        bucket, now, hours, job_type,
    )
    return rows


async def recent_logs(conn: Connection, limit: int = 10) -> list[asyncpg.Record]:
    """The newest rows."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {LOG_COLUMNS} FROM job_execution_logs {_NEWEST_FIRST} LIMIT $1", limit
    )
    return rows


async def delete_logs_before(conn: Connection, cutoff: datetime, batch_size: int) -> int:
    """Delete at most `batch_size` rows started before `cutoff`; returns how many (the caller loops)."""
    status: str = await conn.execute(
        """
        DELETE FROM job_execution_logs WHERE id IN (
            SELECT id FROM job_execution_logs WHERE started_at < $1 LIMIT $2)
        """,
        cutoff, batch_size,
    )
    return int(status.rsplit(" ", 1)[1])
