"""Klines storage: series ids, the write path (COPY, staged upsert) and the reads behind the API.

Write path, per page of candles of one series, in one transaction:
- candles past the series' last stored open_time cannot conflict while one writer owns the series,
  so they go straight into `klines` with COPY;
- candles at or before it (the re-read last candle, a corrected open candle) go through COPY into
  the connection's staging table and one INSERT … ON CONFLICT DO UPDATE that rewrites only rows
  whose values changed;
- if the direct COPY meets a unique violation anyway (another writer), the page's transaction is
  rolled back and the whole page is merged through the staging table instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from service.db.pool import Connection
from service.exchanges.base import Kline

__all__ = [
    "EncodedPage",
    "encode_copy_rows",
    "encode_page",
    "fetch_klines",
    "last_open_times",
    "latest_prices",
    "series_exists",
    "series_ids",
    "store_page",
]

_COLUMNS = (
    "series_id", "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "is_closed",
)
_VALUE_COLUMNS = _COLUMNS[2:]

_UPSERT_FROM_STAGING = f"""
INSERT INTO klines ({", ".join(_COLUMNS)})
SELECT {", ".join(_COLUMNS)} FROM klines_staging
ON CONFLICT (series_id, open_time) DO UPDATE
   SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUE_COLUMNS)}
 WHERE ({", ".join(f"klines.{c}" for c in _VALUE_COLUMNS)})
       IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _VALUE_COLUMNS)})
