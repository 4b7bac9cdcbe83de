"""A Prometheus scrape of this process: its own metrics, its limiters, its pool, and the database's
counts (read with short timeouts; left out, with `kline_database_up 0`, when the database does not
answer). Served by `serve` at GET /metrics, and by a `worker` on METRICS_PORT.
"""

from __future__ import annotations

import hmac

from service.db import metrics as metrics_db
from service.db.pool import connection
from service.errors import DatabaseUnavailableError
from service.logging import get_logger
from service.metrics import DatabaseCounts, PoolUsage, ScrapeState, SeriesFreshness
from service.process.runtime import Runtime

__all__ = ["bearer_matches", "scrape"]

log = get_logger(__name__)

#: Seconds a scrape waits for a pool connection, and for each statement, before leaving the database out.
_DB_TIMEOUT = 2.0
_BEARER = "bearer "


async def scrape(runtime: Runtime) -> bytes:
    """The Prometheus text of this process now."""
    state = ScrapeState(
        database=await _read_database(runtime),
        limiters={name: client.limiter_state() for name, client in runtime.exchanges.items()},
        loop_lag=runtime.loop_monitor.lag(),
        pool=PoolUsage(
            size=runtime.pool.get_size(), idle=runtime.pool.get_idle_size(), max_size=runtime.pool.get_max_size()
        ),
    )
    return runtime.metrics.render(state)


def bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison, so the answer's timing tells nothing about the token."""
    if header is None or not header.lower().startswith(_BEARER):
        return False
    return hmac.compare_digest(header[len(_BEARER):].strip().encode(), token.encode())


async def _read_database(runtime: Runtime) -> DatabaseCounts | None:
    try:
        async with connection(runtime.pool, acquire_timeout=_DB_TIMEOUT) as conn:
            tasks = await metrics_db.count_tasks(conn, timeout=_DB_TIMEOUT)
            runs = await metrics_db.count_execution_runs(conn, timeout=_DB_TIMEOUT)
            fresh = await metrics_db.series_freshness(
                conn, now_ms=int(runtime.clock() * 1000), timeout=_DB_TIMEOUT
            )
    except DatabaseUnavailableError as exc:
        log.info("metrics_database_unavailable", error=exc.detail)
        return None
    return DatabaseCounts(
        tasks={(row["task_type"], row["status"]): row["count"] for row in tasks},
        execution_runs={(row["job_type"], row["status"]): row["count"] for row in runs},
        freshness=[
            SeriesFreshness(row["exchange"], row["symbol"], row["timeframe"], float(row["lag_seconds"]))
            for row in fresh
        ],
    )


