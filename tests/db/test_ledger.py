"""The coverage ledger's writes: ranges merge, newer facts win where they overlap, and PostgreSQL
itself refuses overlapping ranges; deleting candles cuts the verified ranges that held them, and
emptying the table drops them all."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from service.collection.coverage import holes
from service.db import ledger as ledger_db
from service.records import LedgerRange

M = 60_000


async def ranges(db: asyncpg.Connection[Any], series_id: int) -> list[tuple[int, int, str, int]]:
    rows = await db.fetch(
        "SELECT start_time, end_time, kind, checks FROM coverage WHERE series_id = $1 ORDER BY start_time", series_id
    )
    return [(r["start_time"] // M, r["end_time"] // M, r["kind"], r["checks"]) for r in rows]


async def a_series(db: asyncpg.Connection[Any]) -> int:
    series_id: int = await db.fetchval(
        "INSERT INTO series (exchange, symbol, timeframe) VALUES ('binance', 'BTCUSDT', '1m') RETURNING id"
    )
    return series_id


def r(start: int, end: int, kind: str = "verified", checks: int = 1) -> LedgerRange:
    return LedgerRange(start * M, end * M, kind, checks=checks)  # type: ignore[arg-type]


async def record(db: asyncpg.Connection[Any], series_id: int, *new: LedgerRange) -> None:
    async with db.transaction():
        await ledger_db.record_ranges_of_series(db, [(series_id, n) for n in new])


async def test_pages_in_order_make_one_range_and_a_filled_hole_joins_its_neighbours(
    db: asyncpg.Connection[Any],
) -> None:
    """Consecutive pages extend one verified range; a hole filled later merges both sides into one."""
    sid = await a_series(db)
    await record(db, sid, r(0, 10), r(10, 20), r(20, 30))
    assert await ranges(db, sid) == [(0, 30, "verified", 1)]
    await record(db, sid, r(40, 50))
    assert await ranges(db, sid) == [(0, 30, "verified", 1), (40, 50, "verified", 1)]
    await record(db, sid, r(30, 40))
    assert await ranges(db, sid) == [(0, 50, "verified", 1)]


async def test_a_newer_fact_wins_where_it_overlaps(db: asyncpg.Connection[Any]) -> None:
    """A gap found inside a verified range splits it; a re-check (3 checks) does not merge with a
    confirmed gap (2 checks) beside it; a fetched gap becomes verified and merges away."""
    sid = await a_series(db)
    await record(db, sid, r(0, 100))
    await record(db, sid, r(40, 50, "exchange_gap", 2))
    assert await ranges(db, sid) == [(0, 40, "verified", 1), (40, 50, "exchange_gap", 2), (50, 100, "verified", 1)]
    await record(db, sid, r(45, 50, "exchange_gap", 3))
    assert await ranges(db, sid) == [
        (0, 40, "verified", 1), (40, 45, "exchange_gap", 2), (45, 50, "exchange_gap", 3), (50, 100, "verified", 1),
    ]
    await record(db, sid, r(40, 50))
    assert await ranges(db, sid) == [(0, 100, "verified", 1)]


async def test_postgresql_refuses_overlapping_ranges(db: asyncpg.Connection[Any]) -> None:
    """The exclusion constraint is the second line behind the merge code."""
    sid = await a_series(db)
    await record(db, sid, r(0, 10))
    with pytest.raises(asyncpg.ExclusionViolationError):
        await db.execute(
            "INSERT INTO coverage (series_id, start_time, end_time, kind) VALUES ($1, $2, $3, 'failed')",
            sid, 5 * M, 15 * M,
        )


async def a_series_with_100_candles(db: asyncpg.Connection[Any]) -> int:
    """Candles 0..99 stored; the ledger: verified 0-60, an exchange gap 60-70, verified 70-100."""
    sid = await a_series(db)
    await db.executemany(
        "INSERT INTO klines (series_id, open_time, open, high, low, close, volume, close_time, is_closed)"
        " VALUES ($1, $2, 1, 2, 0.5, 1.5, 10, $3, true)",
        [(sid, t * M, t * M + M - 1) for t in range(100)],
    )
    await record(db, sid, r(0, 60), r(60, 70, "exchange_gap", 2), r(70, 100))
    return sid


async def test_deleting_candles_turns_their_span_into_a_hole(db: asyncpg.Connection[Any]) -> None:
    """A DELETE on klines cuts every verified range that held a deleted candle; other kinds stay."""
    sid = await a_series_with_100_candles(db)
    await db.execute(
        "DELETE FROM klines WHERE series_id = $1 AND open_time >= $2 AND open_time < $3", sid, 20 * M, 30 * M
    )
    rows = await db.fetch("SELECT start_time, end_time, kind FROM coverage WHERE series_id = $1 ORDER BY 1", sid)
    ledger = [LedgerRange(x["start_time"], x["end_time"], x["kind"]) for x in rows]
    assert holes(ledger, 0, 100 * M) == [(20 * M, 29 * M + 1)]  # candles 20..29: the slots they opened
    assert (60 * M, 70 * M, "exchange_gap") in [(x.start, x.end, x.kind) for x in ledger]


async def test_truncating_klines_leaves_no_verified_range(db: asyncpg.Connection[Any]) -> None:
    """TRUNCATE fires no row or DELETE trigger: its own trigger drops every verified range, so a run
    after it fetches the history again; exchange gaps and failed ranges stay (facts about the exchange)."""
    sid = await a_series_with_100_candles(db)
    await db.execute("TRUNCATE klines")
    assert await ranges(db, sid) == [(60, 70, "exchange_gap", 2)]


async def test_ranges_of_several_series_recorded_together_merge_as_one_by_one(db: asyncpg.Connection[Any]) -> None:
    """A batch of pages of several series records their ranges in one statement per round: each
    series' range continues its last one, starts anew, or (meeting another kind) takes the general
    merge, exactly as when recorded one by one."""
    ids = []
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"):
        ids.append(await db.fetchval(
            "INSERT INTO series (exchange, symbol, timeframe) VALUES ('binance', $1, '1m') RETURNING id", symbol
        ))
    a, b, c, d = ids
    await record(db, a, r(0, 10))
    await record(db, c, r(0, 10, "exchange_gap", checks=2))
    await record(db, d, r(0, 10))
    async with db.transaction():
        await ledger_db.record_ranges_of_series(db, [
            (a, r(10, 20)),  # continues a's range
            (b, r(5, 15)),  # b's first range
            (c, r(5, 20)),  # overlaps c's exchange gap: the newer fact wins where they overlap
            (d, r(10, 12)), (d, r(12, 13, "exchange_gap", checks=2)), (d, r(13, 20)),  # three of one page
        ])
    assert await ranges(db, a) == [(0, 20, "verified", 1)]
    assert await ranges(db, b) == [(5, 15, "verified", 1)]
    assert await ranges(db, c) == [(0, 5, "exchange_gap", 2), (5, 20, "verified", 1)]
    assert await ranges(db, d) == [(0, 12, "verified", 1), (12, 13, "exchange_gap", 2), (13, 20, "verified", 1)]
