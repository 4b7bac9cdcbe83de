"""The exchange weight budget shared by every process on one IP (tables of migration 0006).

A reservation is one statement: it raises the window's count to the exchange's own when that is
higher, takes up to the weight asked for if at least the weight needed fits under the budget (the
lower of the asking process's limit and the shared one, less its margin) and no pause lasts, and
answers with the shared limit and pause. Concurrent reservations queue on the window's row lock, so
the count never passes the budget through them. Minutes and pause times are the processes' clock.
"""

from __future__ import annotations

from service.db.pool import Connection
from service.records import BudgetGrant

__all__ = ["WINDOWS_KEPT", "prune_windows", "publish_limit", "publish_pause", "reserve"]

#: Minute rows kept behind the current one (an hour of history to look at), the rest are deleted.
WINDOWS_KEPT = 60


def _grant(base: str) -> str:
    """The weight a reservation gets when `base` is already counted in the window (the SQL expression)."""
    return f"""CASE WHEN r.paused THEN 0
                    WHEN r.budget IS NULL THEN $3::int
                    WHEN {base} + $4::int > r.budget THEN 0
                    ELSE LEAST($3::int, r.budget - {base}) END"""


_RESERVE = f"""
WITH shared AS (
    SELECT b.weight_limit, b.paused_until, b.pause_reason
      FROM (SELECT 1) AS one LEFT JOIN weight_budgets b ON b.exchange = $1
), rule AS (
    SELECT CASE WHEN lim IS NULL THEN NULL ELSE GREATEST(1, floor(lim * (1 - $6::float8)))::int END AS budget,
           COALESCE(paused_until > $8::float8, false) AS paused
      FROM (SELECT LEAST($5::int, weight_limit) AS lim, paused_until FROM shared) AS s
), reserved AS (
    INSERT INTO weight_budget_windows AS w (exchange, minute, used, last_grant)
    SELECT $1, $2, $7::int + g.granted, g.granted
      FROM rule r CROSS JOIN LATERAL (SELECT {_grant("$7::int")} AS granted) AS g
    ON CONFLICT (exchange, minute) DO UPDATE
       SET (used, last_grant) = (
           SELECT GREATEST(w.used, $7::int) + g.granted, g.granted
             FROM rule r CROSS JOIN LATERAL (SELECT {_grant("GREATEST(w.used, $7::int)")} AS granted) AS g
       )
    RETURNING used, last_grant
)
SELECT r.last_grant AS granted, r.used, s.weight_limit, s.paused_until, s.pause_reason
  FROM reserved r CROSS JOIN shared s
"""


async def reserve(
    conn: Connection,
    exchange: str,
    *,
    minute: int,
    want: int,
    need: int,
    limit: int | None,
    margin: float,
    observed_used: int,
    now: float,
    timeout: float | None = None,
) -> BudgetGrant:
    """Reserve up to `want` weight of `exchange` in `minute`, or none unless `need` fits (see the module).

    `timeout` (seconds) bounds the statement, as for every function here.
    """
    row = await conn.fetchrow(
        _RESERVE, exchange, minute, want, need, limit, margin, observed_used, now, timeout=timeout
    )
    assert row is not None  # the upsert always returns its row
    return BudgetGrant(
        granted=row["granted"], used=row["used"], limit=row["weight_limit"],
        paused_until=row["paused_until"], paused_reason=row["pause_reason"],
    )


async def prune_windows(conn: Connection, exchange: str, *, before: int, timeout: float | None = None) -> int:
    """Delete the exchange's minute rows older than `before`; rows another process is deleting are
    skipped (it deletes them), so processes turning the minute together never wait on each other."""
    status: str = await conn.execute(
        """
        DELETE FROM weight_budget_windows
         WHERE (exchange, minute) IN (
               SELECT exchange, minute FROM weight_budget_windows
                WHERE exchange = $1 AND minute < $2
                  FOR UPDATE SKIP LOCKED)
        """,
        exchange, before, timeout=timeout,
    )
    return int(status.split()[-1])


async def publish_pause(
    conn: Connection, exchange: str, *, until: float, reason: str, timeout: float | None = None
) -> None:
    """Every process holds its requests to `exchange` until `until`, unless a longer pause is set."""
    await conn.execute(
        """
        INSERT INTO weight_budgets AS b (exchange, paused_until, pause_reason) VALUES ($1, $2, $3)
        ON CONFLICT (exchange) DO UPDATE
           SET paused_until = EXCLUDED.paused_until, pause_reason = EXCLUDED.pause_reason, updated_at = now()
         WHERE b.paused_until IS NULL OR b.paused_until < EXCLUDED.paused_until
        """,
        exchange, until, reason, timeout=timeout,
    )


async def publish_limit(
    conn: Connection, exchange: str, limit: int, *, lower_only: bool, timeout: float | None = None
) -> None:
    """The weight limit of `exchange` as a process learnt it; `lower_only` keeps a lower one already set."""
    await conn.execute(
        """
        INSERT INTO weight_budgets AS b (exchange, weight_limit) VALUES ($1, $2)
        ON CONFLICT (exchange) DO UPDATE
           SET weight_limit = CASE WHEN $3 THEN LEAST(b.weight_limit, EXCLUDED.weight_limit)
                                   ELSE EXCLUDED.weight_limit END,
               updated_at = now()
        """,
        exchange, limit, lower_only, timeout=timeout,
    )
