"""The reference guide's "Query Utili SQL" run verbatim against the migrated tables and give the expected rows.

Note: the reference queries filter on job_type = 'data_collection', which in this service means runs
started by hand (trigger, /data-collector/start); scheduled runs are 'scheduled_data_collection'.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.db import execution_logs as logs_db

# Copied verbatim from collection-admin-guide.it.md, "Query Utili SQL" (trailing spaces included).
TOP_SYMBOLS_BY_RECORDS = """SELECT 
  symbol,
  COUNT(*) as executions,
  SUM(records_collected) as total_records,
  AVG(duration_seconds) as avg_duration,
  SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END)::float / COUNT(*) * 100 as success_rate
FROM job_execution_logs
WHERE job_type = 'data_collection'
  AND started_at >= NOW() - INTERVAL '7 days'
GROUP BY symbol
ORDER BY total_records DESC
LIMIT 10;"""  # noqa: W291

RECENT_FAILED_JOBS = """SELECT *
FROM job_execution_logs
WHERE status = 'failed'
  AND started_at >= NOW() - INTERVAL '24 hours'
ORDER BY started_at DESC;"""

PERFORMANCE_PER_EXCHANGE = """SELECT 
  exchange,
  AVG(duration_seconds) as avg_duration,
  SUM(records_collected) as total_records
FROM job_execution_logs
WHERE job_type = 'data_collection'
  AND finished_at IS NOT NULL
GROUP BY exchange;"""  # noqa: W291

# From "Best Practices", "4. Cleanup".
CLEANUP = """DELETE FROM job_execution_logs
WHERE started_at < NOW() - INTERVAL '30 days';"""

MANUAL, SCHEDULED = "data_collection", "scheduled_data_collection"


async def run(
    db: asyncpg.Connection[Any], *, symbol: str, ago: timedelta, status: str = "success", records: int = 0,
    duration: float = 1.0, job_type: str = MANUAL, exchange: str = "binance",
) -> int:
    """One execution log row, written through the service's own functions."""
    started = datetime.now(UTC) - ago
    log_id = await logs_db.start_log(
        db, job_name="collect_data_1", job_type=job_type, symbol=symbol, exchange=exchange, timeframe=None,
        metadata={}, task_id=None, started_at=started,
    )
    if status != "running":
        await logs_db.finish_log(
            db, log_id, status=status, records_collected=records,
            error_message="boom" if status == "failed" else None, error_type="X" if status == "failed" else None,
            metadata={}, finished_at=started + timedelta(seconds=duration),
        )
    return log_id


@pytest.fixture
async def history(db: asyncpg.Connection[Any]) -> dict[str, int]:
    """Manual runs of 11 symbols in the last hours, plus old, scheduled, failed, running and kraken rows."""
    hour = timedelta(hours=1)
    ids: dict[str, int] = {}
    for k in range(11):  # SYM{k}USDT: (k + 1) * 10 records in k + 1 seconds
        await run(db, symbol=f"SYM{k}USDT", ago=hour, records=(k + 1) * 10, duration=k + 1)
    ids["failed_2h"] = await run(db, symbol="SYM10USDT", ago=2 * hour, status="failed", duration=3)
    ids["old_8d"] = await run(db, symbol="SYM3USDT", ago=timedelta(days=8), records=10_000, duration=4)
    ids["scheduled"] = await run(db, symbol="SYM0USDT", ago=hour, records=99_999, job_type=SCHEDULED)
    ids["failed_30m"] = await run(db, symbol="SYM5USDT", ago=timedelta(minutes=30), status="failed", job_type=SCHEDULED)
    ids["failed_25h"] = await run(db, symbol="SYM5USDT", ago=timedelta(hours=25), status="failed")
    ids["running"] = await run(db, symbol="SYM1USDT", ago=timedelta(minutes=1), status="running")
    ids["kraken"] = await run(db, symbol="XBTUSD", ago=hour, records=5, duration=2.0, exchange="kraken")
    ids["kraken_running"] = await run(db, symbol="XBTUSD", ago=hour, status="running", exchange="kraken")
    ids["old_31d"] = await run(db, symbol="SYM1USDT", ago=timedelta(days=31))
    ids["old_40d"] = await run(db, symbol="SYM2USDT", ago=timedelta(days=40), status="failed")
    return ids


async def test_top_symbols_by_records(db: asyncpg.Connection[Any], history: dict[str, int]) -> None:
    """The ten symbols with most records from manual runs of the last 7 days, with counts, means and success rate."""
    rows = await db.fetch(TOP_SYMBOLS_BY_RECORDS)
    assert [r["symbol"] for r in rows] == [f"SYM{k}USDT" for k in range(10, 0, -1)]
    top = rows[0]  # one success with 110 records in 11 s, one failure in 3 s
    assert (top["executions"], top["total_records"], top["avg_duration"], top["success_rate"]) == (2, 110, 7.0, 50.0)
    sym3 = next(r for r in rows if r["symbol"] == "SYM3USDT")  # its 8-day-old run is outside the week
    assert (sym3["executions"], sym3["total_records"], sym3["success_rate"]) == (1, 40, 100.0)


async def test_recent_failed_jobs(db: asyncpg.Connection[Any], history: dict[str, int]) -> None:
    """Failed runs of the last 24 hours, of any job type, newest first, with every column."""
    rows = await db.fetch(RECENT_FAILED_JOBS)
    assert [r["id"] for r in rows] == [history["failed_30m"], history["failed_2h"]]
    assert list(rows[0].keys()) == [
        "id", "job_name", "job_type", "symbol", "exchange", "timeframe", "started_at", "finished_at",
        "duration_seconds", "status", "records_collected", "error_message", "error_type", "metadata", "task_id",
    ]
    assert (rows[0]["error_message"], rows[0]["error_type"]) == ("boom", "X")


async def test_performance_per_exchange(db: asyncpg.Connection[Any], history: dict[str, int]) -> None:
    """Mean duration and records of finished manual runs per exchange (running and scheduled rows left out)."""
    rows = {r["exchange"]: r for r in await db.fetch(PERFORMANCE_PER_EXCHANGE)}
    assert set(rows) == {"binance", "kraken"}
    # binance: 11 runs of 1..11 s, the 3 s failure, the 4 s 8-day-old run, 1 s each for the 25-hour-old
    # failure and the two month-old runs.
    assert rows["binance"]["avg_duration"] == pytest.approx((66 + 3 + 4 + 1 + 1 + 1) / 16)
    assert rows["binance"]["total_records"] == 660 + 10_000
    assert (rows["kraken"]["avg_duration"], rows["kraken"]["total_records"]) == (2.0, 5)


async def test_cleanup_deletes_only_logs_older_than_30_days(
    db: asyncpg.Connection[Any], history: dict[str, int]
) -> None:
    """The cleanup DELETE removes the two month-old rows and keeps everything younger."""
    before = await db.fetchval("SELECT count(*) FROM job_execution_logs")
    assert await db.execute(CLEANUP) == "DELETE 2"
    left = {r["id"] for r in await db.fetch("SELECT id FROM job_execution_logs")}
    assert len(left) == before - 2
    assert history["old_31d"] not in left and history["old_40d"] not in left
    assert history["old_8d"] in left
