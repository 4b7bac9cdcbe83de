"""The write path on its own: direct COPY for fresh candles, merge for overlaps, fallback on conflicts."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from service.db import klines as klines_db
from service.db.pool import create_pool
from service.records import Kline, KlinePage

MINUTE = 60_000


async def store(conn: Any, series_id: int, klines: list[Kline], *, stored_until: int | None, now_ms: int) -> int:
    page = klines_db.encode_page(series_id, [KlinePage(klines, as_of_ms=now_ms)], stored_until=stored_until)
    return await klines_db.store_page(conn, page)


def candle(open_time: int, close: str = "1.50000000") -> Kline:
    return Kline(
        open_time=open_time, open="1.00000000", high="99.00000000", low="0.50000000", close=close,
        volume="10.00000000", close_time=open_time + MINUTE - 1, quote_volume="15.00000000", trades=7,
        taker_buy_base_volume="4.00000000", taker_buy_quote_volume="6.00000000",
    )


async def run_series(conn: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], klines_db.RunSeries]:
    """The series of a Binance run over `pairs` (created where new), as a run starts from them."""
    return (await klines_db.run_start(conn, "binance", pairs)).series


async def series_id(conn: Any, symbol: str, timeframe: str = "1m") -> int:
    return (await run_series(conn, [(symbol, timeframe)]))[symbol, timeframe].series_id


@pytest.fixture
async def pool(db_dsn: str) -> Any:
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_fresh_candles_are_copied_and_overlaps_merged(pool: asyncpg.Pool, db: asyncpg.Connection[Any]) -> None:
    """A page past the last stored candle is inserted; re-reading changes only what changed."""
    page = [candle(i * MINUTE) for i in range(1000)]
    async with pool.acquire() as conn:
        both = await run_series(conn, [("BTCUSDT", "1m"), ("BTCUSDT", "1h")])
        series = both["BTCUSDT", "1m"].series_id
        again_1m = await run_series(conn, [("BTCUSDT", "1m")])
        assert again_1m == {("BTCUSDT", "1m"): both["BTCUSDT", "1m"]}
        assert both["BTCUSDT", "1m"].stored == klines_db.StoredEnd(None, None)
        assert await store(conn, series, page, stored_until=None, now_ms=10**13) == 1000
        # The last candle again, unchanged, plus two new ones: 2 written.
        again = [page[-1], candle(1000 * MINUTE), candle(1001 * MINUTE)]
        assert await store(conn, series, again, stored_until=999 * MINUTE, now_ms=10**13) == 2
        # The last candle corrected: 1 written.
        fixed = [candle(1001 * MINUTE, close="9.00000000")]
        assert await store(conn, series, fixed, stored_until=1001 * MINUTE, now_ms=10**13) == 1
        ends = {key: run.stored for key, run in (await run_series(conn, list(both))).items()}
        assert ends == {
            ("BTCUSDT", "1m"): klines_db.StoredEnd(newest=1001 * MINUTE, oldest_open=None),
            ("BTCUSDT", "1h"): klines_db.StoredEnd(None, None),
        }
    assert await db.fetchval("SELECT count(*) FROM klines") == 1002
    assert await db.fetchval("SELECT close::text FROM klines WHERE open_time = $1", 1001 * MINUTE) == "9.00000000"


async def test_a_stale_view_of_the_series_falls_back_to_the_merge(
    pool: asyncpg.Pool, db: asyncpg.Connection[Any]
) -> None:
    """If candles thought fresh are already stored (another writer), the page is merged, not failed."""
    async with pool.acquire() as conn:
        series = await series_id(conn, "ETHUSDT")
        await store(conn, series, [candle(0), candle(MINUTE)], stored_until=None, now_ms=10**13)
        page = [candle(0, close="3.00000000"), candle(MINUTE), candle(2 * MINUTE)]
        written = await store(conn, series, page, stored_until=None, now_ms=10**13)
    assert written == 2  # the changed candle and the new one
    rows = await db.fetch("SELECT open_time, close::text FROM klines ORDER BY open_time")
    assert [(r["open_time"], r["close"]) for r in rows] == [
        (0, "3.00000000"), (MINUTE, "1.50000000"), (2 * MINUTE, "1.50000000"),
    ]


async def test_open_candles_are_marked(pool: asyncpg.Pool, db: asyncpg.Connection[Any]) -> None:
    """A candle whose close_time has not passed is stored with is_closed = false."""
    async with pool.acquire() as conn:
        series = await series_id(conn, "XRPETH")
        await store(conn, series, [candle(0), candle(MINUTE)], stored_until=None, now_ms=MINUTE + 5)
    flags = await db.fetch("SELECT is_closed FROM klines ORDER BY open_time")
    assert [r["is_closed"] for r in flags] == [True, False]


async def test_the_next_run_resumes_at_the_oldest_open_candle(pool: asyncpg.Pool) -> None:
    """A candle stored as open is re-read by the next run even when newer candles were stored after it."""
    async with pool.acquire() as conn:
        series = await series_id(conn, "BTCUSDT")
        # Two answers: the first produced while its last candle (open_time 2 min) was still open.
        first = KlinePage([candle(0), candle(MINUTE), candle(2 * MINUTE)], as_of_ms=2 * MINUTE + 5)
        second = KlinePage([candle(3 * MINUTE), candle(4 * MINUTE)], as_of_ms=10 * MINUTE)
        await klines_db.store_page(conn, klines_db.encode_page(series, [first, second], stored_until=None))
        end = (await run_series(conn, [("BTCUSDT", "1m")]))["BTCUSDT", "1m"].stored
    assert end == klines_db.StoredEnd(newest=4 * MINUTE, oldest_open=2 * MINUTE)
    assert end.resume_at == 2 * MINUTE


async def test_closed_is_decided_by_when_the_exchange_answered(pool: asyncpg.Pool, db: asyncpg.Connection[Any]) -> None:
    """However late a page is written, a candle open when the exchange answered is stored as open."""
    async with pool.acquire() as conn:
        series = await series_id(conn, "ETHUSDT")
        page = KlinePage([candle(0), candle(MINUTE)], as_of_ms=MINUTE + 59_000)
        await klines_db.store_page(conn, klines_db.encode_page(series, [page], stored_until=None))
    flags = await db.fetch("SELECT is_closed FROM klines ORDER BY open_time")
    assert [r["is_closed"] for r in flags] == [True, False]


async def test_a_run_start_racing_another_that_creates_its_series_reads_what_that_one_stored(
    pool: asyncpg.Pool, db: asyncpg.Connection[Any]
) -> None:
    """Another transaction creates the series (with its listing and learnt grid) while a run starts:
    the run waits for it and starts from that series, its listing and its grid, not from nothing."""
    other = await pool.acquire()
    try:
        creating = other.transaction()
        await creating.start()
        await other.execute(
            "INSERT INTO series (exchange, symbol, timeframe, listing_start, grid_offset_ms)"
            " VALUES ('binance', 'BTCUSDT', '1w', 0, 345600000)"
        )
        async with pool.acquire() as conn:
            starting = asyncio.create_task(run_series(conn, [("BTCUSDT", "1w")]))
            await asyncio.sleep(0.2)
            assert not starting.done()  # waiting on the other's insert
            await creating.commit()
            run = (await starting)["BTCUSDT", "1w"]
    finally:
        await pool.release(other)
    assert (run.listing_start, run.grid_offset_ms) == (0, 345_600_000)
    assert await db.fetchval("SELECT count(*) FROM series") == 1


async def test_a_candle_stored_closed_is_never_reopened_by_a_staler_answer(
    pool: asyncpg.Pool, db: asyncpg.Connection[Any]
) -> None:
    """A closed candle holds final values: a later answer that still saw it open (a REST read older
    than a stream's close) changes nothing; a later closed answer (a correction) still does."""
    async with pool.acquire() as conn:
        series = await series_id(conn, "BTCUSDT")
        await store(conn, series, [candle(0, close="2.00000000")], stored_until=None, now_ms=10 * MINUTE)
        stale = KlinePage([candle(0, close="1.50000000")], as_of_ms=30_000)  # answered mid-candle: open
        written = await klines_db.store_page(conn, klines_db.encode_page(series, [stale], stored_until=0))
        kept = await db.fetchrow("SELECT close::text, is_closed FROM klines WHERE open_time = 0")
        corrected = await store(conn, series, [candle(0, close="3.00000000")], stored_until=0, now_ms=10 * MINUTE)
    assert written == 0 and (kept["close"], kept["is_closed"]) == ("2.00000000", True)
    assert corrected == 1
    assert await db.fetchval("SELECT close::text FROM klines WHERE open_time = 0") == "3.00000000"
