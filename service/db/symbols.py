"""The symbols table: what each exchange lists, filled from its exchange info."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.db.pool import Connection
from service.records import SymbolInfo

__all__ = ["count_symbols", "find_symbol", "list_symbols", "replace_symbols"]


async def replace_symbols(conn: Connection, exchange: str, symbols: Sequence[SymbolInfo]) -> int:
    """Upsert the exchange's listing; symbols it no longer lists are kept but marked DELISTED."""
    async with conn.transaction():
        await conn.executemany(
            """
            INSERT INTO symbols (exchange, symbol, base_asset, quote_asset, status, updated_at)
            VALUES ($1, $2, $3, $4, $5, now())
            ON CONFLICT (exchange, symbol) DO UPDATE
               SET base_asset = EXCLUDED.base_asset, quote_asset = EXCLUDED.quote_asset,
                   status = EXCLUDED.status, updated_at = now()
            """,
            [(exchange, s.symbol, s.base_asset, s.quote_asset, s.status) for s in symbols],
        )
        await conn.execute(
            """
            UPDATE symbols SET status = 'DELISTED', updated_at = now()
             WHERE exchange = $1 AND status <> 'DELISTED' AND NOT (symbol = ANY($2::text[]))
            """,
            exchange, [s.symbol for s in symbols],
        )
    return len(symbols)


async def count_symbols(conn: Connection, exchange: str) -> int:
    """How many symbols of the exchange are known (any status)."""
    count: int = await conn.fetchval("SELECT count(*) FROM symbols WHERE exchange = $1", exchange)
    return count


async def find_symbol(conn: Connection, exchange: str, name: str) -> asyncpg.Record | None:
    """A symbol by its exchange name ('BTCUSDT') or as BASE/QUOTE ('BTC/USDT'), case-insensitive."""
    name = name.strip().upper()
    if "/" in name:
        base, _, quote = name.partition("/")
        row: asyncpg.Record | None = await conn.fetchrow(
            """
            SELECT symbol, base_asset, quote_asset, status FROM symbols
             WHERE exchange = $1 AND base_asset = $2 AND quote_asset = $3
             ORDER BY status = 'TRADING' DESC LIMIT 1
            """,
            exchange, base, quote,
        )
        return row
    row = await conn.fetchrow(
        "SELECT symbol, base_asset, quote_asset, status FROM symbols WHERE exchange = $1 AND symbol = $2",
        exchange, name,
    )
    return row


async def list_symbols(conn: Connection, exchange: str, *, trading_only: bool = True) -> list[str]:
    """Symbol names of the exchange, sorted."""
    rows = await conn.fetch(
        "SELECT symbol FROM symbols WHERE exchange = $1 AND (NOT $2 OR status = 'TRADING') ORDER BY symbol",
        exchange, trading_only,
    )
    return [r["symbol"] for r in rows]