"""

# COPY text format: tab-separated, \N for NULL. The exchange's strings go in as they came;
# the client has already refused bodies with a backslash, so no value can carry a tab or newline.
_ROW = "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n"


def _text(value: str | int | None) -> str:
    return "\\N" if value is None else str(value)


def encode_copy_rows(series_id: int, klines: Sequence[Kline], now_ms: int) -> bytes:
    """Candles as COPY text rows; a candle is closed once its close_time has passed."""
    lines = [
        _ROW % (
            series_id, k.open_time, k.open, k.high, k.low, k.close, k.volume, k.close_time,
            _text(k.quote_volume), _text(k.trades), _text(k.taker_buy_base_volume),
            _text(k.taker_buy_quote_volume), "t" if k.close_time < now_ms else "f",
        )
        for k in klines
    ]
    return "".join(lines).encode()


async def series_ids(
    conn: Connection, exchange: str, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Ids of the (symbol, timeframe) series of an exchange, creating those that are new."""
    symbols = [symbol for symbol, _ in pairs]
    timeframes = [timeframe for _, timeframe in pairs]
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO series (exchange, symbol, timeframe)
            SELECT $1, u.symbol, u.timeframe FROM unnest($2::text[], $3::text[]) AS u(symbol, timeframe)
            ON CONFLICT (exchange, symbol, timeframe) DO NOTHING
            """,
            exchange, symbols, timeframes,
        )
        rows = await conn.fetch(
            """
            SELECT s.id, s.symbol, s.timeframe
              FROM series s
              JOIN unnest($2::text[], $3::text[]) AS u(symbol, timeframe)
                ON s.symbol = u.symbol AND s.timeframe = u.timeframe
             WHERE s.exchange = $1
            """,
            exchange, symbols, timeframes,
        )
    return {(r["symbol"], r["timeframe"]): r["id"] for r in rows}


async def last_open_times(conn: Connection, ids: Sequence[int]) -> dict[int, int | None]:
    """Per series, the open time (ms) of its newest stored candle (None if it has none)."""
    rows = await conn.fetch(
        """
        SELECT u.id,
               (SELECT k.open_time FROM klines k WHERE k.series_id = u.id ORDER BY k.open_time DESC LIMIT 1)
                   AS last_open_time
          FROM unnest($1::int[]) AS u(id)
        """,
        list(ids),
    )
    return {r["id"]: r["last_open_time"] for r in rows}


def _count(status: str) -> int:
    # "COPY 42" / "INSERT 0 42"
    return int(status.rsplit(" ", 1)[1])


async def _copy(conn: Connection, table: str, rows: bytes) -> int:
    # A memoryview is sent as it is. (bytes would be taken for a file name, and a file-like source
    # is read through the loop's default executor, a thread pool.) The stubs do not know this form.
    status = await conn.copy_to_table(
        table, source=memoryview(rows), columns=_COLUMNS, format="text"  # type: ignore[arg-type]
    )
    return _count(status)


async def _upsert(conn: Connection, rows: bytes) -> int:
    await _copy(conn, "klines_staging", rows)
    return _count(await conn.execute(_UPSERT_FROM_STAGING))


class EncodedPage(msgspec.Struct, frozen=True):
    """One page of one series as COPY rows, split where the stored series ends."""

    overlap: bytes
    """Candles at or before the newest stored one: merged through the staging table."""
    fresh: bytes
    """Candles after it: copied straight into klines."""


def encode_page(series_id: int, klines: Sequence[Kline], *, stored_until: int | None, now_ms: int) -> EncodedPage:
    """The CPU half of a write (no I/O), so the caller can pace it against the event loop.

    `stored_until` is the open_time of the newest candle already stored for the series (None if
    none).
    """
    split = 0
    if stored_until is not None:
        while split < len(klines) and klines[split].open_time <= stored_until:
            split += 1
    return EncodedPage(
        overlap=encode_copy_rows(series_id, klines[:split], now_ms),
        fresh=encode_copy_rows(series_id, klines[split:], now_ms),
    )


async def store_page(conn: Connection, page: EncodedPage) -> int:
    """Write one encoded page; returns how many rows were inserted or changed.

    Pages commit without waiting for the WAL flush (synchronous_commit off, for this transaction
    only): a database crash can lose at most the last fraction of a second of pages, never
    corrupt them, and the next run re-fetches them because it resumes at the last stored candle.
    Everything else (tasks, logs, configs) keeps the server's durable default.
    """
    if not page.overlap and not page.fresh:
        return 0
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO off")
            written = await _upsert(conn, page.overlap) if page.overlap else 0
            if page.fresh:
                written += await _copy(conn, "klines", page.fresh)
            return written
    except asyncpg.UniqueViolationError:
        # Someone stored some of these candles after the page was split: its transaction rolled
        # back whole, so merge the whole page instead.
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO off")
            return await _upsert(conn, page.overlap + page.fresh)


async def fetch_klines(
    conn: Connection,
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Stored candles oldest first: from `start_ms` on if given, else the newest `limit` up to `end_ms`."""
    columns = """k.open_time, k.open::text AS open, k.high::text AS high, k.low::text AS low,
                 k.close::text AS close, k.volume::text AS volume, k.close_time,
                 k.quote_volume::text AS quote_volume, k.trades,
                 k.taker_buy_base_volume::text AS taker_buy_base_volume,
                 k.taker_buy_quote_volume::text AS taker_buy_quote_volume, k.is_closed"""
    if start_ms is not None:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"""
            SELECT {columns}
              FROM klines k JOIN series s ON s.id = k.series_id
             WHERE s.exchange = $1 AND s.symbol = $2 AND s.timeframe = $3
               AND k.open_time >= $4 AND ($5::bigint IS NULL OR k.open_time <= $5)
             ORDER BY k.open_time
             LIMIT $6
            """,
            exchange, symbol, timeframe, start_ms, end_ms, limit,
        )
        return rows
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {columns}
              FROM klines k JOIN series s ON s.id = k.series_id
             WHERE s.exchange = $1 AND s.symbol = $2 AND s.timeframe = $3
               AND ($4::bigint IS NULL OR k.open_time <= $4)
             ORDER BY k.open_time DESC
             LIMIT $5
        ) newest ORDER BY open_time
        """,
        exchange, symbol, timeframe, end_ms, limit,
    )
    return rows


async def series_exists(conn: Connection, exchange: str, symbol: str) -> bool:
    """Whether any series of this symbol has ever been collected."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM series WHERE exchange = $1 AND symbol = $2)", exchange, symbol
    )
    return found


async def latest_prices(conn: Connection) -> list[asyncpg.Record]:
    """Per collected symbol, the newest candle of its finest timeframe that has data."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT DISTINCT ON (s.exchange, s.symbol)
               s.exchange, s.symbol, s.timeframe, last.open_time, last.close_time,
               last.close::text AS price, last.is_closed
          FROM series s
          CROSS JOIN LATERAL (
                SELECT k.open_time, k.close_time, k.close, k.is_closed
                  FROM klines k WHERE k.series_id = s.id
                 ORDER BY k.open_time DESC LIMIT 1
          ) last
         ORDER BY s.exchange, s.symbol, last.close_time - last.open_time, last.open_time DESC
        """
    )
    return rows
