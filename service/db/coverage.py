"""Reads of the coverage ledger (the `coverage` table) for reports; the ledger is written by db/ledger.py."""

from __future__ import annotations

from collections.abc import Sequence

from service.db.ledger import range_from_row
from service.db.pool import Connection, Row
from service.records import LedgerRange

__all__ = ["configured_series", "find_series", "ranges_of_series"]

# Per series: where its ledger begins, and where its newest verified range ends (the freshness).
_LEDGER_ENDS = """
    SELECT min(c.start_time) AS earliest_start,
           max(c.end_time) FILTER (WHERE c.kind = 'verified') AS newest_verified_end
      FROM coverage c WHERE c.series_id = s.id
"""


async def find_series(conn: Connection, exchange: str, symbol: str, timeframe: str) -> Row | None:
    """The series (id, listing_start) with its ledger's earliest start and newest verified end
    (both None while its ledger is empty); None if the series was never collected."""
    row: Row | None = await conn.fetchrow(
        f"""
        SELECT s.id, s.listing_start, s.grid_offset_ms, ends.earliest_start, ends.newest_verified_end
          FROM series s CROSS JOIN LATERAL ({_LEDGER_ENDS}) ends
         WHERE s.exchange = $1 AND s.symbol = $2 AND s.timeframe = $3
        """,
        exchange, symbol, timeframe,
    )
    return row


async def configured_series(conn: Connection) -> list[Row]:
    """Every configured series (each config × each of its timeframes, in the config's order), with its
    series id (None if never collected), listing start, ledger's earliest start and newest verified end."""
    rows: list[Row] = await conn.fetch(
        f"""
        SELECT c.id AS config_id, c.exchange, c.symbol, t.timeframe, s.id AS series_id, s.listing_start,
               s.grid_offset_ms, ends.earliest_start, ends.newest_verified_end
          FROM data_collection_configs c
         CROSS JOIN LATERAL unnest(c.timeframes) WITH ORDINALITY AS t(timeframe, position)
          LEFT JOIN series s ON s.exchange = c.exchange AND s.symbol = c.symbol AND s.timeframe = t.timeframe
          LEFT JOIN LATERAL ({_LEDGER_ENDS}) ends ON true
         ORDER BY c.id, t.position
        """
    )
    return rows


async def ranges_of_series(conn: Connection, series_ids: Sequence[int]) -> dict[int, list[LedgerRange]]:
    """Every ledger range of these series, oldest first, by series."""
    rows: list[Row] = await conn.fetch(
        """
        SELECT series_id, start_time, end_time, kind, checks, checked_at, detail
          FROM coverage
         WHERE series_id = ANY($1::integer[])
         ORDER BY series_id, start_time
        """,
        list(series_ids),
    )
    by_series: dict[int, list[LedgerRange]] = {}
    for row in rows:
        by_series.setdefault(row["series_id"], []).append(range_from_row(row))
    return by_series
