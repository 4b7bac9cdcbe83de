"""Collection configs: what the scheduler collects, and when each config runs next.

The schedule lives in the table (`last_run_at`, `next_run_at`), so a restart or a second process
rebuilds it from here. `next_run_at` is NULL while a config is disabled.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from service.db.pool import Connection

__all__ = [
    "CONFIG_COLUMNS",
    "UPDATABLE_COLUMNS",
    "claim_due_run",
    "count_configs",
    "delete_config",
    "due_configs",
    "find_by_pair",
    "get_config",
    "insert_config",
    "list_configs",
    "next_due_at",
    "repairable_configs",
    "reschedule",
    "set_enabled",
    "sync_listing_pauses",
    "update_config",
]

CONFIG_COLUMNS = (
    "id, symbol, exchange, timeframes, interval_minutes, live, enabled, job_id, description,"
    " created_at, updated_at, created_by, last_run_at, next_run_at,"
    " history_start, history_from_listing, paused_reason, paused_at"
)

#: The only columns `update_config` writes; its SET list is built from these names, never from input.
UPDATABLE_COLUMNS: tuple[str, ...] = (
    "symbol", "exchange", "timeframes", "interval_minutes", "live", "enabled", "description",
    "history_start", "history_from_listing",
)


async def insert_config(
    conn: Connection,
    *,
    symbol: str,
    exchange: str,
    timeframes: list[str],
    interval_minutes: int | None,
    enabled: bool,
    description: str | None,
    created_by: str | None,
    next_run_at: datetime | None,
    history_start: datetime | None = None,
    history_from_listing: bool = False,
    live: bool = False,
) -> asyncpg.Record:
    """Store a new config; a unique violation (DuplicateError out of `connection()`) if (exchange, symbol) has one."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        INSERT INTO data_collection_configs
               (symbol, exchange, timeframes, interval_minutes, enabled, description, created_by, next_run_at,
                history_start, history_from_listing, live)
        VALUES ($1, $2, $3::text[], $4, $5, $6, $7, $8, $9, $10, $11)
        RETURNING {CONFIG_COLUMNS}
        """,
        symbol, exchange, timeframes, interval_minutes, enabled, description, created_by, next_run_at,
        history_start, history_from_listing, live,
    )
    assert row is not None
    return row


async def get_config(conn: Connection, config_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {CONFIG_COLUMNS} FROM data_collection_configs WHERE id = $1", config_id
    )
    return row


async def find_by_pair(conn: Connection, exchange: str, symbol: str) -> asyncpg.Record | None:
    """The config of (exchange, symbol), if any."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {CONFIG_COLUMNS} FROM data_collection_configs WHERE exchange = $1 AND symbol = $2",
        exchange, symbol,
    )
    return row


async def list_configs(
    conn: Connection, *, enabled: bool | None, exchange: str | None, skip: int, limit: int
) -> list[asyncpg.Record]:
    """Configs by id; `enabled` / `exchange` None means no filter."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {CONFIG_COLUMNS} FROM data_collection_configs
         WHERE ($1::boolean IS NULL OR enabled = $1)
           AND ($2::text IS NULL OR exchange = $2)
         ORDER BY id
         OFFSET $3 LIMIT $4
        """,
        enabled, exchange, skip, limit,
    )
    return rows


async def update_config(conn: Connection, config_id: int, *, changes: dict[str, object]) -> asyncpg.Record | None:
    """Change the given columns (only those in UPDATABLE_COLUMNS) and stamp updated_at; None if unknown id.

    ValueError for a column outside the whitelist. A unique violation (DuplicateError out of
    `connection()`) if the new (exchange, symbol) belongs to another config.
    """
    unknown = set(changes) - set(UPDATABLE_COLUMNS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    assignments = ["updated_at = now()"]
    args: list[object] = [config_id]
    for column in UPDATABLE_COLUMNS:  # the SQL names come from the constant, in its order
        if column in changes:
            args.append(changes[column])
            cast = "::text[]" if column == "timeframes" else ""
            assignments.append(f"{column} = ${len(args)}{cast}")
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE data_collection_configs SET {", ".join(assignments)}
         WHERE id = $1
        RETURNING {CONFIG_COLUMNS}
        """,
        *args,
    )
    return row


async def delete_config(conn: Connection, config_id: int) -> bool:
    status: str = await conn.execute("DELETE FROM data_collection_configs WHERE id = $1", config_id)
    return status == "DELETE 1"


async def set_enabled(conn: Connection, config_id: int, enabled: bool) -> asyncpg.Record | None:
    """Enable or disable; disabling clears next_run_at (enabling is followed by `reschedule`)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE data_collection_configs
           SET enabled = $2, updated_at = now(),
               next_run_at = CASE WHEN $2 AND NOT live THEN next_run_at END
         WHERE id = $1
        RETURNING {CONFIG_COLUMNS}
        """,
        config_id, enabled,
    )
    return row


async def count_configs(conn: Connection) -> tuple[int, int]:
    """(total, enabled)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled FROM data_collection_configs"
    )
    assert row is not None
    return int(row["total"]), int(row["enabled"])


