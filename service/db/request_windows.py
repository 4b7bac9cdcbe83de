"""The sliding request windows shared by every process on one IP (table of migration 0012).

A reservation is one statement: it forgets the requests whose count has ended, appends this one
(`cost` times its end) if the rest leaves room for it in the budget and no pause lasts, and answers
with the count, and, when refused, when enough of the window ends for it to fit. Concurrent
reservations queue on the budget's row lock, so the count never passes the budget through them.
Times are epoch seconds on the processes' clock. Pauses live in weight_budgets (db/weight_budget.py).
"""

from __future__ import annotations

from service.db.pool import Connection
from service.records import WindowGrant

__all__ = ["extend", "reserve"]

# $1 budget, $2 cost, $3 budget size, $4 now, $5 counted until (this request's end).
_RESERVE = """
WITH pause AS (
    SELECT b.paused_until, b.pause_reason, COALESCE(b.paused_until > $4::float8, false) AS paused
      FROM (SELECT 1) AS one LEFT JOIN weight_budgets b ON b.exchange = $1
), reserved AS (
    INSERT INTO request_windows AS w (budget, counted_until, granted)
    SELECT $1, CASE WHEN ok THEN array_fill($5::float8, ARRAY[$2::int]) ELSE '{}' END, ok
      FROM (SELECT NOT p.paused AND $2::int <= $3::int AS ok FROM pause p) AS g
    ON CONFLICT (budget) DO UPDATE
       SET (counted_until, granted, updated_at) = (
           SELECT CASE WHEN g.ok THEN g.kept || array_fill($5::float8, ARRAY[$2::int]) ELSE g.kept END, g.ok, now()
             FROM (SELECT k.kept, NOT p.paused AND cardinality(k.kept) + $2::int <= $3::int AS ok
                     FROM pause p,
                          (SELECT COALESCE(array_agg(u ORDER BY u), '{}') AS kept
                             FROM unnest(w.counted_until) AS u WHERE u > $4::float8) AS k) AS g
       )
    RETURNING counted_until, granted
)
SELECT r.granted, cardinality(r.counted_until) AS used,
       CASE WHEN r.granted THEN NULL
            ELSE r.counted_until[GREATEST(1, cardinality(r.counted_until) - $3::int + $2::int)] END AS retry_at,
       p.paused_until, p.pause_reason
  FROM reserved r CROSS JOIN pause p
"""


async def reserve(
    conn: Connection,
    budget: str,
    *,
    cost: int,
    size: int,
    now: float,
    counted_until: float,
    timeout: float | None = None,
) -> WindowGrant:
    """Count a request of `cost` in `budget`'s window until `counted_until` if the window holds at
    most `size` with it at `now`, and no pause lasts (see the module). `timeout` bounds the statement."""
    row = await conn.fetchrow(_RESERVE, budget, cost, size, now, counted_until, timeout=timeout)
    assert row is not None  # the upsert always returns its row
    return WindowGrant(
        granted=row["granted"],
        used=row["used"],
        retry_at=row["retry_at"],
        paused_until=row["paused_until"],
        paused_reason=row["pause_reason"],
    )


async def extend(
    conn: Connection, budget: str, *, counted_until: float, until: float, timeout: float | None = None
) -> None:
    """A request counted until `counted_until` counts until `until` instead (its answer came late)."""
    await conn.execute(
        """
        UPDATE request_windows SET counted_until = array_replace(counted_until, $2::float8, $3::float8)
         WHERE budget = $1
        """,
        budget,
        counted_until,
        until,
        timeout=timeout,
    )
