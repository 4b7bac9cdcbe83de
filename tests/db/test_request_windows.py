"""The shared sliding request windows' SQL on a real PostgreSQL: the count, its end, late answers, pauses."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from service.db import request_windows as request_windows_db
from service.db import weight_budget as weight_budget_db
from service.db.pool import create_pool
from service.records import WindowGrant

NOW = 1_795_514_400.0  # 2026-11-24 10:00 UTC
WINDOW = 5.0


async def reserve(
    conn: asyncpg.Connection[Any], *, now: float = NOW, cost: int = 1, size: int = 3, budget: str = "bybit"
) -> WindowGrant:
    return await request_windows_db.reserve(
        conn, budget, cost=cost, size=size, now=now, counted_until=now + WINDOW
    )


async def test_a_full_window_refuses_until_its_oldest_request_ends(db: asyncpg.Connection[Any]) -> None:
    """Three fit in a window of 3; the fourth is refused and told when the oldest ends; then it fits."""
    grants = [await reserve(db, now=NOW + i) for i in range(3)]
    assert [(g.granted, g.used) for g in grants] == [(True, 1), (True, 2), (True, 3)]
    refused = await reserve(db, now=NOW + 3)
    assert (refused.granted, refused.used, refused.retry_at) == (False, 3, NOW + WINDOW)
    # A request of cost 2 needs the two oldest to end.
    assert (await reserve(db, now=NOW + 3, cost=2)).retry_at == NOW + 1 + WINDOW
    later = await reserve(db, now=NOW + WINDOW + 0.001)
    assert (later.granted, later.used) == (True, 3)  # the first ended, this one took its place


async def test_a_late_answer_keeps_its_request_counted_longer(db: asyncpg.Connection[Any]) -> None:
    """A request whose answer came 2 s late counts 2 s longer: a window of one stays full until then."""
    await reserve(db, size=1)
    await request_windows_db.extend(db, "bybit", counted_until=NOW + WINDOW, until=NOW + WINDOW + 2)
    refused = await reserve(db, now=NOW + WINDOW + 0.5, size=1)
    assert (refused.granted, refused.retry_at) == (False, NOW + WINDOW + 2)
    assert (await reserve(db, now=NOW + WINDOW + 2.001, size=1)).granted


async def test_a_pause_refuses_every_process_and_each_budget_is_its_own(db: asyncpg.Connection[Any]) -> None:
    """A ban published under `bybit` refuses its reservations, tells until when and why, and leaves
    `okx:candles` alone."""
    await weight_budget_db.publish_pause(db, "bybit", until=NOW + 600, reason="banned")
    refused = await reserve(db)
    assert (refused.granted, refused.paused_until, refused.paused_reason) == (False, NOW + 600, "banned")
    assert (await reserve(db, budget="okx:candles")).granted
    assert (await reserve(db, now=NOW + 600.5)).granted


async def test_concurrent_reservations_never_pass_the_window(db_dsn: str) -> None:
    """40 reservations at once from 8 connections into a window of 10: exactly 10 granted."""
    pool = await create_pool(db_dsn, min_size=8, max_size=8)
    try:
        async def one() -> WindowGrant:
            async with pool.acquire() as conn:
                return await request_windows_db.reserve(
                    conn, "coinbase", cost=1, size=10, now=NOW, counted_until=NOW + 1.0
                )

        grants = await asyncio.gather(*(one() for _ in range(40)))
    finally:
        await pool.close()
    assert sum(g.granted for g in grants) == 10
    assert max(g.used for g in grants) == 10
