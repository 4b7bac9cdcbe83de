"""The shared weight budget's SQL on a real PostgreSQL: reservations, the exchange's count, limits, pauses."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from service.db import weight_budget as weight_budget_db
from service.db.pool import create_pool
from service.process.weight_budget import PostgresWeightBudget
from service.records import BudgetGrant

MINUTE = 29_591_906  # an epoch minute in November 2026
NOW = MINUTE * 60.0 + 1.0


async def reserve(
    conn: asyncpg.Connection[Any],
    want: int,
    need: int | None = None,
    *,
    limit: int | None = 100,
    margin: float = 0.03,
    observed_used: int = 0,
    now: float = NOW,
    minute: int = MINUTE,
    exchange: str = "binance",
) -> BudgetGrant:
    return await weight_budget_db.reserve(
        conn, exchange, minute=minute, want=want, need=want if need is None else need, limit=limit,
        margin=margin, observed_used=observed_used, now=now,
    )


async def test_reservations_fill_the_budget_and_no_more(db: asyncpg.Connection[Any]) -> None:
    """With a limit of 100 and a 3 % margin, chunks of 10 are granted up to 90, the rest (7) as a
    smaller chunk since 2 fit, then nothing."""
    grants = [await reserve(db, 10, 2) for _ in range(11)]
    assert [g.granted for g in grants] == [10] * 9 + [7, 0]
    assert [g.used for g in grants] == [10 * i for i in range(1, 10)] + [97, 97]
    assert grants[0] == BudgetGrant(granted=10, used=10, limit=None, paused_until=None, paused_reason=None)


async def test_windows_and_exchanges_are_counted_apart(db: asyncpg.Connection[Any]) -> None:
    """A full minute of one exchange leaves the next minute, and other exchanges, untouched."""
    assert (await reserve(db, 97)).granted == 97
    assert (await reserve(db, 2)).granted == 0
    assert (await reserve(db, 2, minute=MINUTE + 1)).granted == 2
    assert (await reserve(db, 2, exchange="other")).granted == 2


async def test_the_exchange_count_raises_the_shared_one_but_is_not_added(db: asyncpg.Connection[Any]) -> None:
    """A header count above the reserved weight replaces it (others use the IP too); a lower one changes
    nothing; either way it counts even when nothing is granted."""
    assert (await reserve(db, 10)).used == 10
    assert (await reserve(db, 10, observed_used=50)).used == 60
    assert (await reserve(db, 10, observed_used=20)).used == 70
    refused = await reserve(db, 10, observed_used=95)
    assert (refused.granted, refused.used) == (0, 95)
    assert (await reserve(db, 0)).used == 95  # a read-only look


async def test_the_lower_of_the_process_and_the_shared_limit_applies(db: asyncpg.Connection[Any]) -> None:
    """A limit learnt by another process caps this one's budget when lower, and is reported back."""
    await weight_budget_db.publish_limit(db, "binance", 50, lower_only=False)
    grant = await reserve(db, 100, 2, limit=6000)
    assert (grant.granted, grant.limit) == (48, 50)  # 50 less 3 %
    assert (await reserve(db, 10, minute=MINUTE + 1, limit=20)).granted == 10
    assert (await reserve(db, 10, 2, minute=MINUTE + 1, limit=20)).granted == 9  # 20 less 3 %


async def test_a_stated_limit_only_lowers_while_a_learnt_one_replaces(db: asyncpg.Connection[Any]) -> None:
    """A 429's limit (lower_only) cannot raise the shared limit; exchangeInfo's can."""
    await weight_budget_db.publish_limit(db, "binance", 300, lower_only=True)
    await weight_budget_db.publish_limit(db, "binance", 6000, lower_only=True)
    assert (await reserve(db, 0)).limit == 300
    await weight_budget_db.publish_limit(db, "binance", 100, lower_only=True)
    assert (await reserve(db, 0)).limit == 100
    await weight_budget_db.publish_limit(db, "binance", 6000, lower_only=False)
    assert (await reserve(db, 0)).limit == 6000


async def test_a_pause_grants_nothing_until_it_ends_and_a_longer_one_wins(db: asyncpg.Connection[Any]) -> None:
    """While a published pause lasts, reservations get nothing and learn until when and why; a
    shorter pause published later does not cut it short."""
    await weight_budget_db.publish_pause(db, "binance", until=NOW + 30, reason="banned")
    await weight_budget_db.publish_pause(db, "binance", until=NOW + 5, reason="rate_limited")
    paused = await reserve(db, 10)
    assert (paused.granted, paused.paused_until, paused.paused_reason) == (0, NOW + 30, "banned")
    assert (await reserve(db, 10, now=NOW + 30.5)).granted == 10


async def test_concurrent_reservations_never_pass_the_budget(db_dsn: str) -> None:
    """Twenty connections reserving at once get exactly the budget between them, never more."""
    conns = [await asyncpg.connect(db_dsn) for _ in range(20)]
    try:
        async def take_all(conn: asyncpg.Connection[Any]) -> int:
            total = 0
            while (grant := await reserve(conn, 5, 1, limit=1000)).granted:
                total += grant.granted
            return total

        totals = await asyncio.gather(*(take_all(c) for c in conns))
        used = await conns[0].fetchval("SELECT used FROM weight_budget_windows WHERE minute = $1", MINUTE)
    finally:
        for conn in conns:
            await conn.close()
    assert sum(totals) == used == 970


async def test_minute_rows_older_than_an_hour_are_pruned_once_a_minute(
    db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """The first reservation of a new minute deletes that exchange's rows older than 60 minutes."""
    for minute in (MINUTE - 61, MINUTE - 60, MINUTE - 1):
        await reserve(db, 1, minute=minute)
    await reserve(db, 1, minute=MINUTE - 90, exchange="other")
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    try:
        budget = PostgresWeightBudget(pool, exchange="binance")
        await budget.reserve(window=MINUTE, want=1, need=1, limit=100, margin=0.0, observed_used=0, now=NOW)
    finally:
        await pool.close()
    rows = await db.fetch("SELECT exchange, minute FROM weight_budget_windows ORDER BY exchange, minute")
    assert [(r["exchange"], r["minute"] - MINUTE) for r in rows] == [
        ("binance", -60), ("binance", -1), ("binance", 0), ("other", -90)
    ]
