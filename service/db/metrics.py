"""The counts /metrics reads at scrape time: tasks, execution logs, and the freshness of configured series.

Each statement is bounded (`timeout`): a scrape must answer promptly, even from a slow database.
"""

from __future__ import annotations

from service.db.pool import Connection, Row

__all__ = ["MAX_FRESHNESS_SERIES", "count_execution_runs", "count_tasks", "series_freshness"]

#: Most series the freshness gauge reports: a label set stays bounded whatever the configs hold.
MAX_FRESHNESS_SERIES = 1000


async def count_tasks(conn: Connection, *, timeout: float) -> list[Row]:
    """(task_type, status, count) for every pair present."""
    return await conn.fetch(
        "SELECT task_type, status, count(*) AS count FROM tasks GROUP BY task_type, status", timeout=timeout
    )


async def count_execution_runs(conn: Connection, *, timeout: float) -> list[Row]:
    """(job_type, status, count) of the execution log rows kept."""
    return await conn.fetch(
        "SELECT job_type, status, count(*) AS count FROM job_execution_logs GROUP BY job_type, status",
        timeout=timeout,
    )


async def series_freshness(conn: Connection, *, now_ms: int, timeout: float) -> list[Row]:
    """(exchange, symbol, timeframe, lag_seconds) per series of an enabled config that has a closed candle.

    The newest closed candle is found walking the primary key backwards from the newest candle:
    only the last few of a series can still be open.
    """
    return await conn.fetch(
        """
        SELECT s.exchange, s.symbol, s.timeframe,
               ($1::bigint - (newest.close_time + 1)) / 1000.0 AS lag_seconds
        FROM (
            SELECT DISTINCT c.exchange, c.symbol, tf.timeframe
            FROM data_collection_configs c, unnest(c.timeframes) AS tf(timeframe)
            WHERE c.enabled
        ) AS configured
        JOIN series s USING (exchange, symbol, timeframe)
        CROSS JOIN LATERAL (
            SELECT k.close_time FROM klines k
            WHERE k.series_id = s.id AND k.is_closed
            ORDER BY k.open_time DESC LIMIT 1
        ) AS newest
        ORDER BY s.exchange, s.symbol, s.timeframe
        LIMIT $2
        """,
        now_ms, MAX_FRESHNESS_SERIES, timeout=timeout,
    )
