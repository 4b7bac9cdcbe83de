"""Users, and the login attempts the login limiter counts.

Emails match whatever their case (`lower(email)` is the unique key). Attempt times are the
database's clock, so every process on the database counts in one timeline.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

import asyncpg

from service.db.pool import Connection

__all__ = [
    "USERS_CHANNEL",
    "USER_COLUMNS",
    "AttemptCheck",
    "active_admin_exists",
    "check_attempts",
    "find_by_email",
    "forget_attempts",
    "get_user",
    "make_active_admin",
    "mark_failed",
    "record_attempts",
    "upsert_user",
]

#: Every UPDATE, DELETE and TRUNCATE of users is announced here (migration 0010): the user id, or ''
#: for all of them.
USERS_CHANNEL = "kline_collector_users"
USER_COLUMNS = "id, email, password_hash, is_admin, is_active, created_at, updated_at"


async def get_user(conn: Connection, user_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return row


async def find_by_email(conn: Connection, email: str) -> asyncpg.Record | None:
    """The user with this email, whatever its case."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)", email
    )
    return row


async def active_admin_exists(conn: Connection) -> bool:
    """Whether some account is both an admin and active (one that can use the admin routes)."""
    exists: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE is_admin AND is_active)")
    return exists


async def upsert_user(
    conn: Connection, *, email: str, password_hash: str, is_admin: bool
) -> tuple[asyncpg.Record, bool]:
    """Create the user, or give the existing one (same email, any case) this password; (row, created).

    The account ends up active. `is_admin` only ever raises the flag: resetting a password
    never demotes an admin.
    """
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        INSERT INTO users AS u (email, password_hash, is_admin)
        VALUES ($1, $2, $3)
        ON CONFLICT ((lower(email))) DO UPDATE
           SET password_hash = EXCLUDED.password_hash,
               is_admin = u.is_admin OR EXCLUDED.is_admin,
               is_active = true,
               updated_at = now()
        RETURNING {USER_COLUMNS}, (xmax = 0) AS created
        """,
        email, password_hash, is_admin,
    )
    assert row is not None
    return row, bool(row["created"])


async def make_active_admin(conn: Connection, user_id: int) -> bool:
    """Make the user an active admin; False if it already was one."""
    status: str = await conn.execute(
        """
        UPDATE users SET is_admin = true, is_active = true, updated_at = now()
         WHERE id = $1 AND NOT (is_admin AND is_active)
        """,
        user_id,
    )
    return status == "UPDATE 1"


async def record_attempts(conn: Connection, keys: list[str], *, window: timedelta) -> list[int]:
    """Record one login attempt under each key; returns the new rows' ids (in increasing order).

    Attempts older than `window` are deleted on the way: nothing else reads them.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        WITH pruned AS (DELETE FROM login_attempts WHERE attempted_at < clock_timestamp() - $2::interval)
        INSERT INTO login_attempts (key) SELECT unnest($1::text[])
        RETURNING id
        """,
        keys, window,
    )
    return sorted(int(r["id"]) for r in rows)


class AttemptCheck(NamedTuple):
    retry_after: float | None
    """Seconds until one of the keys may fail again; None while none has used up its failures."""
    busy: bool
    """Failures and attempts still being checked reach the limit for one of the keys: wait and look again."""


async def check_attempts(
    conn: Connection, keys: list[str], *, before_id: int, limit: int, window: timedelta, stale_after: timedelta
) -> AttemptCheck:
    """What the attempts recorded before `before_id` within `window` say about one more under `keys`.

    Only earlier attempts count, so that a burst is served in order. One still being checked after
    `stale_after` counts as failed (its process died, or it is stuck).
    """
    row = await conn.fetchrow(
        """
        WITH recent AS (
            SELECT key, attempted_at, failed OR attempted_at < clock_timestamp() - $5::interval AS failure
              FROM login_attempts
             WHERE key = ANY($1::text[]) AND id < $2 AND attempted_at > clock_timestamp() - $4::interval
        ), ranked AS (
            SELECT attempted_at, failure,
                   row_number() OVER (PARTITION BY key, failure ORDER BY attempted_at DESC) AS newest,
                   count(*) OVER (PARTITION BY key) AS attempts
              FROM recent
        )
        SELECT max(extract(epoch FROM (attempted_at + $4::interval - clock_timestamp())))
                   FILTER (WHERE failure AND newest = $3)::float8 AS retry_after,
               coalesce(max(attempts) >= $3, false) AS busy
          FROM ranked
        """,
        keys, before_id, limit, window, stale_after,
    )
    assert row is not None
    return AttemptCheck(row["retry_after"], row["busy"])


async def mark_failed(conn: Connection, ids: list[int]) -> None:
    await conn.execute("UPDATE login_attempts SET failed = true WHERE id = ANY($1::bigint[])", ids)


async def forget_attempts(conn: Connection, ids: list[int]) -> None:
    """Delete attempts that must not count (the password was right, or the attempt was refused)."""
    await conn.execute("DELETE FROM login_attempts WHERE id = ANY($1::bigint[])", ids)
