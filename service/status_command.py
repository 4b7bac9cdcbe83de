"""`kline-collector status`: the service's state as the database records it, for a terminal.

It reads only (one connection, no migrations, no task claimed), so it answers the same whether a
service runs on the database or none does: the live workers (serve, worker, collect), the active
tasks with their progress, the collection configs, and the last runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.db import configs as configs_db
from service.db import execution_logs as logs_db
from service.db import tasks as tasks_db
from service.db import workers as workers_db
from service.db.migrate import current_revision
from service.db.pool import connection, create_pool
from service.errors import DatabaseUnavailableError

__all__ = ["read_status"]

#: Execution logs shown under "Last runs".
LAST_RUNS = 10
#: Active tasks listed (the count says if there are more).
ACTIVE_SHOWN = 50


async def read_status(dsn: str, *, statement_cache_size: int) -> list[str]:
    """The report's lines; DatabaseUnavailableError if the database does not answer."""
    if await current_revision(dsn, statement_cache_size=statement_cache_size) is None:
        raise DatabaseUnavailableError("the database has no schema yet: run `kline-collector migrate`")
    pool = await create_pool(dsn, min_size=1, max_size=1, statement_cache_size=statement_cache_size)
    try:
        async with connection(pool) as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            workers = await workers_db.list_workers(conn)
            active = await tasks_db.list_tasks(conn, active_only=True, limit=ACTIVE_SHOWN)
            counts = await tasks_db.count_by_status(conn)
            total_configs, enabled_configs = await configs_db.count_configs(conn)
            runs = await logs_db.recent_logs(conn, limit=LAST_RUNS)
    finally:
        await pool.close()
    kinds = {w["id"]: f"{w['kind']} pid {w['pid']}" for w in workers}
    lines = [f"Workers: {len(workers)}" + ("" if workers else " (no service is running on this database)")]
    lines += [
        f"  {w['kind']:<7} {w['hostname']} pid {w['pid']}, up {_ago(now, w['started_at'])}, "
        f"heartbeat {_ago(now, w['heartbeat_at'])} ago, running {w['running']} task(s)"
        for w in workers
    ]
    active_count = counts.get("pending", 0) + counts.get("running", 0)
    lines.append(f"Active tasks: {active_count}")
    lines += [_task_line(t, kinds) for t in active]
    lines.append(f"Configs: {total_configs} ({enabled_configs} enabled)")
    lines.append(f"Last runs: {len(runs)}" if runs else "Last runs: none")
    lines += [_run_line(r) for r in runs]
    return lines


def _task_line(task: Any, owners: dict[Any, str]) -> str:
    owner = owners.get(task["worker_id"], "no worker") if task["worker_id"] else "waiting for a worker"
    return (
        f"  {task['id']} {task['task_type']} {task['status']} {task['progress']}% ({owner}): "
        f"{task['message'] or ''}"
    )


def _run_line(run: Any) -> str:
    when = run["started_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    what = " ".join(x for x in (run["job_name"], run["symbol"]) if x)
    took = f", {run['duration_seconds']:.1f} s" if run["duration_seconds"] is not None else ""
    return f"  {when} UTC  {what}: {run['status']}, {run['records_collected']} records{took}"


def _ago(now: datetime, then: datetime) -> str:
    """`3 s`, `12 min`, `5 h`, `2 d`: how long ago `then` was (by the database's clock)."""
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
