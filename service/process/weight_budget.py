"""The budgets of the venues, shared through PostgreSQL by every process on one IP.

`PostgresWeightBudget` is the weight limiter's `SharedWeightBudget` (Binance), `PostgresRequestWindow`
the window limiter's `SharedWindow` (Bybit, OKX, Coinbase, Kraken), both on the service's pool;
`shared_budgets` hands them out where WEIGHT_BUDGET_SCOPE asks for it.
"""

from __future__ import annotations

from service.db import request_windows as request_windows_db
from service.db import weight_budget as weight_budget_db
from service.db.pool import Pool, connection
from service.records import BudgetGrant, WindowGrant
from service.settings import Settings

__all__ = ["ROUND_TRIP_TIMEOUT", "PostgresBudgets", "PostgresRequestWindow", "PostgresWeightBudget", "shared_budgets"]

#: Seconds to wait for a pool connection, and then for each statement, before the shared budget
#: counts as down for the moment. A healthy database answers in milliseconds; a silent one must not
#: hold up requests to the exchange.
ROUND_TRIP_TIMEOUT = 1.0


class PostgresWeightBudget:
    """One exchange's share of the weight_budgets and weight_budget_windows tables.

    Errors leave as DatabaseUnavailableError (or as the driver's, for a bug); the limiter then goes
    on alone for a while. Every call is bounded by asyncpg's own timeouts (`timeout` seconds to get
    a connection, and as much for each statement), as the limiter's protocol asks.
    """

    def __init__(self, pool: Pool, *, exchange: str, timeout: float = ROUND_TRIP_TIMEOUT) -> None:
        self._pool = pool
        self._exchange = exchange
        self._timeout = timeout
        # The minute whose older rows this process deleted last: it prunes once a minute.
        self._pruned_minute = -1

    async def reserve(
        self, *, window: int, want: int, need: int, limit: int | None, margin: float, observed_used: int, now: float
    ) -> BudgetGrant:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            grant = await weight_budget_db.reserve(
                conn,
                self._exchange,
                minute=window,
                want=want,
                need=need,
                limit=limit,
                margin=margin,
                observed_used=observed_used,
                now=now,
                timeout=self._timeout,
            )
            if window > self._pruned_minute:
                self._pruned_minute = window
                await weight_budget_db.prune_windows(
                    conn, self._exchange, before=window - weight_budget_db.WINDOWS_KEPT, timeout=self._timeout
                )
        return grant

    async def publish_pause(self, *, until: float, reason: str) -> None:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            await weight_budget_db.publish_pause(
                conn, self._exchange, until=until, reason=reason, timeout=self._timeout
            )

    async def publish_limit(self, limit: int, *, lower_only: bool) -> None:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            await weight_budget_db.publish_limit(
                conn, self._exchange, limit, lower_only=lower_only, timeout=self._timeout
            )


class PostgresRequestWindow:
    """One budget's row of request_windows, and its pause in weight_budgets; errors leave as for
    `PostgresWeightBudget`, and every call is bounded the same way."""

    def __init__(self, pool: Pool, *, name: str, timeout: float = ROUND_TRIP_TIMEOUT) -> None:
        self._pool = pool
        self._name = name
        self._timeout = timeout

    async def reserve(self, *, cost: int, size: int, now: float, counted_until: float) -> WindowGrant:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            return await request_windows_db.reserve(
                conn, self._name, cost=cost, size=size, now=now, counted_until=counted_until, timeout=self._timeout
            )

    async def extend(self, *, counted_until: float, until: float) -> None:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            await request_windows_db.extend(
                conn, self._name, counted_until=counted_until, until=until, timeout=self._timeout
            )

    async def publish_pause(self, *, until: float, reason: str) -> None:
        async with connection(self._pool, acquire_timeout=self._timeout) as conn:
            await weight_budget_db.publish_pause(conn, self._name, until=until, reason=reason, timeout=self._timeout)


class PostgresBudgets:
    """The exchanges' `SharedBudgets` on the service's pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def weight(self, name: str) -> PostgresWeightBudget:
        return PostgresWeightBudget(self._pool, exchange=name)

    def window(self, name: str) -> PostgresRequestWindow:
        return PostgresRequestWindow(self._pool, name=name)


def shared_budgets(settings: Settings, pool: Pool) -> PostgresBudgets | None:
    """The budgets the venues' limiters share with every process on the database (WEIGHT_BUDGET_SCOPE
    shared: they share one IP), or None (per_process: each replica has its own egress IP)."""
    return PostgresBudgets(pool) if settings.weight_budget_scope == "shared" else None