async def reschedule(conn: Connection, config_id: int, now: datetime) -> None:
    """Set when the config runs next: `now` if it never ran, else one interval after its last run
    (but not before `now`). A disabled config gets NULL, and so does a live one (it is streamed)."""
    await conn.execute(
        """
        UPDATE data_collection_configs
           SET next_run_at = CASE
                 WHEN NOT enabled OR live THEN NULL
                 WHEN last_run_at IS NULL THEN $2::timestamptz
                 ELSE greatest($2::timestamptz, last_run_at + make_interval(mins => interval_minutes))
               END
         WHERE id = $1
        """,
        config_id, now,
    )


async def due_configs(conn: Connection, now: datetime) -> list[asyncpg.Record]:
    """Enabled configs due at `now`, the most overdue first (paused ones wait for their symbol)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {CONFIG_COLUMNS} FROM data_collection_configs
         WHERE enabled AND NOT live AND paused_reason IS NULL AND next_run_at <= $1
         ORDER BY next_run_at, id
        """,
        now,
    )
    return rows


async def next_due_at(conn: Connection) -> datetime | None:
    """The earliest next_run_at of the enabled configs that are not paused."""
    value: datetime | None = await conn.fetchval(
        "SELECT min(next_run_at) FROM data_collection_configs WHERE enabled AND NOT live AND paused_reason IS NULL"
    )
    return value


async def claim_due_run(
    conn: Connection,
    config_id: int,
    *,
    due_at: datetime,
    next_run_at: datetime,
    started_at: datetime,
    worker_id: uuid.UUID,
) -> bool:
    """Move a due config on to its next run time, if it is still enabled, not paused and still due at
    `due_at`, and the claiming worker is still registered (alive in its peers' eyes).

    A conditional UPDATE: when several processes see the same due run, exactly one claims it; a
    process its peers presumed dead (and whose row they removed) claims nothing.
    """
    status: str = await conn.execute(
        """
        UPDATE data_collection_configs
           SET next_run_at = $3, last_run_at = $4
         WHERE id = $1 AND enabled AND NOT live AND paused_reason IS NULL AND next_run_at = $2
           AND EXISTS (SELECT 1 FROM workers WHERE id = $5)
        """,
        config_id, due_at, next_run_at, started_at, worker_id,
    )
    return status == "UPDATE 1"


async def sync_listing_pauses(
    conn: Connection, exchange: str, now: datetime
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Pause the exchange's configs whose symbol does not trade, resume those whose symbol trades again.

    Reads the symbols table as the symbol refresh left it (call it in the refresh's transaction).
    A paused config gets a reason naming the status and `paused_at`; one already paused for another
    status (BREAK, then delisted) gets the new reason. A resumed config is due at once (if enabled),
    so its collection catches up. Returns (paused, resumed) rows: id, symbol, exchange, status, reason.
    """
    paused: list[asyncpg.Record] = await conn.fetch(
        """
        WITH listing AS (
            SELECT c.id, s.status,
                   CASE WHEN s.state = 'delisted'
                        THEN format('%s is no longer listed (%s) on %s', c.symbol, s.status, c.exchange)
                        ELSE format('%s is %s on %s', c.symbol, s.status, c.exchange)
                   END AS what,
                   -- when the refresh that found this status ran (a delisting: the first one that missed it)
                   to_char(s.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS seen
              FROM data_collection_configs c
              JOIN symbols s ON s.exchange = c.exchange AND s.symbol = c.symbol
             WHERE c.exchange = $1 AND s.state <> 'trading'
        )
        UPDATE data_collection_configs c
           SET paused_reason = l.what || ' since the symbol refresh at ' || l.seen, paused_at = $2
          FROM listing l
         WHERE c.id = l.id
           AND (c.paused_reason IS NULL OR NOT starts_with(c.paused_reason, l.what || ' since '))
        RETURNING c.id, c.symbol, c.exchange, l.status, c.paused_reason AS reason
        """,
        exchange, now,
    )
    resumed: list[asyncpg.Record] = await conn.fetch(
        """
        UPDATE data_collection_configs c
           SET paused_reason = NULL, paused_at = NULL,
               next_run_at = CASE WHEN c.enabled AND NOT c.live THEN $2::timestamptz END
          FROM symbols s
         WHERE c.exchange = $1 AND c.paused_reason IS NOT NULL
           AND s.exchange = c.exchange AND s.symbol = c.symbol AND s.state = 'trading'
        RETURNING c.id, c.symbol, c.exchange, s.status, NULL::text AS reason
        """,
        exchange, now,
    )
    return paused, resumed


async def repairable_configs(conn: Connection, exchange: str) -> list[asyncpg.Record]:
    """Configs whose series a scheduled gap repair covers: enabled and not paused for their listing."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, symbol, timeframes FROM data_collection_configs
         WHERE exchange = $1 AND enabled AND paused_reason IS NULL
         ORDER BY id
        """,
        exchange,
    )
    return rows
